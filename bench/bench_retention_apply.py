"""Benchmark: retention's deletions on S3 at 1,000 and 10,000 workspaces (issue 16, item 3).

bench_scale.py times retention's plan; this times what follows it, the apply: deleting what
the plan dooms (with keep_daily_days = keep_weekly_days = 2 on bench_scale's 3-date store,
two dates of every series, ~5.9 artifacts a workspace and ~5 files each).

For each size, bench_scale's store (bench/scale_store.py, reused from `--work-dir` when
bench_scale left one there, else written) is loaded into moto's S3 server
(bench/scale_moto.py), planned (set-up, untimed: every artifact taken as verified, the store
being intact) and applied, twice from a fresh server:

  one by one   an artifact at a time (the way before deletion.delete_together, and still the
               way of a local store and of a bucket with Object Lock): per artifact a listing
               and a delete of its manifest and of each generation folder (keep markers and
               leases listed once per 100 artifacts; before 093e92b, read per partition and
               per workspace)
  together     the same code as shipped: up to 1,000 artifacts checked (keep markers and
               leases listed once), then deleted by DeleteObjects of the keys the plan listed

With `--object-lock` the bucket is created with Object Lock (versioning on; the loaded objects'
retention has run out) and the store configured with it (BACKUP_OBJECT_LOCK_MODE=governance):
one by one is then the way before 2026-12-04, each artifact's objects listed and HEADed for
their retain-until, then its manifest's and each generation folder's versions listed and
deleted; together lists the versions a run of neighbouring doomed folders at a time and
deletes them by version id. After each apply no version of a doomed folder may be left.

Printed: wall seconds, this process's CPU, moto's CPU, the requests sent (by operation), and
the ratio one by one / together. After each apply a new plan must find nothing to delete and
the same artifacts kept. The one-by-one apply is only run up to --baseline-max workspaces
(~26 ms an artifact on this machine: 25 minutes at 10,000).

    .venv/bin/python bench/bench_retention_apply.py [--sizes 1000,10000] [--baseline-max 1000]
        [--work-dir .bench] [--object-lock]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_scale  # noqa: E402
import scale_store  # noqa: E402

from backup_pipelines.lib.lifecycle import retention  # noqa: E402
from backup_pipelines.lib.policy import Policy  # noqa: E402
from backup_pipelines.lib.store import listing, store_from_url  # noqa: E402

POLICY = Policy(keep_daily_days=2, keep_weekly_days=2)


def store_dir(work: Path, size: int) -> Path:
    """bench_scale's store of `size` workspaces, written here when it is not there yet."""
    folder = work / f"scale-{size}" / "store"
    if (folder / "postgres").is_dir():
        bench_scale.log(f"{size:,} workspaces: the store in {folder} (left by bench_scale)")
        return folder
    started = time.monotonic()
    artifacts = scale_store.scenario(scale_store.workspace_ids(size), datetime.now(UTC), 3)
    count, files = scale_store.write_local(folder, artifacts, scale_store.make_templates())
    bench_scale.log(f"{size:,} workspaces: wrote {count:,} artifacts, {files:,} files "
                    f"in {time.monotonic() - started:.1f} s (set-up)")  # fmt: skip
    return folder


def measure(folder: Path, together: bool, object_lock: bool = False) -> dict:
    moto = bench_scale.Moto(folder, indexed=True, object_lock=object_lock)
    try:
        os.environ.update(moto.env)
        os.environ["BACKUP_OBJECT_LOCK_MODE"] = "governance" if object_lock else "off"
        os.environ["BACKUP_OBJECT_LOCK_DAYS"] = "1"
        store = store_from_url(f"s3://{bench_scale.BUCKET}/{bench_scale.S3_PREFIX}")
        assert (store.object_lock is not None) == object_lock
        today = datetime.now(UTC).date()
        plan = retention.plan_retention(store, POLICY, today, is_verified=lambda _a: True)
        requests: Counter = Counter()
        store.client.meta.events.register(
            "before-call.s3", lambda model, **_kw: requests.update([model.name])
        )
        shipped = retention.deletes_together
        retention.deletes_together = shipped if together else (lambda _store: False)
        lines: list[str] = []
        server_before = cpu_of(moto.process.pid)
        load = os.getloadavg()[0]
        started, cpu = time.monotonic(), time.process_time()
        try:
            result = retention.apply_plan(store, plan, log=lines.append)
        finally:
            retention.deletes_together = shipped
        wall, cpu = time.monotonic() - started, time.process_time() - cpu
        server = cpu_of(moto.process.pid) - server_before
        sent = Counter(requests)
        after = retention.plan_retention(store, POLICY, today, is_verified=lambda _a: True)
        if result.errors or len(result.deleted) != len(plan.to_delete):
            raise RuntimeError(f"apply failed: {result.errors[:3]}")
        if after.to_delete or len(after.kept) != len(plan.kept):
            raise RuntimeError("after the apply, a new plan does not find the same store")
        if object_lock:
            left = sum(1 for _version in listing.iter_versions(store, ""))
            current = sum(1 for _key in listing.iter_keys(store, ""))
            if left != current:  # one version a key was loaded: none may be left over
                raise RuntimeError(f"{left - current} versions left beside the current objects")
        return {
            "artifacts": len(plan.to_delete), "kept": len(plan.kept), "wall": wall, "cpu": cpu,
            "server": server, "requests": sent, "load": load, "lines": len(lines),
            "freed": result.bytes_freed,
        }  # fmt: skip
    finally:
        moto.stop()


def cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def describe(name: str, size: int, row: dict) -> str:
    requests = ", ".join(f"{op} {n:,}" for op, n in row["requests"].most_common())
    return (
        f"{size:>6,} workspaces  {name:<11} {row['wall']:8.2f} s  client CPU {row['cpu']:6.2f} s"
        f"  moto CPU {row['server']:6.2f} s  {row['artifacts']:,} artifacts deleted "
        f"({row['freed'] / 1e6:,.1f} MB), {sum(row['requests'].values()):,} requests "
        f"({requests}); load {row['load']:.2f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--baseline-max", type=int, default=1000)
    parser.add_argument("--work-dir", default=str(ROOT / ".bench"))
    parser.add_argument("--object-lock", action="store_true")
    args = parser.parse_args()
    results: list[str] = []
    for size in [int(s) for s in args.sizes.split(",")]:
        folder = store_dir(Path(args.work_dir), size)
        rows = {}
        for name, together in (("one by one", False), ("together", True)):
            if not together and size > args.baseline_max:
                continue
            rows[name] = measure(folder, together, args.object_lock)
            results.append(describe(name, size, rows[name]))
            bench_scale.log(results[-1])
        if len(rows) == 2:
            ratio = rows["one by one"]["wall"] / rows["together"]["wall"]
            requests = sum(rows["one by one"]["requests"].values()) / sum(
                rows["together"]["requests"].values()
            )
            results.append(f"{size:>6,} workspaces  together is {ratio:.1f}x faster, "
                           f"{requests:.0f}x fewer requests")  # fmt: skip
    bucket = "a bucket with Object Lock" if args.object_lock else "S3"
    print("\n".join(["", f"retention apply on {bucket} (moto)", *results]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
