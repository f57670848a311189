"""Qdrant as an index engine (see backup_pipelines.lib.engines)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from backup_pipelines.lib.engines import Mode
from backup_pipelines.lib.ids import Side
from backup_pipelines.lib.mapping import Row, type_problem, vector_value
from backup_pipelines.lib.policy import IndexMapping, Policy
from backup_pipelines.lib.qdrant import restore
from backup_pipelines.lib.qdrant.client import QdrantHttp
from backup_pipelines.lib.qdrant.ids import ids_from_qdrant_artifact, ids_in_collection
from backup_pipelines.lib.qdrant.points import index_into_qdrant, point_id
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

    def restore(
        self, client, store, ref, manifest, collection: str, target: str, mode: Mode, refused=None
    ):
        return restore.restore_from_snapshot(client, store, ref, collection, target, mode, refused)

    def column_problems(self, mapping: IndexMapping, columns: Mapping) -> list[str]:
        problems = []
        identifier = columns.get(mapping.id_column)
        if identifier is not None and identifier.base not in POINT_ID_TYPES:
            problems.append(
                f"{mapping.described('id_column')}: column {identifier.name} is "
                f"{identifier.type}; Qdrant point ids are unsigned integers or UUIDs "
                "(smallint, integer, bigint or uuid)"
            )
        vector = columns.get(mapping.vector_column)
        if vector is not None:
            problem = _vector_problem(vector, mapping.vector_encoding)
            if problem:
                problems.append(f"{mapping.described('vector_column')}: {problem}")
        for number, spec in enumerate(mapping.fields):
            column = columns.get(spec.column)
            problem = type_problem(spec.type, column) if column is not None else None
            if problem:
                problems.append(f"{mapping.described(f'fields[{number}].type')}: {problem}")
        return problems

    def rebuild(
        self, client, target: str, rows: Iterator[Row], mode: Mode, mapping, refused=None
    ) -> dict:
        # Points are added where missing in either mode: a rebuild never drops newer points.
        return restore.rebuild_from_rows(client, target, rows, mapping, refused)

    def count(self, client, collection: str) -> int:
        return client.count(collection)

    def finds(self, client, collection: str, probe: Row, mapping: IndexMapping) -> bool:
        where = f"{mapping.table}.{mapping.vector_column} of the probe"
        vector = vector_value(probe[mapping.vector_column], mapping.vector_encoding, where)
        hits = client.search(collection, vector, limit=3)
        wanted = point_id(probe[mapping.id_column])
        return any(h["id"] == wanted for h in hits)

    def restore_missing(self, client, store, ref, manifest: dict, policy: Policy, log: Log):
        return {
            collection: restore.recover_qdrant_collection(client, store, ref, collection)
            for collection in manifest.get("collections", {})
            if not client.collection_exists(collection)
        }

    def prepare_scratch(self, client, store, ref, manifest: dict, target: str) -> None:
        return None  # recovery creates the collection; snapshots carry no aliases

    def entry_ids(self, client, collection: str):
        return ids_in_collection(client, collection)

    def upsert_rows(self, client, collection: str, rows: Iterator[Row], mapping) -> int:
        return index_into_qdrant(client, collection, rows, mapping)

    def delete_ids(self, client, collection: str, ids: list) -> int:
        wanted = [point_id(value) for value in ids]
        for start in range(0, len(wanted), DELETE_BATCH):
            client.delete_points(collection, wanted[start : start + DELETE_BATCH])
        return len(wanted)


POINT_ID_TYPES = {"int2", "int4", "int8", "uuid"}
DELETE_BATCH = 1000  # point ids per points/delete request
VECTOR_TYPES = {"vector", "halfvec"}  # pgvector's, read as text "[1,2,3]"


def _vector_problem(column, encoding: str) -> str | None:
    if column.category == "A" and column.element_category == "N":
        return None
    if column.base in VECTOR_TYPES:
        return None
    if column.base == "bytea":
        if encoding == "array":
            return (
                f"column {column.name} is bytea: set indexes.qdrant.vector_encoding to "
                "float32le or float64le (how its floats are packed)"
            )
        return None
    return (
        f"column {column.name} is {column.type}; a vector column is a numeric array "
        "(real[], double precision[]), a pgvector vector, or a bytea of packed floats"
    )


ENGINE = QdrantEngine()
