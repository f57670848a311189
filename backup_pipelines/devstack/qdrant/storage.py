"""The stand-in's state on disk: collections (config + Edge shard), aliases, the snapshot files,
the cluster layout it reports, and what tests may inspect (uploads received, downloads sent)."""

from __future__ import annotations

import secrets
import shutil
import threading
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

import qdrant_edge as edge

from backup_pipelines.devstack.qdrant.cluster import ClusterLayout
from backup_pipelines.devstack.qdrant.models import (
    COLLECTION_NAME,
    SHARD_ID,
    STORAGE_VERSION,
    ApiError,
    edge_config_from_collection_config,
    missing_collection,
    not_found,
    read_json,
    vector_sizes,
    write_json_atomically,
    wrong_input,
)
from backup_pipelines.devstack.qdrant.snapshots import SnapshotFiles
from backup_pipelines.lib.qdrant.offline import last_operation_number

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
        # True while a snapshot recovery replaces the data (its shard then reports "Partial").
        self.recovering = False
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

    def points(self) -> int:
        return self.read(lambda shard: shard.count(edge.CountRequest(exact=True)))

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
    """Everything one stand-in serves. `version` is the server version it reports and writes
    into its snapshots' version.info; `recovery_delay` (seconds) stretches every snapshot
    recovery so tests can lose the connection while the server goes on recovering."""

    def __init__(
        self,
        storage: Path,
        snapshots: Path | None = None,
        version: str = STORAGE_VERSION,
        cluster: ClusterLayout | None = None,
        recovery_delay: float = 0.0,
    ):
        self.storage = storage
        self.collections_dir = storage / "collections"
        self.work_dir = storage / "tmp"
        self.snapshots = SnapshotFiles((snapshots or storage / "snapshots").resolve())
        for folder in (self.collections_dir, self.work_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.version = version
        self.cluster = cluster or ClusterLayout()
        self.recovery_delay = recovery_delay
        self.lock = threading.RLock()
        self.peer_id = self._load_peer_id()
        self.aliases: dict[str, str] = self._load_aliases()
        self.collections: dict[str, Collection] = self._load_collections()
        # What tests may look at: every upload received ({"collection", "file"}) and the
        # Content-Encoding of every snapshot download sent ("gzip" or "identity").
        self.uploads: list[dict[str, str]] = []
        self.downloads: list[str] = []

    @property
    def snapshots_dir(self) -> Path:
        return self.snapshots.root

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

    def real_name(self, name: str) -> str | None:
        """The collection `name` means: itself, or the collection an alias points at (the
        server resolves aliases in reads, snapshots and recovery); None when neither exists."""
        with self.lock:
            if name in self.aliases and self.aliases[name] in self.collections:
                return self.aliases[name]
            return name if name in self.collections else None

    def resolve(self, name: str) -> Collection:
        with self.lock:
            real = self.real_name(name)
            collection = self.collections.get(real) if real else None
        if collection is None:
            raise missing_collection(name)
        return collection

    def create_collection(self, name: str, config: dict) -> Collection:
        if not COLLECTION_NAME.match(name):
            raise wrong_input(f"collection name `{name}` is not allowed by the stand-in")
        with self.lock:
            if name in self.collections or name in self.aliases:
                raise ApiError(
                    HTTPStatus.CONFLICT, f"Wrong input: Collection `{name}` already exists!"
                )
            self.collections[name] = Collection.create(name, self.collections_dir / name, config)
            return self.collections[name]

    def delete_collection(self, name: str) -> bool:
        """Like the server: aliases pointing at it go too; its snapshots folder stays."""
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

    def replace_shard(self, collection: Collection, shard_folder: Path, scratch: Path) -> None:
        """Put a recovered shard folder in place of the collection's data; its configuration
        stays (a real server keeps the existing collection's config on recovery)."""
        with self.lock:
            staged = scratch / "collection"
            staged.mkdir()
            write_json_atomically(staged / "config.json", collection.config)
            shard_folder.rename(staged / SHARD_ID)
            collection.close()
            collection.path.rename(scratch / "replaced")  # removed with the scratch folder
            staged.rename(collection.path)
            self.collections[collection.name] = Collection.open(collection.name, collection.path)

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
        """Aliases whose target is literally `collection` (all when None): like the server,
        an alias name given here is not resolved, so it has no aliases of its own."""
        with self.lock:
            return [
                {"alias_name": alias, "collection_name": target}
                for alias, target in sorted(self.aliases.items())
                if collection is None or target == collection
            ]

    # -- cluster ----------------------------------------------------------------------------

    def cluster_status(self) -> dict:
        return self.cluster.status(self.peer_id)

    def collection_cluster_info(self, name: str) -> dict:
        collection = self.resolve(name)
        state = "Partial" if collection.recovering else "Active"
        return self.cluster.collection_info(self.peer_id, collection.points(), state)
