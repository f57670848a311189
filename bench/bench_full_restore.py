"""The whole-database restore against the runbook's, on a database N times the reference one
(issue 16, item 4: "the full restore time (parallel `pg_restore -j`) vs `pg_restore` of the
runbook's dump").

One run, one generated database, one PostgreSQL server:

  ours streamed   restore_full_database with one job: the verified artifact decompressed
                  straight into pg_restore's stdin, section by section, then verified
  ours -j 2       restore_full_database with two jobs: decompressed to local disk first
                  (pg_restore -j needs a seekable file), then pg_restore -j 2, then verified
  runbook         pg_restore of the runbook's dump (`pg_dump -Fc -Z9 --no-acl --no-owner`),
                  serially as the runbook runs it, and with -j 2

Only the restores are timed against each other. With --lock FILE they run while holding that
lock (flock), so that other engineers' benchmarks on the same cores do not overlap them; the
generation, our dump and the runbook's slow -Z9 dump (~25x the floor in time) run outside it
(their times are printed, but are no speed figures). The machine's load is printed at the
start of every restore.

    .venv/bin/python bench/bench_full_restore.py --scale 4 --lock /tmp/bench.lock
    .venv/bin/python bench/bench_full_restore.py --scale 0.05          # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]  # this checkout's package, not an installed one

import bench_full_dump as full  # noqa: E402  (the reference generator and timed pg_restore)

REFERENCE_MEMORIES = full.REFERENCE_MEMORIES


def log(message: str) -> None:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"[{time.strftime('%H:%M:%S')} load {load}] {message}", flush=True)


@contextlib.contextmanager
def held(lock_path: str | None):
    if not lock_path:
        yield
        return
    with open(lock_path, "a") as lock:
        log(f"waiting for {lock_path} ...")
        fcntl.flock(lock, fcntl.LOCK_EX)
        log(f"holding {lock_path}")
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def runbook_dump(database_url: str, target: Path) -> dict:
    from backup_pipelines.lib.postgres.connection import client_env, pg_bin

    argv = [pg_bin("pg_dump"), "--no-password", "--format=custom",
            "--compress=9", "--no-acl", "--no-owner", "-f", str(target)]  # fmt: skip
    started = time.monotonic()
    subprocess.run(argv, env=client_env(database_url), check=True, capture_output=True)
    return {"wall": time.monotonic() - started, "bytes": target.stat().st_size}


def our_dump(database_url: str, store_dir: Path) -> dict:
    from backup_pipelines.lib.postgres.dump import dump_full_database
    from backup_pipelines.lib.store import ArtifactRef, LocalStore

    store = LocalStore(store_dir)
    started = time.monotonic()
    with store.begin(ArtifactRef("postgres/full_dump", full.PARTITION)) as writer:
        writer.commit(**dump_full_database(database_url, writer))
    return {"wall": time.monotonic() - started}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--scale", type=float, default=4.0, help="times the 1.34 GB stream")
    parser.add_argument("--lock", help="flock this file around the timed restores only")
    parser.add_argument("--work-dir", default=str(ROOT / ".bench"))
    args = parser.parse_args()

    from backup_pipelines.devstack.postgres_cluster import PostgresCluster

    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="full-restore-", dir=args.work_dir))
    memories = round(REFERENCE_MEMORIES * args.scale)
    cluster = PostgresCluster()
    results: dict[str, dict] = {}
    try:
        cluster.start()
        log(f"generating {memories:,} memory entries (scale {args.scale:g}) ...")
        url, _totals, gen_seconds, db_size = full.generate(cluster, memories, 3)
        log(f"  {gen_seconds:.1f} s (excluded), pg_database_size {db_size / 1e9:.2f} GB")
        log("ours: dump_full_database -> local store (not timed against anything here) ...")
        log(f"  {our_dump(url, work / 'store')['wall']:.1f} s")
        log(
            "runbook: pg_dump -Fc -Z9 --no-acl --no-owner (slow; outside the lock: no speed figure)"
        )
        results["runbook_dump"] = runbook_dump(url, work / "runbook.dump")
        log(f"  {results['runbook_dump']['wall']:.1f} s, {results['runbook_dump']['bytes']:,} B")
        with held(args.lock):
            for name, jobs in (("ours streamed", 1), ("ours -j 2", 2)):
                log(f"{name}: restore_full_database(jobs={jobs}) into a new database ...")
                results[name] = full.timed_restore_full_database(
                    url, work / "store", "bench_restored_ours", jobs=jobs
                )
                for at, line in results[name]["steps"]:
                    log(f"  +{at:7.1f} s  {line}")
                log(f"  {results[name]['wall']:.1f} s")
            for jobs in (1, 2):
                name = f"runbook pg_restore -j {jobs}"
                log(f"{name} of the -Z9 dump into a new database ...")
                results[name] = full.timed_pg_restore(
                    url, work / "runbook.dump", "bench_restored_runbook", jobs
                )
                log(f"  {results[name]['wall']:.1f} s")
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    report(results, memories, db_size)
    return 0


def report(results: dict[str, dict], memories: int, db_size: int) -> None:
    runbook = results["runbook pg_restore -j 1"]["wall"]
    print(f"\nfull restore, {memories:,} memory entries, pg_database_size {db_size / 1e9:.2f} GB; "
          f"runbook -Z9 dump {results['runbook_dump']['bytes']:,} B")  # fmt: skip
    print(f"{'restore':<28} {'time s':>8} {'/ runbook':>10}  load (1,5,15) at its start")
    for name in (
        "ours streamed",
        "ours -j 2",
        "runbook pg_restore -j 1",
        "runbook pg_restore -j 2",
    ):
        r = results[name]
        load = " ".join(f"{x:.2f}" for x in r["load"])
        print(f"{name:<28} {r['wall']:8.1f} {r['wall'] / runbook:9.3f}x  {load}")


if __name__ == "__main__":
    raise SystemExit(main())
