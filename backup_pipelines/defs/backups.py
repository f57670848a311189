"""Backups on a clock: the backup jobs, their daily schedules, and the discovery of workspaces.

Workspaces come from SQL (the workspace registry table, or the SQL Server agents table):
discovery adds a `workspaces` partition for each new one and backs it up at once; the daily
schedule backs up the partitions SQL still lists; a partition SQL does not list is either a
workspace that vanished (its backups are kept; alerted once, with how to restore it) or one
never registered (a hand-added typo: nothing to back up). lib/monitoring/workspaces.py decides.
"""

import time
from datetime import UTC, datetime

import dagster as dg

from backup_pipelines.defs.monitoring.catalog import CATALOG_JOB, build_catalog_defs
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
    PolicyResource,
    WorkspaceRegistryResource,
)
from backup_pipelines.lib import timeouts
from backup_pipelines.lib.monitoring import alerts, rpo
from backup_pipelines.lib.monitoring import workspaces as absent_lib
from backup_pipelines.lib.store import MANIFEST_NAME
from backup_pipelines.lib.store.listing import iter_keys
from backup_pipelines.lib.workspaces import is_valid_workspace_id

WHOLE_DATABASE_ASSETS = ("postgres/full_dump",)
# The discovery sensor refreshes the restore catalog at most this often (a backup wave
# commits for hours; one refresh per interval follows it).
CATALOG_REFRESH_SECONDS = 600
RETENTION_JOB = "retention_job"


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


def build_workspace_schedule(workspace_backup_job) -> dg.ScheduleDefinition:
    """The last completed day of every workspace SQL lists (one run each, run_key = partition
    key); a partition SQL no longer lists is not backed up (there is nothing to back up)."""

    @dg.schedule(
        name="workspace_backup_daily",
        cron_schedule="15 1 * * *",
        execution_timezone="UTC",
        job=workspace_backup_job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="01:15 UTC: the last completed day of every workspace the SQL registry "
        "lists, one run per workspace.",
    )
    def workspace_backup_daily(
        context: dg.ScheduleEvaluationContext, workspace_registry: WorkspaceRegistryResource
    ):
        day = last_completed_date(context.scheduled_execution_time)
        known = set(context.instance.get_dynamic_partitions(workspaces.name))
        chosen = known & workspace_registry.workspaces() if workspace_registry.source else known
        left_out = sorted(known - chosen)
        if left_out:
            context.log.info(
                f"not backed up, gone from {workspace_registry.describe()}: "
                + ", ".join(left_out[:20])
                + (f" (+{len(left_out) - 20})" if len(left_out) > 20 else "")
            )
        if not chosen:
            return dg.SkipReason(f"no workspace to back up for {day}")
        # The daemon adds the partition's tags (dagster/partition/workspace among them).
        return [
            dg.RunRequest(partition_key=multi_key(day, w), run_key=multi_key(day, w))
            for w in sorted(chosen)
        ]

    return workspace_backup_daily


def build_schedules(full_backup_job, workspace_backup_job) -> list[dg.ScheduleDefinition]:
    return [
        dg.build_schedule_from_partitioned_job(
            full_backup_job,
            name="postgres_full_backup_daily",
            hour_of_day=1,
            default_status=dg.DefaultScheduleStatus.RUNNING,
        ),
        build_workspace_schedule(workspace_backup_job),
    ]


def split_valid(ids: list[str]) -> tuple[list[str], list[str]]:
    return [i for i in ids if is_valid_workspace_id(i)], [
        i for i in ids if not is_valid_workspace_id(i)
    ]


# --------------------------------------------------------------------------------------------
# Discovery


def catalog_mark(instance: dg.DagsterInstance, backup_assets: list[str]) -> str:
    """What the restore catalog depends on, cheaply: the newest materialization of any backup
    asset and the newest successful retention run (two instance queries, no store access)."""
    keys = [dg.AssetKey(a.split("/")) for a in backup_assets]
    newest = 0
    for record in instance.get_asset_records(keys):
        latest = record.asset_entry.last_materialization_record
        newest = max(newest, latest.storage_id if latest else 0)
    retention = instance.get_run_records(
        filters=dg.RunsFilter(job_name=RETENTION_JOB, statuses=[dg.DagsterRunStatus.SUCCESS]),
        limit=1,
    )
    return f"{newest}:{retention[0].dagster_run.run_id if retention else ''}"


