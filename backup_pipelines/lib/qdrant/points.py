"""Rows as Qdrant points, by the policy's mapping (`indexes.qdrant`): the vector column as the
vector, the mapped columns as payload (nulls kept, as null)."""

from __future__ import annotations

from collections.abc import Iterator
from uuid import UUID

from backup_pipelines.lib.errors import BackupError
from backup_pipelines.lib.mapping import Row, batched, typed_value, vector_value
from backup_pipelines.lib.policy import IndexMapping


def point_id(value) -> int | str:
    """Qdrant point ids are unsigned integers or UUIDs (canonical hyphenated text)."""
    if isinstance(value, bool):
        raise BackupError(f"point id {value!r} is neither an unsigned integer nor a UUID")
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, str):
        if value.isdigit():
            return int(value)
        try:
            return str(UUID(value))
        except ValueError:
            pass
    raise BackupError(f"point id {value!r} is neither an unsigned integer nor a UUID")


def to_qdrant_point(row: Row, mapping: IndexMapping) -> dict:
    identifier = row[mapping.id_column]
    where = f"{mapping.table}.{mapping.vector_column} of row {identifier}"
    return {
        "id": point_id(identifier),
        "vector": vector_value(row[mapping.vector_column], mapping.vector_encoding, where),
        "payload": {
            spec.field: typed_value(row[spec.column], spec.type) for spec in mapping.fields
        },
    }


def index_into_qdrant(
    client, collection: str, rows: Iterator[Row], mapping: IndexMapping, batch: int = 256
) -> int:
    """Create the collection (sized by the first vector) when missing and upsert every point."""
    count = 0
    for group in batched(rows, batch):
        points = [to_qdrant_point(r, mapping) for r in group]
        if count == 0 and not client.collection_exists(collection):
            client.create_collection(
                collection, size=len(points[0]["vector"]), distance=mapping.distance
            )
        client.upsert_points(collection, points)
        count += len(group)
    return count
