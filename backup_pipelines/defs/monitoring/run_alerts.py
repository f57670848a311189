"""Alerts on runs: a failed backup, restore, drill or retention run, and a run stuck in the
queue or running far beyond its job's usual duration (a backup that never ends is a missed
RPO too). One message per run and condition; the sensor cursor remembers what was sent."""

import json
import statistics
from datetime import UTC, datetime, timedelta

import dagster as dg

from backup_pipelines.defs.resources import PolicyResource
from backup_pipelines.lib.errors import ConfigError
from backup_pipelines.lib.monitoring import alerts
from backup_pipelines.lib.policy import Policy

# A run that sent its own, more precise alert (the drill) tags itself so it is not repeated.
ALERT_SENT_TAG = "backup_pipelines/alert_sent"
USUAL_DURATION_SAMPLE = 20
MAX_FAILURES_PER_TICK = 100
# Failed runs already alerted, kept in the cursor: a failed run is updated again later (run
# retries tag it when they launch its retry), which would bring it back past the high-water mark.
ALERTED_RUNS_KEPT = 1000
# The job Dagster runs for "Materialize" in the UI and `dagster asset materialize`.
ASSET_JOB = "__ASSET_JOB"


def utc_now() -> datetime:
    return datetime.now(UTC)


def _run_url(run_id: str) -> str | None:
    return alerts.ui_url(f"/runs/{run_id}")


def _partition(run: dg.DagsterRun) -> str | None:
    return run.tags.get("dagster/partition")


def _workspace(run: dg.DagsterRun) -> str | None:
    return run.tags.get("dagster/partition/workspace")


def is_ours(run: dg.DagsterRun, jobs: set[str], asset_keys: set[dg.AssetKey]) -> bool:
    """A run of one of our jobs, or an ad-hoc `__ASSET_JOB` run that touches one of our assets
    (the implicit job is shared by every code location of the instance: select by asset)."""
    if run.job_name in jobs:
        return True
    if run.job_name != ASSET_JOB or not asset_keys:
        return False
    selected = set(run.asset_selection or ())
    selected |= {check.asset_key for check in run.asset_check_selection or ()}
    return bool(selected & asset_keys)


def describe_job(run: dg.DagsterRun) -> str:
    """The job's name, or for an ad-hoc materialization the assets it selected."""
    if run.job_name != ASSET_JOB:
        return run.job_name
    keys = sorted(k.to_user_string() for k in run.asset_selection or ())
    keys = keys or sorted(
        f"{c.asset_key.to_user_string()}:{c.name}" for c in run.asset_check_selection or ()
    )
    shown = ", ".join(keys[:5]) + (f" (+{len(keys) - 5})" if len(keys) > 5 else "")
    return f"{ASSET_JOB} ({shown})" if shown else ASSET_JOB


def failure_reason(instance: dg.DagsterInstance, run_id: str) -> str:
    """The first step error, else the run failure message: what an on-call reads first."""
    for event in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        error = getattr(event.dagster_event.event_specific_data, "error", None)
        while error is not None and error.cause is not None:  # the user code's own exception
            error = error.cause
        if error is not None:
            return f"{error.cls_name}: {error.message.strip()}"[:1000]
    for event in instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE):
        return (event.message or "run failed").strip()[:1000]
    return "run failed"


def failed_run_alerts(
    instance: dg.DagsterInstance,
    jobs: set[str],
    after: datetime,
    asset_keys: set[dg.AssetKey] = frozenset(),
    already_alerted: set[str] = frozenset(),
) -> tuple[list[alerts.Alert], datetime]:
    """Failed runs of our jobs updated after `after`, and the new high-water mark."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE], updated_after=after),
        order_by="update_timestamp",
        ascending=True,
        limit=MAX_FAILURES_PER_TICK,
    )
    found = []
    for record in records:
        after = max(after, record.update_timestamp.astimezone(UTC))
        run = record.dagster_run
        if not is_ours(run, jobs, asset_keys) or run.tags.get(ALERT_SENT_TAG) == "true":
            continue
        if run.run_id in already_alerted:
            continue
        where = f" {_partition(run)}" if _partition(run) else ""
        found.append(
            alerts.Alert(
                kind="run_failed",
                title=f"Run of {describe_job(run)}{where} failed",
                workspace=_workspace(run),
                details={
                    "job": run.job_name,
                    "partition": _partition(run),
                    "run_id": run.run_id,
                    "error": failure_reason(instance, run.run_id),
                },
                url=_run_url(run.run_id),
            )
        )
    return found, after


def usual_minutes(instance: dg.DagsterInstance, job: str) -> float | None:
    """Median wall time of the job's recent successful runs."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(job_name=job, statuses=[dg.DagsterRunStatus.SUCCESS]),
        limit=USUAL_DURATION_SAMPLE,
    )
    durations = [(r.end_time - r.start_time) / 60 for r in records if r.start_time and r.end_time]
    return statistics.median(durations) if durations else None


