"""The Qdrant calls a backup and a restore need.

The JSON calls (collections, aliases, points, counts, cluster state) go through the official
client, qdrant-client, whose typed models follow the server's API. Snapshot files are moved
by hand here, because that library holds them in memory:

- the download asks for `Accept-Encoding: identity` (the server's Compress middleware would
  otherwise gzip the snapshot on the fly, costing server CPU and dropping Content-Length) and
  checks the bytes received against Content-Length;
- the upload streams a multipart body under a unique file name (the server KEEPS every
  uploaded file in the target collection's snapshots folder: the caller deletes it with
  delete_snapshot once done) and is never sent twice once its first byte went out. The server
  recovers in a task of its own that outlives the request, so resending after a timeout or a
  proxy's 502/503/504 would start a second recovery of the same collection; instead the
  collection is watched until it holds the snapshot's points with every shard active. A 500
  or a 4xx fails at once with the server's message. Only a connection that could not be
  opened (nothing sent) is tried again.

Errors name the store, the operation and the URL path, never the API key.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any, TypeVar
from urllib.parse import quote, urlsplit

import httpx
import requests
import urllib3
from qdrant_client import QdrantClient
from qdrant_client.common.client_exceptions import ResourceExhaustedResponse
from qdrant_client.http import models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from backup_pipelines.lib.http import (
    MAX_DETAIL_CHARS,
    RETRYABLE_STATUSES,
    IndexStoreError,
    RetryPolicy,
    StoreHttp,
)

log = logging.getLogger(__name__)

STORE = "Qdrant"
API_KEY_HEADER = "api-key"
# Creating, or recovering from, a large snapshot takes minutes; wait=true holds the request.
SNAPSHOT_READ_TIMEOUT = 3600.0
UPLOAD_PIECE = 1 << 20
# Uploaded files stay on the server until deleted: a recognisable name for any leftover.
UPLOAD_PREFIX = "backup-pipelines-upload-"
# Answers that do not say whether a recovery ran: a proxy gave up, the server is overloaded.
UNSETTLED_STATUSES = frozenset({502, 503, 504})
ACCESS_HINTS = {
    401: "the API key is missing or wrong: check QDRANT_API_KEY",
    403: (
        "the API key may not do this: a read-only key can only read; taking or deleting a "
        "snapshot needs write access to the collection, and recovering one needs the global "
        "read-write key (service.api_key)"
    ),
}
T = TypeVar("T")


class QdrantHttp:
    """A Qdrant server; the optional API key travels in the `api-key` header only.

    `recovery_wait` bounds how long a recovery whose answer was lost is watched (default: the
    snapshot read timeout); `poll_interval` is the pause between two looks.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        policy: RetryPolicy | None = None,
        snapshot_read_timeout: float = SNAPSHOT_READ_TIMEOUT,
        recovery_wait: float | None = None,
        poll_interval: float = 1.0,
    ) -> None:
        headers = {API_KEY_HEADER: api_key} if api_key else {}
        self.http = StoreHttp(STORE, base_url, headers, policy)
        self.snapshot_read_timeout = snapshot_read_timeout
        self.recovery_wait = snapshot_read_timeout if recovery_wait is None else recovery_wait
        self.poll_interval = poll_interval
        self.api = typed_client(self.http.base_url, api_key, self.http.policy.read_timeout)

    # Service and cluster

    def server_version(self) -> str:
        """The server's version ("1.19.0"); `/` needs no key on a real server."""
        return self._call("read version", "/", self.api.info).version

    def cluster_status(self) -> dict[str, Any]:
        """{"status": "disabled"} on a single node; with peers and this peer_id in a cluster."""
        status = self._call(
            "cluster status", "/cluster", self.api.http.distributed_api.cluster_status
        )
        return status.result.model_dump(mode="json")

    def collection_cluster_info(self, collection: str) -> dict[str, Any]:
        """shard_count, local_shards (shard_id, points_count, state), remote_shards (peer_id)."""
        info = self._call(
            "collection cluster info",
            _path(collection, "cluster"),
            lambda: self.api.http.distributed_api.collection_cluster_info(collection),
        )
        return info.result.model_dump(mode="json")

    # Collections and aliases

    def collection_exists(self, collection: str) -> bool:
        """True for a collection and for an alias of one (the server resolves aliases)."""
        return self._call(
            "collection exists",
            _path(collection, "exists"),
            lambda: self.api.collection_exists(collection),
        )

    def list_collections(self) -> list[str]:
        """The name of every collection on the server."""
        found = self._call("list collections", "/collections", self.api.get_collections)
        return [c.name for c in found.collections]

    def collection_info(self, collection: str) -> dict[str, Any]:
        info = self._call(
            "collection info", _path(collection), lambda: self.api.get_collection(collection)
        )
        return info.model_dump(mode="json")

    def count(self, collection: str, exact: bool = True) -> int:
        return self._call(
            "count",
            _path(collection, "points/count"),
            lambda: self.api.count(collection, exact=exact),
        ).count

    def aliases_for(self, collection: str) -> list[dict[str, str]]:
        """Aliases ({"alias_name", "collection_name"}) that point at this collection (an alias
        name given here has none: the server does not resolve it for this listing)."""
        found = self._call(
            "list aliases",
            _path(collection, "aliases"),
            lambda: self.api.get_collection_aliases(collection),
        )
        return [a.model_dump(mode="json") for a in found.aliases]

    def list_aliases(self) -> dict[str, str]:
        """Every alias of the server: alias name -> collection name."""
        found = self._call("list aliases", "/aliases", self.api.get_aliases)
        return {a.alias_name: a.collection_name for a in found.aliases}

    def upsert_alias(self, alias: str, collection: str) -> None:
        """Point alias at collection (Qdrant moves an existing alias in the same call)."""
        operation = models.CreateAliasOperation(
            create_alias=models.CreateAlias(collection_name=collection, alias_name=alias)
        )
        self._call(
            "update aliases",
            "/collections/aliases",
            lambda: self.api.update_collection_aliases([operation]),
        )

    def create_collection(
        self, collection: str, size: int, distance: str = "Cosine", **config: Any
    ) -> None:
        """Create a collection of one unnamed dense vector; config adds create_collection
        arguments of qdrant-client (shard_number, hnsw_config, ...)."""
        vectors = models.VectorParams(size=size, distance=models.Distance(distance))
        self._call(
            "create collection",
            _path(collection),
            lambda: self.api.create_collection(collection, vectors_config=vectors, **config),
            retry=False,  # a second create after a lost answer would be a 409
        )

    def delete_collection(self, collection: str) -> bool:
        return self._call(
            "delete collection",
            _path(collection),
            lambda: self.api.delete_collection(collection),
        )

    # Points

    def existing_ids(self, collection: str, ids: list) -> set:
        """Which of `ids` the collection holds (no payloads or vectors transferred)."""
        found = self._call(
            "retrieve points",
            _path(collection, "points"),
            lambda: self.api.retrieve(collection, ids, with_payload=False, with_vectors=False),
        )
        return {point.id for point in found}

    def upsert_points(self, collection: str, points: list[dict[str, Any]]) -> None:
        """Upsert points ({"id", "vector", "payload"}) and wait until they are applied."""
        structs = [models.PointStruct(**point) for point in points]
        self._call(
            "upsert points",
            _path(collection, "points"),
            lambda: self.api.upsert(collection, points=structs, wait=True),
        )

    def delete_points(self, collection: str, ids: list) -> None:
        """Delete the points with these ids (absent ones are no error) and wait until applied."""
        selector = models.PointIdsList(points=ids)
        self._call(
            "delete points",
            _path(collection, "points/delete"),
            lambda: self.api.delete(collection, points_selector=selector, wait=True),
        )

    def scroll(
        self,
        collection: str,
        page_size: int = 256,
        with_payload: bool = True,
        with_vector: bool = True,
        filter: dict[str, Any] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every point as {"id", "payload", "vector"}, page by page."""
        condition = models.Filter.model_validate(filter) if filter is not None else None
        offset = None
        sent: set = set()
        while True:
            page, offset = self._call(
                "scroll",
                _path(collection, "points/scroll"),
                lambda offset=offset: self.api.scroll(
                    collection,
                    scroll_filter=condition,
                    limit=page_size,
                    offset=offset,
                    with_payload=with_payload,
                    with_vectors=with_vector,
                ),
            )
            for record in page:
                yield {"id": record.id, "payload": record.payload, "vector": record.vector}
            if offset is None:
                return
            if offset in sent:  # paging in place, or in a cycle, would be read forever
                raise self._error(
                    "scroll",
                    _path(collection, "points/scroll"),
                    f"the scroll does not advance: the server sent the offset {offset!r} "
                    "it had sent before; check the server",
                    None,
                )
            sent.add(offset)

    def search(
        self, collection: str, vector: list[float], limit: int = 10, with_payload: bool = True
    ) -> list[dict[str, Any]]:
        """Nearest points to vector ({"id", "score", "payload"}), through the query API."""
        found = self._call(
            "search",
            _path(collection, "points/query"),
            lambda: self.api.query_points(
                collection, query=vector, limit=limit, with_payload=with_payload
            ),
        )
        return [{"id": p.id, "score": p.score, "payload": p.payload} for p in found.points]

    # Snapshots (hand-written: streamed files, and the server's answers kept exactly)

    def create_snapshot(self, collection: str) -> dict[str, Any]:
        """A new snapshot's description: name, size, checksum (SHA-256), creation_time."""
        return self._snapshot_call(
            "POST",
            _path(collection, "snapshots"),
            "create snapshot",
            params={"wait": "true"},
            read_timeout=self.snapshot_read_timeout,
            retry=False,
        )

    def list_snapshots(self, collection: str) -> list[dict[str, Any]]:
        return self._snapshot_call("GET", _path(collection, "snapshots"), "list snapshots")

    def delete_snapshot(self, collection: str, name: str) -> None:
        path = _path(collection, f"snapshots/{_quote(name)}")
        self._snapshot_call("DELETE", path, "delete snapshot", params={"wait": "true"})

    def stream_snapshot(
        self, collection: str, name: str, chunk_size: int = 1 << 20
    ) -> Iterator[bytes]:
        """The snapshot file in bytes chunks, uncompressed on the wire; a download that ends
        short of its Content-Length raises IndexStoreError."""
        path = _path(collection, f"snapshots/{_quote(name)}")
        response = self.http.request(
            "GET",
            path,
            "download snapshot",
            stream=True,
            headers={"Accept-Encoding": "identity"},
            accept_statuses=(200, *ACCESS_HINTS),
        )
        self._refuse_access_errors(response, "download snapshot", path)
        return self._counted_chunks(response, path, chunk_size)

    def recover_from_upload(
        self,
        collection: str,
        snapshot: str | os.PathLike[str] | IO[bytes],
        checksum: str | None = None,
        priority: str = "snapshot",
        *,
        upload_name: str | None = None,
        expected_points: int | None = None,
    ) -> str:
        """Upload a snapshot file (or binary stream) as multipart and recover `collection`.

        Returns the file name the server keeps the upload under in `collection`'s snapshots:
        delete it with delete_snapshot(collection, name) while the collection exists (after
        its deletion the API cannot reach it). `expected_points` (the snapshot's count) lets a
        recovery whose answer was lost be recognised as finished.
        """
        name = upload_name or unique_upload_name()
        params = {"wait": "true", "priority": priority}
        if checksum:
            params["checksum"] = checksum
        upload = MultipartUpload(snapshot, file_name=name)
        self._recover(
            "POST",
            _path(collection, "snapshots/upload"),
            "recover from upload",
            lambda: {
                "params": params,
                "headers": {"Content-Type": upload.content_type},
                "data": upload.body(),
            },
            RecoveryTarget(collection, expected_points),
            resendable=upload.resendable,
        )
        return name

    def recover_from_location(
        self,
        collection: str,
        location: str,
        checksum: str | None = None,
        priority: str = "snapshot",
        *,
        expected_points: int | None = None,
    ) -> None:
        """Recover from a snapshot the server fetches itself (a URL or a file:// path in its
        snapshots folder); never resent once sent, like an upload."""
        body: dict[str, Any] = {"location": location, "priority": priority}
        if checksum:
            body["checksum"] = checksum
        self._recover(
            "PUT",
            _path(collection, "snapshots/recover"),
            "recover from location",
            lambda: {"params": {"wait": "true"}, "json": body},
            RecoveryTarget(collection, expected_points),
            resendable=True,
        )

    def close(self) -> None:
        self.api.close()
        self.http.close()

    def __enter__(self) -> QdrantHttp:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # The typed client's calls: retried when transient, errors in our words

    def _call(self, operation: str, path: str, call: Callable[[], T], retry: bool = True) -> T:
        attempts = self.http.policy.attempts if retry else 1
        started = time.monotonic()
        for attempt in range(1, attempts + 1):
            try:
                return call()
            except UnexpectedResponse as error:
                status, reason = error.status_code, describe_unexpected(error)
                last = attempt == attempts or not self.http.may_retry(started)
                if status not in RETRYABLE_STATUSES or last:
                    raise self._error(operation, path, reason, status, attempt, started) from None
            except ResourceExhaustedResponse as error:
                status, reason = 429, f"HTTP 429 rate limited: {error}"
                if attempt == attempts or not self.http.may_retry(started):
                    raise self._error(operation, path, reason, status, attempt, started) from None
            except ResponseHandlingException as error:
                status, reason = None, f"{type(error.source).__name__}: {error.source}"
                if isinstance(error.source, httpx.TimeoutException):
                    reason = self.http.no_answer()  # names the wait (a hung server)
                last = attempt == attempts or not self.http.may_retry(started)
                if not is_transport_failure(error.source) or last:
                    raise self._error(operation, path, reason, status, attempt, started) from None
            self._pause(attempt, operation, path, reason)
        raise AssertionError("unreachable")

    def _error(
        self,
        operation: str,
        path: str,
        reason: str,
        status: int | None,
        attempts: int = 1,
        started: float | None = None,
    ) -> IndexStoreError:
        if status in ACCESS_HINTS:
            reason = f"{reason} — {ACCESS_HINTS[status]}"
        waited = None if started is None else time.monotonic() - started
        return self.http.error(operation, path, reason, status, attempts, waited)

    def _pause(self, attempt: int, operation: str, path: str, reason: str) -> None:
        delay = self.http.policy.delay_before(attempt)
        log.warning(
            "Qdrant %s (%s) failed (%s); retry %d/%d in %.2f s",
            operation,
            path,
            self.http.redact(reason),
            attempt,
            self.http.policy.attempts - 1,
            delay,
        )
        time.sleep(delay)

    # Hand-written calls

    def _snapshot_call(self, method: str, path: str, operation: str, **kwargs: Any) -> Any:
        """The `result` of a JSON answer; 401/403 explained like the typed client's."""
        response = self.http.request(
            method, path, operation, accept_statuses=(200, *ACCESS_HINTS), **kwargs
        )
        self._refuse_access_errors(response, operation, path)
        try:
            return response.json().get("result")
        except ValueError as error:
            raise self.http.error(operation, path, f"response is not JSON: {error}") from error

    def _refuse_access_errors(self, response: requests.Response, operation: str, path: str):
        if response.status_code in ACCESS_HINTS:
            reason = describe_response(response)
            response.close()
            raise self._error(operation, path, reason, response.status_code)

    def _counted_chunks(
        self, response: requests.Response, path: str, chunk_size: int
    ) -> Iterator[bytes]:
        # The length only means the file's length when the body is not re-encoded.
        encoded = response.headers.get("Content-Encoding", "identity").lower() != "identity"
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() and not encoded else None
        if expected is not None and hasattr(response.raw, "enforce_content_length"):
            # Counted here instead, so the error can say how much arrived.
            response.raw.enforce_content_length = False
        of_expected = f" of {expected}" if expected is not None else ""
        received = 0
        try:
            for chunk in response.iter_content(chunk_size=chunk_size):
                received += len(chunk)
                yield chunk
            if expected is not None and received != expected:
                reason = f"cut off after {received}{of_expected} bytes (its Content-Length)"
                raise self.http.error("download snapshot", path, reason)
        except (requests.RequestException, OSError) as error:
            cause = self.http.stall_reason(response, error) or f"{type(error).__name__}: {error}"
            reason = f"cut off after {received}{of_expected} bytes: {cause}"
            raise self.http.error("download snapshot", path, reason) from error
        finally:
            response.close()

    def _recover(
        self,
        method: str,
        path: str,
        operation: str,
        request: Callable[[], dict[str, Any]],
        target: RecoveryTarget,
        resendable: bool,
    ) -> None:
        """Send a recovery once. Only a connection that could not be opened is tried again;
        a lost answer (timeout, dropped connection, 502/503/504) is settled by watching the
        target; any other error status fails at once."""
        policy = self.http.policy
        for attempt in range(1, policy.attempts + 1):
            try:
                response = self._send_once(method, path, request())
            except requests.RequestException as error:
                reason = f"{type(error).__name__}: {self.http.redact(str(error))}"
                if not nothing_was_sent(error):
                    self._settle(operation, path, target, reason)
                    return
                if not resendable or attempt == policy.attempts:
                    raise self.http.error(operation, path, reason, attempts=attempt) from error
                self._pause(attempt, operation, path, reason)
                continue
            with response:
                self._conclude(operation, path, target, response)
            return

    def _send_once(self, method: str, path: str, request: dict[str, Any]) -> requests.Response:
        # A fresh connection: a pooled one the server closed meanwhile would fail after the
        # request went out, which could not be told from a lost answer.
        with requests.Session() as session:
            session.headers.update(self.http.session.headers)
            timeout = (self.http.policy.connect_timeout, self.snapshot_read_timeout)
            return session.request(method, self.http.base_url + path, timeout=timeout, **request)

    def _conclude(
        self, operation: str, path: str, target: RecoveryTarget, response: requests.Response
    ) -> None:
        status = response.status_code
        if status in UNSETTLED_STATUSES:
            self._settle(operation, path, target, describe_response(response))
            return
        if status != 200:
            raise self._error(operation, path, describe_response(response), status)
        try:
            result = response.json().get("result")
        except ValueError as error:
            raise self.http.error(operation, path, f"response is not JSON: {error}") from error
        if result is not True:
            raise self.http.error(operation, path, f"Qdrant answered result={result!r}")

    def _settle(self, operation: str, path: str, target: RecoveryTarget, reason: str) -> None:
        """The request went out but its answer was lost: the server may still be recovering.
        Watch the collection (never resend) until it holds the snapshot's points with every
        local shard active, or until recovery_wait has passed. (A collection that already held
        exactly that before the recovery started counts as done: the end state is the same,
        and the restore's own verification follows.)"""
        log.warning(
            "Qdrant %s (%s): %s; the snapshot is NOT sent again (the server goes on recovering "
            "without us); watching %s for up to %.0f s",
            operation,
            path,
            reason,
            target.collection,
            self.recovery_wait,
        )
        deadline = time.monotonic() + self.recovery_wait
        while True:
            seen = self._look_at(target)
            if seen.finished:
                log.warning("Qdrant %s of %s finished: %s", operation, target.collection, seen)
                return
            if time.monotonic() >= deadline:
                raise self.http.error(
                    operation,
                    path,
                    f"{reason}; the answer was lost, and after {self.recovery_wait:.0f} s "
                    f"{target.collection} {seen}. The snapshot was not sent again (that would "
                    "start a second recovery): check the server's log, then run the restore "
                    "again",
                )
            time.sleep(self.poll_interval)

    def _look_at(self, target: RecoveryTarget) -> RecoveryState:
        """One look at the target; a failing look is only "not known yet"."""
        try:
            if not self.api.collection_exists(target.collection):
                return RecoveryState("does not exist")
            info = self.api.http.distributed_api.collection_cluster_info(target.collection)
            states = sorted({str(shard.state) for shard in info.result.local_shards})
            points = self.api.count(target.collection, exact=True).count
        except Exception as error:  # any failure here just means: look again
            return RecoveryState(f"could not be read ({type(error).__name__})")
        return RecoveryState(
            f"holds {points} points (the snapshot: {target.points}), local shards {states}",
            finished=states == ["Active"] and target.points in (None, points),
        )


@dataclass(frozen=True)
class RecoveryTarget:
    collection: str
    points: int | None  # what the snapshot holds, when known


@dataclass(frozen=True)
class RecoveryState:
    description: str
    finished: bool = False

    def __str__(self) -> str:
        return self.description


def typed_client(base_url: str, api_key: str | None, timeout: float) -> QdrantClient:
    """qdrant-client for the same server: the URL's own port (the library would otherwise
    put 6333 on a URL without one) and no version probe at construction."""
    parts = urlsplit(base_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    with warnings.catch_warnings():
        # It warns about a key over plain http: loopback and private networks use that.
        warnings.simplefilter("ignore")
        return QdrantClient(
            url=base_url,
            port=port,
            api_key=api_key,
            timeout=math.ceil(timeout),
            check_compatibility=False,
        )


def unique_upload_name() -> str:
    """A file name no other upload uses (the server replaces a file of the same name)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{UPLOAD_PREFIX}{stamp}-{secrets.token_hex(6)}.snapshot"


def nothing_was_sent(error: requests.RequestException) -> bool:
    """The connection could not be opened (refused, unknown host, connect timeout)."""
    if isinstance(error, requests.ConnectTimeout):
        return True
    cause = error.args[0] if error.args else None
    cause = getattr(cause, "reason", cause)  # urllib3's MaxRetryError wraps the reason
    return isinstance(cause, urllib3.exceptions.NewConnectionError)


def is_transport_failure(error: BaseException) -> bool:
    return isinstance(error, httpx.TransportError)


def describe_unexpected(error: UnexpectedResponse) -> str:
    head = error.content[:MAX_DETAIL_CHARS].decode("utf-8", errors="replace")
    return f"HTTP {error.status_code} {error.reason_phrase}: {server_message(head)}".strip()


def describe_response(response: requests.Response) -> str:
    head = next(response.iter_content(MAX_DETAIL_CHARS), b"")
    text = head.decode("utf-8", errors="replace") if isinstance(head, bytes) else str(head)
    return f"HTTP {response.status_code} {response.reason or ''}: {server_message(text)}".strip()


def server_message(body: str) -> str:
    """The error of the server's JSON envelope, or the body itself (plain-text 401s, proxies)."""
    try:
        document = json.loads(body)
    except ValueError:
        return body.strip()
    status = document.get("status") if isinstance(document, dict) else None
    if isinstance(status, dict) and isinstance(status.get("error"), str):
        return status["error"]
    return body.strip()


class MultipartUpload:
    """A multipart/form-data body with one file field, `snapshot`, produced piece by piece.

    A path or a seekable stream is sent with its length (some servers and proxies refuse
    chunked uploads) and can be produced again for a connection that never opened; any other
    stream goes chunked, once. `file_name` is the name the server stores the file under.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | IO[bytes],
        field: str = "snapshot",
        file_name: str | None = None,
    ):
        self.source = source
        self.boundary = uuid.uuid4().hex
        filename = file_name or unique_upload_name()
        self.head = (
            f"--{self.boundary}\r\n"
            f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        self.tail = f"\r\n--{self.boundary}--\r\n".encode()
        self._start = _stream_start(source)
        self._stream_used = False

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    @property
    def resendable(self) -> bool:
        return _is_path(self.source) or self._start is not None

    def body(self) -> Any:
        """A fresh body for one attempt."""
        if _is_path(self.source):
            return self._sized(os.path.getsize(self.source), self._file_pieces)
        if self._start is not None:
            stream_size = self.source.seek(0, os.SEEK_END) - self._start
            return self._sized(stream_size, self._rewound_stream_pieces)
        if self._stream_used:
            raise RuntimeError("a snapshot stream that cannot seek can be uploaded once only")
        self._stream_used = True
        return self._stream_pieces(self.source)

    def _sized(self, file_size: int, pieces: Callable[[], Iterator[bytes]]) -> _SizedBody:
        return _SizedBody(pieces, len(self.head) + file_size + len(self.tail))

    def _file_pieces(self) -> Iterator[bytes]:
        # Opened here, not earlier, so an attempt that never sends leaves no file open.
        with open(self.source, "rb") as file:
            yield from self._stream_pieces(file)

    def _rewound_stream_pieces(self) -> Iterator[bytes]:
        self.source.seek(self._start)
        yield from self._stream_pieces(self.source)

    def _stream_pieces(self, file: IO[bytes]) -> Iterator[bytes]:
        yield self.head
        while piece := file.read(UPLOAD_PIECE):
            yield piece
        yield self.tail


def _stream_start(source: object) -> int | None:
    """Where a seekable stream stands now; None for paths and streams that cannot seek."""
    if _is_path(source) or not getattr(source, "seekable", lambda: False)():
        return None
    return source.tell()


class _SizedBody:
    """An iterable with a length: requests then sends Content-Length instead of chunking."""

    def __init__(self, pieces: Callable[[], Iterator[bytes]], size: int) -> None:
        self._pieces = pieces
        self._size = size

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[bytes]:
        return self._pieces()


def _is_path(source: object) -> bool:
    return isinstance(source, str | os.PathLike)


def _quote(name: str) -> str:
    return quote(str(name), safe="")


def _path(collection: str, rest: str = "") -> str:
    path = f"/collections/{_quote(collection)}"
    return f"{path}/{rest}" if rest else path
