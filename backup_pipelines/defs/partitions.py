"""The one home of every PartitionsDefinition (DESIGN "Contracts": renaming one orphans history)."""

from datetime import UTC, datetime, timedelta

import dagster as dg

from backup_pipelines.lib.workspaces import validate_workspace_id

BACKUPS_START_DATE = "2026-01-01"

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
