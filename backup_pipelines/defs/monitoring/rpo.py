"""The RPO sensor: per asset x workspace, recorded as the `rpo_met` asset check, alerted once
per breach and once per recovery."""

import json
from datetime import UTC, datetime, timedelta

import dagster as dg

from backup_pipelines.defs.partitions import workspaces as workspaces_partitions
from backup_pipelines.defs.resources import (
    BackupStoreResource,
    PolicyResource,
    WorkspaceRegistryResource,
)
from backup_pipelines.lib.errors import BackupError, ConfigError
from backup_pipelines.lib.monitoring import alerts, rpo, rpo_copy
from backup_pipelines.lib.policy import Policy
from backup_pipelines.lib.store import BackupStore
from backup_pipelines.lib.store.copy import copy_store_from_env

RPO_CHECK = "rpo_met"
# Assets of the whole database (no workspace dimension).
FULL_DATABASE_ASSETS = {
    "postgres/full_dump",
    "mssql/full_backup",
    "mssql/diff_backup",
    "mssql/log_backup",
}
MAX_ROWS_SHOWN = 50
HEALTH_REPORT_JOB = "backup_health_report_job"
ACTIVE_RUN_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def utc_now() -> datetime:
    return datetime.now(UTC)


def _asset_key(asset: str) -> dg.AssetKey:
    return dg.AssetKey(asset.split("/"))


def asset_url(asset: str) -> str | None:
    return alerts.ui_url(f"/assets/{asset}")


# --------------------------------------------------------------------------------------------
# RPO


def workspaces_in_sql(instance: dg.DagsterInstance, registry, log) -> tuple[set | None, list]:
    """(the workspaces the SQL registry lists, the known ones it no longer lists). Workspaces
    come from SQL: a partition SQL does not list (vanished, or added by hand) has nothing to
    back up, so no RPO. Without a registry, or when it cannot be read (logged), (None, []):
    every known workspace is held to its RPO."""
    if registry is None or not registry.source:
        return None, []
    try:
        in_sql = registry.workspaces()
    except BackupError as exc:
        log.warning(f"workspace registry unreadable, every known workspace is checked: {exc}")
        return None, []
    known = set(instance.get_dynamic_partitions(workspaces_partitions.name))
    return in_sql, sorted(known - in_sql)


def rpo_subjects(
    instance: dg.DagsterInstance, assets: list[str], in_sql: set | None = None
) -> dict[str, list]:
    workspaces = sorted(instance.get_dynamic_partitions(workspaces_partitions.name))
    if in_sql is not None:
        workspaces = [w for w in workspaces if w in in_sql]
    return {a: [None] if a in FULL_DATABASE_ASSETS else list(workspaces) for a in assets}


def run_history(
    instance: dg.DagsterInstance, assets: list[str], since: datetime
) -> dict[str, dict[str | None, str]]:
    """Newest materialized date per asset and workspace since `since`, from the event log:
    the distinct partition keys materialized from the first event after `since` on (one
    query per asset; 10,000 workspaces x 2 days are 20,000 keys, not 20,000 event records
    to deserialize)."""
    history: dict[str, dict[str | None, str]] = {}
    for asset in assets:
        key = _asset_key(asset)
        first = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, after_timestamp=since.timestamp()),
            limit=1,
            ascending=True,
        ).records
        newest: dict[str | None, str] = {}
        if first:
            partitions = instance.get_materialized_partitions(
                key, after_cursor=first[0].storage_id - 1
            )
            for partition_key in partitions:
                day, _, workspace = (partition_key or "").partition("|")
                day, workspace = day[:10], workspace or None  # a time window's key: its date
                if day and day > newest.get(workspace, ""):
                    newest[workspace] = day
        history[asset] = newest
    return history


def evaluate_rpo(
    instance: dg.DagsterInstance,
    store: BackupStore,
    policy: Policy,
    assets: list[str],
    now: datetime,
    horizon_days: int | None = None,
    in_sql: set | None = None,
    log=None,
    bounded: bool = True,
    progress=None,
) -> rpo.Evaluation:
    """`bounded`: a sensor tick's read budget (rpo.MANIFEST_READ_SECONDS); a run reads every
    manifest the captured-at catalog lacks, telling `progress` how far it got."""
    since = now - timedelta(days=rpo.rpo_window_days(policy))
    history = run_history(instance, assets, since)
    subjects = rpo_subjects(instance, assets, in_sql)
    return rpo.evaluate(store, subjects, history, policy, now, horizon_days, log, bounded, progress)


