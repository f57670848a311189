"""Small helpers shared by tests (no fakes of project code here)."""

from backup_pipelines.lib.postgres import dump as postgres
from backup_pipelines.lib.qdrant.snapshot import snapshot_qdrant_collections
from backup_pipelines.lib.store import ArtifactRef, BackupStore
from backup_pipelines.lib.typesense.export import export_typesense_collection

DATE = "2026-11-21"


def flip_one_byte(store: BackupStore, ref: ArtifactRef, name: str, offset: int = 100) -> None:
    """Corrupt one byte of a committed file in place, as bit rot or a bad copy would."""
    manifest = store.require_manifest(ref)
    entry = next(f for f in manifest["files"] if f["name"] == name)
    key = f"{ref.folder}/{entry['path']}"
    with store._open_read(key) as handle:
        data = bytearray(handle.read())
    data[min(offset, len(data) - 1)] ^= 0x01
    sink = store._open_sink(key)
    sink.write(bytes(data))
    sink.close()


def back_up(store, indexed, workspace, sql=True, indexes=("typesense", "qdrant"), date=DATE):
    """The daily per-workspace backups of one partition: SQL first, then each index."""
    policy = indexed["policy"]
    if sql:
        ref = ArtifactRef("postgres/workspace_dump", date, workspace)
        with store.begin(ref) as writer:
            writer.commit(**postgres.dump_workspace(indexed["db"], workspace, policy, writer))
    if "typesense" in indexes:
        client = indexed["typesense"]
        ref = ArtifactRef("typesense/collection_export", date, workspace)
        collection = policy.typesense_collection_for(workspace)
        with store.begin(ref) as writer:
            writer.commit(
                **export_typesense_collection(client, client.http.base_url, collection, writer)
            )
    if "qdrant" in indexes:
        client = indexed["qdrant"]
        ref = ArtifactRef("qdrant/collection_snapshot", date, workspace)
        with store.begin(ref) as writer:
            fields = snapshot_qdrant_collections(
                client, client.http.base_url, policy.qdrant_collections_for(workspace), writer
            )
            writer.commit(**fields)


def restore_env(indexed, tmp_path) -> dict:
    return {
        "DATABASE_URL": indexed["db"],
        "BACKUP_STORE_URL": f"file://{tmp_path}",
        "TYPESENSE_URL": indexed["typesense_url"],
        "TYPESENSE_API_KEY": indexed["typesense_api_key"],
        "QDRANT_URL": indexed["qdrant_url"],
    }


def index_workspace(conn, workspace, policy, typesense, qdrant, only_ids=None) -> None:
    """Index a workspace's rows in Typesense and Qdrant as the platform's indexer would (by the
    policy's mapping); `only_ids`: just those rows."""
    from backup_pipelines.lib.postgres.memory_rows import iter_index_rows
    from backup_pipelines.lib.qdrant.points import index_into_qdrant
    from backup_pipelines.lib.typesense.documents import index_into_typesense

    for name, index in (("typesense", index_into_typesense), ("qdrant", index_into_qdrant)):
        mapping = policy.index_mapping(name)
        rows = iter_index_rows(conn, workspace, mapping, policy.schema)
        if only_ids is not None:
            rows = iter([r for r in rows if r[mapping.id_column] in only_ids])
        client = typesense if name == "typesense" else qdrant
        collection = (
            policy.typesense_collection_for(workspace)
            if name == "typesense"
            else policy.qdrant_collections_for(workspace)[0]
        )
        index(client, collection, rows, mapping)


def write_memory(database_url: str, workspace: str, content: str = "after the SQL backup") -> int:
    """A memory the platform writes now (a copy of one of the workspace's, new id): written
    between two backups, it makes their artifacts disagree. Returns its id."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute(
            "INSERT INTO memory_entries (workspace_id, kind, content, importance, embedding, "
            "created_at, updated_at) SELECT workspace_id, 'fact', %s, 0.5, embedding, now(), "
            "now() FROM memory_entries WHERE workspace_id = %s LIMIT 1 RETURNING id",
            (content, workspace),
        ).fetchone()[0]


def back_up_an_orphan(store, indexed, workspace, date=DATE) -> int:
    """After the partition's SQL backup: a memory written and indexed, then only the indexes
    backed up. The index artifacts hold an id the SQL artifact lacks (an orphan: the gate's
    FAIL); live SQL and indexes both keep the new memory. Returns its id."""
    import psycopg

    new_id = write_memory(indexed["db"], workspace, "written between the two backups")
    with psycopg.connect(indexed["db"]) as conn:  # a transaction: the rows come from a cursor
        index_workspace(
            conn, workspace, indexed["policy"], indexed["typesense"], indexed["qdrant"],
            only_ids={new_id},
        )  # fmt: skip
    back_up(store, indexed, workspace, sql=False, date=date)
    return new_id
