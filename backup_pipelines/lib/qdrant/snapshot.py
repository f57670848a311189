"""Qdrant backup of one workspace: a snapshot per collection, downloaded once and teed into the
store and into a local scratch file; the scratch copy is checked against the server's sha256
and opened offline with Qdrant's own engine to count its points and list their ids (for the
consistency gate). The server-side snapshot is always deleted afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from backup_pipelines.lib.errors import BackupError
from backup_pipelines.lib.http import public_host
from backup_pipelines.lib.store import ArtifactWriter, require_plain_name, utc_now_iso
from backup_pipelines.lib.streams import Log, Progress, iter_decompressed, zstd_compressing

QDRANT_COLLECTIONS_FILE = "collections.json"


def snapshot_file(collection: str) -> str:
    return f"{collection}.snapshot.zst"


def point_ids_file(collection: str) -> str:
    return f"{collection}.point_ids.txt.zst"


def snapshot_qdrant_collections(
    client, base_url: str, collections: list[str], writer: ArtifactWriter, log: Log | None = None
) -> dict:
    """Snapshot every collection of a workspace into `writer`; returns the manifest fields."""
    described = {}
    missing = []
    work_root = os.environ.get("BACKUP_WORK_DIR") or None
    for collection in collections:
        if not client.collection_exists(collection):
            missing.append(collection)
            continue
        with tempfile.TemporaryDirectory(prefix="qdrant-snapshot-", dir=work_root) as scratch:
            described[collection] = _snapshot_one(client, collection, writer, Path(scratch), log)
    writer.write_bytes(
        QDRANT_COLLECTIONS_FILE, json.dumps(described, indent=2, sort_keys=True).encode()
    )
    created = [
        d["snapshot"]["creation_time"]
        for d in described.values()
        if d["snapshot"].get("creation_time")
    ]
    return {
        # The newest snapshot of the workspace: the conservative side for the skew check.
        "captured_at": _as_utc_iso(max(created)) if created else utc_now_iso(),
        "collections": described,
        "collections_missing": missing,
        "counts": {
            "points": sum(d["points"] for d in described.values()),
            "points_per_collection": {c: d["points"] for c, d in described.items()},
        },
        "source": {
            "kind": "qdrant",
            "server": public_host(base_url),
            "server_version": client.server_version(),
            "collections": collections,
        },
        "tool": {
            "name": "qdrant collection snapshot",
            "compression": "zstd level 1",
            "offline_reader": "qdrant-edge",
        },
    }


def _as_utc_iso(value: str) -> str:
    """Qdrant's creation_time has no zone and is UTC: make that explicit."""
    return value if value.endswith("Z") or "+" in value[10:] else value + "Z"


def _snapshot_one(
    client, collection: str, writer: ArtifactWriter, scratch: Path, log: Log | None
) -> dict:
    from backup_pipelines.lib.qdrant.offline import read_snapshot_offline, write_point_ids

    aliases = [a.get("alias_name") for a in client.aliases_for(collection)]
    snapshot = client.create_snapshot(collection)
    try:
        # The server names the snapshot: untrusted, so only a plain name makes a local path.
        local_copy = scratch / require_plain_name(snapshot.get("name"), "Qdrant snapshot name")
        raw_sha = _download_tee(client, collection, snapshot["name"], writer, local_copy, log)
    finally:
        with contextlib.suppress(Exception):  # a leftover server snapshot only costs disk
            client.delete_snapshot(collection, snapshot["name"])
    if snapshot.get("checksum") and raw_sha != snapshot["checksum"]:
        raise BackupError(
            f"Qdrant snapshot {snapshot['name']} of {collection}: downloaded sha256 {raw_sha[:16]}... "
            f"differs from the server's {snapshot['checksum'][:16]}... (download damaged); not committed"
        )
    with read_snapshot_offline(local_copy, scratch) as offline:
        with (
            writer.open_file(point_ids_file(collection)) as out,
            zstd_compressing(out) as compressed,
        ):
            written = write_point_ids(offline, compressed.write)
        points = offline.points
    if written != points:
        raise BackupError(
            f"Qdrant snapshot of {collection}: {points} points counted but {written} ids listed"
        )
    return {
        "snapshot": snapshot,
        "sha256_uncompressed": raw_sha,
        "points": points,
        "aliases": aliases,
    }


def _download_tee(
    client, collection: str, name: str, writer: ArtifactWriter, local_copy: Path, log: Log | None
) -> str:
    """Stream the snapshot into the store (zstd) and a local file at once; returns its sha256."""
    digest = hashlib.sha256()
    progress = Progress(f"qdrant snapshot {collection}", log)
    with open(local_copy, "wb") as local, writer.open_file(snapshot_file(collection)) as out:
        with zstd_compressing(out) as compressed:
            for chunk in client.stream_snapshot(collection, name):
                digest.update(chunk)
                local.write(chunk)
                compressed.write(chunk)
                progress.add(bytes_in=len(chunk))
        progress.add(bytes_out=out.bytes_written)
    if log:
        log(progress.line())
    return digest.hexdigest()


@dataclass
class OfflineCheck:
    ok: bool
    points: dict[str, int]
    problems: list[str]


def restore_snapshot_file(store, ref, manifest: dict, collection: str, target: Path) -> str:
    """Decompress a collection's snapshot from the store to `target`; returns its sha256.

    The store reader verifies the stored file's sha256 as it streams; the returned digest of
    the uncompressed bytes is checked against the server's checksum by the callers.
    """
    digest = hashlib.sha256()
    with (
        store.open_file(ref, manifest, snapshot_file(collection)) as reader,
        open(target, "wb") as out,
    ):
        for chunk in iter_decompressed(reader):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def verify_snapshots_offline(store, ref) -> OfflineCheck:
    """Open every snapshot of a Qdrant artifact with Qdrant's engine and count its points."""
    from backup_pipelines.lib.qdrant.offline import read_snapshot_offline

    manifest = store.require_manifest(ref)
    points: dict[str, int] = {}
    problems: list[str] = []
    for collection, described in manifest.get("collections", {}).items():
        with tempfile.TemporaryDirectory(
            prefix="qdrant-check-", dir=os.environ.get("BACKUP_WORK_DIR") or None
        ) as scratch:
            local = Path(scratch) / "collection.snapshot"
            try:
                sha = restore_snapshot_file(store, ref, manifest, collection, local)
                if sha != described["sha256_uncompressed"]:
                    problems.append(
                        f"{collection}: snapshot sha256 differs from the one downloaded"
                    )
                    continue
                with read_snapshot_offline(local, Path(scratch)) as offline:
                    points[collection] = offline.points
            except BackupError as exc:
                problems.append(f"{collection}: {exc}")
                continue
        if points[collection] != described["points"]:
            problems.append(
                f"{collection}: {points[collection]} points offline, manifest says {described['points']}"
            )
    return OfflineCheck(not problems, points, problems)
