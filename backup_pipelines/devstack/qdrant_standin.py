"""A Qdrant REST stand-in built on Qdrant's own storage engine (qdrant-edge-py).

No Qdrant server can run on these machines, so tests and demos talk to this process instead.
It serves the part of the real REST API the product uses (collections, aliases, points,
collection snapshots) with the real response envelopes, and stores points with
``qdrant_edge.EdgeShard``, the engine a real server uses for one shard.

Collection snapshots use the real server's layout, so a snapshot written here can be recovered
here and is shaped like the ones a real server writes and reads::

    config.json  version.info  payload_index.json
    0/segments/<segment-uuid>.tar       (snapshot/files/... inside, like Segment::take_snapshot)
    0/wal/closed-<next-op>              (an empty WAL that continues the operation numbers)
    0/shard_config.json  0/replica_state.json

Storage layout under ``--storage DIR``::

    DIR/collections/<name>/config.json   collection config, in the server's config.json format
    DIR/collections/<name>/0/            the Edge shard (segments/, wal/, edge_config.json)
    DIR/aliases.json                     {alias: collection}
    DIR/peer.json                        this node's peer id (used in snapshot names)
    DIR/snapshots/<name>/<snapshot>      snapshots, each with <snapshot>.checksum (sha256 hex)
    DIR/tmp/                             work space of snapshot creation and recovery

Run it with ``python -m backup_pipelines.devstack.qdrant_standin --port P --storage DIR``, or
in-process with ``QdrantStandin(storage).start()`` (returns the base URL) and ``.stop()``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import io
import json
import logging
import os
import re
import secrets
import shutil
import signal
import tarfile
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO

import qdrant_edge as edge

from backup_pipelines.lib.qdrant_snapshot import (
    SnapshotError,
    empty_wal_segment,
    last_operation_number,
    segment_dirs,
    unpack_collection_snapshot,
    verify_checksum,
)

log = logging.getLogger(__name__)

# Storage format the snapshots claim (version.info). A real server recovers snapshots of its own
# or the previous minor version only; 1.19 is the server the snapshot layout was measured on.
STORAGE_VERSION = "1.19.0"
REPORTED_VERSION = f"{STORAGE_VERSION}-standin"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
COPY_CHUNK = 1024 * 1024
SNAPSHOT_SUFFIX = ".snapshot"
CHECKSUM_SUFFIX = ".checksum"
SHARD_ID = "0"
COLLECTION_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}$")
UNAUTHENTICATED_PATHS = {"/healthz", "/readyz", "/livez"}
SNAPSHOT_PRIORITIES = {None, "no_sync", "snapshot", "replica"}
DISTANCES = {
    "Cosine": edge.Distance.Cosine,
    "Euclid": edge.Distance.Euclid,
    "Dot": edge.Distance.Dot,
    "Manhattan": edge.Distance.Manhattan,
}
UPDATE_MODES = {
    "upsert": edge.UpdateMode.Upsert,
    "insert_only": edge.UpdateMode.InsertOnly,
    "update_only": edge.UpdateMode.UpdateOnly,
}


class ApiError(Exception):
    """An error answered with the real server's error envelope and status code."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def not_found(what: str) -> ApiError:
    return ApiError(HTTPStatus.NOT_FOUND, f"Not found: {what}")


def wrong_input(what: str) -> ApiError:
    return ApiError(HTTPStatus.BAD_REQUEST, f"Wrong input: {what}")


def bad_request(what: str) -> ApiError:
    return ApiError(HTTPStatus.BAD_REQUEST, f"Bad request: {what}")


def missing_collection(name: str) -> ApiError:
    return not_found(f"Collection `{name}` doesn't exist!")


# ---------------------------------------------------------------------------------------------
# JSON <-> Edge conversions
# ---------------------------------------------------------------------------------------------


def point_id_from_json(value: Any) -> int | str:
    """Point ids are unsigned integers or UUIDs (returned in their canonical hyphenated form)."""
    if isinstance(value, bool):
        raise wrong_input(f"point id {value!r} is neither an unsigned integer nor a UUID")
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str):
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
    raise wrong_input(f"point id {value!r} is neither an unsigned integer nor a UUID")


def point_id_to_json(value: Any) -> int | str:
    return value if isinstance(value, int) else str(value)


def with_payload_from_json(value: Any, default: bool) -> Any:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, list):
        return edge.PayloadSelector.Include(value)
    if isinstance(value, dict) and "include" in value:
        return edge.PayloadSelector.Include(list(value["include"]))
    if isinstance(value, dict) and "exclude" in value:
        return edge.PayloadSelector.Exclude(list(value["exclude"]))
    raise wrong_input(f"unsupported with_payload {value!r}")


def with_vector_from_json(value: Any, default: bool) -> bool | list[str]:
    if value is None:
        return default
    if isinstance(value, bool | list):
        return value
    raise wrong_input(f"unsupported with_vector {value!r}")


