"""The REST surface: routes, the request handler, the threaded HTTP server."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
import urllib.parse
import zlib
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import qdrant_edge as edge

from backup_pipelines.devstack.qdrant.auth import ApiKeys, PlainTextError, check_allowed
from backup_pipelines.devstack.qdrant.models import (
    COLLECTION_NAME,
    COPY_CHUNK,
    STANDIN_SUFFIX,
    UPDATE_MODES,
    ApiError,
    bad_request,
    collection_config_from_request,
    filter_from_json,
    not_found,
    point_id_from_json,
    point_id_to_json,
    record_to_json,
    scored_point_to_json,
    with_payload_from_json,
    with_vector_from_json,
    wrong_input,
)
from backup_pipelines.devstack.qdrant.recovery import (
    check_priority,
    recover_collection,
    recover_from_location,
)
from backup_pipelines.devstack.qdrant.storage import Collection, StandinState
from backup_pipelines.devstack.qdrant.uploads import (
    BodyReader,
    multipart_boundary,
    save_multipart_file,
)
from backup_pipelines.lib.qdrant.offline import sha256_of_file

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# HTTP layer
# ---------------------------------------------------------------------------------------------


PLAIN_TEXT = "text/plain; charset=utf-8"


class RawResponse:
    def __init__(
        self, status: int, content_type: str, body: bytes | None = None, file: Path | None = None
    ):
        self.status, self.content_type, self.body, self.file = status, content_type, body, file


def json_response(status: int, document: dict) -> RawResponse:
    return RawResponse(status, "application/json", json.dumps(document).encode())


def error_response(status: int, message: str, started: float) -> RawResponse:
    """The server's error envelope: {"status": {"error": ...}, "time": ...}."""
    return json_response(status, {"status": {"error": message}, "time": time.monotonic() - started})


Route = tuple[str, re.Pattern, str]
ROUTES: list[Route] = [
    (method, re.compile(f"^{pattern}$"), handler)
    for method, pattern, handler in [
        ("GET", r"/", "root"),
        ("GET", r"/healthz", "healthz"),
        ("GET", r"/livez", "healthz"),
        ("GET", r"/readyz", "readyz"),
        ("GET", r"/cluster", "cluster_status"),
        ("GET", r"/collections", "list_collections"),
        ("GET", r"/aliases", "list_aliases"),
        ("POST", r"/collections/aliases", "change_aliases"),
        ("GET", r"/collections/(?P<c>[^/]+)", "get_collection"),
        ("PUT", r"/collections/(?P<c>[^/]+)", "create_collection"),
        ("DELETE", r"/collections/(?P<c>[^/]+)", "delete_collection"),
        ("GET", r"/collections/(?P<c>[^/]+)/exists", "collection_exists"),
        ("GET", r"/collections/(?P<c>[^/]+)/aliases", "collection_aliases"),
        ("GET", r"/collections/(?P<c>[^/]+)/cluster", "collection_cluster_info"),
        ("PUT", r"/collections/(?P<c>[^/]+)/points", "upsert_points"),
        ("POST", r"/collections/(?P<c>[^/]+)/points", "retrieve_points"),
        ("GET", r"/collections/(?P<c>[^/]+)/points/(?P<id>[^/]+)", "get_point"),
        ("POST", r"/collections/(?P<c>[^/]+)/points/delete", "delete_points"),
        ("POST", r"/collections/(?P<c>[^/]+)/points/count", "count_points"),
        ("POST", r"/collections/(?P<c>[^/]+)/points/scroll", "scroll_points"),
        ("POST", r"/collections/(?P<c>[^/]+)/points/query", "query_points"),
        ("POST", r"/collections/(?P<c>[^/]+)/points/search", "search_points"),
        ("GET", r"/collections/(?P<c>[^/]+)/snapshots", "list_snapshots"),
        ("POST", r"/collections/(?P<c>[^/]+)/snapshots", "create_snapshot"),
        ("PUT", r"/collections/(?P<c>[^/]+)/snapshots/recover", "recover_snapshot"),
        ("POST", r"/collections/(?P<c>[^/]+)/snapshots/upload", "upload_snapshot"),
        ("GET", r"/collections/(?P<c>[^/]+)/snapshots/(?P<s>[^/]+)", "download_snapshot"),
        ("DELETE", r"/collections/(?P<c>[^/]+)/snapshots/(?P<s>[^/]+)", "delete_snapshot"),
    ]
]


