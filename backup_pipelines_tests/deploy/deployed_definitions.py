"""Test-only code location for the deployed-shape tests: the production Definitions, unchanged,
except that time moves faster. The daily per-workspace backup schedule fires once, about two
minutes after the code server loaded this module, instead of at 01:15 UTC: the daemon's own
schedule loop ticks it, with the real evaluation function (the last completed day, one run per
workspace). The sensors tick every few seconds instead of every few minutes.

Nothing here changes what a tick does; only when it happens.

(A cron of every minute would not do: a schedule's run_key only deduplicates within one tick,
so each minute would back up the same partitions again.)"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

from backup_pipelines.definitions import build_definitions

FAST_SENSOR_SECONDS = 5
SCHEDULE_DELAY = timedelta(seconds=150)  # the daemon is up by then, even on a busy machine


def once_soon(now: datetime | None = None) -> str:
    """A daily cron whose next firing is the first whole minute after now + SCHEDULE_DELAY."""
    fire = (now or datetime.now(UTC)) + SCHEDULE_DELAY + timedelta(minutes=1)
    return f"{fire.minute} {fire.hour} * * *"


FAST_SCHEDULES = {"workspace_backup_daily": once_soon()}


def faster(defs):
    from dagster_shared import record

    schedules = []
    for schedule in defs.schedules or []:
        if schedule.name in FAST_SCHEDULES:
            schedule = copy.copy(schedule)
            schedule._cron_schedule = FAST_SCHEDULES[schedule.name]
        schedules.append(schedule)
    sensors = []
    for sensor in defs.sensors or []:
        sensor = copy.copy(sensor)
        sensor._min_interval = FAST_SENSOR_SECONDS
        sensors.append(sensor)
    return record.replace(defs, schedules=schedules, sensors=sensors)


defs = faster(build_definitions())
