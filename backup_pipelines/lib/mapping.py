"""The memory row: what the indexes are derived from (SQL is the truth). Every index engine maps
it to its own entries (a Typesense document, a Qdrant point); the sample indexer and the
restore's index rebuild both use those mappings, so a rebuilt index is the index the platform
would have built.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

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


def batched(rows: Iterator, size: int) -> Iterator[list]:
    batch: list = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