def match_from_json(match: dict) -> Any:
    if "value" in match:
        return edge.MatchValue(match["value"])
    if "any" in match:
        return edge.MatchAny(any=match["any"])
    if "except" in match:
        return edge.MatchExcept(except_=match["except"])
    if "text" in match:
        return edge.MatchText(match["text"])
    if "text_any" in match:
        return edge.MatchTextAny(match["text_any"])
    if "phrase" in match:
        return edge.MatchPhrase(match["phrase"])
    raise wrong_input(f"the stand-in does not support match {match!r}")


def range_from_json(bounds: dict) -> Any:
    limits = {key: bounds.get(key) for key in ("gt", "gte", "lt", "lte")}
    if any(isinstance(value, str) for value in limits.values()):
        return edge.RangeDateTime(**limits)
    return edge.RangeFloat(**limits)


def field_condition_from_json(condition: dict) -> Any:
    arguments: dict[str, Any] = {}
    if condition.get("match") is not None:
        arguments["match"] = match_from_json(condition["match"])
    if condition.get("range") is not None:
        arguments["range"] = range_from_json(condition["range"])
    if condition.get("values_count") is not None:
        arguments["values_count"] = edge.ValuesCount(**condition["values_count"])
    for flag in ("is_empty", "is_null"):
        if condition.get(flag) is not None:
            arguments[flag] = condition[flag]
    if not arguments:
        raise wrong_input(f"the stand-in does not support condition {condition!r}")
    return edge.FieldCondition(key=condition["key"], **arguments)


def condition_from_json(condition: Any) -> Any:
    if not isinstance(condition, dict):
        raise wrong_input(f"condition {condition!r} is not an object")
    if "key" in condition:
        return field_condition_from_json(condition)
    if "has_id" in condition:
        return edge.HasIdCondition({point_id_from_json(i) for i in condition["has_id"]})
    if "is_empty" in condition:
        return edge.IsEmptyCondition(condition["is_empty"]["key"])
    if "is_null" in condition:
        return edge.IsNullCondition(condition["is_null"]["key"])
    if "has_vector" in condition:
        return edge.HasVectorCondition(condition["has_vector"])
    if "nested" in condition:
        nested = condition["nested"]
        return edge.NestedCondition(nested["key"], filter_from_json(nested["filter"]))
    if {"must", "should", "must_not", "min_should"} & condition.keys():
        return filter_from_json(condition)
    raise wrong_input(f"the stand-in does not support condition {condition!r}")


def conditions_from_json(conditions: Any) -> list | None:
    if conditions is None:
        return None
    # The real API accepts one condition or a list of them.
    items = conditions if isinstance(conditions, list) else [conditions]
    return [condition_from_json(item) for item in items]


def filter_from_json(payload_filter: Any) -> Any:
    if payload_filter is None:
        return None
    if not isinstance(payload_filter, dict):
        raise wrong_input(f"filter {payload_filter!r} is not an object")
    min_should = payload_filter.get("min_should")
    return edge.Filter(
        must=conditions_from_json(payload_filter.get("must")),
        should=conditions_from_json(payload_filter.get("should")),
        must_not=conditions_from_json(payload_filter.get("must_not")),
        min_should=(
            edge.MinShould(conditions_from_json(min_should["conditions"]), min_should["min_count"])
            if min_should
            else None
        ),
    )


def record_to_json(record: Any) -> dict:
    return {
        "id": point_id_to_json(record.id),
        "payload": record.payload,
        "vector": record.vector,
    }


def scored_point_to_json(point: Any) -> dict:
    return {
        "id": point_id_to_json(point.id),
        "version": point.version,
        "score": point.score,
        "payload": point.payload,
        "vector": point.vector,
    }


# ---------------------------------------------------------------------------------------------
# Collection configuration (the server's config.json format, also served by GET /collections/c)
# ---------------------------------------------------------------------------------------------

DEFAULT_HNSW = {
    "m": 16,
    "ef_construct": 100,
    "full_scan_threshold": 10000,
    "max_indexing_threads": 0,
    "on_disk": False,
}
DEFAULT_OPTIMIZERS = {
    "deleted_threshold": 0.2,
    "vacuum_min_vector_number": 1000,
    "default_segment_number": 0,
    "max_segment_size": None,
    "memmap_threshold": None,
    "indexing_threshold": 10000,
    "flush_interval_sec": 5,
    "max_optimization_threads": None,
}
DEFAULT_WAL = {"wal_capacity_mb": 32, "wal_segments_ahead": 0}


def is_single_vector(vectors: dict) -> bool:
    return "size" in vectors and "distance" in vectors


def validate_vector_params(name: str, params: Any) -> dict:
    if not isinstance(params, dict) or params.get("distance") not in DISTANCES:
        raise wrong_input(f"vector `{name}` needs a distance among {sorted(DISTANCES)}")
    size = params.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise wrong_input(f"vector `{name}` needs a positive integer size")
    return params


def normalized_vectors(vectors: Any) -> dict:
    if not isinstance(vectors, dict) or not vectors:
        raise wrong_input("`vectors` must describe the dense vectors of the collection")
    if is_single_vector(vectors):
        return validate_vector_params("", vectors)
    return {name: validate_vector_params(name, params) for name, params in vectors.items()}


