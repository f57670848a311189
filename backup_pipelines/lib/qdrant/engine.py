"""Qdrant as an index engine (see backup_pipelines.lib.engines)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from backup_pipelines.lib.engines import Mode
from backup_pipelines.lib.ids import Side
from backup_pipelines.lib.mapping import MemoryRow
from backup_pipelines.lib.policy import Policy
from backup_pipelines.lib.qdrant import restore
from backup_pipelines.lib.qdrant.client import QdrantHttp
from backup_pipelines.lib.qdrant.ids import ids_from_qdrant_artifact
from backup_pipelines.lib.store import ArtifactRef, BackupStore
from backup_pipelines.lib.streams import Log


class QdrantEngine:
    name = "qdrant"
    label = "Qdrant"
    asset = "qdrant/collection_snapshot"

    def configured(self, env: Mapping[str, str]) -> bool:
        return bool(env.get("QDRANT_URL"))

    def client_from_env(self, env: Mapping[str, str]) -> QdrantHttp:
        return QdrantHttp(env["QDRANT_URL"], env.get("QDRANT_API_KEY") or None)

    def memory_collection(self, policy: Policy, workspace: str) -> str:
        # The first collection template holds the memory entries' vectors; others (if any)
        # are not derived from the memory rows and have nothing to compare with.
        return policy.qdrant_collections_for(workspace)[0]

    def holds(self, manifest: dict, collection: str) -> bool:
        return collection in manifest.get("collections", {})

    def ids(self, store: BackupStore, ref: ArtifactRef, manifest: dict, collection: str) -> Side:
        return ids_from_qdrant_artifact(store, ref, manifest, collection=collection)

    def restore(self, client, store, ref, manifest, collection: str, target: str, mode: Mode):
        return restore.restore_from_snapshot(client, store, ref, collection, target, mode)

    def rebuild(self, client, target: str, rows: Iterator[MemoryRow], mode: Mode) -> dict:
        # Points are added where missing in either mode: a rebuild never drops newer points.
        return restore.rebuild_from_rows(client, target, rows)

    def finds(self, client, collection: str, probe: MemoryRow) -> bool:
        hits = client.search(collection, [float(x) for x in probe.embedding], limit=3)
        return any(h["id"] == probe.id for h in hits)

    def restore_missing(self, client, store, ref, manifest: dict, policy: Policy, log: Log):
        return {
            collection: restore.recover_qdrant_collection(client, store, ref, collection)
            for collection in manifest.get("collections", {})
            if not client.collection_exists(collection)
        }

    def prepare_scratch(self, client, store, ref, manifest: dict, target: str) -> None:
        return None  # recovery creates the collection; snapshots carry no aliases


ENGINE = QdrantEngine()
