"""Typesense backup of one workspace: the export stream goes straight into the store (zstd),
with what an export leaves out and a restore needs saved beside it (schema, synonyms,
overrides, aliases). A cut-off export raises before the commit, so it is never taken for a
complete one."""

from __future__ import annotations

import json

from backup_pipelines.lib.http import public_host
from backup_pipelines.lib.store import ArtifactWriter, utc_now_iso
from backup_pipelines.lib.streams import Log, Progress, zstd_compressing

TYPESENSE_DOCUMENTS_FILE = "documents.jsonl.zst"
TYPESENSE_COLLECTION_FILE = "collection.json"


def export_typesense_collection(
    client, base_url: str, collection: str, writer: ArtifactWriter, log: Log | None = None
) -> dict:
    """Back up one Typesense collection into `writer`; returns the manifest fields."""
    source = {"kind": "typesense", "collection": collection, "server": public_host(base_url)}
    tool = {"name": "typesense documents/export", "compression": "zstd level 1"}
    started_at = utc_now_iso()
    if not client.collection_exists(collection):
        # Not a failure: a workspace whose index was never built. The consistency gate sees
        # zero documents against the SQL rows and calls for a rebuild from SQL.
        return {
            "captured_at": started_at,
            "export_started_at": started_at,
            "collection_exists": False,
            "counts": {"documents": 0},
            "source": source,
            "tool": tool,
        }
    source["server_version"] = client.server_version()
    definition = {
        "schema": client.get_collection_schema(collection),
        "synonyms": client.list_synonyms(collection),
        "overrides": client.list_overrides(collection),
        "aliases": client.aliases_for(collection),
    }
    writer.write_bytes(
        TYPESENSE_COLLECTION_FILE, json.dumps(definition, indent=2, sort_keys=True).encode()
    )
    progress = Progress(f"{writer.ref.asset} {writer.ref.date}|{writer.ref.workspace}", log)
    export = client.stream_export(collection)
    with writer.open_file(TYPESENSE_DOCUMENTS_FILE) as out:
        with zstd_compressing(out) as compressed:
            for chunk in export:  # raises ExportIncomplete at the end of a cut-off body
                compressed.write(chunk)
                progress.add(bytes_in=len(chunk), rows=chunk.count(b"\n"))
        progress.add(bytes_out=out.bytes_written)
    if log:
        log(progress.line())
    return {
        "captured_at": utc_now_iso(),  # the end of the export: the conservative side for skew
        "export_started_at": started_at,
        "collection_exists": True,
        "counts": {"documents": export.documents},
        "aliases": [a["name"] for a in definition["aliases"]],
        "source": source,
        "tool": tool,
        "uncompressed_bytes": export.bytes,
        "duration_seconds": round(progress.seconds, 3),
    }