def collection_config_from_request(body: dict) -> dict:
    """The config.json a real server would store for this create-collection request."""
    return {
        "params": {
            "vectors": normalized_vectors(body.get("vectors")),
            "shard_number": 1,
            "replication_factor": 1,
            "write_consistency_factor": 1,
            "on_disk_payload": body.get("on_disk_payload", True),
        },
        "hnsw_config": {**DEFAULT_HNSW, **(body.get("hnsw_config") or {})},
        "optimizer_config": {**DEFAULT_OPTIMIZERS, **(body.get("optimizers_config") or {})},
        "wal_config": {**DEFAULT_WAL, **(body.get("wal_config") or {})},
        "quantization_config": body.get("quantization_config"),
        "metadata": body.get("metadata"),
        "uuid": str(uuid.uuid4()),
    }


def edge_vector_params(params: dict) -> Any:
    return edge.EdgeVectorParams(
        size=params["size"],
        distance=DISTANCES[params["distance"]],
        on_disk=params.get("on_disk"),
    )


def edge_config_from_collection_config(config: dict) -> Any:
    vectors = config["params"]["vectors"]
    if is_single_vector(vectors):
        return edge.EdgeConfig(vectors=edge_vector_params(vectors))
    return edge.EdgeConfig(vectors={name: edge_vector_params(p) for name, p in vectors.items()})


def vector_sizes(config: dict) -> dict[str, int]:
    """Size of each dense vector by name; the unnamed default vector is called ``""``."""
    vectors = config["params"]["vectors"]
    if is_single_vector(vectors):
        return {"": vectors["size"]}
    return {name: params["size"] for name, params in vectors.items()}


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def write_json_atomically(path: Path, value: Any) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(value))
    os.replace(temporary, path)


# ---------------------------------------------------------------------------------------------
# One collection: its config and its Edge shard
# ---------------------------------------------------------------------------------------------


class Collection:
    """A single-shard collection. One lock serializes its operations because recovery and
    deletion swap or close the shard underneath them."""

    def __init__(self, name: str, path: Path, config: dict, shard: Any):
        self.name = name
        self.path = path
        self.config = config
        self.shard = shard
        self.lock = threading.RLock()
        self.closed = False
        # Mirrors the shard's WAL numbering so upserts answer with an operation_id.
        self.next_operation_id = last_operation_number(self.shard_path) + 1

    @property
    def shard_path(self) -> Path:
        return self.path / SHARD_ID

    @classmethod
    def create(cls, name: str, path: Path, config: dict) -> Collection:
        path.mkdir(parents=True)
        write_json_atomically(path / "config.json", config)
        shard = edge.EdgeShard.create(
            str(path / SHARD_ID), edge_config_from_collection_config(config)
        )
        return cls(name, path, config, shard)

    @classmethod
    def open(cls, name: str, path: Path) -> Collection:
        return cls(
            name, path, read_json(path / "config.json"), edge.EdgeShard.load(str(path / SHARD_ID))
        )

    def close(self) -> None:
        with self.lock:
            if not self.closed:
                self.closed = True
                self.shard.close()

    def _open_shard(self) -> Any:
        if self.closed:
            raise missing_collection(self.name)
        return self.shard

    def apply(self, operation: Any) -> dict:
        with self.lock:
            shard = self._open_shard()
            try:
                shard.update(operation)
            except Exception as error:  # Edge reports bad input as plain exceptions
                raise wrong_input(str(error)) from error
            operation_id = self.next_operation_id
            self.next_operation_id += 1
        return {"operation_id": operation_id, "status": "completed"}

    def read(self, reader: Callable[[Any], Any]) -> Any:
        with self.lock:
            shard = self._open_shard()
            try:
                return reader(shard)
            except ApiError:
                raise
            except Exception as error:
                raise wrong_input(str(error)) from error

    def info(self) -> dict:
        shard_info = self.read(lambda shard: shard.info())
        config = {key: value for key, value in self.config.items() if key != "uuid"}
        return {
            "status": "green",
            "optimizer_status": "ok",
            "indexed_vectors_count": shard_info.indexed_vectors_count,
            "points_count": shard_info.points_count,
            "segments_count": shard_info.segments_count,
            "config": config,
            "payload_schema": {
                key: {"data_type": index.data_type.name.lower(), "points": index.points}
                for key, index in shard_info.payload_schema.items()
            },
        }

    def check_vectors(self, vector: Any) -> None:
        """Reject wrong dimensions before the WAL sees them, like the real server does."""
        sizes = vector_sizes(self.config)
        named = vector if isinstance(vector, dict) else {"": vector}
        for name, values in named.items():
            if name not in sizes:
                raise wrong_input(f"Not existing vector name error: {name}")
            if values and isinstance(values[0], list):
                continue  # multivectors: every row is checked by the engine
            if len(values) != sizes[name]:
                raise wrong_input(
                    f"Vector dimension error: expected dim: {sizes[name]}, got {len(values)}"
                )