def catalog_request(
    context, state: absent_lib.DiscoveryState, backup_assets: list[str]
) -> list[dg.RunRequest]:
    """A refresh of the restore catalog when what it reads changed (at most every
    CATALOG_REFRESH_SECONDS), and on the first tick."""
    mark = catalog_mark(context.instance, backup_assets)
    due = time.time() - state.catalog_requested_at >= CATALOG_REFRESH_SECONDS
    if mark == state.catalog_mark or not (due or not state.catalog_mark):
        return []
    state.catalog_mark, state.catalog_requested_at = mark, time.time()
    return [dg.RunRequest(job_name=CATALOG_JOB, run_key=f"catalog-{mark}")]


def discovery_tick(
    context,
    found: tuple[list[str], list[str]],
    store,
    policy,
    registry_name: str,
    first_asset: str,
    restore_assets: list[str],
    backup_assets: list[str],
) -> dg.SensorResult:
    """The sensor's decisions on the (valid, invalid) workspace ids found in SQL: new ones are
    added and backed up, vanished ones alerted once, the catalog refreshed when due."""
    valid, invalid = found
    for bad in invalid:
        # Reported, never added: an invalid id must not reach a path, URL or SQL statement.
        context.log.warning(f"skipping workspace with invalid id {bad[:80]!r}")
    state = absent_lib.DiscoveryState.from_cursor(context.cursor)
    known = set(context.instance.get_dynamic_partitions(workspaces.name))
    new = [w for w in valid if w not in known]
    now = datetime.now(UTC)
    stamp = now.isoformat(timespec="seconds")

    def judge(workspace: str) -> absent_lib.Absent:
        return absent_lib.judge_absent(
            store, workspace, restore_assets, now.date(), policy.keep_weekly_days, stamp
        )

    changes = absent_lib.track(state, known, set(valid), judge)
    for workspace in changes.returned:
        context.log.info(f"workspace {workspace} is in {registry_name} again: backed up again")
    for workspace in changes.unregistered:
        context.log.warning(
            f"partition {workspace} is not in {registry_name} and has no backup (added by hand? "
            f"a typo?): not backed up; remove it with `backup-pipelines workspaces remove "
            f"{workspace}`"
        )
    restore_url = alerts.ui_url("/locations/backup_pipelines/jobs/workspace_restore_job/partitions")
    new_alerts = absent_lib.vanished_alerts(state, changes.vanished, registry_name, restore_url)
    state.pending = alerts.send_keeping_pending(new_alerts, state.pending, context.log.warning)
    run_requests = first_backups(store, new, last_completed_date(), first_asset)
    run_requests += first_backups(
        store, changes.returned, last_completed_date(), first_asset, prefix="returned"
    )
    run_requests += first_full_dump(store, state, last_completed_date(), backup_assets)
    run_requests += catalog_request(context, state, backup_assets)
    requests = [workspaces.build_add_request(new)] if new else []
    if new:
        context.log.info(f"discovered {len(new)} workspace(s): {', '.join(new[:20])}")
    vanished = sorted(w for w, a in state.absent.items() if a.kind == absent_lib.VANISHED)
    summary = (
        f"{len(valid)} workspace(s) in SQL, {len(new)} new, {len(vanished)} gone from SQL"
        + (f" ({', '.join(vanished[:10])})" if vanished else "")
        + f", {len(state.absent) - len(vanished)} partition(s) never in SQL"
        + (f", {len(invalid)} invalid id(s) skipped" if invalid else "")
    )
    context.log.info(summary)
    return dg.SensorResult(
        dynamic_partitions_requests=requests,
        run_requests=run_requests,
        skip_reason=None if run_requests else summary,
        cursor=state.to_cursor(),
    )


def build_discovery_sensor(
    backup_jobs: list,
    catalog_job,
    first_asset: str,
    restore_assets: list[str],
    backup_assets: list[str],
) -> dg.SensorDefinition:
    """Workspaces from the platform's SQL truth: the PostgreSQL workspace registry, or the SQL
    Server agents table (an agent is a workspace there) — whichever the deployment's
    `workspace_registry` resource reads."""

    @dg.sensor(
        name="workspace_discovery_sensor",
        minimum_interval_seconds=max(
            1, round(timeouts.seconds_from_env(timeouts.DISCOVERY_INTERVAL_VARIABLE))
        ),
        default_status=dg.DefaultSensorStatus.RUNNING,
        jobs=[*backup_jobs, catalog_job],
        description="Workspaces from SQL: adds a `workspaces` partition for each new one and "
        "backs it up at once; alerts once (workspace_vanished) when one disappears from SQL; "
        "refreshes the restore catalog after backups and retention.",
    )
    def discovery_sensor(
        context: dg.SensorEvaluationContext,
        workspace_registry: WorkspaceRegistryResource,
        policy: PolicyResource,
        backup_store: BackupStoreResource,
    ) -> dg.SensorResult:
        found = split_valid(list(_registry_ids(workspace_registry)))
        return discovery_tick(
            context,
            found,
            backup_store.get_store(),
            policy.load(),
            workspace_registry.describe(),
            first_asset,
            restore_assets,
            backup_assets,
        )

    return discovery_sensor


