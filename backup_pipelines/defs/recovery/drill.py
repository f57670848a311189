"""The weekly restore drill: proves the RTO with a measured time (DESIGN "Monitoring").

Every Sunday a rotating sample of workspaces is restored from its newest backup into scratch
places (lib/recovery/drill.py) and removed again. Each materialization of `monitoring/restore_drill`
records the seconds per workspace, so the UI plots the RTO over the weeks. A failed drill is
recorded as an observation of the asset (same metadata), alerts and fails the run; a drill
slower than the RTO alerts and is materialized like a good one.

Drill specific workspaces instead of the sample: run tag `drill/workspaces=ws_a,ws_b` (what a
UI launch can set) or op config `workspaces`. `DRILL_DATABASE_URL` puts the scratch database
on another server (or through another maintenance database) than DATABASE_URL's.
"""

import os
import statistics
from datetime import UTC, datetime

import dagster as dg

from backup_pipelines.defs.monitoring.run_alerts import ALERT_SENT_TAG
from backup_pipelines.defs.partitions import workspaces as workspaces_partitions
from backup_pipelines.defs.resources import index_clients
from backup_pipelines.lib.engines import index_engines
from backup_pipelines.lib.monitoring.alerts import Alert, configured_channels, deliver, ui_url
from backup_pipelines.lib.recovery import drill
from backup_pipelines.lib.recovery import workspace_restore as restore
from backup_pipelines.lib.workspaces import validate_workspace_id

DRILL_ASSET = dg.AssetKey(["monitoring", "restore_drill"])
DRILL_ASSET_NAME = "monitoring/restore_drill"
WORKSPACES_TAG = "drill/workspaces"
SCHEDULED_TIME_TAG = "dagster/scheduled_execution_time"


class DrillConfig(dg.Config):
    # Drill these workspaces instead of the weekly sample (the run tag wins when both are set).
    workspaces: list[str] = []


def requested_workspaces(context: dg.AssetExecutionContext, config: DrillConfig) -> list[str]:
    tagged = context.run.tags.get(WORKSPACES_TAG, "")
    names = [w.strip() for w in tagged.split(",") if w.strip()] or list(config.workspaces)
    try:
        return [validate_workspace_id(w) for w in names]
    except ValueError as exc:
        raise dg.Failure(f"{WORKSPACES_TAG}: {exc}", allow_retries=False) from exc


def drill_week(context: dg.AssetExecutionContext) -> int:
    """The schedule's tick time when there is one, so a re-executed run drills the same sample."""
    try:
        when = datetime.fromisoformat(context.run.tags[SCHEDULED_TIME_TAG])
    except (KeyError, ValueError):  # launched by hand
        when = datetime.now(UTC)
    return drill.week_index(when.astimezone(UTC).date())


def drill_metadata(results: list[drill.DrillResult], target_seconds: float) -> dict:
    passed = [r.seconds for r in results if r.passed]
    metadata = {
        "workspaces_drilled": dg.MetadataValue.int(len(results)),
        "workspaces_failed": dg.MetadataValue.int(sum(not r.passed for r in results)),
        "workspaces_missed_rto": dg.MetadataValue.int(
            sum(r.passed and not r.met_rto for r in results)
        ),
        "rto_target_seconds": dg.MetadataValue.float(float(target_seconds)),
        "drills": drill_table(results),
        "results": dg.MetadataValue.json([r.to_dict() for r in results]),
    }
    if passed:  # only restores that completed measure the RTO; no point plotted otherwise
        metadata["rto_seconds_max"] = dg.MetadataValue.float(max(passed))
        metadata["rto_seconds_mean"] = dg.MetadataValue.float(round(statistics.mean(passed), 3))
    return metadata


def drill_table(results: list[drill.DrillResult]) -> dg.MetadataValue:
    columns = [
        ("workspace", "string"),
        ("date", "string"),
        ("seconds", "float"),
        ("target_seconds", "float"),
        ("passed", "bool"),
        ("met_rto", "bool"),
        ("problems", "string"),
    ]
    records = [
        dg.TableRecord(
            {
                "workspace": r.workspace,
                "date": r.date or "-",
                "seconds": r.seconds,
                "target_seconds": float(r.rto_target_seconds),
                "passed": r.passed,
                "met_rto": r.met_rto,
                "problems": "; ".join(r.problems)[:1000],
            }
        )
        for r in results
    ]
    schema = dg.TableSchema(columns=[dg.TableColumn(name, kind) for name, kind in columns])
    return dg.MetadataValue.table(records, schema=schema)


def drill_alerts(results: list[drill.DrillResult], run_url: str | None) -> list[Alert]:
    alerts = []
    for r in results:
        details = {
            "date": r.date,
            "seconds": r.seconds,
            "rto_target_seconds": r.rto_target_seconds,
            "problem": r.problems[0] if r.problems else None,  # a scalar: shown in Slack's text
            "problems": r.problems,
        }
        if not r.passed:
            title = f"restore drill FAILED for {r.workspace} ({r.date})"
            kind = "drill_failed"
        elif not r.met_rto:
            title = (
                f"restore drill of {r.workspace} ({r.date}) took {r.seconds:.1f} s, over the "
                f"RTO of {r.rto_target_seconds:g} s"
            )
            kind = "drill_rto_missed"
        else:
            continue
        alerts.append(
            Alert(kind, title, r.workspace, DRILL_ASSET_NAME, details=details, url=run_url)
        )
    return alerts