# ---------------------------------------------------------------------------------------------
# Snapshot archives (written here; read by backup_pipelines.lib.qdrant_snapshot)
# ---------------------------------------------------------------------------------------------


class HashingWriter(io.RawIOBase):
    """File writer that computes the sha256 of what passes through (one pass, flat memory)."""

    def __init__(self, target: BinaryIO):
        self.target = target
        self.digest = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.digest.update(data)
        return self.target.write(data)


def add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.size = len(data)
    member.mtime = int(time.time())
    archive.addfile(member, io.BytesIO(data))


def write_segment_tar(segment: Path, target: Path) -> None:
    """Pack a segment folder like Segment::take_snapshot: every file under snapshot/files/."""
    with tarfile.open(target, "w") as archive:
        for file in sorted(path for path in segment.rglob("*") if path.is_file()):
            archive.add(file, arcname=f"snapshot/files/{file.relative_to(segment).as_posix()}")


def write_shard_folder(
    archive: tarfile.TarFile, segment_tars: list[Path], next_operation: int, peer_id: int
) -> None:
    for segment_tar in segment_tars:
        archive.add(segment_tar, arcname=f"{SHARD_ID}/segments/{segment_tar.name}")
    # An empty WAL that starts after the last applied operation: a fresh WAL would restart at 0
    # and the engine would then skip updates to points whose version is higher.
    add_bytes(archive, f"{SHARD_ID}/wal/closed-{next_operation}", empty_wal_segment())
    add_bytes(archive, f"{SHARD_ID}/shard_config.json", json.dumps({"type": "ReplicaSet"}).encode())
    replica_state = {"is_local": True, "this_peer_id": peer_id, "peers": {str(peer_id): "Active"}}
    add_bytes(archive, f"{SHARD_ID}/replica_state.json", json.dumps(replica_state).encode())


def write_collection_snapshot(
    collection: Collection, target: Path, work_dir: Path, peer_id: int
) -> str:
    """Write the collection snapshot to `target` and return its sha256."""
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="snapshot-") as scratch:
        segment_tars, next_operation = pack_segments(collection, Path(scratch))
        config = collection.config
        with target.open("wb") as sink:
            hashing = HashingWriter(sink)
            with tarfile.open(fileobj=hashing, mode="w|") as archive:
                add_bytes(archive, "config.json", json.dumps(config).encode())
                add_bytes(archive, "version.info", STORAGE_VERSION.encode())
                add_bytes(archive, "payload_index.json", json.dumps({"schema": {}}).encode())
                write_shard_folder(archive, segment_tars, next_operation, peer_id)
            return hashing.digest.hexdigest()


def pack_segments(collection: Collection, scratch: Path) -> tuple[list[Path], int]:
    """Flush the shard and pack each segment; updates wait meanwhile so the cut is consistent."""
    with collection.lock:
        shard = collection._open_shard()
        shard.flush()
        segment_tars = []
        for segment in segment_dirs(collection.shard_path):
            segment_tar = scratch / f"{segment.name}.tar"
            write_segment_tar(segment, segment_tar)
            segment_tars.append(segment_tar)
        next_operation = max(
            collection.next_operation_id, last_operation_number(collection.shard_path) + 1
        )
    return segment_tars, next_operation


# ---------------------------------------------------------------------------------------------
# Server state: collections, aliases, snapshots on disk
# ---------------------------------------------------------------------------------------------