def rpo_check_result(items: list[rpo.Freshness]) -> dict:
    """Arguments of the `rpo_met` evaluation of one asset: late workspaces and their ages."""
    late = sorted((i for i in items if i.late), key=lambda i: -(i.age_hours or float("inf")))
    disagreeing = [i for i in items if i.disagreement]
    unconfirmed = rpo.unconfirmed(items)
    target = items[0].target_hours if items else 0.0  # no workspace yet: nothing is late
    ages = [i.age_hours for i in items if i.age_hours is not None]
    rows = "\n".join(
        f"| {i.workspace or '(whole database)'} | {i.describe_age()} | {i.newest_date or '-'} |"
        for i in late[:MAX_ROWS_SHOWN]
    )
    table = "| workspace | age | newest backup |\n|---|---|---|\n" + rows if late else "none"
    if len(late) > MAX_ROWS_SHOWN:
        table += f"\n\n… and {len(late) - MAX_ROWS_SHOWN} more"
    return {
        "passed": not late and not disagreeing,
        # Late is a missed RPO (error); a disagreement alone is a warning to look into.
        "severity": dg.AssetCheckSeverity.ERROR if late else dg.AssetCheckSeverity.WARN,
        "description": (
            f"{len(late)} of {len(items)} workspace(s) past the RPO of {target:g} h"
            if late
            else f"all {len(items)} workspace(s) within the RPO of {target:g} h"
        )
        + (f"; {len(disagreeing)} disagree with run history" if disagreeing else "")
        + (
            f"; {unconfirmed} ages are lower bounds (manifests still being read)"
            if unconfirmed
            else ""
        ),
        "metadata": {
            "workspaces_checked": dg.MetadataValue.int(len(items)),
            "workspaces_late": dg.MetadataValue.int(len(late)),
            "target_hours": dg.MetadataValue.float(float(target or 0)),
            "oldest_age_hours": dg.MetadataValue.float(round(max(ages), 2) if ages else -1.0),
            "ages_unconfirmed": dg.MetadataValue.int(unconfirmed),
            "late": dg.MetadataValue.md(table),
            "late_workspaces": dg.MetadataValue.json(
                [i.to_row() for i in late[: MAX_ROWS_SHOWN * 10]]
            ),
            "history_disagreements": dg.MetadataValue.json(
                [i.to_row() for i in disagreeing[:MAX_ROWS_SHOWN]]
            ),
        },
    }


def rpo_check_evaluations(evaluation: rpo.Evaluation) -> list[dg.AssetCheckEvaluation]:
    return [
        dg.AssetCheckEvaluation(
            asset_key=_asset_key(asset), check_name=RPO_CHECK, **rpo_check_result(items)
        )
        for asset, items in evaluation.by_asset().items()
    ]


def build_rpo_checks(assets: list[str]) -> list[dg.AssetChecksDefinition]:
    """The `rpo_met` check of each backup asset: the sensor records it every tick; running it
    from the UI evaluates it on demand (without alerting)."""

    def build(asset: str) -> dg.AssetChecksDefinition:
        @dg.asset_check(
            asset=_asset_key(asset),
            name=RPO_CHECK,
            description="Newest committed backup of every workspace in SQL younger than the "
            "RPO (rpo_sensor records it every tick).",
        )
        def rpo_met(
            context: dg.AssetCheckExecutionContext,
            backup_store: BackupStoreResource,
            policy: PolicyResource,
            workspace_registry: WorkspaceRegistryResource,
        ) -> dg.AssetCheckResult:
            in_sql, _gone = workspaces_in_sql(context.instance, workspace_registry, context.log)
            evaluation = evaluate_rpo(
                context.instance,
                backup_store.get_store(),
                policy.load(),
                [asset],
                utc_now(),
                in_sql=in_sql,
                bounded=False,  # a run: every age confirmed
                progress=context.log.info,
            )
            return dg.AssetCheckResult(**rpo_check_result(evaluation.items))

        return rpo_met

    return [build(asset) for asset in assets]


def tick_summary(evaluation: rpo.Evaluation, gone: list[str], assets: list[str]) -> str:
    """What the tick list in the UI shows for a tick: the late count, and where the rpo_met
    checks are (its skip reason, or logged when the tick requests a run)."""
    late = sorted({i.workspace or "(whole database)" for i in evaluation.late()})
    workspaces = {i.workspace for i in evaluation.items if i.workspace is not None}
    checks = "; ".join(
        alerts.ui_url(f"/assets/{a}?view=checks") or f"/assets/{a}?view=checks" for a in assets
    )
    return (
        f"{len(late)} late of {len(workspaces)} workspace(s)"
        + (f" ({', '.join(late[:10])}{' …' if len(late) > 10 else ''})" if late else "")
        + (f", {len(gone)} not in SQL, not checked" if gone else "")
        + f" — rpo_met checks: {checks}"
    )


def copy_rpo(
    context: dg.SensorEvaluationContext, primary: rpo.Evaluation, policy: Policy, now: datetime
) -> tuple[dict | None, list[alerts.Alert], rpo.Evaluation | None]:
    """The copy store's RPO (BACKUP_COPY_STORE_URL): (its late-since state for the cursor,
    its alerts on change, its evaluation); (None, [], None) without a copy store."""
    try:
        copy_store = copy_store_from_env()
    except ConfigError as exc:
        context.log.warning(f"copy store not evaluated: {exc}")
        return None, [], None
    if copy_store is None:
        return None, [], None
    evaluation = rpo_copy.evaluate_copy(copy_store, primary, policy, now)
    try:
        late = dict(json.loads(context.cursor or "{}").get("copy_late", {}))
    except (ValueError, AttributeError, TypeError):
        late = {}  # an unreadable cursor restarts the state; it must not stop alerting
    breached, recovered, state = rpo.transitions(rpo.BreachState(late), evaluation)
    where = copy_store.describe()
    new = rpo_copy.copy_alerts(breached, primary, rpo_copy.BREACH, where, asset_url)
    new += rpo_copy.copy_alerts(recovered, primary, rpo_copy.RECOVERED, where, asset_url)
    context.log.info(
        f"copy store {where}: {len(evaluation.late())} late, {len(breached)} new breach(es), "
        f"{len(recovered)} recovered"
    )
    return state.late_since, new, evaluation


