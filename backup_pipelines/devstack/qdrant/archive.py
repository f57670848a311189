"""Snapshot archives in the real server's layout (written here; read by
backup_pipelines.lib.qdrant.offline)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from backup_pipelines.devstack.qdrant.models import SHARD_ID
from backup_pipelines.lib.qdrant.offline import (
    empty_wal_segment,
    last_operation_number,
    segment_dirs,
)

if TYPE_CHECKING:
    from backup_pipelines.devstack.qdrant.storage import Collection


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
    collection: Collection, target: Path, work_dir: Path, peer_id: int, version: str
) -> str:
    """Write the collection snapshot to `target` and return its sha256; `version` goes into
    version.info (the storage version of the server that wrote it)."""
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="snapshot-") as scratch:
        segment_tars, next_operation = pack_segments(collection, Path(scratch))
        config = collection.config
        with target.open("wb") as sink:
            hashing = HashingWriter(sink)
            with tarfile.open(fileobj=hashing, mode="w|") as archive:
                add_bytes(archive, "config.json", json.dumps(config).encode())
                add_bytes(archive, "version.info", version.encode())
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
