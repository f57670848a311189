"""Benchmark: retention's remembered plan on a local store that keeps a month (issue 16,
item 3), with the generation folders of the kept artifacts left unopened against the walk
that opens them all (the baseline: the plan as it was before), in one run.

bench_scale.py's store holds 3 dates with keep_daily_days = 2: every artifact is either the
newest of its series or deleted, so its plan needs every generation folder. A store pruned
daily with a month kept is the other shape: one date of each series goes, one is the newest,
and the ~28 between are kept by age. This bench builds that store (bench/scale_store.py:
--workspaces x --days of the three workspace assets and the whole-database dump, 1 workspace
in 20 missing last night), remembers one verification of every newest artifact (set-up,
untimed), then times the next plan (keep_daily_days = --days: the oldest date goes),
`plan_retention(..., remember=False)`, each in a new process:

  baseline   every generation folder opened by the walk (retention._kept_by_age made to
             pick no date folder, which is the walk before deferral)
  deferred   the plan as shipped

alternately, --repeat times each, warm (the page cache holding the store's metadata after a
first untimed plan) and, with --drop-caches (root), cold (`sync; echo 3 >
/proc/sys/vm/drop_caches` before each). It prints each run's wall time, CPU (user + system),
what the process read from disk, the plan's own listing line, the load average, and per
condition the best and worst of each and the ratio of the bests (baseline / deferred).

    .venv/bin/python bench/bench_retention_month.py [--workspaces 1000] [--days 30]
        [--repeat 2] [--drop-caches] [--work-dir DIR] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import scale_store  # noqa: E402


def log(line: str) -> None:
    print(line, flush=True)


def build(work: Path, workspaces: int, days: int, reuse: bool) -> None:
    stamp = work / "scenario.json"
    wanted = {"workspaces": workspaces, "days": days}
    if reuse and stamp.exists() and json.loads(stamp.read_text())["shape"] == wanted:
        log(f"reusing the store in {work} (--reuse)")
        return
    subprocess.run(["rm", "-rf", str(work)], check=True)
    now = datetime.now(UTC)
    artifacts = list(scale_store.scenario(scale_store.workspace_ids(workspaces), now, days))
    started = time.monotonic()
    count, files = scale_store.write_local(work / "store", artifacts, scale_store.make_templates())
    log(f"store: {count:,} artifacts, {files:,} files in {time.monotonic() - started:.1f} s "
        "(set-up)")  # fmt: skip
    stamp.write_text(json.dumps({"shape": wanted, "now": now.isoformat()}))


def one_plan(store: str, days: int, mode: str) -> dict:
    """One plan in a new process; mode: remember (set-up), baseline or deferred."""
    child = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--store", store, "--days", str(days)],
        check=True, capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    return json.loads(child.stdout.strip().splitlines()[-1])


def child(mode: str, store_dir: str, days: int) -> None:
    import resource

    from backup_pipelines.lib.lifecycle import retention
    from backup_pipelines.lib.policy import Policy
    from backup_pipelines.lib.store import store_from_url

    if mode == "baseline":
        retention._kept_by_age = lambda *_args: set()
    store = store_from_url(f"file://{store_dir}")
    policy = Policy(keep_daily_days=days, keep_weekly_days=0)
    today = datetime.now(UTC).date()
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    plan = retention.plan_retention(store, policy, today, remember=mode == "remember")
    seconds, after = time.monotonic() - started, resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "seconds": seconds,
        "user": after.ru_utime - before.ru_utime,
        "system": after.ru_stime - before.ru_stime,
        "read_mib": (after.ru_inblock - before.ru_inblock) * 512 / 2**20,
        "kept": len(plan.kept), "deleted": len(plan.to_delete), "trusted": plan.trusted,
        "listing": plan.listing.describe() if plan.listing else "",
    }))  # fmt: skip


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def measure(store: str, days: int, condition: str, repeat: int) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {"baseline": [], "deferred": []}
    for round_ in range(repeat):
        order = ["baseline", "deferred"] if round_ % 2 == 0 else ["deferred", "baseline"]
        for mode in order:
            if condition == "cold":
                drop_caches()
            load = os.getloadavg()[0]
            run = one_plan(store, days, mode)
            runs[mode].append(run)
            log(f"  {condition} {mode:8} {run['seconds']:6.2f} s  CPU {run['user']:4.1f} + "
                f"{run['system']:4.1f} s  read {run['read_mib']:6.1f} MiB  load {load:.2f}  "
                f"keep {run['kept']} delete {run['deleted']} trusted {run['trusted']}")  # fmt: skip
            log(f"    {run['listing']}")
    return runs


def summary(condition: str, runs: dict[str, list[dict]]) -> None:
    best = {mode: min(r["seconds"] for r in found) for mode, found in runs.items()}
    worst = {mode: max(r["seconds"] for r in found) for mode, found in runs.items()}
    log(f"{condition}: baseline {best['baseline']:.2f} s ({worst['baseline']:.2f}), deferred "
        f"{best['deferred']:.2f} s ({worst['deferred']:.2f}); "
        f"{best['baseline'] / best['deferred']:.2f}x faster (best of each); aim 10 s: "
        f"{'PASS' if worst['deferred'] < 10 else 'MISS'} (worst deferred)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workspaces", type=int, default=1000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--drop-caches", action="store_true")
    parser.add_argument("--work-dir", default=str(ROOT / ".bench" / "retention-month"))
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--child")
    parser.add_argument("--store")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.store, args.days)
        return
    work = Path(args.work_dir)
    log(f"retention on a month-shaped local store: {args.workspaces:,} workspaces x {args.days} "
        f"dates, load {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")  # fmt: skip
    build(work, args.workspaces, args.days, args.reuse)
    store = str(work / "store")
    remembered = one_plan(store, args.days, "remember")
    log(f"remembered (set-up): {remembered['seconds']:.1f} s, {remembered['listing']}")
    one_plan(store, args.days, "deferred")  # the page cache warmed (untimed)
    conditions = ["warm", "cold"] if args.drop_caches else ["warm"]
    results = {c: measure(store, args.days, c, args.repeat) for c in conditions}
    for condition, runs in results.items():
        summary(condition, runs)


if __name__ == "__main__":
    main()
