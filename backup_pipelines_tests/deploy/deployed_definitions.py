"""Test-only code location for the deployed-shape tests: the production Definitions, unchanged,
except that time moves faster. The daily per-workspace backup schedule ticks every minute
instead of at 01:15 UTC, and stops asking for runs once one of its ticks has: it fires once,
within a minute of the daemon's scheduler starting, and the daemon's own schedule loop ticks it
with the real evaluation function (the last completed day, one run per workspace). The sensors
tick every few seconds instead of every few minutes.

Nothing here changes what a tick requests; only when it happens.

(A cron of every minute alone would not do: a schedule's run_key only deduplicates within one
tick, so each minute would back up the same partitions again. A daily cron a fixed delay after
this module loads would wait that delay even when the daemon is up sooner.)"""

from __future__ import annotations

import copy

import dagster as dg

from backup_pipelines.definitions import build_definitions

FAST_SENSOR_SECONDS = 5
FAST_SCHEDULES = {"workspace_backup_daily": "* * * * *"}


def fires_once(name: str, evaluate):
    """The schedule's own evaluation until a run of the schedule exists, then a skip."""

    def gated(context):
        ran = context.instance.get_runs(
            dg.RunsFilter(tags={"dagster/schedule_name": name}), limit=1
        )
        if ran:
            yield dg.SkipReason(f"{name} has fired once (test code location)")
            return
        yield from evaluate(context)

    return gated


def faster(defs):
    from dagster_shared import record

    schedules = []
    for schedule in defs.schedules or []:
        if schedule.name in FAST_SCHEDULES:
            schedule = copy.copy(schedule)
            schedule._cron_schedule = FAST_SCHEDULES[schedule.name]
            evaluation = schedule._execution_fn  # DecoratedScheduleFunction (a NamedTuple)
            schedule._execution_fn = evaluation._replace(
                wrapped_fn=fires_once(schedule.name, evaluation.wrapped_fn)
            )
        schedules.append(schedule)
    sensors = []
    for sensor in defs.sensors or []:
        sensor = copy.copy(sensor)
        sensor._min_interval = FAST_SENSOR_SECONDS
        sensors.append(sensor)
    return record.replace(defs, schedules=schedules, sensors=sensors)


defs = faster(build_definitions())
