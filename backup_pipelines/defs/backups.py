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
from backup_pipelines.defs.resources import BackupStoreResource, PolicyResource, PostgresResource
from backup_pipelines.lib.postgres.catalog import list_workspaces
from backup_pipelines.lib.store import ArtifactRef


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


def build_discovery_sensor(workspace_backup_job) -> dg.SensorDefinition:
    @dg.sensor(
        name="workspace_discovery_sensor",
        minimum_interval_seconds=300,
        default_status=dg.DefaultSensorStatus.RUNNING,
        job=workspace_backup_job,
        description="Adds a `workspaces` partition for each new workspace in SQL and backs it "
        "up at once.",
    )
    def workspace_discovery_sensor(
        context: dg.SensorEvaluationContext,
        postgres_db: PostgresResource,
        policy: PolicyResource,
        backup_store: BackupStoreResource,
    ) -> dg.SensorResult:
        valid, invalid = list_workspaces(postgres_db.database_url, policy.load())
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
            run_requests=first_backups(backup_store.get_store(), new, last_completed_date()),
        )

    return workspace_discovery_sensor


def first_backups(store, workspaces_found: list[str], date: str) -> list[dg.RunRequest]:
    """A backup now for each new workspace, so its RPO clock starts today — but never for one
    the store already holds for that date: a workspace new to this Dagster instance (a fresh
    instance, or one rebuilt after an incident) may have good artifacts that a backup of its
    current, possibly damaged, state must not replace."""
    return [
        dg.RunRequest(partition_key=multi_key(date, w), run_key=f"first-{multi_key(date, w)}")
        for w in workspaces_found
        if store.read_manifest(ArtifactRef("postgres/workspace_dump", date, w)) is None
    ]


def build_backup_defs(backup_assets: list[str]) -> dg.Definitions:
    full_backup_job, workspace_backup_job = build_backup_jobs(backup_assets)
    return dg.Definitions(
        jobs=[full_backup_job, workspace_backup_job],
        schedules=build_schedules(full_backup_job, workspace_backup_job),
        sensors=[build_discovery_sensor(workspace_backup_job)],
    )
