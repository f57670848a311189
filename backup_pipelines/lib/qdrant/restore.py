"""Putting a Qdrant collection back: recovered from its snapshot (uploaded with
priority=snapshot and the checksum), merged through a scratch collection, or rebuilt from
memory rows."""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from backup_pipelines.lib.engines import Mode
from backup_pipelines.lib.errors import BackupError
from backup_pipelines.lib.mapping import MemoryRow, batched
from backup_pipelines.lib.qdrant.points import to_qdrant_point
from backup_pipelines.lib.qdrant.snapshot import restore_snapshot_file
from backup_pipelines.lib.store import ArtifactRef, BackupStore, require_plain_name


def recover_qdrant_collection(
    client,
    store: BackupStore,
    ref: ArtifactRef,
    source_collection: str,
    target_collection: str | None = None,
) -> int:
    """Recover `target_collection` (default: the same name) from the artifact's snapshot with
    priority=snapshot and the checksum; returns the points the snapshot holds."""
    manifest = store.require_manifest(ref)
    described = manifest.get("collections", {}).get(source_collection)
    if described is None:
        raise BackupError(
            f"{ref}: no snapshot of collection {source_collection!r} in this artifact"
        )
    with tempfile.TemporaryDirectory(
        prefix="qdrant-recover-", dir=os.environ.get("BACKUP_WORK_DIR") or None
    ) as scratch:
        # The name may come from a manifest: a plain name only, so the file stays in scratch.
        name = require_plain_name(source_collection, "Qdrant collection name")
        local = Path(scratch) / f"{name}.snapshot"
        sha = restore_snapshot_file(store, ref, manifest, source_collection, local)
        if sha != described["sha256_uncompressed"]:
            raise BackupError(
                f"{ref}: snapshot of {source_collection} does not match the checksum taken at backup"
            )
        client.recover_from_upload(
            target_collection or source_collection, local, checksum=sha, priority="snapshot"
        )
    return described["points"]


def restore_from_snapshot(
    client, store: BackupStore, ref: ArtifactRef, collection: str, target: str, mode: Mode
) -> dict:
    """Replace (or fill a missing collection) by recovering the snapshot; merge recovers into a
    scratch collection and copies over only the points the live one lacks."""
    if mode is Mode.REPLACE or not client.collection_exists(target):
        points = recover_qdrant_collection(client, store, ref, collection, target)
        return {"source": "snapshot", "recovered": points}
    scratch = f"{target}__restore_{secrets.token_hex(4)}"
    try:
        recover_qdrant_collection(client, store, ref, collection, scratch)
        added, kept = upsert_missing_points(client, target, client.scroll(scratch), create=False)
    finally:
        if client.collection_exists(scratch):
            client.delete_collection(scratch)
    return {"source": "snapshot", "added": added, "already_present": kept}


def rebuild_from_rows(client, target: str, rows: Iterator[MemoryRow]) -> dict:
    points = (to_qdrant_point(row) for row in rows)
    added, kept = upsert_missing_points(client, target, points, create=True)
    return {"source": "sql", "added": added, "already_present": kept}


def upsert_missing_points(
    client, collection: str, points: Iterable[dict], create: bool
) -> tuple[int, int]:
    """Upsert the points whose id the collection lacks (newer points win); (added, kept)."""
    added = kept = 0
    for group in batched(iter(points), 256):
        if create and added + kept == 0 and not client.collection_exists(collection):
            client.create_collection(collection, size=len(group[0]["vector"]), distance="Cosine")
        present = client.existing_ids(collection, [p["id"] for p in group])
        missing = [p for p in group if p["id"] not in present]
        if missing:
            client.upsert_points(
                collection, [{k: p[k] for k in ("id", "vector", "payload")} for p in missing]
            )
        added += len(missing)
        kept += len(group) - len(missing)
    return added, kept
