"""Memory rows as Qdrant points: the embedding as the vector, the rest as payload."""

from __future__ import annotations

from collections.abc import Iterator

from backup_pipelines.lib.mapping import MemoryRow, batched


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


def index_into_qdrant(client, collection: str, rows: Iterator[MemoryRow], batch: int = 256) -> int:
    """Create the collection (sized by the first embedding) when missing and upsert every point."""
    count = 0
    for group in batched(rows, batch):
        if count == 0 and not client.collection_exists(collection):
            client.create_collection(collection, size=len(group[0].embedding), distance="Cosine")
        client.upsert_points(collection, [to_qdrant_point(r) for r in group])
        count += len(group)
    return count
