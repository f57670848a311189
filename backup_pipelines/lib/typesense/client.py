"""The few Typesense REST calls a backup and a restore need, streamed where data is large.

Typesense's export leaves out the collection schema, synonyms, overrides and the aliases that
point at the collection, so a backup saves those separately and a restore recreates them
before importing the documents.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import quote

from backup_pipelines.lib.errors import Refusals
from backup_pipelines.lib.http import IndexStoreError, RetryPolicy, StoreHttp

STORE = "Typesense"
API_KEY_HEADER = "X-TYPESENSE-API-KEY"
# Keys of GET /collections/{c} that describe the collection's state, not its definition.
READ_ONLY_SCHEMA_KEYS = frozenset({"num_documents", "created_at", "num_memory_shards"})
# Import actions that give the same result when a batch is sent twice, so retries are safe.
IDEMPOTENT_IMPORT_ACTIONS = frozenset({"upsert", "update", "emplace"})
DEFAULT_IMPORT_BATCH = 2_000
REQUEST_BODY_PIECE = 1 << 20
FAILURES_SHOWN = 5
DELETE_BATCH = 100  # ids per delete-by-filter request (keeps the query string short)


class ExportIncomplete(IndexStoreError):
    """An export ended early: cut off by a proxy, a timeout or a dropped connection."""


class ImportFailed(IndexStoreError):
    """Typesense answered an import with HTTP 200 but refused some documents (every other
    document of the stream was imported)."""

    def __init__(self, collection: str, failed: int, sent: int, imported: int, first: list[str]):
        self.failed = failed
        self.imported = imported
        self.first_failures = first
        reason = (
            f"{failed} of {sent} documents were refused ({imported} imported); "
            "first failures: " + "; ".join(first)
        )
        super().__init__(STORE, "import", _collection_path(collection, "documents/import"), reason)


class JsonlTally:
    """Counts the documents of a JSONL stream as it passes, and checks that its end is whole.

    Typesense ends an export without a final newline, so the document count is the newline
    count plus one for a non-empty last line. Only the bytes after the last newline are kept,
    so memory stays at one document.
    """

    def __init__(self) -> None:
        self.newlines = 0
        self.bytes = 0
        self._tail: list[bytes] = []

    def feed(self, chunk: bytes) -> None:
        self.bytes += len(chunk)
        newline_count = chunk.count(b"\n")
        if newline_count:
            self.newlines += newline_count
            self._tail = [chunk[chunk.rindex(b"\n") + 1 :]]
        else:
            self._tail.append(chunk)

    def finish(self) -> int:
        """The number of documents; raises ValueError when the last line is cut."""
        last_line = b"".join(self._tail)
        if not last_line.strip():
            return self.newlines
        try:
            document = json.loads(last_line)
        except ValueError as error:
            raise ValueError(
                f"the last line is not whole JSON ({len(last_line)} bytes): {error}"
            ) from error
        if not isinstance(document, dict):
            raise ValueError("the last line is not a JSON object")
        return self.newlines + 1


def check_export_count(exported: int, count_before: int, count_after: int) -> None:
    """Raise ValueError unless the export holds as many documents as the collection had.

    Writes during the export move the count, so anything between the counts taken before and
    after is accepted; fewer means the body was cut.
    """
    low, high = sorted((count_before, count_after))
    if not low <= exported <= high:
        expected = str(low) if low == high else f"{low}..{high}"
        raise ValueError(f"exported {exported} documents, the collection holds {expected}")


class TypesenseExport:
    """The streamed export of one collection: iterate for bytes chunks, then read .documents.

    The iteration raises ExportIncomplete at its end when the body was cut off, so a caller
    that writes the chunks to storage must not commit them before the loop finishes.
    """

    def __init__(self, client: TypesenseClient, collection: str, chunk_size: int) -> None:
        self.client = client
        self.collection = collection
        self.chunk_size = chunk_size
        self.documents: int | None = None
        self.bytes = 0
        self._started = False

    def __iter__(self) -> Iterator[bytes]:
        if self._started:
            raise RuntimeError("an export can be iterated once only")
        self._started = True
        count_before = self.client.num_documents(self.collection)
        path = _collection_path(self.collection, "documents/export")
        response = self.client.http.request("GET", path, "export", stream=True)
        tally = JsonlTally()
        for chunk in self.client.http.stream_chunks(response, "export", path, self.chunk_size):
            tally.feed(chunk)
            yield chunk
        self.bytes = tally.bytes
        self.documents = self._checked_count(tally, count_before, path)

    def _checked_count(self, tally: JsonlTally, count_before: int, path: str) -> int:
        try:
            documents = tally.finish()
            check_export_count(documents, count_before, self.client.num_documents(self.collection))
        except ValueError as error:
            raise ExportIncomplete(STORE, "export", path, f"export cut off: {error}") from error
        return documents


class TypesenseClient:
    """Typesense over plain requests; the API key goes in a header only."""

    def __init__(self, base_url: str, api_key: str, policy: RetryPolicy | None = None) -> None:
        self.http = StoreHttp(STORE, base_url, {API_KEY_HEADER: api_key}, policy)

    # Collections and their definition

    def server_version(self) -> str:
        return str(self.http.json("GET", "/debug", "read version").get("version", "unknown"))

    def collection_exists(self, collection: str) -> bool:
        response = self.http.request(
            "GET", _collection_path(collection), "get collection", accept_statuses=(200, 404)
        )
        return response.status_code == 200

    def list_collections(self) -> list[str]:
        """The name of every collection on the server (their fields left out)."""
        found = self.http.json(
            "GET", "/collections", "list collections", params={"exclude_fields": "fields"}
        )
        if not isinstance(found, list):
            raise self.http.error("list collections", "/collections", "the answer is not a list")
        return [c["name"] for c in found if isinstance(c, dict) and isinstance(c.get("name"), str)]

    def get_collection(self, collection: str) -> dict[str, Any]:
        return self.http.json("GET", _collection_path(collection), "get collection")

    def num_documents(self, collection: str) -> int:
        return int(self.get_collection(collection)["num_documents"])

    def get_collection_schema(self, collection: str) -> dict[str, Any]:
        """The schema, cleaned so that POST /collections accepts it to recreate the collection."""
        return clean_schema(self.get_collection(collection))

    def list_synonyms(self, collection: str) -> list[dict[str, Any]]:
        path = _collection_path(collection, "synonyms")
        return self.http.json("GET", path, "list synonyms")["synonyms"]

    def list_overrides(self, collection: str) -> list[dict[str, Any]]:
        path = _collection_path(collection, "overrides")
        return self.http.json("GET", path, "list overrides")["overrides"]

    def list_aliases(self) -> list[dict[str, str]]:
        return self.http.json("GET", "/aliases", "list aliases")["aliases"]

    def aliases_for(self, collection: str) -> list[dict[str, str]]:
        """Aliases ({"name", "collection_name"}) that point at this collection."""
        return [a for a in self.list_aliases() if a["collection_name"] == collection]

    def create_collection(self, schema: dict[str, Any]) -> dict[str, Any]:
        return self.http.json(
            "POST", "/collections", "create collection", json=clean_schema(schema), retry=False
        )

    def delete_collection(self, collection: str) -> None:
        self.http.request("DELETE", _collection_path(collection), "delete collection")

    def upsert_synonym(self, collection: str, synonym: dict[str, Any]) -> None:
        path = _collection_path(collection, f"synonyms/{_quote(synonym['id'])}")
        self.http.request("PUT", path, "upsert synonym", json=_clean_synonym(synonym))

    def upsert_override(self, collection: str, override: dict[str, Any]) -> None:
        path = _collection_path(collection, f"overrides/{_quote(override['id'])}")
        body = {k: v for k, v in override.items() if k != "id"}
        self.http.request("PUT", path, "upsert override", json=body)

    def upsert_alias(self, alias: str, collection: str) -> None:
        """Point alias at collection (moving it when it points elsewhere)."""
        self.http.request(
            "PUT", f"/aliases/{_quote(alias)}", "upsert alias", json={"collection_name": collection}
        )

    def recreate_collection(
        self,
        schema: dict[str, Any],
        synonyms: Iterable[dict[str, Any]] = (),
        overrides: Iterable[dict[str, Any]] = (),
        aliases: Iterable[dict[str, str]] = (),
        name: str | None = None,
    ) -> str:
        """Create the collection with its synonyms and overrides, and point aliases at it.

        name restores under another name (aliases then follow it). Fails with HTTP 409 when
        the collection exists: a restore must not merge into live data unnoticed. Pass no
        aliases and call upsert_alias after the import to keep readers off a half-filled
        collection. Returns the collection name.
        """
        target = name or schema["name"]
        self.create_collection({**schema, "name": target})
        for synonym in synonyms:
            self.upsert_synonym(target, synonym)
        for override in overrides:
            self.upsert_override(target, override)
        for alias in aliases:
            self.upsert_alias(alias["name"], target)
        return target

    # Documents

    def stream_export(self, collection: str, chunk_size: int = 1 << 20) -> TypesenseExport:
        """GET /collections/{c}/documents/export, streamed; see TypesenseExport."""
        return TypesenseExport(self, collection, chunk_size)

    def import_jsonl(
        self,
        collection: str,
        chunks: Iterable[bytes],
        action: str = "upsert",
        batch_size: int = DEFAULT_IMPORT_BATCH,
        refused: Refusals | None = None,
    ) -> int:
        """Import JSONL arriving in arbitrary bytes chunks; returns the documents imported.

        Lines go in batches of batch_size documents, one request each, so memory stays at one
        batch and a batch can be resent after a transient failure (idempotent actions only).
        A document Typesense refuses does not stop the others: it is added to `refused` (by
        id, with Typesense's reason); without `refused`, ImportFailed is raised at the end.
        """
        return self._import(collection, chunks, action, batch_size, False, refused)[0]

    def import_missing(
        self,
        collection: str,
        chunks: Iterable[bytes],
        batch_size: int = DEFAULT_IMPORT_BATCH,
        refused: Refusals | None = None,
    ) -> tuple[int, int]:
        """Create the documents whose id the collection lacks and leave every existing one
        as it is (newer data wins, like ON CONFLICT DO NOTHING); returns (created, kept).
        Refused documents as in import_jsonl."""
        return self._import(collection, chunks, "create", batch_size, True, refused)

    def _import(
        self,
        collection: str,
        chunks: Iterable[bytes],
        action: str,
        batch_size: int,
        keep_existing: bool,
        refused: Refusals | None,
    ) -> tuple[int, int]:
        failures = refused if refused is not None else Refusals(STORE, collection)
        first: list[str] = []  # for ImportFailed: line numbers help whoever reads a file
        sent = kept = failed = 0
        lines = iter(_jsonl_lines(chunks))
        while batch := list(itertools.islice(lines, batch_size)):
            batch_kept, batch_failures = self._import_batch(
                collection, batch, action, sent + 1, keep_existing
            )
            for failure in batch_failures:
                failures.add(failure.doc_id, failure.reason())
                if len(first) < FAILURES_SHOWN:
                    first.append(str(failure))
            kept += batch_kept
            failed += len(batch_failures)
            sent += len(batch)
        if refused is None and failed:
            raise ImportFailed(collection, failed, sent, sent - kept - failed, first)
        return sent - kept - failed, kept

    def _import_batch(
        self, collection: str, batch: list[bytes], action: str, first_line: int, keep_existing: bool
    ) -> tuple[int, list[_Failure]]:
        """Send one batch; returns how many documents already existed (kept as they were) and
        the documents refused."""
        path = _collection_path(collection, "documents/import")
        response = self.http.request(
            "POST",
            path,
            "import",
            params={"action": action},
            body_factory=lambda: _request_body(batch),
            retry=action in IDEMPOTENT_IMPORT_ACTIONS,
            stream=True,
        )
        results = self.http.stream_chunks(response, "import", path, REQUEST_BODY_PIECE)
        try:
            outcome = _ImportOutcome.read(_jsonl_lines(results), first_line)
        except ValueError as error:
            raise self.http.error("import", path, f"unreadable result line: {error}") from error
        if outcome.answered != len(batch):
            raise self.http.error(
                "import", path, f"sent {len(batch)} documents, got {outcome.answered} results"
            )
        failures = [f for f in outcome.failures if not (keep_existing and f.code == 409)]
        return len(outcome.failures) - len(failures), failures

    def export_ids(self, collection: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The collection's document ids as JSONL (`{"id":"..."}` a line), streamed."""
        path = _collection_path(collection, "documents/export")
        response = self.http.request(
            "GET", path, "export ids", params={"include_fields": "id"}, stream=True
        )
        yield from self.http.stream_chunks(response, "export ids", path, chunk_size)

    def delete_documents(self, collection: str, ids: Iterable[str]) -> int:
        """Delete the documents with these ids (absent ones are no error), a batch of ids per
        `DELETE .../documents?filter_by=id:[...]`; an id a filter cannot quote (a backtick)
        is deleted on its own. Returns how many Typesense reports deleted."""
        deleted = 0
        plain, odd = [], []
        for value in ids:
            (odd if "`" in value else plain).append(value)
        path = _collection_path(collection, "documents")
        for start in range(0, len(plain), DELETE_BATCH):
            batch = plain[start : start + DELETE_BATCH]
            filter_by = "id:[" + ",".join(f"`{value}`" for value in batch) + "]"
            answer = self.http.json(
                "DELETE", path, "delete documents", params={"filter_by": filter_by}
            )
            deleted += int(answer.get("num_deleted", 0))
        for value in odd:
            one = _collection_path(collection, f"documents/{_quote(value)}")
            response = self.http.request(
                "DELETE", one, "delete document", accept_statuses=(200, 404)
            )
            deleted += response.status_code == 200
        return deleted

    # Verification

    def search(self, collection: str, q: str, query_by: str, **params: Any) -> dict[str, Any]:
        path = _collection_path(collection, "documents/search")
        return self.http.json(
            "GET", path, "search", params={"q": q, "query_by": query_by, **params}
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> TypesenseClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _ImportOutcome:
    """The result lines of one import request, with the refused ones described."""

    def __init__(self) -> None:
        self.answered = 0
        self.failures: list[_Failure] = []

    @classmethod
    def read(cls, result_lines: Iterable[bytes], first_line: int) -> _ImportOutcome:
        outcome = cls()
        for offset, line in enumerate(result_lines):
            outcome.answered += 1
            result = json.loads(line)
            if result.get("success") is not True:
                outcome.failures.append(_Failure(result, first_line + offset))
        return outcome


class _Failure:
    """One refused document, named by id only: its content may be private."""

    def __init__(self, result: dict[str, Any], line_number: int) -> None:
        self.code = result.get("code")
        self.error = result.get("error")
        self.line_number = line_number
        try:
            self.doc_id = json.loads(result.get("document", "")).get("id")
        except (ValueError, AttributeError):
            self.doc_id = None

    def __str__(self) -> str:
        return f"line {self.line_number} (id {self.doc_id!r}): code {self.code}: {self.error}"

    def reason(self) -> str:
        """Typesense's answer; the line too when the document's id could not be read."""
        where = f"line {self.line_number}: " if self.doc_id is None else ""
        return f"{where}code {self.code}: {self.error}"


def clean_schema(collection: dict[str, Any]) -> dict[str, Any]:
    """A collection description without the keys that describe its state rather than shape."""
    return {k: v for k, v in collection.items() if k not in READ_ONLY_SCHEMA_KEYS}


def _clean_synonym(synonym: dict[str, Any]) -> dict[str, Any]:
    # GET lists multi-way synonyms with root "", which means "no root" on the way back in.
    body = {k: v for k, v in synonym.items() if k != "id"}
    if not body.get("root"):
        body.pop("root", None)
    return body


def _jsonl_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Non-blank lines (without newline) of a JSONL stream split across arbitrary chunks."""
    pending: list[bytes] = []
    for chunk in chunks:
        pieces = chunk.split(b"\n")
        if len(pieces) == 1:
            pending.append(chunk)
            continue
        pending.append(pieces[0])
        first = b"".join(pending)
        pending = [pieces[-1]]
        for line in (first, *pieces[1:-1]):
            if line.strip():
                yield line
    last = b"".join(pending)
    if last.strip():
        yield last


def _request_body(lines: list[bytes]) -> Iterator[bytes]:
    """The batch as a chunked request body in pieces of about 1 MB (not one send per line)."""
    piece: list[bytes] = []
    size = 0
    for line in lines:
        piece.append(line)
        piece.append(b"\n")
        size += len(line) + 1
        if size >= REQUEST_BODY_PIECE:
            yield b"".join(piece)
            piece, size = [], 0
    if piece:
        yield b"".join(piece)


def _quote(name: str) -> str:
    return quote(str(name), safe="")


def _collection_path(collection: str, rest: str = "") -> str:
    path = f"/collections/{_quote(collection)}"
    return f"{path}/{rest}" if rest else path
