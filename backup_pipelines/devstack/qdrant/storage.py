"""The stand-in's state on disk: collections (config + Edge shard), aliases, snapshots, and
recovery from a snapshot."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any

import qdrant_edge as edge

from backup_pipelines.devstack.qdrant.archive import write_collection_snapshot
from backup_pipelines.devstack.qdrant.models import (
    CHECKSUM_SUFFIX,
    COLLECTION_NAME,
    COPY_CHUNK,
    SHARD_ID,
    SNAPSHOT_PRIORITIES,
    SNAPSHOT_SUFFIX,
    ApiError,
    bad_request,
    edge_config_from_collection_config,
    missing_collection,
    normalized_vectors,
    not_found,
    read_json,
    vector_sizes,
    write_json_atomically,
    wrong_input,
)
from backup_pipelines.lib.qdrant.offline import (
    SnapshotError,
    last_operation_number,
    unpack_collection_snapshot,
    verify_checksum,
)

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
