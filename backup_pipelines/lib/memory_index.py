"""The one mapping from memory rows (SQL, the truth) to index entries (Typesense documents,
Qdrant points). The sample indexer and the restore's index rebuild both use it, so a rebuilt
index is the index the platform would have built.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql

from backup_pipelines.lib.policy import Policy
from backup_pipelines.lib.workspaces import validate_workspace_id

MEMORY_COLUMNS = (
    "id",
    "workspace_id",
    "session_id",
    "kind",
    "content",
    "importance",
    "embedding",
    "created_at",
    "updated_at",
)


@dataclass(frozen=True)
class MemoryRow:
    id: int
    workspace_id: str
    session_id: int | None
    kind: str
    content: str
    importance: float
    embedding: list[float]
    created_at: datetime
    updated_at: datetime


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


def to_qdrant_point(row: MemoryRow) -> dict:
    return {
        "id": row.id,
        "vector": [float(x) for x in row.embedding],
        "payload": {
            "workspace_id": row.workspace_id,
            "session_id": row.session_id,
            "kind": row.kind,
            "importance": float(row.importance),
            "created_at": row.created_at.isoformat(),
            "updated_at": row.updated_at.isoformat(),
        },
    }


def iter_memory_rows(
    conn: psycopg.Connection,
    workspace: str,
    policy: Policy,
    batch: int = 2000,
    schema: str | None = None,
) -> Iterator[MemoryRow]:
    """Stream one workspace's memory rows (a server-side cursor: memory stays flat)."""
    workspace = validate_workspace_id(workspace)
    query = sql.SQL("SELECT {cols} FROM {tbl} WHERE workspace_id = %s ORDER BY id").format(
        cols=sql.SQL(", ").join(sql.Identifier(c) for c in MEMORY_COLUMNS),
        tbl=sql.Identifier(schema or policy.schema, policy.memory_table),
    )
    with conn.cursor(name=f"memory_rows_{workspace}") as cursor:
        cursor.itersize = batch
        cursor.execute(query, (workspace,))
        for record in cursor:
            yield MemoryRow(*record)


def batched(rows: Iterator, size: int) -> Iterator[list]:
    batch: list = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


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


def index_into_qdrant(client, collection: str, rows: Iterator[MemoryRow], batch: int = 256) -> int:
    """Create the collection (sized by the first embedding) when missing and upsert every point."""
    count = 0
    for group in batched(rows, batch):
        if count == 0 and not client.collection_exists(collection):
            client.create_collection(collection, size=len(group[0].embedding), distance="Cosine")
        client.upsert_points(collection, [to_qdrant_point(r) for r in group])
        count += len(group)
    return count


def newest_memory(conn: psycopg.Connection, workspace: str, policy: Policy) -> MemoryRow | None:
    """The workspace's most recent memory row (a probe that a restore brought back)."""
    query = sql.SQL(
        "SELECT {cols} FROM {tbl} WHERE workspace_id = %s ORDER BY id DESC LIMIT 1"
    ).format(
        cols=sql.SQL(", ").join(sql.Identifier(c) for c in MEMORY_COLUMNS),
        tbl=sql.Identifier(policy.schema, policy.memory_table),
    )
    row = conn.execute(query, (validate_workspace_id(workspace),)).fetchone()
    return MemoryRow(*row) if row else None
