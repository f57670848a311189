"""Putting a Typesense collection back: from its export (recreating schema, synonyms, overrides
and aliases when the collection is missing), or rebuilt from SQL rows by the policy's mapping."""

from __future__ import annotations

import json
from collections.abc import Iterator

from backup_pipelines.lib.engines import Mode
from backup_pipelines.lib.errors import BackupError, EntriesRefused, Refusals
from backup_pipelines.lib.mapping import Row
from backup_pipelines.lib.policy import IndexMapping
from backup_pipelines.lib.store import ArtifactRef, BackupStore, iter_chunks
from backup_pipelines.lib.streams import iter_decompressed
from backup_pipelines.lib.typesense.documents import ensure_typesense_collection, typesense_jsonl
from backup_pipelines.lib.typesense.export import (
    TYPESENSE_COLLECTION_FILE,
    TYPESENSE_DOCUMENTS_FILE,
)

LABEL = "Typesense"
# Documents per import request of a restore, by measurement (bench/README.md, "Typesense import
# batch"): 100,000 documents took 5.7-6.1 s in batches of 2,000 (the client's default), 4.4-4.7 s
# in batches of 10,000 and 4.1-4.9 s in batches of 40,000; the server's CPU was the same. At
# ~400 bytes a memory document a batch holds ~4 MB.
RESTORE_IMPORT_BATCH = 10_000


def typesense_definition(store: BackupStore, ref: ArtifactRef, manifest: dict) -> dict:
    with store.open_file(ref, manifest, TYPESENSE_COLLECTION_FILE) as reader:
        return json.loads(b"".join(iter_chunks(reader)))


def restore_typesense_collection(
    client, store: BackupStore, ref: ArtifactRef, collection: str, refused: Refusals | None = None
) -> int:
    """Recreate the collection from the saved schema when it is missing (synonyms, overrides and
    aliases with it), then import every exported document with action=upsert. Documents
    Typesense refuses go to `refused` (without it: ImportFailed once all others are in)."""
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
        return client.import_jsonl(
            collection,
            iter_decompressed(reader),
            action="upsert",
            batch_size=RESTORE_IMPORT_BATCH,
            refused=refused,
        )


def restore_from_export(
    client,
    store: BackupStore,
    ref: ArtifactRef,
    manifest: dict,
    target: str,
    mode: Mode,
    refused: Refusals | None = None,
) -> dict:
    """Replace (or fill a missing collection) with upsert; merge creates only the documents
    the live collection lacks (409 "already exists" counts as kept, like ON CONFLICT DO
    NOTHING), so documents changed after the backup are never overwritten. Either way a rerun
    after a failure finishes the import. A refused document does not stop the others: it goes
    to `refused`, or without it, EntriesRefused is raised once the others are in."""
    collected = refused if refused is not None else Refusals(LABEL, target)
    if mode is Mode.REPLACE or not client.collection_exists(target):
        upserted = restore_typesense_collection(client, store, ref, target, collected)
        result = {"source": "export", "upserted": upserted}
    else:
        with store.open_file(ref, manifest, TYPESENSE_DOCUMENTS_FILE) as reader:
            created, kept = client.import_missing(
                target, iter_decompressed(reader), RESTORE_IMPORT_BATCH, refused=collected
            )
        result = {"source": "export", "created": created, "already_present": kept}
    raise_unless_collected(collected, refused)
    return result


def rebuild_from_rows(
    client,
    target: str,
    rows: Iterator[Row],
    mode: Mode,
    mapping: IndexMapping,
    refused: Refusals | None = None,
) -> dict:
    """`target` (created from the mapping when missing) filled from the rows: replace upserts
    every document, merge creates the missing ones. Refused as in restore_from_export."""
    collected = refused if refused is not None else Refusals(LABEL, target)
    ensure_typesense_collection(client, target, mapping)
    documents = typesense_jsonl(rows, mapping, collected)
    if mode is Mode.REPLACE:
        upserted = client.import_jsonl(target, documents, action="upsert", refused=collected)
        result = {"source": "sql", "upserted": upserted}
    else:
        created, kept = client.import_missing(target, documents, refused=collected)
        result = {"source": "sql", "created": created, "already_present": kept}
    raise_unless_collected(collected, refused)
    return result


def raise_unless_collected(collected: Refusals, caller_collects: Refusals | None) -> None:
    """A caller that passed no collector of its own gets the refusals as an error."""
    if caller_collects is None and collected.count:
        raise EntriesRefused(collected)
