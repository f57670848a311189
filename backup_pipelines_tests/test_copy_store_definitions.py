"""A real backup run with BACKUP_COPY_STORE_URL set (moto S3 over HTTP): each committed
artifact is in the copy store right after its step, byte for byte, and the materialization
says so."""

import dagster as dg

from backup_pipelines.lib.store import ArtifactRef, store_from_url
from backup_pipelines.lib.store.copy import copy_store_from_env
from backup_pipelines_tests.store.test_copy_store import manifest_bytes, stored_sha256
from backup_pipelines_tests.test_definitions import definitions  # noqa: F401 (a fixture)

ASSETS = ["postgres/workspace_dump", "typesense/collection_export", "qdrant/collection_snapshot"]


def test_copy_store_backup_run_copies_each_committed_artifact(
    definitions,  # noqa: F811
    s3_env,
    tmp_path,
    monkeypatch,
):
    monkeypatch.setenv("BACKUP_COPY_STORE_URL", f"s3://{s3_env.bucket}/copy-run-{tmp_path.name}")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("workspaces", ["ws_acme"])
        job = definitions.resolve_job_def("workspace_backup_job")
        result = job.execute_in_process(instance=instance, partition_key="2026-11-21|ws_acme")
    assert result.success
    for event in result.get_asset_materialization_events():
        metadata = event.step_materialization_data.materialization.metadata
        assert metadata["copy"].value == "copied"
        assert metadata["copy_store"].value.startswith(f"s3://{s3_env.bucket}/copy-run-")
    primary = store_from_url(f"file://{tmp_path}/store")
    copy = copy_store_from_env()
    for asset in ASSETS:
        ref = ArtifactRef(asset, "2026-11-21", "ws_acme")
        assert stored_sha256(copy, ref) == stored_sha256(primary, ref)
        assert manifest_bytes(copy, ref) == manifest_bytes(primary, ref)
