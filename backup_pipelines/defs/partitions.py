"""The one home of every PartitionsDefinition (DESIGN "Contracts": renaming one orphans history).

Every time dimension starts at `partitions_start` (policy): a date, or by default the first day
of the month retention's longest window (`keep_weekly_days`) reaches back to. A new deployment
then sees a few months of "missing" partitions instead of a year of them, and every backup
retention can still hold has a partition to restore it from in the UI (the command line
restores any date). Set the key to reach further back, e.g. for artifacts held by keep markers.
"""

from datetime import UTC, date, datetime, timedelta

import dagster as dg

from backup_pipelines.lib.workspaces import validate_workspace_id


def partitions_start(today: date | None = None) -> str:
    """The first date of every time dimension: the policy's `partitions_start`, else the first
    day of the month `keep_weekly_days` before today. Read when the code location loads; a
    policy that does not load falls back to the built-in defaults here (its runs name the key)."""
    from backup_pipelines.lib.errors import ConfigError
    from backup_pipelines.lib.policy import Policy, load_policy

    try:
        policy = load_policy()
    except ConfigError:
        policy = Policy()
    if policy.partitions_start:
        return policy.partitions_start
    reach = (today or datetime.now(UTC).date()) - timedelta(days=policy.keep_weekly_days)
    return reach.replace(day=1).isoformat()


BACKUPS_START_DATE = partitions_start()

daily = dg.DailyPartitionsDefinition(start_date=BACKUPS_START_DATE, timezone="UTC")
workspaces = dg.DynamicPartitionsDefinition(name="workspaces")
# Dimensions are ordered by name in keys: "2026-11-21|ws_acme".
daily_by_workspace = dg.MultiPartitionsDefinition({"date": daily, "workspace": workspaces})
# SQL Server: the database is the unit; differentials every 4 hours, logs every 15 minutes.
WINDOW_FORMAT = "%Y-%m-%d-%H:%M"
every_4_hours = dg.TimeWindowPartitionsDefinition(
    cron_schedule="0 */4 * * *",
    start=BACKUPS_START_DATE + "-00:00",
    fmt=WINDOW_FORMAT,
    timezone="UTC",
)
every_15_minutes = dg.TimeWindowPartitionsDefinition(
    cron_schedule="*/15 * * * *",
    start=BACKUPS_START_DATE + "-00:00",
    fmt=WINDOW_FORMAT,
    timezone="UTC",
)


def date_and_window(partition_key: str) -> tuple[str, str]:
    """("YYYY-MM-DD", "HHMM") of a time-window key like "2026-12-01-13:15"."""
    moment = datetime.strptime(str(partition_key), WINDOW_FORMAT)
    return moment.strftime("%Y-%m-%d"), moment.strftime("%H%M")


def date_and_workspace(partition_key: str | dg.MultiPartitionKey) -> tuple[str, str]:
    """(date, workspace) of a date x workspace key; the workspace id is validated here."""
    key = daily_by_workspace.get_partition_key_from_str(str(partition_key))
    dims = key.keys_by_dimension
    return dims["date"], validate_workspace_id(dims["workspace"])


def multi_key(date: str, workspace: str) -> str:
    return str(dg.MultiPartitionKey({"date": date, "workspace": validate_workspace_id(workspace)}))


def last_completed_date(now: datetime | None = None) -> str:
    """The newest daily partition whose day has ended (what the schedules back up)."""
    now = now or datetime.now(UTC)
    return (now.astimezone(UTC) - timedelta(days=1)).strftime("%Y-%m-%d")
