"""Qdrant: a snapshot of each collection of the workspace, checked offline with Qdrant's engine."""

import dagster as dg

from backup_pipelines.defs.artifacts import backup_freshness, verify_artifact_check, write_artifact
from backup_pipelines.defs.partitions import daily_by_workspace, date_and_workspace
from backup_pipelines.defs.postgres import WORKSPACE_DUMP
from backup_pipelines.defs.resources import (
    BackupStoreResource,
    PolicyResource,
    QdrantResource,
    WorkspaceRegistryResource,
)
from backup_pipelines.lib.qdrant.snapshot import (
    snapshot_qdrant_collections,
    verify_snapshots_offline,
)
from backup_pipelines.lib.store import ArtifactRef

COLLECTION_SNAPSHOT = dg.AssetKey(["qdrant", "collection_snapshot"])


@dg.asset(
    key=COLLECTION_SNAPSHOT,
    freshness_policy=backup_freshness(),
    partitions_def=daily_by_workspace,
    group_name="workspace_backups",
    kinds={"qdrant"},
    deps=[WORKSPACE_DUMP],
    description="A snapshot of each Qdrant collection of the workspace, verified against the server's sha256.",
)
def collection_snapshot(
    context: dg.AssetExecutionContext,
    qdrant: QdrantResource,
    backup_store: BackupStoreResource,
    policy: PolicyResource,
    workspace_registry: WorkspaceRegistryResource,
) -> dg.MaterializeResult:
    date, workspace = date_and_workspace(context.partition_key)
    workspace_registry.refuse_unknown(workspace, context.log)
    collections = policy.load().qdrant_collections_for(workspace)
    ref = ArtifactRef("qdrant/collection_snapshot", date, workspace)
    with qdrant.client() as client:
        return write_artifact(
            context,
            backup_store.get_store(),
            ref,
            lambda writer: snapshot_qdrant_collections(
                client, qdrant.url, collections, writer, context.log.info
            ),
        )


@dg.asset_check(
    asset=COLLECTION_SNAPSHOT,
    name="artifact_verifies",
    blocking=True,
    partitions_def=daily_by_workspace,
    description="Every file re-read against the manifest's sha256, then each snapshot opened "
    "offline and its points counted against the manifest (blocking).",
)
def collection_snapshot_verifies(
    context: dg.AssetCheckExecutionContext, backup_store: BackupStoreResource
):
    """Checksums of every file, then each snapshot opened offline: its point count must match."""
    date, workspace = date_and_workspace(context.partition_key)
    store = backup_store.get_store()
    ref = ArtifactRef("qdrant/collection_snapshot", date, workspace)
    result = verify_artifact_check(store, ref)
    if not result.passed:
        return result
    offline = verify_snapshots_offline(store, ref)
    return dg.AssetCheckResult(
        passed=offline.ok,
        description=None if offline.ok else "; ".join(offline.problems),
        metadata={
            **result.metadata,
            "points_counted_offline": dg.MetadataValue.json(offline.points),
        },
    )


defs = dg.Definitions(assets=[collection_snapshot], asset_checks=[collection_snapshot_verifies])
