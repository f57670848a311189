"""Which sensors and schedules start running when the code location is loaded.

By default every sensor and schedule of this code location is on (backups, RPO, alerts, drill,
retention). Two environment variables switch them off at load time, for a staged roll-out
(a new deployment starts with only discovery and alerts on, say) and for tests that start
Dagster and must not get unrelated runs from automation they do not exercise:

    BACKUP_AUTOMATION_OFF   comma-separated sensor/schedule names that start STOPPED, or `*`
                            for all of them
    BACKUP_AUTOMATION_ON    names that stay RUNNING even when BACKUP_AUTOMATION_OFF is `*`

Names that match no sensor or schedule are an error when the code location loads (a typo must
not leave something on that the operator meant to switch off).

This sets each definition's *default* status. Dagster keeps an explicit state per sensor and
schedule once someone starts or stops it (UI toggle, `dagster sensor start`, GraphQL); that
stored state wins over the default, so the switch governs everything nobody has toggled.
"""

from __future__ import annotations

import copy
import os

import dagster as dg
from dagster_shared import record

EXECUTOR_VARIABLE = "BACKUP_RUN_EXECUTOR"
OFF_VARIABLE = "BACKUP_AUTOMATION_OFF"
ON_VARIABLE = "BACKUP_AUTOMATION_ON"


class AutomationSwitchError(ValueError):
    pass


def _names(value: str | None) -> set[str]:
    return {n.strip() for n in (value or "").split(",") if n.strip()}


def stopped_names(all_names: set[str], env: dict[str, str] | None = None) -> set[str]:
    """The sensor/schedule names the environment switches off."""
    env = os.environ if env is None else env
    off, on = _names(env.get(OFF_VARIABLE)), _names(env.get(ON_VARIABLE))
    unknown = ((off - {"*"}) | on) - all_names
    if unknown:
        raise AutomationSwitchError(
            f"{OFF_VARIABLE}/{ON_VARIABLE} name no sensor or schedule of this code location: "
            f"{', '.join(sorted(unknown))} (known: {', '.join(sorted(all_names))})"
        )
    stopped = set(all_names) if "*" in off else off
    return stopped - on


def apply_automation_switch(
    defs: dg.Definitions, env: dict[str, str] | None = None
) -> dg.Definitions:
    """`defs` with the default status of the switched-off sensors and schedules set to STOPPED."""
    sensors, schedules = list(defs.sensors or []), list(defs.schedules or [])
    stopped = stopped_names({d.name for d in [*sensors, *schedules]}, env)
    if not stopped:
        return defs

    def switched(definition, status):
        if definition.name not in stopped:
            return definition
        # Dagster has no public copy-with-default-status; the status is a plain attribute read
        # through the `default_status` property (checked by the tests).
        twin = copy.copy(definition)
        twin._default_status = status
        return twin

    # Definitions is an immutable record: a copy with only these two fields replaced.
    return record.replace(
        defs,
        sensors=[switched(s, dg.DefaultSensorStatus.STOPPED) for s in sensors],
        schedules=[switched(s, dg.DefaultScheduleStatus.STOPPED) for s in schedules],
    )


def run_executor(env: dict[str, str] | None = None) -> dg.ExecutorDefinition:
    """Every job's executor: all steps of a run in the run's one process by default.

    A workspace backup is a chain of small steps (SQL dump, then each index, each followed by
    its verify check); the multiprocess executor starts a Python process per step, each
    importing Dagster and this code location again: for a tiny workspace that start-up is most
    of the run's CPU (bench/bench_orchestration.py), and 1,000 workspaces a day pay it 1,000
    times. `BACKUP_RUN_EXECUTOR=multiprocess` brings back a process per step (steps isolated,
    the two index exports in parallel) for deployments of few, large workspaces."""
    env = os.environ if env is None else env
    choice = (env.get(EXECUTOR_VARIABLE) or "in_process").strip()
    if choice == "in_process":
        return dg.in_process_executor
    if choice == "multiprocess":
        return dg.multiprocess_executor
    raise AutomationSwitchError(f"{EXECUTOR_VARIABLE}={choice!r} is not in_process or multiprocess")
