"""SQL Server restore chain planner on a year of the runbook's schedule: a full daily, a
differential every 4 hours, a log every 15 minutes (about 37,600 backups, 35,000 of them logs).

Measures, in one run: reading the catalog's recorded headers back from manifest form
(`BackupSet.from_manifest`, what a restore does with the store's catalog), and planning a restore
to the latest instant, to a time in the middle of the year and to a time on the first day.
Prints each against the 15-minute log window (the planner runs before every restore and in the
drill; it must be negligible there).

    .venv/bin/python bench/bench_mssql_planner.py
"""

from __future__ import annotations

import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backup_pipelines.lib.mssql.backupset import BackupSet
from backup_pipelines.lib.mssql.chain import plan_restore
from backup_pipelines_tests.mssql.test_mssql_chain import DAY, History

WINDOW_SECONDS = 15 * 60
REPEATS = 5


def timed(what: str, function, *args) -> tuple[object, float]:
    seconds = []
    result = None
    for _ in range(REPEATS):
        started = time.perf_counter()
        result = function(*args)
        seconds.append(time.perf_counter() - started)
    best = min(seconds)
    print(
        f"{what:<44} best {best * 1000:9.1f} ms  median {statistics.median(seconds) * 1000:9.1f} ms"
        f"  = {best / WINDOW_SECONDS:.2e} x the 15-minute window"
    )
    return result, best


def main() -> int:
    started = time.perf_counter()
    history = History()
    for _ in range(365):
        history.day()
        history.work()
    sets = history.sets
    kinds = {k: sum(1 for b in sets if b.kind == k) for k in ("full", "diff", "log")}
    print(
        f"catalog: {len(sets):,} backups ({kinds['full']} full, {kinds['diff']} diff, "
        f"{kinds['log']:,} log) built in {time.perf_counter() - started:.1f} s"
    )
    recorded = [(b.to_manifest(), b.location) for b in sets]
    parsed, _ = timed(
        "read headers back (from_manifest)",
        lambda: [BackupSet.from_manifest(h, where) for h, where in recorded],
    )
    assert parsed == sets
    plan, _ = timed("plan to latest", plan_restore, sets)
    assert plan.target == sets[-1].finished_at
    middle = DAY + timedelta(days=182, hours=13, minutes=7)
    plan, _ = timed("plan to mid-year 13:07", plan_restore, sets, middle)
    print(
        f"  -> full + {'diff + ' if plan.diff else ''}{len(plan.logs)} logs, STOPAT {plan.stop_at}"
    )
    early = DAY + timedelta(hours=3, minutes=1)
    plan, _ = timed("plan to the first day 03:01", plan_restore, sets, early)
    print(
        f"  -> full + {'diff + ' if plan.diff else ''}{len(plan.logs)} logs, STOPAT {plan.stop_at}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
