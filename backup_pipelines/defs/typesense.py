"""Typesense: the workspace's collection exported with everything a restore needs beside it."""

import dagster as dg

from backup_pipelines.defs.artifacts import backup_freshness, build_verify_check, write_artifact
from backup_pipelines.defs.partitions import daily_by_workspace, date_and_workspace
from backup_pipelines.defs.postgres import WORKSPACE_DUMP
from backup_pipelines.defs.resources import (
    BackupStoreResource,
    PolicyResource,
    TypesenseResource,
    WorkspaceRegistryResource,
)
from backup_pipelines.lib.store import ArtifactRef
from backup_pipelines.lib.typesense.export import export_typesense_collection

COLLECTION_EXPORT = dg.AssetKey(["typesense", "collection_export"])


@dg.asset(
    key=COLLECTION_EXPORT,
    freshness_policy=backup_freshness(),
    partitions_def=daily_by_workspace,
    group_name="workspace_backups",
    kinds={"typesense"},
    # SQL first: the index export follows the SQL dump of the same partition closely.
    deps=[WORKSPACE_DUMP],
    description="The workspace's Typesense collection: JSONL export plus schema, synonyms, overrides and aliases.",
)
def collection_export(
    context: dg.AssetExecutionContext,
    typesense: TypesenseResource,
    backup_store: BackupStoreResource,
    policy: PolicyResource,
    workspace_registry: WorkspaceRegistryResource,
) -> dg.MaterializeResult:
    date, workspace = date_and_workspace(context.partition_key)
    workspace_registry.refuse_unknown(workspace, context.log)
    collection = policy.load().typesense_collection_for(workspace)
    ref = ArtifactRef("typesense/collection_export", date, workspace)
    with typesense.client() as client:
        return write_artifact(
            context,
            backup_store.get_store(),
            ref,
            lambda writer: export_typesense_collection(
                client, typesense.url, collection, writer, context.log.info
            ),
        )


collection_export_verifies = build_verify_check("typesense/collection_export", daily_by_workspace)


defs = dg.Definitions(assets=[collection_export], asset_checks=[collection_export_verifies])
