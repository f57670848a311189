"""Typesense exports (real server) and Qdrant snapshots (stand-in, or a real server when
QDRANT_URL is set): back up, lose the collection, restore, compare."""

import json

import pytest

from backup_pipelines.lib.errors import ChecksumMismatch
from backup_pipelines.lib.http import IndexStoreError, RetryPolicy
from backup_pipelines.lib.qdrant import restore as qdrant_restore
from backup_pipelines.lib.qdrant import snapshot as qdrant_snapshot
from backup_pipelines.lib.store import ArtifactRef, LocalStore
from backup_pipelines.lib.typesense import export as typesense_export
from backup_pipelines.lib.typesense import restore as typesense_restore
from backup_pipelines.lib.typesense.client import TypesenseClient
from backup_pipelines_tests.helpers import flip_one_byte

DATE = "2026-11-21"


def export(store, indexed, workspace):
    ref = ArtifactRef("typesense/collection_export", DATE, workspace)
    collection = indexed["policy"].typesense_collection_for(workspace)
    client = indexed["typesense"]
    with store.begin(ref) as writer:
        writer.commit(
            **typesense_export.export_typesense_collection(
                client, client.http.base_url, collection, writer
            )
        )
    return ref, collection


def snapshot(store, indexed, workspace):
    ref = ArtifactRef("qdrant/collection_snapshot", DATE, workspace)
    collections = indexed["policy"].qdrant_collections_for(workspace)
    client = indexed["qdrant"]
    with store.begin(ref) as writer:
        writer.commit(
            **qdrant_snapshot.snapshot_qdrant_collections(
                client, client.http.base_url, collections, writer
            )
        )
    return ref, collections[0]


def all_documents(client: TypesenseClient, collection: str) -> list[dict]:
    return sorted(
        (json.loads(line) for line in b"".join(client.stream_export(collection)).splitlines()),
        key=lambda d: d["id"],
    )


def all_points(client, collection: str) -> list[dict]:
    return sorted(
        client.scroll(collection, with_payload=True, with_vector=True), key=lambda p: p["id"]
    )


def test_typesense_export_drop_recreate_import_gives_identical_documents(tmp_path, indexed_source):
    store = LocalStore(tmp_path)
    client = indexed_source["typesense"]
    ref, collection = export(store, indexed_source, "ws_acme")
    client.upsert_alias("memory_current_ws_acme", collection)
    ref, collection = export(store, indexed_source, "ws_acme")  # again, now with an alias
    manifest = store.require_manifest(ref)
    assert manifest["counts"]["documents"] == 120
    assert manifest["aliases"] == ["memory_current_ws_acme"]
    before = all_documents(client, collection)

    client.delete_collection(collection)
    restored = typesense_restore.restore_typesense_collection(client, store, ref, collection)

    assert restored == 120
    assert all_documents(client, collection) == before
    assert {a["name"] for a in client.aliases_for(collection)} == {"memory_current_ws_acme"}
    assert (
        client.get_collection_schema(collection)
        == typesense_restore.typesense_definition(store, ref, manifest)["schema"]
    )


def test_qdrant_snapshot_delete_recover_gives_same_points_vectors_payloads(
    tmp_path, indexed_source
):
    store = LocalStore(tmp_path)
    client = indexed_source["qdrant"]
    ref, collection = snapshot(store, indexed_source, "ws_globex")
    manifest = store.require_manifest(ref)
    assert manifest["counts"]["points"] == 120
    assert client.list_snapshots(collection) == []  # the server-side snapshot was deleted
    before = all_points(client, collection)
    assert len(before) == 120

    client.delete_collection(collection)
    recovered = qdrant_restore.recover_qdrant_collection(client, store, ref, collection)
    assert recovered == {"recovered": 120}

    assert all_points(client, collection) == before
    assert client.list_snapshots(collection) == []  # the uploaded file was deleted
    offline = qdrant_snapshot.verify_snapshots_offline(store, ref)
    assert offline.ok and offline.points == {collection: 120}


def test_qdrant_point_ids_file_lists_exactly_the_points(tmp_path, indexed_source):
    from backup_pipelines.lib.streams import iter_decompressed

    store = LocalStore(tmp_path)
    ref, collection = snapshot(store, indexed_source, "ws_initech")
    manifest = store.require_manifest(ref)
    with store.open_file(ref, manifest, qdrant_snapshot.point_ids_file(collection)) as reader:
        ids = [int(x) for x in b"".join(iter_decompressed(reader)).split()]
    assert ids == sorted(p["id"] for p in all_points(indexed_source["qdrant"], collection))


@pytest.mark.parametrize("asset", ["typesense", "qdrant"])
def test_one_flipped_byte_fails_verification_with_clear_error(tmp_path, indexed_source, asset):
    store = LocalStore(tmp_path)
    if asset == "typesense":
        ref, _ = export(store, indexed_source, "ws_acme")
        name = typesense_export.TYPESENSE_DOCUMENTS_FILE
    else:
        ref, collection = snapshot(store, indexed_source, "ws_acme")
        name = qdrant_snapshot.snapshot_file(collection)
    flip_one_byte(store, ref, name, offset=200)
    result = store.verify(ref)
    assert not result.ok
    assert f"file {name!r} does not match its manifest" in result.problems[0]
    if asset == "qdrant":
        offline = qdrant_snapshot.verify_snapshots_offline(store, ref)
        assert not offline.ok and "does not match its manifest" in offline.problems[0]
        with pytest.raises(ChecksumMismatch):
            qdrant_restore.recover_qdrant_collection(
                indexed_source["qdrant"], store, ref, collection, "agent_scratch"
            )


def test_workspace_without_collections_is_a_clear_non_failing_result(tmp_path, indexed_source):
    store = LocalStore(tmp_path)
    ref, _ = export(store, indexed_source, "ws_never_indexed")
    manifest = store.require_manifest(ref)
    assert manifest["collection_exists"] is False and manifest["counts"]["documents"] == 0
    ref, _ = snapshot(store, indexed_source, "ws_never_indexed")
    manifest = store.require_manifest(ref)
    assert (
        manifest["collections_missing"] == ["agent_ws_never_indexed"]
        and manifest["counts"]["points"] == 0
    )


def test_index_store_down_retries_then_fails_clearly_and_leaves_no_artifact(tmp_path):
    from backup_pipelines.devstack.ports import free_port

    store = LocalStore(tmp_path)
    url = f"http://127.0.0.1:{free_port()}"
    client = TypesenseClient(
        url, "secret-api-key-123", policy=RetryPolicy(attempts=3, first_delay=0.01)
    )
    ref = ArtifactRef("typesense/collection_export", DATE, "ws_acme")
    with (
        pytest.raises(IndexStoreError, match="after 3 attempts") as raised,
        store.begin(ref) as writer,
    ):
        typesense_export.export_typesense_collection(client, url, "memory_ws_acme", writer)
    assert "secret-api-key-123" not in str(raised.value)
    assert store.read_manifest(ref) is None and list(store.list_artifacts()) == []