def match_route(method: str, path: str) -> tuple[str, dict[str, str]]:
    path_known = False
    for route_method, pattern, handler in ROUTES:
        matched = pattern.match(path)
        if matched:
            path_known = True
            if route_method == method:
                return handler, {k: urllib.parse.unquote(v) for k, v in matched.groupdict().items()}
    if path_known:
        raise ApiError(HTTPStatus.METHOD_NOT_ALLOWED, f"Method {method} is not allowed on {path}")
    raise ApiError(HTTPStatus.NOT_FOUND, f"Not found: no route for {path}")


class StandinHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "qdrant-standin"
    server: StandinHTTPServer

    # -- plumbing ---------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    @property
    def state(self) -> StandinState:
        return self.server.state

    def _dispatch(self, method: str) -> None:
        started = time.monotonic()
        self.body = BodyReader(self.rfile, int(self.headers.get("Content-Length") or 0))
        response = self._answer(method, started)
        try:
            self._send_raw(response)
        except ConnectionError:  # the client went away: nothing left to tell it
            self.close_connection = True

    def _answer(self, method: str, started: float) -> RawResponse:
        try:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                raise ApiError(HTTPStatus.LENGTH_REQUIRED, "the stand-in needs a Content-Length")
            parsed = urllib.parse.urlsplit(self.path)
            # The auth middleware runs first, before routing, as on the real server.
            access = self.server.keys.access(parsed.path, self.headers)
            handler, params = match_route(method, parsed.path)
            check_allowed(access, handler)
            self.query = dict(urllib.parse.parse_qsl(parsed.query))
            result = getattr(self, f"handle_{handler}")(**params)
            if isinstance(result, RawResponse):
                return result
            document = {"result": result, "status": "ok", "time": time.monotonic() - started}
            return json_response(HTTPStatus.OK, document)
        except PlainTextError as error:
            return RawResponse(error.status, PLAIN_TEXT, error.text.encode())
        except ApiError as error:
            return error_response(error.status, error.message, started)
        except Exception as error:
            log.exception("stand-in request failed: %s %s", method, self.path)
            message = f"Service internal error: {error}"
            return error_response(HTTPStatus.INTERNAL_SERVER_ERROR, message, started)

    def _finish_body(self) -> None:
        # With keep-alive the unread rest of a request would be taken for the next request.
        if self.body.remaining > COPY_CHUNK * 8:
            self.close_connection = True
        else:
            self.body.drain()

    def _send_raw(self, response: RawResponse) -> None:
        self._finish_body()
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        if self.close_connection:
            self.send_header("Connection", "close")
        if response.file is None:
            self.send_header("Content-Length", str(len(response.body or b"")))
            self.end_headers()
            self.wfile.write(response.body or b"")
            return
        with response.file.open("rb") as source:  # opened first: a concurrent delete is harmless
            self.send_header("Content-Disposition", f'attachment; filename="{response.file.name}"')
            if accepts_gzip(self.headers.get("Accept-Encoding")):
                self.state.downloads.append("gzip")
                self._send_gzipped(source)
                return
            self.state.downloads.append("identity")
            self.send_header("Content-Length", str(os.fstat(source.fileno()).st_size))
            self.end_headers()
            shutil.copyfileobj(source, self.wfile, COPY_CHUNK)

    def _send_gzipped(self, source: Any) -> None:
        """What actix's Compress middleware does to a file response for a client that accepts
        gzip: compressed on the fly, sent chunked, so without a Content-Length."""
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        compressor = zlib.compressobj(wbits=zlib.MAX_WBITS | 16)  # gzip framing
        while chunk := source.read(COPY_CHUNK):
            self._write_chunk(compressor.compress(chunk))
        self._write_chunk(compressor.flush())
        self.wfile.write(b"0\r\n\r\n")

    def _write_chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def json_body(self) -> dict:
        raw = self.body.read(self.body.remaining) if self.body.remaining else b""
        if not raw:
            return {}
        try:
            document = json.loads(raw)
        except ValueError as error:
            raise bad_request(f"Json deserialize error: {error}") from error
        if not isinstance(document, dict):
            raise bad_request("Json deserialize error: expected an object")
        return document

    # -- service ----------------------------------------------------------------------------

    def handle_root(self) -> RawResponse:
        info = {
            "title": "qdrant - vector search engine",
            "version": f"{self.state.version}{STANDIN_SUFFIX}",
            "commit": None,
        }
        return RawResponse(HTTPStatus.OK, "application/json", json.dumps(info).encode())

    def handle_healthz(self) -> RawResponse:
        return RawResponse(HTTPStatus.OK, "text/plain", b"healthz check passed")

    def handle_readyz(self) -> RawResponse:
        return RawResponse(HTTPStatus.OK, "text/plain", b"all shards are ready")

    def handle_cluster_status(self) -> dict:
        return self.state.cluster_status()

    def handle_collection_cluster_info(self, c: str) -> dict:
        return self.state.collection_cluster_info(c)

    # -- collections and aliases ------------------------------------------------------------

    def handle_list_collections(self) -> dict:
        return {"collections": [{"name": name} for name in self.state.collection_names()]}

    def handle_get_collection(self, c: str) -> dict:
        return self.state.resolve(c).info()

    def handle_create_collection(self, c: str) -> bool:
        self.state.create_collection(c, collection_config_from_request(self.json_body()))
        return True

    def handle_delete_collection(self, c: str) -> bool:
        return self.state.delete_collection(c)

    def handle_collection_exists(self, c: str) -> dict:
        return {"exists": self.state.real_name(c) is not None}

    def handle_collection_aliases(self, c: str) -> dict:
        return {"aliases": self.state.alias_descriptions(c)}

    def handle_list_aliases(self) -> dict:
        return {"aliases": self.state.alias_descriptions()}

    def handle_change_aliases(self) -> bool:
        actions = self.json_body().get("actions")
        if not isinstance(actions, list):
            raise wrong_input("`actions` must be a list")
        self.state.change_aliases(actions)
        return True

    # -- points -----------------------------------------------------------------------------

    def handle_upsert_points(self, c: str) -> dict:
        collection = self.state.resolve(c)
        body = self.json_body()
        points = points_from_request(body)
        for point in points:
            collection.check_vectors(point["vector"])
        edge_points = [
            edge.Point(point_id_from_json(p["id"]), p["vector"], p.get("payload") or {})
            for p in points
        ]
        mode = body.get("update_mode")
        if mode is not None and mode not in UPDATE_MODES:
            raise wrong_input(f"unknown update_mode {mode!r}")
        operation = edge.UpdateOperation.upsert_points(
            edge_points,
            condition=filter_from_json(body.get("update_filter")),
            update_mode=UPDATE_MODES.get(mode) if mode else None,
        )
        return collection.apply(operation)

    def handle_delete_points(self, c: str) -> dict:
        collection = self.state.resolve(c)
        body = self.json_body()
        if "points" in body:
            ids = [point_id_from_json(i) for i in body["points"]]
            return collection.apply(edge.UpdateOperation.delete_points(ids))
        if "filter" in body:
            return collection.apply(
                edge.UpdateOperation.delete_points_by_filter(filter_from_json(body["filter"]))
            )
        raise wrong_input("give `points` or `filter`")

    def handle_retrieve_points(self, c: str) -> list[dict]:
        body = self.json_body()
        ids = [point_id_from_json(i) for i in body.get("ids") or []]
        with_payload = with_payload_from_json(body.get("with_payload"), default=True)
        with_vector = with_vector_from_json(body.get("with_vector"), default=False)
        records = self.state.resolve(c).read(
            lambda shard: shard.retrieve(ids, with_payload, with_vector)
        )
        return [record_to_json(record) for record in records]

    def handle_get_point(self, c: str, id: str) -> dict:
        point_id = point_id_from_json(int(id) if id.isdigit() else id)
        records = self.state.resolve(c).read(lambda shard: shard.retrieve([point_id], True, True))
        if not records:
            raise not_found(f"No point with id {id} found")
        return record_to_json(records[0])

    def handle_count_points(self, c: str) -> dict:
        body = self.json_body()
        request = edge.CountRequest(
            exact=body.get("exact", True), filter=filter_from_json(body.get("filter"))
        )
        return {"count": self.state.resolve(c).read(lambda shard: shard.count(request))}

    def handle_scroll_points(self, c: str) -> dict:
        body = self.json_body()
        offset = body.get("offset")
        request = edge.ScrollRequest(
            offset=point_id_from_json(offset) if offset is not None else None,
            limit=body.get("limit") or 10,
            filter=filter_from_json(body.get("filter")),
            with_payload=with_payload_from_json(body.get("with_payload"), default=True),
            with_vector=with_vector_from_json(body.get("with_vector"), default=False),
        )
        records, next_offset = self.state.resolve(c).read(lambda shard: shard.scroll(request))
        return {
            "points": [record_to_json(record) for record in records],
            "next_page_offset": point_id_to_json(next_offset) if next_offset is not None else None,
        }

    def handle_query_points(self, c: str) -> dict:
        collection = self.state.resolve(c)
        body = self.json_body()
        if body.get("prefetch"):
            raise wrong_input("the stand-in does not support prefetch")
        using = body.get("using")
        vector = self._query_vector(collection, body.get("query"), using)
        request = edge.QueryRequest(
            limit=body.get("limit") or 10,
            offset=body.get("offset"),
            query=edge.Query.Nearest(vector, using=using) if vector is not None else None,
            filter=filter_from_json(body.get("filter")),
            with_payload=with_payload_from_json(body.get("with_payload"), default=False),
            with_vector=with_vector_from_json(body.get("with_vector"), default=False),
            score_threshold=body.get("score_threshold"),
        )
        points = collection.read(lambda shard: shard.query(request))
        return {"points": [scored_point_to_json(point) for point in points]}

    def _query_vector(self, collection: Collection, query: Any, using: str | None) -> Any:
        if isinstance(query, dict) and "nearest" in query:
            query = query["nearest"]
        if query is None or isinstance(query, list):
            return query
        if isinstance(query, int | str):  # the vector of an existing point
            point_id = point_id_from_json(query)
            records = collection.read(lambda shard: shard.retrieve([point_id], False, True))
            if not records:
                raise not_found(f"No point with id {query} found")
            vector = records[0].vector
            return vector[using or ""] if isinstance(vector, dict) else vector
        raise wrong_input(f"the stand-in only supports nearest queries, got {query!r}")

    def handle_search_points(self, c: str) -> list[dict]:
        """The pre-1.10 search endpoint (gone from the current API), kept for older clients."""
        collection = self.state.resolve(c)
        body = self.json_body()
        vector, using = body.get("vector"), None
        if isinstance(vector, dict):
            vector, using = vector.get("vector"), vector.get("name")
        request = edge.SearchRequest(
            query=edge.Query.Nearest(vector, using=using),
            limit=body.get("limit") or body.get("top") or 10,
            offset=body.get("offset"),
            filter=filter_from_json(body.get("filter")),
            with_payload=with_payload_from_json(body.get("with_payload"), default=False),
            with_vector=with_vector_from_json(body.get("with_vector"), default=False),
            score_threshold=body.get("score_threshold"),
        )
        return [
            scored_point_to_json(point)
            for point in collection.read(lambda shard: shard.search(request))
        ]

    # -- snapshots --------------------------------------------------------------------------

    def handle_list_snapshots(self, c: str) -> list[dict]:
        return self.state.snapshots.list(self.state.resolve(c).name)

    def handle_create_snapshot(self, c: str) -> dict:
        state = self.state
        return state.snapshots.create(
            state.resolve(c), state.peer_id, state.work_dir, state.version
        )

    def handle_download_snapshot(self, c: str, s: str) -> RawResponse:
        path = self.state.snapshots.path(self.state.resolve(c).name, s)
        return RawResponse(HTTPStatus.OK, "application/octet-stream", file=path)

    def handle_delete_snapshot(self, c: str, s: str) -> bool:
        self.state.snapshots.delete(self.state.resolve(c).name, s)
        return True

    def handle_recover_snapshot(self, c: str) -> bool:
        recover_from_location(self.state, c, self.json_body())
        return True

    def handle_upload_snapshot(self, c: str) -> bool:
        """Like the server: the body spooled to a temporary file, its checksum checked, the
        file KEPT under the snapshots folder of `c` (as named in the URL), then recovered."""
        check_priority(self.query.get("priority"))
        if not COLLECTION_NAME.match(c):
            raise wrong_input(f"collection name `{c}` is not allowed by the stand-in")
        boundary = multipart_boundary(self.headers.get("Content-Type", ""))
        with tempfile.TemporaryDirectory(dir=self.state.work_dir, prefix="upload-") as scratch:
            spooled = Path(scratch) / "snapshot"
            file_name = save_multipart_file(self.body, boundary, "snapshot", spooled)
            self.body.drain()
            self.state.uploads.append({"collection": c, "file": file_name or ""})
            checksum = self.query.get("checksum")
            if checksum:
                actual = sha256_of_file(spooled)
                if actual != checksum.strip().lower():
                    # sic: the server names the file's digest "expected" here.
                    raise bad_request_checksum(actual, checksum)
            kept = self.state.snapshots.keep_upload(c, file_name, spooled)
        recover_collection(self.state, c, kept, None)
        return True


