"""Recovering a collection from a snapshot, in the real server's order
(lib/storage/src/content_manager/snapshots/recover.rs):

1. the checksum, when one is given, and the snapshot's version.info against the server's own
   version (the server reads storage of its own or the previous minor version; newer data is
   a 500 "Data version ... is newer than application version ...");
2. the snapshot unpacked and opened;
3. a missing collection is CREATED from the snapshot's configuration; an existing one (an
   alias is resolved to its collection) KEEPS its configuration and must have the snapshot's
   vectors parameters and shard number (else 400 "Snapshot is not compatible with existing
   collection");
4. the data replaced while the shard reports "Partial"; the recovery goes on when the client
   disconnects (it runs in the request's thread, which nothing interrupts).

Unlike a real server, which checks versions while loading segments (after it created the
collection), the stand-in checks version.info before anything is created.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
import urllib.parse
import urllib.request
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any

import qdrant_edge as edge

from backup_pipelines.devstack.qdrant.models import (
    COLLECTION_NAME,
    COPY_CHUNK,
    SNAPSHOT_PRIORITIES,
    ApiError,
    bad_request,
    normalized_vectors,
    wrong_input,
)
from backup_pipelines.lib.qdrant.offline import (
    SnapshotError,
    read_snapshot_version,
    unpack_collection_snapshot,
    verify_checksum,
)

if TYPE_CHECKING:
    from backup_pipelines.devstack.qdrant.storage import Collection, StandinState

VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)")


def recover_collection(
    state: StandinState, name: str, snapshot: Path, checksum: str | None
) -> None:
    """Recover collection `name` (or the collection the alias `name` points at) from a file."""
    if not COLLECTION_NAME.match(name):
        raise wrong_input(f"collection name `{name}` is not allowed by the stand-in")
    with tempfile.TemporaryDirectory(dir=state.work_dir, prefix="recover-") as scratch:
        try:
            verify_checksum(snapshot, checksum)
            check_storage_version(read_snapshot_version(snapshot), state.version)
            config, shard_folder = unpack_collection_snapshot(snapshot, Path(scratch))
        except SnapshotError as error:
            raise wrong_input(error.reason) from error
        normalized_vectors(config.get("params", {}).get("vectors"))
        edge.EdgeShard.load(str(shard_folder)).close()  # refuse what the engine cannot open
        collection = target_collection(state, name, config)
        collection.recovering = True
        try:
            if state.recovery_delay:
                time.sleep(state.recovery_delay)  # a large snapshot, for tests
            state.replace_shard(collection, shard_folder, Path(scratch))
        finally:
            collection.recovering = False


def target_collection(state: StandinState, name: str, snapshot_config: dict) -> Collection:
    with state.lock:
        real = state.real_name(name)
        if real is None:
            return state.create_collection(name, snapshot_config)
        existing = state.collections[real]
    check_compatible(existing.config, snapshot_config)
    return existing


def check_compatible(existing: dict, snapshot: dict) -> None:
    existing_params, snapshot_params = existing["params"], snapshot.get("params", {})
    if existing_params["vectors"] != snapshot_params.get("vectors"):
        raise wrong_input(
            "Snapshot is not compatible with existing collection: "
            f"Collection vectors: {existing_params['vectors']} "
            f"Snapshot Vectors: {snapshot_params.get('vectors')}"
        )
    existing_shards = existing_params.get("shard_number", 1)
    snapshot_shards = snapshot_params.get("shard_number", 1)
    if existing_shards != snapshot_shards:
        raise wrong_input(
            "Snapshot is not compatible with existing collection: "
            f"Collection shard number: {existing_shards} Snapshot shard number: {snapshot_shards}"
        )


def check_storage_version(snapshot_version: str | None, server_version: str) -> None:
    """The same or the previous minor version of this server's major version, not newer."""
    if snapshot_version is None:
        return
    stored, running = VERSION.match(snapshot_version), VERSION.match(server_version)
    if stored is None or running is None:
        raise wrong_input(f"the snapshot's version.info {snapshot_version!r} is not a version")
    stored_numbers = tuple(int(part) for part in stored.groups())
    running_numbers = tuple(int(part) for part in running.groups())
    if stored_numbers > running_numbers:
        raise ApiError(
            HTTPStatus.INTERNAL_SERVER_ERROR,
            f"Service internal error: Data version {stored.group(0)} is newer than application "
            f"version {running.group(0)}. Please upgrade the application. Compatibility is not "
            "guaranteed.",
        )
    same_major = stored_numbers[0] == running_numbers[0]
    if not same_major or running_numbers[1] - stored_numbers[1] > 1:
        raise ApiError(
            HTTPStatus.INTERNAL_SERVER_ERROR,
            f"Service internal error: Cannot upgrade version {stored.group(0)} to "
            f"{running.group(0)}. Try to use older version of Qdrant first.",
        )


def recover_from_location(state: StandinState, name: str, request: dict) -> None:
    location = request.get("location")
    if not isinstance(location, str):
        raise wrong_input("`location` is required")
    check_priority(request.get("priority"))
    scheme = urllib.parse.urlsplit(location).scheme
    if scheme == "file":
        path = state.snapshots.local_location(location)
        recover_collection(state, name, path, request.get("checksum"))
        return
    if scheme not in ("http", "https"):
        raise bad_request(f"URL {location} with scheme {scheme} is not supported")
    with tempfile.TemporaryDirectory(dir=state.work_dir, prefix="download-") as scratch:
        downloaded = Path(scratch) / "snapshot"
        download(location, downloaded, request.get("api_key"))
        recover_collection(state, name, downloaded, request.get("checksum"))


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
