"""Memory rows as Typesense documents: the collection schema and one document per row."""

from __future__ import annotations

import json
from collections.abc import Iterator

from backup_pipelines.lib.mapping import MemoryRow


def typesense_schema(collection: str) -> dict:
    return {
        "name": collection,
        "fields": [
            {"name": "workspace_id", "type": "string", "facet": True},
            {"name": "session_id", "type": "int64", "optional": True},
            {"name": "kind", "type": "string", "facet": True},
            {"name": "content", "type": "string"},
            {"name": "importance", "type": "float"},
            {"name": "created_at", "type": "int64"},
            {"name": "updated_at", "type": "int64"},
        ],
        "default_sorting_field": "created_at",
    }


def to_typesense_document(row: MemoryRow) -> dict:
    document = {
        "id": str(row.id),
        "workspace_id": row.workspace_id,
        "kind": row.kind,
        "content": row.content,
        "importance": float(row.importance),
        "created_at": int(row.created_at.timestamp()),
        "updated_at": int(row.updated_at.timestamp()),
    }
    if row.session_id is not None:
        document["session_id"] = row.session_id
    return document


def typesense_jsonl(rows: Iterator[MemoryRow]) -> Iterator[bytes]:
    """The rows as Typesense import lines (JSONL), one document per row."""
    for row in rows:
        yield json.dumps(to_typesense_document(row), ensure_ascii=False).encode() + b"\n"


def ensure_typesense_collection(client, collection: str) -> None:
    if not client.collection_exists(collection):
        client.create_collection(typesense_schema(collection))


def index_into_typesense(client, collection: str, rows: Iterator[MemoryRow]) -> int:
    """Create the collection when missing and upsert every row's document; returns the count."""
    ensure_typesense_collection(client, collection)
    return client.import_jsonl(collection, typesense_jsonl(rows), action="upsert")