class StandinState:
    def __init__(self, storage: Path, snapshots: Path | None = None):
        self.storage = storage
        self.collections_dir = storage / "collections"
        self.snapshots_dir = (snapshots or storage / "snapshots").resolve()
        self.work_dir = storage / "tmp"
        for folder in (self.collections_dir, self.snapshots_dir, self.work_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.peer_id = self._load_peer_id()
        self.aliases: dict[str, str] = self._load_aliases()
        self.collections: dict[str, Collection] = self._load_collections()

    # -- persistence ------------------------------------------------------------------------

    def _load_peer_id(self) -> int:
        path = self.storage / "peer.json"
        if not path.exists():
            # Real peer ids are random unsigned 64-bit numbers; JSON-safe ones suffice here.
            write_json_atomically(path, {"peer_id": secrets.randbits(52)})
        return read_json(path)["peer_id"]

    def _load_aliases(self) -> dict[str, str]:
        path = self.storage / "aliases.json"
        return read_json(path) if path.exists() else {}

    def _save_aliases(self) -> None:
        write_json_atomically(self.storage / "aliases.json", self.aliases)

    def _load_collections(self) -> dict[str, Collection]:
        loaded = {}
        for path in sorted(self.collections_dir.iterdir()):
            if (path / "config.json").exists() and not path.name.startswith("."):
                loaded[path.name] = Collection.open(path.name, path)
        return loaded

    def close(self) -> None:
        with self.lock:
            for collection in self.collections.values():
                collection.close()

    # -- collections ------------------------------------------------------------------------

    def resolve(self, name: str) -> Collection:
        with self.lock:
            collection = self.collections.get(name) or self.collections.get(
                self.aliases.get(name, "")
            )
        if collection is None:
            raise missing_collection(name)
        return collection

    def create_collection(self, name: str, config: dict) -> None:
        if not COLLECTION_NAME.match(name):
            raise wrong_input(f"collection name `{name}` is not allowed by the stand-in")
        with self.lock:
            if name in self.collections or name in self.aliases:
                raise ApiError(
                    HTTPStatus.CONFLICT, f"Wrong input: Collection `{name}` already exists!"
                )
            self.collections[name] = Collection.create(name, self.collections_dir / name, config)

    def delete_collection(self, name: str) -> bool:
        with self.lock:
            collection = self.collections.pop(name, None)
            if collection is None:
                return False
            self.aliases = {
                alias: target for alias, target in self.aliases.items() if target != name
            }
            self._save_aliases()
        collection.close()
        shutil.rmtree(collection.path)
        return True

    def collection_names(self) -> list[str]:
        with self.lock:
            return sorted(self.collections)

    # -- aliases ----------------------------------------------------------------------------

    def change_aliases(self, actions: list[dict]) -> None:
        with self.lock:
            aliases = dict(self.aliases)
            for action in actions:
                self._apply_alias_action(aliases, action)
            self.aliases = aliases
            self._save_aliases()

    def _apply_alias_action(self, aliases: dict[str, str], action: dict) -> None:
        if "create_alias" in action:
            target = action["create_alias"]["collection_name"]
            alias = action["create_alias"]["alias_name"]
            if target not in self.collections:
                raise missing_collection(target)
            if alias in self.collections:
                raise wrong_input(f"Collection `{alias}` already exists!")
            aliases[alias] = target
        elif "delete_alias" in action:
            alias = action["delete_alias"]["alias_name"]
            if aliases.pop(alias, None) is None:
                raise not_found(f"Alias {alias} does not exists!")
        elif "rename_alias" in action:
            old, new = (
                action["rename_alias"]["old_alias_name"],
                action["rename_alias"]["new_alias_name"],
            )
            if old not in aliases:
                raise not_found(f"Alias {old} does not exists!")
            aliases[new] = aliases.pop(old)
        else:
            raise wrong_input(f"unknown alias action {action!r}")

    def alias_descriptions(self, collection: str | None = None) -> list[dict]:
        with self.lock:
            return [
                {"alias_name": alias, "collection_name": target}
                for alias, target in sorted(self.aliases.items())
                if collection is None or target == collection
            ]

    # -- snapshots --------------------------------------------------------------------------

    def snapshot_folder(self, collection: str) -> Path:
        folder = self.snapshots_dir / collection
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def snapshot_path(self, collection: str, snapshot_name: str) -> Path:
        path = self.snapshot_folder(collection) / snapshot_name
        if "/" in snapshot_name or snapshot_name.startswith(".") or not path.is_file():
            raise not_found(f"Snapshot {snapshot_name} not found")
        return path

    def create_snapshot(self, name: str) -> dict:
        collection = self.resolve(name)
        stamp = datetime.now(UTC).strftime("%Y-%m-%d-%H-%M-%S")
        snapshot_name = f"{collection.name}-{self.peer_id}-{stamp}{SNAPSHOT_SUFFIX}"
        folder = self.snapshot_folder(collection.name)
        partial = folder / f".{snapshot_name}.partial"
        try:
            checksum = write_collection_snapshot(collection, partial, self.work_dir, self.peer_id)
            # The checksum lands first so a listed snapshot always has one (as on a real server).
            (folder / f"{snapshot_name}{CHECKSUM_SUFFIX}").write_text(checksum)
            os.replace(partial, folder / snapshot_name)
        finally:
            partial.unlink(missing_ok=True)
        return self.describe_snapshot(folder / snapshot_name)

    def describe_snapshot(self, path: Path) -> dict:
        status = path.stat()
        checksum_file = path.with_name(path.name + CHECKSUM_SUFFIX)
        return {
            "name": path.name,
            "creation_time": datetime.fromtimestamp(status.st_mtime, UTC).strftime(
                "%Y-%m-%dT%H:%M:%S"
            ),
            "size": status.st_size,
            "checksum": checksum_file.read_text().strip() if checksum_file.exists() else None,
        }

    def list_snapshots(self, name: str) -> list[dict]:
        collection = self.resolve(name)
        folder = self.snapshot_folder(collection.name)
        return [
            self.describe_snapshot(path)
            for path in sorted(folder.iterdir())
            if path.is_file()
            and not path.name.startswith(".")
            and not path.name.endswith(CHECKSUM_SUFFIX)
        ]

    def delete_snapshot(self, name: str, snapshot_name: str) -> None:
        path = self.snapshot_path(self.resolve(name).name, snapshot_name)
        path.unlink()
        path.with_name(path.name + CHECKSUM_SUFFIX).unlink(missing_ok=True)

    def local_snapshot_location(self, location: str) -> Path:
        """A file:// location, accepted only inside the snapshots directory like a real server."""
        parsed = urllib.parse.urlsplit(location)
        if parsed.netloc not in ("", "localhost"):
            raise bad_request("Invalid snapshot URI, file path must be absolute or on localhost")
        path = Path(urllib.parse.unquote(parsed.path)).resolve()
        if not path.is_relative_to(self.snapshots_dir):
            raise ApiError(
                HTTPStatus.FORBIDDEN,
                f"Forbidden: Snapshot file {str(path)!r} is outside the snapshots directory",
            )
        if not path.is_file():
            raise bad_request(f"Snapshot file {str(path)!r} does not exist")
        return path

    def recover_from_location(self, name: str, request: dict) -> None:
        location = request.get("location")
        if not isinstance(location, str):
            raise wrong_input("`location` is required")
        check_priority(request.get("priority"))
        scheme = urllib.parse.urlsplit(location).scheme
        if scheme == "file":
            self.recover(name, self.local_snapshot_location(location), request.get("checksum"))
            return
        if scheme not in ("http", "https"):
            raise bad_request(f"URL {location} with scheme {scheme} is not supported")
        with tempfile.TemporaryDirectory(dir=self.work_dir, prefix="download-") as scratch:
            downloaded = Path(scratch) / "snapshot"
            download(location, downloaded, request.get("api_key"))
            self.recover(name, downloaded, request.get("checksum"))

    def recover(self, name: str, snapshot: Path, checksum: str | None) -> None:
        """Replace (or create) collection `name` with the snapshot's data. Nothing changes unless
        the checksum matches and the snapshot unpacks and opens."""
        if not COLLECTION_NAME.match(name):
            raise wrong_input(f"collection name `{name}` is not allowed by the stand-in")
        with tempfile.TemporaryDirectory(dir=self.work_dir, prefix=f"recover-{name}-") as scratch:
            try:
                verify_checksum(snapshot, checksum)
                config, shard_folder = unpack_collection_snapshot(snapshot, Path(scratch))
            except SnapshotError as error:
                raise wrong_input(error.reason) from error
            normalized_vectors(config.get("params", {}).get("vectors"))
            edge.EdgeShard.load(str(shard_folder)).close()  # refuse what the engine cannot open
            self._swap_in(name, config, shard_folder, Path(scratch))

    def _swap_in(self, name: str, config: dict, shard_folder: Path, scratch: Path) -> None:
        with self.lock:
            existing = self.collections.get(name)
            if (
                existing is not None
                and existing.config["params"]["vectors"] != config["params"]["vectors"]
            ):
                raise wrong_input(
                    "Snapshot is not compatible with existing collection: "
                    f"Collection vectors: {existing.config['params']['vectors']} "
                    f"Snapshot Vectors: {config['params']['vectors']}"
                )
            staged = scratch / "collection"
            staged.mkdir()
            write_json_atomically(staged / "config.json", config)
            shard_folder.rename(staged / SHARD_ID)
            target = self.collections_dir / name
            if existing is not None:
                existing.close()
                target.rename(scratch / "replaced")  # removed with the scratch folder
            staged.rename(target)
            self.collections[name] = Collection.open(name, target)


def check_priority(priority: Any) -> None:
    # A single node has no other replica to prefer: every priority recovers the snapshot as is.
    if priority not in SNAPSHOT_PRIORITIES:
        raise wrong_input(f"unknown snapshot priority {priority!r}")


def download(location: str, target: Path, api_key: str | None) -> None:
    request = urllib.request.Request(location, headers={"api-key": api_key} if api_key else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response, target.open("wb") as sink:
            shutil.copyfileobj(response, sink, COPY_CHUNK)
    except OSError as error:
        raise bad_request(f"cannot download snapshot from {location}: {error}") from error


# ---------------------------------------------------------------------------------------------
# Request bodies: JSON and streamed multipart uploads
# ---------------------------------------------------------------------------------------------


class BodyReader:
    """Reads at most Content-Length bytes of a request body, with push-back for parsing."""

    def __init__(self, stream: BinaryIO, length: int):
        self.stream = stream
        self.remaining = length
        self.pending = b""

    def read(self, size: int) -> bytes:
        data, self.pending = self.pending[:size], self.pending[size:]
        if len(data) < size and self.remaining > 0:
            more = self.stream.read(min(size - len(data), self.remaining))
            self.remaining -= len(more)
            data += more
        return data

    def unread(self, data: bytes) -> None:
        self.pending = data + self.pending

    def readline(self) -> bytes:
        line = b""
        while not line.endswith(b"\n"):
            chunk = self.read(1024)
            if not chunk:
                break
            cut = chunk.find(b"\n")
            if cut >= 0:
                self.unread(chunk[cut + 1 :])
                chunk = chunk[: cut + 1]
            line += chunk
            if len(line) > 65536:
                raise bad_request("multipart header line too long")
        return line

    def drain(self) -> None:
        while self.read(COPY_CHUNK):
            pass


def multipart_boundary(content_type: str) -> bytes:
    match = re.search(r'boundary="?([^";]+)"?', content_type or "")
    if not content_type.startswith("multipart/form-data") or match is None:
        raise bad_request("expected a multipart/form-data body with a `snapshot` field")
    return match.group(1).encode()


def read_part_headers(body: BodyReader) -> dict[str, str]:
    headers = {}
    while (line := body.readline().strip()) != b"":
        key, _, value = line.decode("latin-1").partition(":")
        headers[key.strip().lower()] = value.strip()
    return headers


def copy_until(body: BodyReader, delimiter: bytes, sink: BinaryIO | None) -> None:
    """Copy body bytes to `sink` until `delimiter`, keeping only a delimiter's length in memory."""
    keep = len(delimiter) - 1
    buffer = b""
    while True:
        chunk = body.read(COPY_CHUNK)
        if not chunk:
            raise bad_request("multipart body ended before its closing boundary")
        buffer += chunk
        found = buffer.find(delimiter)
        if found >= 0:
            if sink:
                sink.write(buffer[:found])
            body.unread(buffer[found + len(delimiter) :])
            return
        if len(buffer) > keep:
            if sink:
                sink.write(buffer[:-keep])
            buffer = buffer[-keep:]


def save_multipart_file(body: BodyReader, boundary: bytes, field: str, target: Path) -> None:
    """Stream the named file field of a multipart body to `target`."""
    copy_until(body, b"--" + boundary, None)
    delimiter = b"\r\n--" + boundary
    while True:
        if body.read(2) == b"--":
            raise bad_request(f"multipart body has no `{field}` field")
        headers = read_part_headers(body)
        disposition = headers.get("content-disposition", "")
        if re.search(rf'name="?{re.escape(field)}"?(;|$)', disposition):
            with target.open("wb") as sink:
                copy_until(body, delimiter, sink)
            return
        copy_until(body, delimiter, None)


# ---------------------------------------------------------------------------------------------
# HTTP layer
# ---------------------------------------------------------------------------------------------


class RawResponse:
    def __init__(
        self, status: int, content_type: str, body: bytes | None = None, file: Path | None = None
    ):
        self.status, self.content_type, self.body, self.file = status, content_type, body, file


Route = tuple[str, re.Pattern, str]
ROUTES: list[Route] = [
    (method, re.compile(f"^{pattern}$"), handler)
    for method, pattern, handler in [
        ("GET", r"/", "root"),
        ("GET", r"/healthz", "healthz"),
        ("GET", r"/livez", "healthz"),
        ("GET", r"/readyz", "readyz"),
        ("GET", r"/collections", "list_collections"),
        ("GET", r"/aliases", "list_aliases"),
        ("POST", r"/collections/aliases", "change_aliases"),
        ("GET", r"/collections/(?P<c>[^/]+)", "get_collection"),
        ("PUT", r"/collections/(?P<c>[^/]+)", "create_collection"),
        ("DELETE", r"/collections/(?P<c>[^/]+)", "delete_collection"),
        ("GET", r"/collections/(?P<c>[^/]+)/exists", "collection_exists"),
        ("GET", r"/collections/(?P<c>[^/]+)/aliases", "collection_aliases"),
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
        try:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                raise ApiError(HTTPStatus.LENGTH_REQUIRED, "the stand-in needs a Content-Length")
            parsed = urllib.parse.urlsplit(self.path)
            handler, params = match_route(method, parsed.path)
            self._check_api_key(parsed.path)
            self.query = dict(urllib.parse.parse_qsl(parsed.query))
            result = getattr(self, f"handle_{handler}")(**params)
            if isinstance(result, RawResponse):
                self._send_raw(result)
            else:
                self._send_json(
                    HTTPStatus.OK,
                    {"result": result, "status": "ok", "time": time.monotonic() - started},
                )
        except ApiError as error:
            self._send_error(error.status, error.message, started)
        except Exception as error:
            log.exception("stand-in request failed: %s %s", method, self.path)
            self._send_error(
                HTTPStatus.INTERNAL_SERVER_ERROR, f"Service internal error: {error}", started
            )

    def _check_api_key(self, path: str) -> None:
        expected = self.server.api_key
        if expected is None or path in UNAUTHENTICATED_PATHS:
            return
        given = self.headers.get("api-key")
        bearer = self.headers.get("Authorization", "")
        if given is None and bearer.lower().startswith("bearer "):
            given = bearer[len("bearer ") :]
        if given is None:
            raise ApiError(
                HTTPStatus.UNAUTHORIZED, "Must provide an API key or an Authorization bearer token"
            )
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise ApiError(HTTPStatus.FORBIDDEN, "Invalid API key or JWT")

    def _finish_body(self) -> None:
        # With keep-alive the unread rest of a request would be taken for the next request.
        if self.body.remaining > COPY_CHUNK * 8:
            self.close_connection = True
        else:
            self.body.drain()

    def _send_json(self, status: int, document: dict) -> None:
        self._send_raw(RawResponse(status, "application/json", json.dumps(document).encode()))

    def _send_error(self, status: int, message: str, started: float) -> None:
        document = {"status": {"error": message}, "time": time.monotonic() - started}
        self._send_json(status, document)

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
            self.send_header("Content-Length", str(os.fstat(source.fileno()).st_size))
            self.send_header("Content-Disposition", f'attachment; filename="{response.file.name}"')
            self.end_headers()
            shutil.copyfileobj(source, self.wfile, COPY_CHUNK)

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
            "version": REPORTED_VERSION,
            "commit": None,
        }
        return RawResponse(HTTPStatus.OK, "application/json", json.dumps(info).encode())

    def handle_healthz(self) -> RawResponse:
        return RawResponse(HTTPStatus.OK, "text/plain", b"healthz check passed")

    def handle_readyz(self) -> RawResponse:
        return RawResponse(HTTPStatus.OK, "text/plain", b"all shards are ready")

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
        return {"exists": c in self.state.collection_names()}

    def handle_collection_aliases(self, c: str) -> dict:
        return {"aliases": self.state.alias_descriptions(self.state.resolve(c).name)}

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
        return self.state.list_snapshots(c)

    def handle_create_snapshot(self, c: str) -> dict:
        return self.state.create_snapshot(c)

    def handle_download_snapshot(self, c: str, s: str) -> RawResponse:
        path = self.state.snapshot_path(self.state.resolve(c).name, s)
        return RawResponse(HTTPStatus.OK, "application/octet-stream", file=path)

    def handle_delete_snapshot(self, c: str, s: str) -> bool:
        self.state.delete_snapshot(c, s)
        return True

    def handle_recover_snapshot(self, c: str) -> bool:
        self.state.recover_from_location(c, self.json_body())
        return True

    def handle_upload_snapshot(self, c: str) -> bool:
        check_priority(self.query.get("priority"))
        boundary = multipart_boundary(self.headers.get("Content-Type", ""))
        with tempfile.TemporaryDirectory(dir=self.state.work_dir, prefix="upload-") as scratch:
            uploaded = Path(scratch) / "snapshot"
            save_multipart_file(self.body, boundary, "snapshot", uploaded)
            self.body.drain()
            self.state.recover(c, uploaded, self.query.get("checksum"))
        return True


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

    def __init__(self, address: tuple[str, int], state: StandinState, api_key: str | None):
        self.state = state
        self.api_key = api_key
        super().__init__(address, StandinHandler)


# ---------------------------------------------------------------------------------------------
# Starting and stopping
# ---------------------------------------------------------------------------------------------


class QdrantStandin:
    """The stand-in as an in-process server: ``url = QdrantStandin(dir).start()``, then ``stop()``.

    Also a context manager. ``port=0`` lets the OS pick a free port (see ``url``).
    """

    def __init__(
        self,
        storage: str | os.PathLike,
        port: int = 0,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        snapshots: str | os.PathLike | None = None,
    ):
        if host not in LOOPBACK_HOSTS:
            raise ValueError(f"the stand-in binds to loopback only, not {host}")
        self.storage = Path(storage)
        self.snapshots = Path(snapshots) if snapshots else None
        self.host, self.port, self.api_key = host, port, api_key
        self._server: StandinHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the stand-in is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def state(self) -> StandinState:
        if self._server is None:
            raise RuntimeError("the stand-in is not running")
        return self._server.state

    def start(self) -> str:
        state = StandinState(self.storage, self.snapshots)
        self._server = StandinHTTPServer((self.host, self.port), state, self.api_key)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="qdrant-standin", daemon=True
        )
        self._thread.start()
        return self.url

    def serve_forever(self) -> None:
        """Run in the calling thread until stop() (used by the command line)."""
        state = StandinState(self.storage, self.snapshots)
        self._server = StandinHTTPServer((self.host, self.port), state, self.api_key)
        try:
            self._server.serve_forever()
        finally:
            self._close()

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        if self._thread is not None:
            self._thread.join()
        self._close()

    def _close(self) -> None:
        if self._server is not None:
            self._server.server_close()
            self._server.state.close()
            self._server = None

    def __enter__(self) -> QdrantStandin:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def parse_arguments(argv: Iterable[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", choices=LOOPBACK_HOSTS)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--storage", required=True, help="folder of collections, aliases, snapshots"
    )
    parser.add_argument("--snapshots", help="snapshots folder (default: STORAGE/snapshots)")
    parser.add_argument("--api-key", help="require this key in the `api-key` header")
    return parser.parse_args(list(argv) if argv is not None else None)


def main(argv: Iterable[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    standin = QdrantStandin(
        arguments.storage, arguments.port, arguments.api_key, arguments.host, arguments.snapshots
    )

    def stop_on_signal(signum: int, frame: object) -> None:
        # shutdown() blocks until serve_forever returns, so it must run on another thread.
        threading.Thread(target=lambda: standin._server and standin._server.shutdown()).start()

    signal.signal(signal.SIGTERM, stop_on_signal)
    log.info("Qdrant stand-in %s on http://%s:%s", REPORTED_VERSION, arguments.host, arguments.port)
    with contextlib.suppress(KeyboardInterrupt):
        standin.serve_forever()


if __name__ == "__main__":
    main()
