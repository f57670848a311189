"""Backups on a clock: the backup jobs, their daily schedules, and the discovery of new workspaces."""

import dagster as dg

from backup_pipelines.defs.partitions import (
    daily,
    daily_by_workspace,
    last_completed_date,
    multi_key,
    workspaces,
)
from backup_pipelines.defs.postgres import FULL_DUMP
from backup_pipelines.defs.resources import (
    BackupStoreResource,
    MssqlResource,
    PolicyResource,
    PostgresResource,
)
from backup_pipelines.lib.monitoring import rpo
from backup_pipelines.lib.postgres.catalog import list_workspaces


def build_backup_jobs(backup_assets: list[str]) -> tuple:
    """The two backup jobs. The rpo_met checks of `backup_assets` are left out: the RPO
    sensor records them over every workspace at once, not a run of one partition."""
    rpo_checks = dg.AssetSelection.checks(
        *(dg.AssetCheckKey(dg.AssetKey(path.split("/")), "rpo_met") for path in backup_assets)
    )
    full_backup_job = dg.define_asset_job(
        "postgres_full_backup_job",
        selection=dg.AssetSelection.assets(FULL_DUMP) - rpo_checks,
        partitions_def=daily,
        description="The whole PostgreSQL database, once a day.",
    )
    # Every per-workspace backup asset of the deployment (SQL and index artifacts of one
    # partition run together, so their points in time stay close).
    workspace_backup_job = dg.define_asset_job(
        "workspace_backup_job",
        selection=dg.AssetSelection.groups("workspace_backups") - rpo_checks,
        partitions_def=daily_by_workspace,
        description="Every per-workspace backup of one date x workspace partition.",
    )
    return full_backup_job, workspace_backup_job


def build_schedules(full_backup_job, workspace_backup_job) -> list[dg.ScheduleDefinition]:
    return [
        dg.build_schedule_from_partitioned_job(
            full_backup_job,
            name="postgres_full_backup_daily",
            hour_of_day=1,
            default_status=dg.DefaultScheduleStatus.RUNNING,
        ),
        # One run per workspace for the last completed day (run_key = partition key).
        dg.build_schedule_from_partitioned_job(
            workspace_backup_job,
            name="workspace_backup_daily",
            hour_of_day=1,
            minute_of_hour=15,
            default_status=dg.DefaultScheduleStatus.RUNNING,
        ),
    ]


def split_valid(ids: list[str]) -> tuple[list[str], list[str]]:
    from backup_pipelines.lib.workspaces import is_valid_workspace_id

    return [i for i in ids if is_valid_workspace_id(i)], [
        i for i in ids if not is_valid_workspace_id(i)
    ]


def discovery_tick(context, found, store, first_asset: str) -> dg.SensorResult:
    """The sensor's decision on (valid, invalid) workspace ids found in SQL."""
    valid, invalid = found
    for bad in invalid:
        # Reported, never added: an invalid id must not reach a path, URL or SQL statement.
        context.log.warning(f"skipping workspace with invalid id {bad[:80]!r}")
    known = set(context.instance.get_dynamic_partitions(workspaces.name))
    new = [w for w in valid if w not in known]
    if not new:
        return dg.SensorResult(
            skip_reason=f"no new workspace ({len(valid)} known, {len(invalid)} invalid skipped)"
        )
    context.log.info(f"discovered {len(new)} workspace(s): {', '.join(new[:20])}")
    return dg.SensorResult(
        dynamic_partitions_requests=[workspaces.build_add_request(new)],
        run_requests=first_backups(store, new, last_completed_date(), first_asset),
    )


def build_discovery_sensor(
    workspace_backup_job, source: str, first_asset: str
) -> dg.SensorDefinition:
    """Workspaces from the platform's SQL truth: the PostgreSQL workspace registry, or the SQL
    Server agents table (an agent is a workspace there)."""
    options = dict(
        name="workspace_discovery_sensor",
        minimum_interval_seconds=300,
        default_status=dg.DefaultSensorStatus.RUNNING,
        job=workspace_backup_job,
        description="Adds a `workspaces` partition for each new workspace in SQL and backs it "
        "up at once.",
    )
    if source == "postgres":

        @dg.sensor(**options)
        def workspace_discovery_sensor(
            context: dg.SensorEvaluationContext,
            postgres_db: PostgresResource,
            policy: PolicyResource,
            backup_store: BackupStoreResource,
        ) -> dg.SensorResult:
            found = list_workspaces(postgres_db.database_url, policy.load())
            return discovery_tick(context, found, backup_store.get_store(), first_asset)

        return workspace_discovery_sensor

    @dg.sensor(**options)
    def agent_discovery_sensor(
        context: dg.SensorEvaluationContext, mssql: MssqlResource, backup_store: BackupStoreResource
    ) -> dg.SensorResult:
        from backup_pipelines.lib.mssql.agent import AgentSchema, agents_in

        ids = list(agents_in(mssql.connection_string, mssql.database(), AgentSchema()))
        return discovery_tick(context, split_valid(ids), backup_store.get_store(), first_asset)

    return agent_discovery_sensor


def first_backups(
    store, workspaces_found: list[str], date: str, asset: str = "postgres/workspace_dump"
) -> list[dg.RunRequest]:
    """A backup now for each new workspace, so its RPO clock starts today — but never for one
    the store already holds for that date: a workspace new to this Dagster instance (a fresh
    instance, or one rebuilt after an incident) may have good artifacts that a backup of its
    current, possibly damaged, state must not replace. The store is asked with listings (a
    manifest present = held), not one read per workspace: 10,000 new workspaces (a first
    deployment) cost one listing of the date's folder."""
    held = rpo.committed_workspaces(store, asset, date, workspaces_found)
    return [
        dg.RunRequest(partition_key=multi_key(date, w), run_key=f"first-{multi_key(date, w)}")
        for w in workspaces_found
        if w not in held
    ]


def build_backup_defs(backup_assets: list[str], source: str = "postgres") -> dg.Definitions:
    """Backup jobs and schedules of `backup_assets`; workspaces discovered from `source`'s SQL
    (postgres: the workspace registry; mssql: the agents table)."""
    full_backup_job, workspace_backup_job = build_backup_jobs(backup_assets)
    per_workspace = [a for a in backup_assets if a not in ("postgres/full_dump",)]
    jobs = [workspace_backup_job]
    schedules = build_schedules(full_backup_job, workspace_backup_job)
    if "postgres/full_dump" not in backup_assets:
        schedules = schedules[1:]
    else:
        jobs.insert(0, full_backup_job)
    return dg.Definitions(
        jobs=jobs,
        schedules=schedules,
        sensors=[build_discovery_sensor(workspace_backup_job, source, per_workspace[0])],
    )
