"""The point-in-time tier on self-hosted PostgreSQL (pgBackRest): the physical backup asset
(full weekly, differential daily), the WAL RPO sensor (breach and recovery alerted once each
through the existing channels, recorded as the `wal_rpo_met` check), and `pitr_restore_job`.

Part of the deployment only when DATABASE_URL and PGBACKREST_CONFIG or PGBACKREST_REPO_URL are
set (`lib.postgres.pitr.configured`)."""

import os
from datetime import UTC, datetime

import dagster as dg

from backup_pipelines.defs.artifacts import run_owner
from backup_pipelines.defs.resources import BackupStoreResource, PolicyResource
from backup_pipelines.lib.errors import ConfigError
from backup_pipelines.lib.monitoring import alerts, rpo
from backup_pipelines.lib.policy import Policy
from backup_pipelines.lib.postgres import pitr
from backup_pipelines.lib.store.copy import lease_store_for_live

PHYSICAL_BACKUP = dg.AssetKey(["postgres", "physical_backup"])
WAL_ARCHIVE = "postgres/wal_archive"  # the subject of the WAL RPO in alerts and the report
WAL_RPO_CHECK = "wal_rpo_met"
WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
RESTORE_TAG = "pitr/to"


def utc_now() -> datetime:
    return datetime.now(UTC)


class PitrResource(dg.ConfigurableResource):
    """The pgBackRest stanza of the live cluster. Reads DATABASE_URL, PGBACKREST_CONFIG,
    PGBACKREST_REPO_URL, PGBACKREST_PG_DATA and PGBACKREST_STANZA from the environment when
    used, so no secret is part of the resource's config."""

    stanza: str = ""

    def config(self, policy: Policy) -> pitr.PitrConfig:
        return pitr.PitrConfig.from_env(self.stanza or policy.pgbackrest_stanza)


def full_weekday(policy: Policy) -> int:
    name = policy.physical_full_weekday.strip().lower()
    if name not in WEEKDAYS:
        raise ConfigError(
            f"policy physical_full_weekday {policy.physical_full_weekday!r}: one of {', '.join(WEEKDAYS)}"
        )
    return WEEKDAYS.index(name)


def choose_backup_type(requested: str, policy: Policy, info, today: datetime) -> str:
    """`auto`: full on the policy's weekday or when the stanza has no full backup yet,
    differential otherwise."""
    if requested != "auto":
        return requested
    has_full = any(b.type == "full" and not b.error for b in info.backups)
    return "full" if not has_full or today.weekday() == full_weekday(policy) else "diff"


class PhysicalBackupConfig(dg.Config):
    type: str = "auto"  # auto | full | diff | incr


def backup_metadata(record, info) -> dict:
    return {
        "label": dg.MetadataValue.text(record.label),
        "type": dg.MetadataValue.text(record.type),
        "prior": dg.MetadataValue.text(record.prior or ""),
        "started_at": dg.MetadataValue.text(record.started_at.isoformat()),
        "stopped_at": dg.MetadataValue.text(record.stopped_at.isoformat()),
        "size_bytes": dg.MetadataValue.int(record.size),
        "delta_bytes": dg.MetadataValue.int(record.delta),
        "repo_size_bytes": dg.MetadataValue.int(record.repo_size),
        "repo_delta_bytes": dg.MetadataValue.int(record.repo_delta),
        "repository_total_bytes": dg.MetadataValue.int(info.repo_size),
        "wal_start": dg.MetadataValue.text(record.archive_start or ""),
        "wal_stop": dg.MetadataValue.text(record.archive_stop or ""),
        "lsn_start": dg.MetadataValue.text(record.lsn_start or ""),
        "lsn_stop": dg.MetadataValue.text(record.lsn_stop or ""),
        "archive_min": dg.MetadataValue.text(info.archive_min or ""),
        "archive_max": dg.MetadataValue.text(info.archive_max or ""),
        "backups_in_repository": dg.MetadataValue.int(len(info.backups)),
    }


@dg.asset(
    key=PHYSICAL_BACKUP,
    group_name="postgres",
    kinds={"postgres"},
    description=(
        "pgBackRest physical backup of the whole cluster (full weekly, differential daily); "
        "with the archived WAL it restores to any instant of the PITR window."
    ),
)
def physical_backup(
    context: dg.AssetExecutionContext,
    config: PhysicalBackupConfig,
    pitr_stanza: PitrResource,
    policy: PolicyResource,
) -> dg.MaterializeResult:
    loaded = policy.load()
    stanza = pitr_stanza.config(loaded).stanza
    info = stanza.info()
    backup_type = choose_backup_type(config.type, loaded, info, utc_now())
    record = stanza.backup(backup_type, log=context.log.info)
    info = stanza.info()
    context.log.info(
        f"{record.type} backup {record.label}: {record.size / 1e6:.1f} MB, "
        f"{record.repo_delta / 1e6:.1f} MB stored, WAL {record.archive_start}..{record.archive_stop}"
    )
    return dg.MaterializeResult(metadata=backup_metadata(record, info))