def bad_request_checksum(actual: str, given: str) -> ApiError:
    return ApiError(HTTPStatus.BAD_REQUEST, f"Checksum mismatch: expected {actual}, actual {given}")


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an Accept-Encoding header lets the server answer in gzip (q > 0)."""
    for item in (accept_encoding or "").split(","):
        coding, _, parameters = item.strip().partition(";")
        if coding.strip().lower() not in ("gzip", "*"):
            continue
        quality = re.search(r"q\s*=\s*([0-9.]+)", parameters)
        return quality is None or float(quality.group(1)) > 0
    return False


def points_from_request(body: dict) -> list[dict]:
    """Both upsert shapes (`points` list or column-wise `batch`) as a list of point objects."""
    if "points" in body:
        return body["points"]
    batch = body.get("batch")
    if not isinstance(batch, dict):
        raise wrong_input("give `points` or `batch`")
    ids, vectors = batch.get("ids") or [], batch.get("vectors")
    payloads = batch.get("payloads") or [None] * len(ids)
    if isinstance(vectors, dict):  # named vectors: {name: [vector per point]}
        vectors = [{name: column[i] for name, column in vectors.items()} for i in range(len(ids))]
    if not isinstance(vectors, list) or not len(ids) == len(vectors) == len(payloads):
        raise wrong_input("batch ids, vectors and payloads must have the same length")
    return [
        {"id": i, "vector": v, "payload": p} for i, v, p in zip(ids, vectors, payloads, strict=True)
    ]


class StandinHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], state: StandinState, keys: ApiKeys):
        self.state = state
        self.keys = keys
        super().__init__(address, StandinHandler)