def catch_up_requests(
    context: dg.SensorEvaluationContext, evaluation: rpo.Evaluation
) -> list[dg.RunRequest]:
    """A run of the health report when this tick left ages unconfirmed (a first tick on a big
    store, or many new backups at once): the run reads every manifest without the tick's
    budget and saves the captured-at catalog, so the next tick confirms them all instead of
    a few thousand a tick. At most one such run at a time, and one an hour."""
    unconfirmed = evaluation.unconfirmed()
    if not unconfirmed:
        return []
    active = context.instance.get_run_records(
        dg.RunsFilter(job_name=HEALTH_REPORT_JOB, statuses=ACTIVE_RUN_STATUSES), limit=1
    )
    if active:
        return []
    hour = evaluation.now.astimezone(UTC).strftime("%Y-%m-%dT%H")
    context.log.info(
        f"{unconfirmed} ages are lower bounds (manifests not read within the tick's "
        f"{rpo.MANIFEST_READ_SECONDS:g} s): requesting {HEALTH_REPORT_JOB} to read them"
    )
    return [
        dg.RunRequest(
            run_key=f"captured-at-catch-up-{hour}",
            job_name=HEALTH_REPORT_JOB,
            tags={"backup_pipelines/reason": f"{unconfirmed} RPO ages unconfirmed"},
        )
    ]


def build_rpo_sensor(assets: list[str], health_report: bool = False) -> dg.SensorDefinition:
    """Only workspaces the SQL registry lists are held to the RPO (workspace_registry; without
    a SQL source, every known one); `health_report`: each tick also records
    monitoring/backup_health_report, and asks for a run of its job when manifests are left
    unread (catch_up_requests)."""

    @dg.sensor(
        name="rpo_sensor",
        minimum_interval_seconds=300,
        default_status=dg.DefaultSensorStatus.RUNNING,
        job_name=HEALTH_REPORT_JOB if health_report else None,
        description="Age of the newest backup of every asset x workspace in SQL against the "
        "RPO; records the rpo_met checks and the backup health report, alerts once per breach "
        "and once per recovery.",
    )
    def rpo_sensor(
        context: dg.SensorEvaluationContext,
        backup_store: BackupStoreResource,
        policy: PolicyResource,
        workspace_registry: WorkspaceRegistryResource,
    ) -> dg.SensorResult:
        log = context.log.warning
        loaded, now = policy.load(), utc_now()
        in_sql, gone = workspaces_in_sql(context.instance, workspace_registry, context.log)
        evaluation = evaluate_rpo(
            context.instance, backup_store.get_store(), loaded, assets, now, in_sql=in_sql, log=log
        )
        state = rpo.BreachState.from_cursor(context.cursor)
        breached, recovered, state = rpo.transitions(state, evaluation)
        new_alerts = rpo.alerts_for(breached, "rpo_breach", asset_url)
        new_alerts += rpo.alerts_for(recovered, "rpo_recovered", asset_url)
        copy_late, copy_alerts, copy = copy_rpo(context, evaluation, loaded, now)
        state.pending = alerts.send_keeping_pending(new_alerts + copy_alerts, state.pending, log)
        context.log.info(
            f"{len(evaluation.items)} asset x workspace evaluated, {len(evaluation.late())} late, "
            f"{len(breached)} new breach(es), {len(recovered)} recovered"
        )
        events: list = rpo_check_evaluations(evaluation)
        if health_report:
            from backup_pipelines.defs.monitoring.health import sensor_report

            events.append(sensor_report(context.instance, evaluation, loaded, gone, copy))
        cursor = json.loads(state.to_cursor())
        if copy_late is not None:
            cursor["copy_late"] = copy_late
        # A tick with a run request cannot carry a skip reason: its summary goes to the log.
        requests = catch_up_requests(context, evaluation) if health_report else []
        summary = tick_summary(evaluation, gone, assets)
        if requests:
            context.log.info(summary)
        return dg.SensorResult(
            run_requests=requests,
            asset_events=events,
            cursor=json.dumps(cursor, sort_keys=True),
            skip_reason=None if requests else summary,
        )

    return rpo_sensor


def build_rpo_defs(assets: list[str], health_report: bool = False) -> dg.Definitions:
    return dg.Definitions(
        asset_checks=build_rpo_checks(assets),
        sensors=[build_rpo_sensor(assets, health_report)],
    )
