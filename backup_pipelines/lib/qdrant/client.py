"""The Qdrant REST calls a backup and a restore need, over plain requests.

Not the official client: snapshots are downloaded and uploaded as streams here, so a snapshot
of any size passes through with constant memory.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from backup_pipelines.lib.http import RetryPolicy, StoreHttp

STORE = "Qdrant"
API_KEY_HEADER = "api-key"
# Creating, or recovering from, a large snapshot takes minutes; wait=true holds the request.
SNAPSHOT_READ_TIMEOUT = 3600.0
UPLOAD_PIECE = 1 << 20


class QdrantHttp:
    """Qdrant over plain requests; the optional API key goes in the `api-key` header only."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        policy: RetryPolicy | None = None,
        snapshot_read_timeout: float = SNAPSHOT_READ_TIMEOUT,
    ) -> None:
        headers = {API_KEY_HEADER: api_key} if api_key else {}
        self.http = StoreHttp(STORE, base_url, headers, policy)
        self.snapshot_read_timeout = snapshot_read_timeout

    # Collections

    def server_version(self) -> str:
        return str(self.http.json("GET", "/", "read version").get("version", "unknown"))

    def collection_exists(self, collection: str) -> bool:
        return bool(self._result("GET", _path(collection, "exists"), "collection exists")["exists"])

    def collection_info(self, collection: str) -> dict[str, Any]:
        return self._result("GET", _path(collection), "collection info")

    def count(self, collection: str, exact: bool = True) -> int:
        path = _path(collection, "points/count")
        return int(self._result("POST", path, "count", json={"exact": exact})["count"])

    def aliases_for(self, collection: str) -> list[dict[str, str]]:
        """Aliases ({"alias_name", "collection_name"}) that point at this collection."""
        return self._result("GET", _path(collection, "aliases"), "list aliases")["aliases"]

    def upsert_alias(self, alias: str, collection: str) -> None:
        """Point alias at collection (Qdrant moves an existing alias in the same call)."""
        actions = [{"create_alias": {"collection_name": collection, "alias_name": alias}}]
        self._result("POST", "/collections/aliases", "update aliases", json={"actions": actions})

    def create_collection(
        self, collection: str, size: int, distance: str = "Cosine", **config: Any
    ) -> None:
        """Create a collection of one unnamed dense vector; config adds CreateCollection keys."""
        body = {"vectors": {"size": size, "distance": distance}, **config}
        self._result("PUT", _path(collection), "create collection", json=body, retry=False)

    def delete_collection(self, collection: str) -> None:
        self._result("DELETE", _path(collection), "delete collection")

    # Snapshots

    def create_snapshot(self, collection: str) -> dict[str, Any]:
        """A new snapshot's description: name, size, checksum (SHA-256), creation_time."""
        return self._result(
            "POST",
            _path(collection, "snapshots"),
            "create snapshot",
            params={"wait": "true"},
            read_timeout=self.snapshot_read_timeout,
            retry=False,
        )

    def list_snapshots(self, collection: str) -> list[dict[str, Any]]:
        return self._result("GET", _path(collection, "snapshots"), "list snapshots")

    def stream_snapshot(
        self, collection: str, name: str, chunk_size: int = 1 << 20
    ) -> Iterator[bytes]:
        """The snapshot file in bytes chunks; a broken download raises IndexStoreError."""
        path = _path(collection, f"snapshots/{_quote(name)}")
        response = self.http.request("GET", path, "download snapshot", stream=True)
        return self.http.stream_chunks(response, "download snapshot", path, chunk_size)

    def delete_snapshot(self, collection: str, name: str) -> None:
        path = _path(collection, f"snapshots/{_quote(name)}")
        self._result("DELETE", path, "delete snapshot", params={"wait": "true"})

    def recover_from_upload(
        self,
        collection: str,
        snapshot: str | os.PathLike[str] | IO[bytes],
        checksum: str | None = None,
        priority: str = "snapshot",
    ) -> None:
        """Upload a snapshot file (or binary stream) as multipart and recover the collection.

        The body is streamed: a path is sent with its length (and resent on a transient
        failure); a stream goes chunked, once.
        """
        params = {"wait": "true", "priority": priority}
        if checksum:
            params["checksum"] = checksum
        upload = MultipartUpload(snapshot)
        self._result(
            "POST",
            _path(collection, "snapshots/upload"),
            "recover from upload",
            params=params,
            headers={"Content-Type": upload.content_type},
            body_factory=upload.body,
            retry=upload.resendable,
            read_timeout=self.snapshot_read_timeout,
            expect_true=True,
        )

    def recover_from_location(
        self,
        collection: str,
        location: str,
        checksum: str | None = None,
        priority: str = "snapshot",
    ) -> None:
        """Recover from a snapshot the server fetches itself (a URL or file:// path)."""
        body: dict[str, Any] = {"location": location, "priority": priority}
        if checksum:
            body["checksum"] = checksum
        self._result(
            "PUT",
            _path(collection, "snapshots/recover"),
            "recover from location",
            params={"wait": "true"},
            json=body,
            read_timeout=self.snapshot_read_timeout,
            expect_true=True,
        )

    # Points

    def existing_ids(self, collection: str, ids: list) -> set:
        """Which of `ids` the collection holds (no payloads or vectors transferred)."""
        found = self._result(
            "POST",
            _path(collection, "points"),
            "retrieve points",
            json={"ids": ids, "with_payload": False, "with_vector": False},
        )
        return {point["id"] for point in found}

    def upsert_points(self, collection: str, points: list[dict[str, Any]]) -> None:
        """Upsert points ({"id", "vector", "payload"}) and wait until they are applied."""
        path = _path(collection, "points")
        self._result("PUT", path, "upsert points", params={"wait": "true"}, json={"points": points})

    def scroll(
        self,
        collection: str,
        page_size: int = 256,
        with_payload: bool = True,
        with_vector: bool = True,
        filter: dict[str, Any] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every point (id, payload, vector), page by page."""
        path = _path(collection, "points/scroll")
        body: dict[str, Any] = {
            "limit": page_size,
            "with_payload": with_payload,
            "with_vector": with_vector,
        }
        if filter is not None:
            body["filter"] = filter
        while True:
            page = self._result("POST", path, "scroll", json=body)
            yield from page["points"]
            if page.get("next_page_offset") is None:
                return
            body["offset"] = page["next_page_offset"]

    def search(
        self, collection: str, vector: list[float], limit: int = 10, with_payload: bool = True
    ) -> list[dict[str, Any]]:
        """Nearest points to vector (POST /points/query, which replaced /points/search)."""
        body = {"query": vector, "limit": limit, "with_payload": with_payload}
        return self._result("POST", _path(collection, "points/query"), "search", json=body)[
            "points"
        ]

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> QdrantHttp:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _result(
        self, method: str, path: str, operation: str, expect_true: bool = False, **kwargs: Any
    ) -> Any:
        """The `result` of Qdrant's {"result", "status", "time"} envelope."""
        result = self.http.json(method, path, operation, **kwargs).get("result")
        if expect_true and result is not True:
            raise self.http.error(operation, path, f"Qdrant answered result={result!r}")
        return result


class MultipartUpload:
    """A multipart/form-data body with one file field, `snapshot`, produced piece by piece.

    A path or a seekable stream is sent with its length (some servers and proxies refuse
    chunked uploads) and can be resent after a transient failure; any other stream goes
    chunked, once.
    """

    def __init__(self, source: str | os.PathLike[str] | IO[bytes], field: str = "snapshot"):
        self.source = source
        self.boundary = uuid.uuid4().hex
        filename = Path(source).name if _is_path(source) else "upload.snapshot"
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