# --------------------------------------------------------------------------------------------
# WAL RPO: one sensor tick a minute (the target is minutes), alerts through the RPO machinery


def wal_freshness(result: pitr.WalRpo) -> rpo.Freshness:
    item = rpo.Freshness(WAL_ARCHIVE, None, result.target_seconds / 3600, 0.0)
    item.age_hours = result.exposure_seconds / 3600
    item.captured_at = result.last_archived_at
    if result.problems:
        item.age_hours = max(item.age_hours, item.target_hours + 1e-9)  # late
        item.disagreement = "; ".join(result.problems)
    return item


def wal_alert(result: pitr.WalRpo, kind: str) -> alerts.Alert:
    if kind == "rpo_breach":
        title = f"WAL archive RPO missed: {result.describe()}"
    else:
        title = (
            f"WAL archive RPO recovered: {result.exposure_seconds:.0f} s behind "
            f"(target {result.target_seconds:.0f} s), last archived {result.last_archived_wal}"
        )
    return alerts.Alert(
        kind=kind,
        title=title,
        asset=WAL_ARCHIVE,
        details=result.to_dict(),
        url=alerts.ui_url("/assets/postgres/physical_backup"),
    )


def wal_check_evaluation(result: pitr.WalRpo) -> dg.AssetCheckEvaluation:
    return dg.AssetCheckEvaluation(
        asset_key=PHYSICAL_BACKUP,
        check_name=WAL_RPO_CHECK,
        passed=not result.late,
        severity=dg.AssetCheckSeverity.ERROR,
        description=result.describe(),
        metadata={
            "exposure_seconds": dg.MetadataValue.float(round(result.exposure_seconds, 1)),
            "target_seconds": dg.MetadataValue.float(float(result.target_seconds)),
            "failed_count": dg.MetadataValue.int(result.failed_count),
            "last_archived_wal": dg.MetadataValue.text(result.last_archived_wal or ""),
            "repo_archive_max": dg.MetadataValue.text(result.repo_archive_max or ""),
            "details": dg.MetadataValue.json(result.to_dict()),
        },
    )


def evaluate_wal_rpo(config: pitr.PitrConfig, policy: Policy) -> pitr.WalRpo:
    try:
        info = config.stanza.info(timeout=60)
    except Exception as exc:  # the server side still tells the RPO; say why the repo is unread
        info = None
        problem = f"pgbackrest info failed: {exc}"
    else:
        problem = None
    result = pitr.wal_rpo(config.database_url, policy.wal_rpo_minutes * 60, info)
    if problem:
        result.problems.append(problem)
    return result


def wal_rpo_tick(
    config: pitr.PitrConfig, policy: Policy, cursor: str | None, log
) -> tuple[pitr.WalRpo, str, list[alerts.Alert]]:
    """One evaluation: the result, the next cursor and the alerts sent (breach and recovery
    once each, kept in the cursor like the RPO sensor's)."""
    result = evaluate_wal_rpo(config, policy)
    evaluation = rpo.Evaluation(result.checked_at, [wal_freshness(result)])
    state = rpo.BreachState.from_cursor(cursor)
    breached, recovered, state = rpo.transitions(state, evaluation)
    new_alerts = [wal_alert(result, "rpo_breach") for _ in breached]
    new_alerts += [wal_alert(result, "rpo_recovered") for _ in recovered]
    state.pending = alerts.send_keeping_pending(new_alerts, state.pending, log)
    return result, state.to_cursor(), new_alerts


@dg.sensor(
    name="wal_rpo_sensor",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Age of the WAL archive (pg_stat_archiver, pgbackrest info) against "
    "wal_rpo_minutes; records wal_rpo_met and alerts once per breach and once per recovery.",
)
def wal_rpo_sensor(
    context: dg.SensorEvaluationContext, pitr_stanza: PitrResource, policy: PolicyResource
) -> dg.SensorResult:
    loaded = policy.load()
    result, cursor, sent = wal_rpo_tick(
        pitr_stanza.config(loaded), loaded, context.cursor, context.log.warning
    )
    context.log.info(result.describe() + (f"; {len(sent)} alert(s)" if sent else ""))
    return dg.SensorResult(asset_events=[wal_check_evaluation(result)], cursor=cursor)


