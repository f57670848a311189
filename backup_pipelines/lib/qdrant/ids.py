"""The point ids of a Qdrant snapshot artifact (listed at backup time, one id a line), for the
consistency gate."""

from __future__ import annotations

import numpy as np

from backup_pipelines.lib.ids import (
    IdCollector,
    Side,
    declared_count,
    decompressed,
    index_name,
    line_blocks,
)
from backup_pipelines.lib.store import ArtifactRef, BackupStore

QDRANT_IDS_FILE = "point_ids.txt.zst"


def ids_from_qdrant_artifact(
    store: BackupStore,
    ref: ArtifactRef,
    manifest: dict,
    name: str | None = None,
    collection: str | None = None,
) -> Side:
    """The point ids of a Qdrant snapshot artifact (one id a line): of `collection` when the
    artifact holds several (`<collection>.point_ids.txt.zst`), else of point_ids.txt.zst."""
    file_name, declared, captured_at = (
        QDRANT_IDS_FILE,
        declared_count(manifest, "points"),
        manifest["captured_at"],
    )
    if collection is not None:
        described = manifest.get("collections", {}).get(collection)
        if described is None:  # the collection did not exist at backup time: an empty index
            return Side(name or f"qdrant:{collection}", captured_at, np.empty(0, np.int64), 0)
        file_name, declared = f"{collection}.point_ids.txt.zst", described["points"]
        created = described["snapshot"].get("creation_time")
        captured_at = created + ("" if created.endswith("Z") else "Z") if created else captured_at
    collector = IdCollector()
    for buf, start, stop in line_blocks(decompressed(store, ref, manifest, file_name)):
        collector.add(buf[start:stop].split())
    return Side(
        name
        or (f"qdrant:{collection}" if collection else index_name("qdrant", ref, manifest, None)),
        captured_at,
        collector.array(),
        declared,
    )


def ids_in_collection(client, collection: str, page_size: int = 1000) -> np.ndarray:
    """The point ids a live collection holds (scrolled without payloads or vectors); empty
    when the collection does not exist."""
    if not client.collection_exists(collection):
        return np.empty(0, np.int64)
    collector = IdCollector()
    page: list[bytes] = []
    for point in client.scroll(collection, page_size, with_payload=False, with_vector=False):
        page.append(str(point["id"]).encode())
        if len(page) >= page_size:
            collector.add(page)
            page = []
    collector.add(page)
    return collector.array()
