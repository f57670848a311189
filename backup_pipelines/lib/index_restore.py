"""Putting index artifacts back: a Typesense collection from its export, a Qdrant collection
from its snapshot. Both read only the store (no Dagster), so they serve the restore jobs and
the command line alike."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from backup_pipelines.lib.errors import BackupError
from backup_pipelines.lib.index_backup import (
    TYPESENSE_COLLECTION_FILE,
    TYPESENSE_DOCUMENTS_FILE,
    restore_snapshot_file,
)
from backup_pipelines.lib.store import ArtifactRef, BackupStore, iter_chunks
from backup_pipelines.lib.streams import iter_decompressed


def typesense_definition(store: BackupStore, ref: ArtifactRef, manifest: dict) -> dict:
    with store.open_file(ref, manifest, TYPESENSE_COLLECTION_FILE) as reader:
        return json.loads(b"".join(iter_chunks(reader)))


def restore_typesense_collection(
    client, store: BackupStore, ref: ArtifactRef, collection: str
) -> int:
    """Recreate the collection from the saved schema when it is missing (synonyms, overrides and
    aliases with it), then import every exported document with action=upsert."""
    manifest = store.require_manifest(ref)
    if not manifest.get("collection_exists", True):
        raise BackupError(
            f"{ref}: the collection did not exist when it was backed up; rebuild it from SQL"
        )
    definition = typesense_definition(store, ref, manifest)
    if not client.collection_exists(collection):
        client.recreate_collection(
            definition["schema"],
            definition.get("synonyms", ()),
            definition.get("overrides", ()),
            definition.get("aliases", ()),
            name=collection,
        )
    with store.open_file(ref, manifest, TYPESENSE_DOCUMENTS_FILE) as reader:
        return client.import_jsonl(collection, iter_decompressed(reader), action="upsert")


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
        local = Path(scratch) / f"{source_collection}.snapshot"
        sha = restore_snapshot_file(store, ref, manifest, source_collection, local)
        if sha != described["sha256_uncompressed"]:
            raise BackupError(
                f"{ref}: snapshot of {source_collection} does not match the checksum taken at backup"
            )
        client.recover_from_upload(
            target_collection or source_collection, local, checksum=sha, priority="snapshot"
        )
    return described["points"]
