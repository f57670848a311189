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