@dg.asset_check(
    asset=PHYSICAL_BACKUP,
    name=WAL_RPO_CHECK,
    description="The WAL archive is no more than wal_rpo_minutes behind (on demand; the "
    "wal_rpo_sensor records it every minute).",
)
def wal_rpo_met(pitr_stanza: PitrResource, policy: PolicyResource) -> dg.AssetCheckResult:
    loaded = policy.load()
    result = evaluate_wal_rpo(pitr_stanza.config(loaded), loaded)
    evaluation = wal_check_evaluation(result)
    return dg.AssetCheckResult(
        passed=evaluation.passed,
        severity=evaluation.severity,
        description=evaluation.description,
        metadata=evaluation.metadata,
    )


def health_rows(policy: Policy) -> list[dict]:
    """The WAL archive's row of the backup health report (none without the PITR tier)."""
    if not pitr.configured():
        return []
    try:
        config = pitr.PitrConfig.from_env(policy.pgbackrest_stanza)
        result = evaluate_wal_rpo(config, policy)
        state, age, late = (
            "LATE" if result.late else "OK",
            round(result.exposure_seconds / 3600, 4),
            WAL_ARCHIVE if result.late else "",
        )
    except Exception as exc:
        state, age, late = "LATE", -1.0, f"{WAL_ARCHIVE}: {exc}"[:300]
    return [
        {
            "workspace": "(WAL archive)",
            "rpo": state,
            "oldest_backup_age_hours": age,
            "late_assets": late,
            "last_drill": "",
            "drill_seconds": -1.0,
            "rto_target_seconds": policy.rto_minutes * 60,
            "drill": "",
        }
    ]


# --------------------------------------------------------------------------------------------
# Restore job


class PitrRestoreConfig(dg.Config):
    to: str = ""  # the target instant, ISO 8601 with a zone; else the run tag pitr/to
    target_dir: str = ""
    port: int = 0
    listen: str = "127.0.0.1"
    overwrite_live: bool = False


def parse_target(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(
            f"target time {text!r} is not ISO 8601 (e.g. '2026-12-01 13:05:00+00')"
        ) from exc
    if moment.tzinfo is None:
        raise ConfigError(f"target time {text!r} has no time zone: add +00 or Z")
    return moment


@dg.op(description="Restore the cluster to an instant with pgBackRest, start it, verify it.")
def pitr_restore(
    context: dg.OpExecutionContext,
    config: PitrRestoreConfig,
    pitr_stanza: PitrResource,
    policy: PolicyResource,
    backup_store: BackupStoreResource,
) -> dg.Output:
    text = config.to or context.run.tags.get(RESTORE_TAG, "")
    if not text:
        raise ConfigError(f"pitr_restore_job needs op config `to` or the run tag {RESTORE_TAG}")
    overwrite = config.overwrite_live or context.run.tags.get("pitr/overwrite_live") == "true"
    leases = lease_store_for_live(backup_store.url, context.log.info) if overwrite else None
    restored = pitr.restore_to_time(
        pitr_stanza.config(policy.load()),
        parse_target(text),
        target_dir=config.target_dir or None,
        port=config.port or None,
        listen=config.listen,
        overwrite_live=overwrite,
        log=context.log.info,
        leases=leases,
        lease_owner=run_owner(context),
    )
    summary = restored.to_dict()
    return dg.Output(
        summary,
        metadata={
            "data_dir": dg.MetadataValue.text(summary["data_dir"]),
            "url": dg.MetadataValue.text(summary["url"]),
            "timeline": dg.MetadataValue.int(restored.timeline),
            "lsn": dg.MetadataValue.text(restored.lsn),
            "backup_label": dg.MetadataValue.text(restored.backup_label),
            "recovery_stop": dg.MetadataValue.text(restored.recovery_stop),
            "seconds": dg.MetadataValue.float(round(restored.seconds, 1)),
            "row_counts": dg.MetadataValue.json(restored.row_counts),
        },
    )


@dg.job(
    name="pitr_restore_job",
    description="Point-in-time restore of the whole cluster into a NEW data directory and port "
    "(run tag pitr/to or op config `to`; over the live cluster only with overwrite_live).",
)
def pitr_restore_job():
    pitr_restore()


physical_backup_job = dg.define_asset_job("physical_backup_job", selection=[PHYSICAL_BACKUP])
physical_backup_daily = dg.ScheduleDefinition(
    name="physical_backup_daily",
    job=physical_backup_job,
    cron_schedule="15 1 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Full on policy physical_full_weekday (or when none exists), differential otherwise.",
)


def build_pitr_defs(env: dict[str, str] | None = None) -> dg.Definitions:
    env = os.environ if env is None else env
    return dg.Definitions(
        assets=[physical_backup],
        asset_checks=[wal_rpo_met],
        jobs=[physical_backup_job, pitr_restore_job],
        schedules=[physical_backup_daily],
        sensors=[wal_rpo_sensor],
        resources={"pitr_stanza": PitrResource(stanza=env.get("PGBACKREST_STANZA", ""))},
    )
