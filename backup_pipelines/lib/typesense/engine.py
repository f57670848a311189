"""Typesense as an index engine (see backup_pipelines.lib.engines)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from backup_pipelines.lib.engines import Mode
from backup_pipelines.lib.ids import Side
from backup_pipelines.lib.mapping import Row, type_problem
from backup_pipelines.lib.policy import IndexMapping, Policy
from backup_pipelines.lib.store import ArtifactRef, BackupStore
from backup_pipelines.lib.streams import Log
from backup_pipelines.lib.typesense import restore
from backup_pipelines.lib.typesense.client import TypesenseClient
from backup_pipelines.lib.typesense.documents import (
    document_id,
    index_into_typesense,
    probe_filter,
    probe_query_by,
)
from backup_pipelines.lib.typesense.ids import ids_in_collection, typesense_side


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

    def restore(
        self, client, store, ref, manifest, collection: str, target: str, mode: Mode, refused=None
    ):
        return restore.restore_from_export(client, store, ref, manifest, target, mode, refused)

    def column_problems(self, mapping: IndexMapping, columns: Mapping) -> list[str]:
        problems = []
        for number, spec in enumerate(mapping.fields):
            column = columns.get(spec.column)
            if column is None:
                continue  # reported as missing already
            problem = type_problem(spec.type, column)
            if problem:
                problems.append(f"{mapping.described(f'fields[{number}].type')}: {problem}")
            if column.nullable and not spec.optional:
                problems.append(
                    f"{mapping.described(f'fields[{number}]')}: column {spec.column} can be "
                    "NULL and a document leaves nulls out; mark the field `optional: true`"
                )
        return problems

    def rebuild(
        self, client, target: str, rows: Iterator[Row], mode: Mode, mapping, refused=None
    ) -> dict:
        return restore.rebuild_from_rows(client, target, rows, mode, mapping, refused)

    def count(self, client, collection: str) -> int:
        return client.num_documents(collection)

    def finds(self, client, collection: str, probe: Row, mapping: IndexMapping) -> bool:
        # A real search, narrowed to the probe's value of the probe column: it must return it.
        hits = client.search(
            collection,
            "*",
            probe_query_by(mapping),
            filter_by=probe_filter(probe, mapping),
            per_page=250,
        )
        wanted = document_id(probe[mapping.id_column])
        return any(h["document"]["id"] == wanted for h in hits.get("hits", []))

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

    def entry_ids(self, client, collection: str):
        return ids_in_collection(client, collection)

    def upsert_rows(self, client, collection: str, rows: Iterator[Row], mapping) -> int:
        return index_into_typesense(client, collection, rows, mapping)

    def delete_ids(self, client, collection: str, ids: list) -> int:
        wanted = [document_id(value) for value in ids]
        client.delete_documents(collection, wanted)
        return len(wanted)


ENGINE = TypesenseEngine()
