"""DigitalOcean Managed PostgreSQL: `postgres/managed_backups` observes the provider's daily
backups, `managed_backup_rpo_sensor` alerts once when the newest is older than the RPO (and
once when it recovers), and `managed_pitr_restore_job` creates a cluster restored to an
instant. Part of the deployment only when DIGITALOCEAN_TOKEN and DIGITALOCEAN_DATABASE_ID are
set."""

from datetime import UTC, datetime

import dagster as dg

from backup_pipelines.defs.pitr import parse_target
from backup_pipelines.defs.resources import PolicyResource
from backup_pipelines.lib.errors import ConfigError
from backup_pipelines.lib.monitoring import alerts, rpo
from backup_pipelines.lib.policy import Policy
from backup_pipelines.lib.postgres import digitalocean

MANAGED_BACKUPS = dg.AssetKey(["postgres", "managed_backups"])
MANAGED_ASSET = "postgres/managed_backups"
RESTORE_TAG = "managed/to"


class DigitalOceanResource(dg.ConfigurableResource):
    """DigitalOcean's API for the source cluster (DIGITALOCEAN_TOKEN as an EnvVar reference,
    DIGITALOCEAN_DATABASE_ID, optional DIGITALOCEAN_API_URL)."""

    token: str
    cluster_id: str
    api_url: str = ""

    def api(self, log=lambda _m: None) -> digitalocean.ManagedDatabases:
        return digitalocean.ManagedDatabases(
            self.token, self.cluster_id, self.api_url or None, log=log
        )


def managed_freshness(backups: list, policy: Policy, now: datetime) -> rpo.Freshness:
    item = rpo.Freshness(MANAGED_ASSET, None, policy.rpo_hours, policy.rpo_grace_minutes)
    if backups:
        newest = backups[-1].created_at
        item.captured_at = newest
        item.newest_date = newest.date().isoformat()
        item.age_hours = max(0.0, (now - newest).total_seconds() / 3600)
    return item


@dg.asset(
    key=MANAGED_BACKUPS,
    group_name="postgres",
    kinds={"postgres"},
    description="DigitalOcean's daily backups of the managed cluster (created_at, size): "
    "restorable to any second of the last 7 days through managed_pitr_restore_job.",
)
def managed_backups(
    context: dg.AssetExecutionContext,
    digitalocean_db: DigitalOceanResource,
    policy: PolicyResource,
) -> dg.MaterializeResult:
    api = digitalocean_db.api(context.log.info)
    backups = api.list_backups()
    now = datetime.now(UTC)
    item = managed_freshness(backups, policy.load(), now)
    context.log.info(f"{len(backups)} backup(s); newest {item.describe_age()} old")
    return dg.MaterializeResult(
        metadata={
            "backups": dg.MetadataValue.int(len(backups)),
            "newest_created_at": dg.MetadataValue.text(
                backups[-1].created_at.isoformat() if backups else ""
            ),
            "oldest_created_at": dg.MetadataValue.text(
                backups[0].created_at.isoformat() if backups else ""
            ),
            "newest_age_hours": dg.MetadataValue.float(
                round(item.age_hours, 2) if item.age_hours is not None else -1.0
            ),
            "newest_size_gigabytes": dg.MetadataValue.float(
                backups[-1].size_gigabytes if backups else 0.0
            ),
            "list": dg.MetadataValue.json(
                [
                    {"created_at": b.created_at.isoformat(), "size_gigabytes": b.size_gigabytes}
                    for b in backups
                ]
            ),
        }
    )


@dg.sensor(
    name="managed_backup_rpo_sensor",
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Age of DigitalOcean's newest backup against rpo_hours + grace; alerts once "
    "per breach and once per recovery.",
)
def managed_backup_rpo_sensor(
    context: dg.SensorEvaluationContext,
    digitalocean_db: DigitalOceanResource,
    policy: PolicyResource,
) -> dg.SensorResult:
    loaded = policy.load()
    now = datetime.now(UTC)
    item = managed_freshness(digitalocean_db.api().list_backups(), loaded, now)
    state = rpo.BreachState.from_cursor(context.cursor)
    breached, recovered, state = rpo.transitions(state, rpo.Evaluation(now, [item]))
    url = lambda asset: alerts.ui_url(f"/assets/{asset}")  # noqa: E731
    new_alerts = rpo.alerts_for(breached, "rpo_breach", url)
    new_alerts += rpo.alerts_for(recovered, "rpo_recovered", url)
    state.pending = alerts.send_keeping_pending(new_alerts, state.pending, context.log.warning)
    return dg.SensorResult(cursor=state.to_cursor())


class ManagedRestoreConfig(dg.Config):
    to: str = ""  # ISO 8601 with a zone; else the run tag managed/to
    name: str = ""  # the new cluster's name (default <source>-pitr-<stamp>)
    wait_minutes: float = 30.0
    poll_seconds: float = 10.0
    recreate_pools: bool = True


@dg.op(description="Create a DigitalOcean cluster restored to an instant and wait for it.")
def managed_pitr_restore(
    context: dg.OpExecutionContext,
    config: ManagedRestoreConfig,
    digitalocean_db: DigitalOceanResource,
) -> dg.Output:
    text = config.to or context.run.tags.get(RESTORE_TAG, "")
    if not text:
        raise ConfigError(
            f"managed_pitr_restore_job needs op config `to` or the run tag {RESTORE_TAG}"
        )
    restored = digitalocean_db.api(context.log.info).restore_to_time(
        parse_target(text),
        name=config.name or None,
        wait_timeout=config.wait_minutes * 60,
        poll_seconds=config.poll_seconds,
        recreate_pools=config.recreate_pools,
    )
    summary = restored.to_dict()
    return dg.Output(
        summary,
        metadata={k: dg.MetadataValue.text(str(v)) for k, v in summary.items() if k != "pools"}
        | {"pools": dg.MetadataValue.json(restored.pools)},
    )


@dg.job(
    name="managed_pitr_restore_job",
    description="DigitalOcean point-in-time restore into a NEW cluster (run tag managed/to).",
)
def managed_pitr_restore_job():
    managed_pitr_restore()


managed_backups_job = dg.define_asset_job("managed_backups_job", selection=[MANAGED_BACKUPS])
managed_backups_hourly = dg.ScheduleDefinition(
    name="managed_backups_hourly",
    job=managed_backups_job,
    cron_schedule="20 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)


def build_managed_defs(env: dict[str, str]) -> dg.Definitions:
    return dg.Definitions(
        assets=[managed_backups],
        jobs=[managed_backups_job, managed_pitr_restore_job],
        schedules=[managed_backups_hourly],
        sensors=[managed_backup_rpo_sensor],
        resources={
            "digitalocean_db": DigitalOceanResource(
                token=dg.EnvVar("DIGITALOCEAN_TOKEN"),
                cluster_id=env["DIGITALOCEAN_DATABASE_ID"],
                api_url=env.get("DIGITALOCEAN_API_URL", ""),
            )
        },
    )
