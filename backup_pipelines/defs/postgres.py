"""PostgreSQL backups: the whole database daily, and every workspace's rows per date x workspace."""

import dagster as dg

from backup_pipelines.defs.artifacts import backup_freshness, build_verify_check, write_artifact
from backup_pipelines.defs.partitions import daily, daily_by_workspace, date_and_workspace
from backup_pipelines.defs.resources import (
    BackupStoreResource,
    PolicyResource,
    PostgresResource,
    WorkspaceRegistryResource,
)
from backup_pipelines.lib.postgres import dump
from backup_pipelines.lib.store import ArtifactRef

FULL_DUMP = dg.AssetKey(["postgres", "full_dump"])
WORKSPACE_DUMP = dg.AssetKey(["postgres", "workspace_dump"])


@dg.asset(
    key=FULL_DUMP,
    freshness_policy=backup_freshness(),
    partitions_def=daily,
    group_name="postgres",
    kinds={"postgres"},
    description="The whole PostgreSQL database: pg_dump custom format, zstd-compressed, streamed into the store.",
)
def full_dump(
    context: dg.AssetExecutionContext,
    postgres_db: PostgresResource,
    backup_store: BackupStoreResource,
    policy: PolicyResource,
) -> dg.MaterializeResult:
    ref = ArtifactRef("postgres/full_dump", context.partition_key)
    level = policy.load().zstd_level
    return write_artifact(
        context,
        backup_store.get_store(),
        ref,
        lambda writer: dump.dump_full_database(
            postgres_db.database_url, writer, level, context.log.info
        ),
    )


@dg.asset(
    key=WORKSPACE_DUMP,
    freshness_policy=backup_freshness(),
    partitions_def=daily_by_workspace,
    group_name="workspace_backups",
    kinds={"postgres"},
    description=(
        "One workspace's rows of every workspace table, read with COPY inside one REPEATABLE READ "
        "READ ONLY transaction (pg_dump has no row filter), plus the tables' DDL."
    ),
)
def workspace_dump(
    context: dg.AssetExecutionContext,
    postgres_db: PostgresResource,
    backup_store: BackupStoreResource,
    policy: PolicyResource,
) -> dg.MaterializeResult:
    date, workspace = date_and_workspace(context.partition_key)
    WorkspaceRegistryResource(
        source="postgres", database_url=postgres_db.database_url, policy_file=policy.policy_file
    ).refuse_unknown(workspace, context.log)
    ref = ArtifactRef("postgres/workspace_dump", date, workspace)
    rules = policy.load()
    return write_artifact(
        context,
        backup_store.get_store(),
        ref,
        lambda writer: dump.dump_workspace(
            postgres_db.database_url, workspace, rules, writer, context.log.info
        ),
    )


full_dump_verifies = build_verify_check("postgres/full_dump", daily)


workspace_dump_verifies = build_verify_check("postgres/workspace_dump", daily_by_workspace)


defs = dg.Definitions(
    assets=[full_dump, workspace_dump],
    asset_checks=[full_dump_verifies, workspace_dump_verifies],
)
