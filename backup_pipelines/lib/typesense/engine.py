"""Typesense as an index engine (see backup_pipelines.lib.engines)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from backup_pipelines.lib.engines import Mode
from backup_pipelines.lib.ids import Side
from backup_pipelines.lib.mapping import MemoryRow
from backup_pipelines.lib.policy import Policy
from backup_pipelines.lib.store import ArtifactRef, BackupStore
from backup_pipelines.lib.streams import Log
from backup_pipelines.lib.typesense import restore
from backup_pipelines.lib.typesense.client import TypesenseClient
from backup_pipelines.lib.typesense.ids import typesense_side


class TypesenseEngine:
    name = "typesense"
    label = "Typesense"
    asset = "typesense/collection_export"

    def configured(self, env: Mapping[str, str]) -> bool:
        return bool(env.get("TYPESENSE_URL") and env.get("TYPESENSE_API_KEY"))

    def client_from_env(self, env: Mapping[str, str]) -> TypesenseClient:
        return TypesenseClient(env["TYPESENSE_URL"], env["TYPESENSE_API_KEY"])

    def memory_collection(self, policy: Policy, workspace: str) -> str:
        return policy.typesense_collection_for(workspace)

    def holds(self, manifest: dict, collection: str) -> bool:
        return True  # an export of a missing collection is an empty index: gated, then rebuilt

    def ids(self, store: BackupStore, ref: ArtifactRef, manifest: dict, collection: str) -> Side:
        return typesense_side(store, ref, manifest, collection)

    def restore(self, client, store, ref, manifest, collection: str, target: str, mode: Mode):
        return restore.restore_from_export(client, store, ref, manifest, target, mode)

    def rebuild(self, client, target: str, rows: Iterator[MemoryRow], mode: Mode) -> dict:
        return restore.rebuild_from_rows(client, target, rows, mode)

    def finds(self, client, collection: str, probe: MemoryRow) -> bool:
        # A real search, narrowed to the probe's timestamp: it must return the probe.
        hits = client.search(
            collection,
            "*",
            "content",
            filter_by=f"created_at:={int(probe.created_at.timestamp())}",
            per_page=50,
        )
        return any(h["document"]["id"] == str(probe.id) for h in hits.get("hits", []))

    def restore_missing(self, client, store, ref, manifest: dict, policy: Policy, log: Log):
        collection = policy.typesense_collection_for(ref.workspace)
        if not manifest.get("collection_exists", True) or client.collection_exists(collection):
            return {}
        return {collection: restore.restore_typesense_collection(client, store, ref, collection)}

    def prepare_scratch(self, client, store, ref, manifest: dict, target: str) -> None:
        """Create the scratch collection from the backed-up schema, synonyms and overrides but
        WITHOUT its aliases: recreating it with them would move the live aliases (and so live
        search traffic) onto the scratch collection. The restore then imports into it."""
        if not manifest.get("collection_exists", True):
            return  # the restore rebuilds the index from SQL
        definition = restore.typesense_definition(store, ref, manifest)
        client.recreate_collection(
            definition["schema"],
            definition.get("synonyms", ()),
            definition.get("overrides", ()),
            (),
            name=target,
        )


ENGINE = TypesenseEngine()