def _registry_ids(registry: WorkspaceRegistryResource) -> list[str]:
    """Every id the registry lists, valid or not (discovery reports the invalid ones)."""
    if registry.source == "postgres":
        from backup_pipelines.lib.policy import load_policy
        from backup_pipelines.lib.postgres.catalog import list_workspaces

        valid, invalid = list_workspaces(
            registry.database_url, load_policy(registry.policy_file or None)
        )
        return valid + invalid
    from backup_pipelines.lib.mssql.agent import AgentSchema, agents_in
    from backup_pipelines.lib.mssql.connection import database_of

    return list(
        agents_in(
            registry.connection_string, database_of(registry.connection_string), AgentSchema()
        )
    )


def first_backups(
    store,
    workspaces_found: list[str],
    date: str,
    asset: str = "postgres/workspace_dump",
    prefix: str = "first",
) -> list[dg.RunRequest]:
    """A backup now for each new workspace, so its RPO clock starts today — but never for one
    the store already holds for that date: a workspace new to this Dagster instance (a fresh
    instance, or one rebuilt after an incident) may have good artifacts that a backup of its
    current, possibly damaged, state must not replace. The store is asked with listings (a
    manifest present = held), not one read per workspace: 10,000 new workspaces (a first
    deployment) cost one listing of the date's folder."""
    held = rpo.committed_workspaces(store, asset, date, workspaces_found)
    return [
        dg.RunRequest(
            job_name="workspace_backup_job",
            partition_key=multi_key(date, w),
            run_key=f"{prefix}-{multi_key(date, w)}",
        )
        for w in workspaces_found
        if w not in held
    ]


def first_full_dump(
    store, state: absent_lib.DiscoveryState, date: str, backup_assets: list[str]
) -> list[dg.RunRequest]:
    """A new deployment's first whole-database dump, at once rather than at the next 01:00: the
    RPO check would otherwise fail on the first tick and alert (make dev started red). Asked
    once per date (cursor and run key) while the store holds no committed full dump at all (one
    listing, stopped at the first manifest); a failed one is the schedule's and RPO's business."""
    if "postgres/full_dump" not in backup_assets or state.first_full_dump == date:
        return []
    for key, _size, _mtime in iter_keys(store, "postgres/full_dump/"):
        if key.endswith("/" + MANIFEST_NAME):
            return []
    state.first_full_dump = date
    return [
        dg.RunRequest(
            job_name="postgres_full_backup_job", partition_key=date, run_key=f"first-full-{date}"
        )
    ]


def build_backup_defs(backup_assets: list[str], source: str = "postgres") -> dg.Definitions:
    """Backup jobs and schedules of `backup_assets`, the restore catalog, and the discovery of
    workspaces from `source`'s SQL (postgres: the workspace registry; mssql: the agents table;
    resources.registry_resource builds the matching `workspace_registry`)."""
    full_backup_job, workspace_backup_job = build_backup_jobs(backup_assets)
    per_workspace = [a for a in backup_assets if a not in WHOLE_DATABASE_ASSETS]
    whole_database = [a for a in backup_assets if a in WHOLE_DATABASE_ASSETS]
    jobs = [workspace_backup_job]
    schedules = build_schedules(full_backup_job, workspace_backup_job)
    if "postgres/full_dump" not in backup_assets:
        schedules = schedules[1:]
    else:
        jobs.insert(0, full_backup_job)
    catalog_defs = build_catalog_defs(per_workspace, whole_database)
    (catalog_job,) = catalog_defs.jobs
    sensor = build_discovery_sensor(
        jobs, catalog_job, per_workspace[0], per_workspace, backup_assets
    )
    return dg.Definitions.merge(
        catalog_defs, dg.Definitions(jobs=jobs, schedules=schedules, sensors=[sensor])
    )