def stuck_threshold_minutes(policy: Policy, usual: float | None) -> float:
    """Far beyond usual: factor x the median, never less than the floor; with no history
    yet, factor x the floor."""
    if usual is None:
        return policy.stuck_run_factor * policy.stuck_run_min_minutes
    return max(policy.stuck_run_factor * usual, policy.stuck_run_min_minutes)


def stuck_run_alerts(
    instance: dg.DagsterInstance,
    jobs: set[str],
    policy: Policy,
    now: datetime,
    seen: set[str],
    asset_keys: set[dg.AssetKey] = frozenset(),
) -> tuple[list[alerts.Alert], set[str]]:
    """Runs queued or running too long, alerted once each; returns the ids still in flight
    that were alerted (so a run that finishes drops out of the cursor)."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTED])
    )
    usual_by_job: dict[str, float | None] = {}
    found, in_flight = [], set()
    for record in records:
        run = record.dagster_run
        if not is_ours(run, jobs, asset_keys):
            continue
        if run.status == dg.DagsterRunStatus.QUEUED:
            since = record.create_timestamp.astimezone(UTC)
            limit, state = policy.queued_max_minutes, "queued"
        else:
            since = datetime.fromtimestamp(
                record.start_time or record.create_timestamp.timestamp(), UTC
            )
            if run.job_name not in usual_by_job:
                usual_by_job[run.job_name] = usual_minutes(instance, run.job_name)
            limit = stuck_threshold_minutes(policy, usual_by_job[run.job_name])
            state = "running"
        minutes = (now - since).total_seconds() / 60
        if minutes <= limit:
            continue
        key = f"{run.run_id}:{state}"
        in_flight.add(key)
        if key in seen:
            continue
        found.append(
            alerts.Alert(
                kind="run_stuck",
                title=f"Run of {describe_job(run)} {_partition(run) or ''} {state} for "
                f"{minutes:.0f} min (limit {limit:.0f} min)",
                workspace=_workspace(run),
                details={
                    "job": run.job_name,
                    "partition": _partition(run),
                    "run_id": run.run_id,
                    "state": state,
                    "minutes": round(minutes, 1),
                    "limit_minutes": round(limit, 1),
                    "usual_minutes": usual_by_job.get(run.job_name),
                },
                url=_run_url(run.run_id),
            )
        )
    return found, in_flight


def build_run_alert_sensor(
    job_names: list[str], asset_keys: set[dg.AssetKey] | None = None
) -> dg.SensorDefinition:
    jobs = set(job_names)
    our_assets = set(asset_keys or ())

    @dg.sensor(
        name="run_alert_sensor",
        minimum_interval_seconds=120,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Alerts once per failed backup/restore/drill/retention run (and failed "
        "ad-hoc materializations of these assets), and once per run queued or running far "
        "beyond its job's usual duration.",
    )
    def run_alert_sensor(
        context: dg.SensorEvaluationContext, policy: PolicyResource
    ) -> dg.SensorResult:
        now = utc_now()
        state = json.loads(context.cursor) if context.cursor else {}
        # First tick: look back a day, not at the whole history of a long-lived instance.
        after = datetime.fromisoformat(state.get("after") or (now - timedelta(days=1)).isoformat())
        alerted = list(state.get("alerted", []))
        failed, after = failed_run_alerts(
            context.instance, jobs, after, our_assets, already_alerted=set(alerted)
        )
        alerted = (alerted + [a.details["run_id"] for a in failed])[-ALERTED_RUNS_KEPT:]
        try:
            loaded = policy.load()
        except ConfigError as exc:  # failed runs are alerted all the same (they carry it)
            context.log.error(f"{exc} — stuck-run limits use the built-in defaults")
            loaded = Policy()
        stuck, in_flight = stuck_run_alerts(
            context.instance, jobs, loaded, now, set(state.get("stuck", [])), our_assets
        )
        pending = alerts.send_keeping_pending(
            failed + stuck, state.get("pending", []), context.log.warning
        )
        cursor = {
            "after": after.isoformat(),
            "stuck": sorted(in_flight),
            "pending": pending,
            "alerted": alerted,
        }
        return dg.SensorResult(cursor=json.dumps(cursor, sort_keys=True))

    return run_alert_sensor