def send_alerts(context: dg.AssetExecutionContext, alerts: list[Alert]) -> None:
    """Deliver; when every failure alert reached every channel, tag the run so the generic
    failed-run alert does not page a second time for the same failure."""
    # A broken alert setting is logged and must not hide the drill's own result.
    channels = configured_channels(context.log.error)
    undelivered = deliver(alerts, channels, log=context.log.warning)
    failures = [a for a in alerts if a.kind == "drill_failed"]
    if failures and channels and not any(a.kind == "drill_failed" for _, a in undelivered):
        context.instance.add_run_tags(context.run_id, {ALERT_SENT_TAG: "true"})


def mssql_drill(context, policy) -> drill.DrillResult:
    """The SQL Server database's drill, as one row of the drill's results."""
    from backup_pipelines.lib.mssql.drill import drill_database

    mssql = context.resources.mssql
    found = drill_database(
        mssql.connection_string,
        context.resources.backup_store.get_store(),
        mssql.database(),
        mssql.folders(),
        log=context.log.info,
    )
    target = policy.rto_minutes * 60
    return drill.DrillResult(
        workspace=f"mssql:{mssql.database()}",
        date=found["date"],
        seconds=found["seconds"],
        rto_target_seconds=target,
        passed=found["passed"],
        met_rto=found["passed"] and found["seconds"] <= target,
        counts=found["counts"],
        problems=found["problems"],
        scratch=found["scratch"],
    )


def build_drill_defs(
    index_stores: set[str], sql_stores: set[str] = frozenset({"postgres"})
) -> dg.Definitions:
    """The drill asset, its job and weekly schedule: PostgreSQL workspaces with the index stores
    this deployment has, and the SQL Server database when it is part of it."""
    index_keys = {engine.name for engine in index_engines(index_stores)}
    postgres = "postgres" in sql_stores
    sql_keys = {"postgres_db"} if postgres else set()
    sql_keys |= {"mssql"} if "mssql" in sql_stores else set()

    @dg.asset(
        key=DRILL_ASSET,
        group_name="monitoring",
        required_resource_keys={
            "backup_store",
            "policy",
            *sql_keys,
            *(index_keys if postgres else ()),
        },
        description="Weekly: restore a rotating sample of workspaces into scratch places, "
        "verify, time against the RTO, clean up.",
    )
    def restore_drill(context: dg.AssetExecutionContext, config: DrillConfig):
        resources = context.resources
        policy = resources.policy.load()
        store = resources.backup_store.get_store()
        results = []
        if "mssql" in sql_keys:
            results.append(mssql_drill(context, policy))
        with index_clients(resources, index_keys if postgres else ()) as indexes:
            dates = drill.newest_backup_dates(
                store, [restore.SQL_ASSET, *restore.index_assets(indexes)]
            )
            chosen = (
                (requested_workspaces(context, config) or sample(context, dates, policy))
                if postgres
                else []
            )
            for number, workspace in enumerate(chosen, 1):
                context.log.info(f"drill {number}/{len(chosen)}: {workspace}")
                if workspace not in dates:
                    results.append(drill.no_backup_result(workspace, policy))
                    continue
                results.append(
                    drill.drill_workspace(
                        store,
                        workspace,
                        dates[workspace],
                        resources.postgres_db.database_url,
                        policy,
                        indexes,
                        log=context.log.info,
                        scratch_database_url=os.environ.get(drill.SCRATCH_DATABASE_ENV) or None,
                        warn=context.log.error,
                    )
                )
        metadata = drill_metadata(results, policy.rto_minutes * 60)
        failed = [r for r in results if not r.passed]
        # Recorded before anything else, failed or not: the health report must see bad weeks.
        # A failing week is an observation, so the asset's last materialization stays the
        # last drill that passed, while the run turns red.
        if failed:
            yield dg.AssetObservation(asset_key=DRILL_ASSET, metadata=metadata)
        else:
            yield dg.MaterializeResult(metadata=metadata)
        alerts = drill_alerts(results, ui_url(f"/runs/{context.run_id}"))
        if alerts:
            send_alerts(context, alerts)
        if failed:
            raise dg.Failure(
                description="restore drill failed: "
                + "; ".join(f"{r.workspace} ({r.date}): {' | '.join(r.problems)}" for r in failed),
                allow_retries=False,  # a corrupt backup stays corrupt; a retry only re-alerts
            )

    def sample(context, dates: dict[str, str], policy) -> list[str]:
        known = set(context.instance.get_dynamic_partitions(workspaces_partitions.name))
        candidates = [w for w in known if w in dates]
        skipped = len(known) - len(candidates)
        if skipped:
            context.log.warning(f"{skipped} workspace(s) have no complete backup to drill")
        return drill.pick_workspaces(candidates, policy.drill_sample_size, drill_week(context))

    job = dg.define_asset_job(
        "restore_drill_job",
        selection=dg.AssetSelection.assets(DRILL_ASSET),
        description="Restore drill: newest backups restored into scratch places, timed, removed.",
    )
    schedule = dg.ScheduleDefinition(
        name="restore_drill_weekly",
        job=job,
        cron_schedule="0 4 * * 0",  # Sunday 04:00 UTC, after the nightly backups
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
    return dg.Definitions(assets=[restore_drill], jobs=[job], schedules=[schedule])
