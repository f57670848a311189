"""Benchmark of the whole-database backup (`postgres/full_dump`) against plain pg_dump.

One run, one generated database (>= 1 GB), every measurement on the same data:

  floor     pg_dump --format=custom --compress=0 to a local file (run first and last; the
            faster of the two is the floor)
  runbook   pg_dump --format=custom --compress=9 --no-acl --no-owner to a local file
  library   lib.postgres.dump_full_database into a LocalStore, in a subprocess
  dagster   job postgres_full_backup_job (asset postgres/full_dump + its blocking verify check)
            through `execute_in_process` in a subprocess, once with a local-folder store and
            once with an S3 store (moto server on loopback)

Generation of the database is timed and printed separately; it is excluded from every ratio.
See bench/README.md for how to run it and what each column means.

    .venv/bin/python bench/bench_full_dump.py [--memories 300000] [--skip-runbook]
    .venv/bin/python bench/bench_full_dump.py --scale 4 --restore    # 4x the 1.34 GB stream

--scale N sizes the database as N times the reference one (300,000 memory entries: a 1.34 GB
pg_dump stream, shared/FACTS.md). --restore also times the restores into a NEW database:
`restore_full_database` (verify, decompress, parallel `pg_restore -j 2` by section, row counts
and objects checked) from the library's artifact, against `pg_restore` of the runbook's
`-Z9` dump (one job, as the runbook runs it, and `-j 2`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

PARTITION = "2026-11-21"
ROOT = Path(__file__).resolve().parents[1]
ARTIFACT_FILE = "database.dump.zst"
MB = 1e6
GIB = 1 << 30

AIM_DUMP_OVER_FLOOR = 1.15
AIM_RUNBOOK_OVER_DUMP = 10.0
AIM_SIZE_OVER_RUNBOOK = 1.05
AIM_PEAK_RSS_S3 = 200 * MB
REFERENCE_MEMORIES = 300_000  # scale 1: the 1.34 GB pg_dump stream of shared/FACTS.md
RESTORE_JOBS = 2


# ------------------------------------------------------------------------------------------
# Child processes: what runs inside the measured subprocess. Imports stay inside the functions
# so that the start-up timing covers exactly what a Dagster run process has to import.


def _maxrss() -> dict:
    # Linux reports ru_maxrss in KiB. (RUSAGE_CHILDREN is no measure of pg_dump: a forked child
    # starts with the parent's RSS before exec, so pg_dump's peak comes from polling.)
    return {"ru_maxrss_self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def child_dagster(result_path: str) -> int:
    marks = {"script_start": time.time()}
    import dagster as dg
    from dagster._core.events import DagsterEventType as T

    marks["dagster_imported"] = time.time()
    from backup_pipelines.definitions import defs  # module import builds the Definitions

    marks["definitions_built"] = time.time()
    job = defs.resolve_job_def("postgres_full_backup_job")
    marks["job_resolved"] = time.time()
    instance = dg.DagsterInstance.ephemeral()
    marks["instance_created"] = time.time()
    baseline = _maxrss()["ru_maxrss_self"]  # imports + Definitions + instance, before the run
    result = job.execute_in_process(
        instance=instance, partition_key=PARTITION, raise_on_error=False
    )
    marks["execute_returned"] = time.time()

    steps: dict[str, dict] = {}
    run_events: dict[str, float] = {}
    metadata: dict = {}
    checks: list[dict] = []
    errors: list[str] = []
    for record in instance.all_logs(result.run_id):
        event = record.dagster_event
        if event is None:
            continue
        kind = event.event_type
        if kind in (T.RUN_START, T.RUN_SUCCESS, T.RUN_FAILURE):
            run_events[kind.name] = record.timestamp
        elif kind in (T.STEP_START, T.STEP_SUCCESS, T.STEP_FAILURE):
            steps.setdefault(event.step_key, {})[kind.name] = record.timestamp
            if kind == T.STEP_FAILURE:
                errors.append(str(event.event_specific_data.error)[:3000])
        elif kind == T.ASSET_MATERIALIZATION:
            materialization = event.event_specific_data.materialization
            for key, value in materialization.metadata.items():
                raw = getattr(value, "value", value)
                metadata[key] = raw if isinstance(raw, (int, float, str, dict, list)) else str(raw)
        elif kind == T.ASSET_CHECK_EVALUATION:
            evaluation = event.event_specific_data
            checks.append({"name": evaluation.check_name, "passed": evaluation.passed})
    out = {
        "success": result.success,
        "marks": marks,
        "run_events": run_events,
        "steps": steps,
        "metadata": metadata,
        "checks": checks,
        "errors": errors,
        "rss_baseline": baseline,
        **_maxrss(),
    }
    Path(result_path).write_text(json.dumps(out, indent=2, default=str))
    return 0 if result.success else 1


def child_library(result_path: str) -> int:
    marks = {"script_start": time.time()}
    from backup_pipelines.lib.postgres.dump import dump_full_database
    from backup_pipelines.lib.store import ArtifactRef, store_from_url

    marks["imported"] = time.time()
    baseline = _maxrss()["ru_maxrss_self"]
    store = store_from_url(os.environ["BACKUP_STORE_URL"])
    ref = ArtifactRef("postgres/full_dump", PARTITION)
    started = time.monotonic()
    with store.begin(ref) as writer:
        fields = dump_full_database(os.environ["DATABASE_URL"], writer, 1)
        manifest = writer.commit(**fields)
    seconds = time.monotonic() - started
    marks["done"] = time.time()
    out = {
        "success": True,
        "marks": marks,
        "seconds": seconds,
        "dump_seconds": fields["duration_seconds"],
        "bytes": sum(f["bytes"] for f in manifest["files"]),
        "uncompressed_bytes": fields["tool"]["uncompressed_bytes"],
        "rss_baseline": baseline,
        **_maxrss(),
    }
    Path(result_path).write_text(json.dumps(out, indent=2))
    return 0


# ------------------------------------------------------------------------------------------
# Parent: set up the data, run and measure everything, print the report.


class RssSampler:
    """Polls a process tree with psutil: peak RSS of the process plus its non-pg_dump
    descendants (summed at the same instant), and pg_dump's peak separately."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        import threading

        self.pid = pid
        self.interval = interval
        self.peak_backup = 0
        self.peak_self = 0
        self.peak_pg_dump = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            try:
                own = root.memory_info().rss
                others = pg_dump = 0
                for child in root.children(recursive=True):
                    try:
                        rss = child.memory_info().rss
                        if child.name().startswith("pg_dump"):
                            pg_dump += rss
                        else:
                            others += rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                break
            self.samples += 1
            self.peak_self = max(self.peak_self, own)
            self.peak_backup = max(self.peak_backup, own + others)
            self.peak_pg_dump = max(self.peak_pg_dump, pg_dump)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def log(message: str) -> None:
    load = os.getloadavg()[0]
    print(f"[{time.strftime('%H:%M:%S')} load {load:.1f}] {message}", flush=True)


def run_child(mode: str, env: dict, work: Path, label: str) -> dict:
    """Run this file in `--child mode` under the venv python; measure wall time and RSS."""
    import subprocess

    result_path = work / f"{label}.json"
    log_path = work / f"{label}.log"
    with open(log_path, "wb") as child_log:
        launched = time.time()
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--child", mode, str(result_path)],
            env=env,
            stdout=child_log,
            stderr=subprocess.STDOUT,
            cwd=str(work),
        )
        sampler = RssSampler(process.pid).start()
        code = process.wait()
        wall = time.monotonic() - started
        sampler.stop()
    if code != 0 or not result_path.exists():
        tail = log_path.read_text(errors="replace")[-4000:]
        detail = result_path.read_text()[-3000:] if result_path.exists() else ""
        raise RuntimeError(f"{label} failed (exit {code}); log tail:\n{tail}\n{detail}")
    out = json.loads(result_path.read_text())
    out.update(
        launched=launched,
        wall=wall,
        rss_poll_backup=sampler.peak_backup,
        rss_poll_self=sampler.peak_self,
        rss_poll_pg_dump=sampler.peak_pg_dump,
        rss_samples=sampler.samples,
    )
    return out


def timed_pg_dump(database_url: str, flags: list[str], target: Path, keep: bool = False) -> dict:
    import subprocess

    from backup_pipelines.lib.postgres.connection import client_env, pg_bin

    target.unlink(missing_ok=True)
    argv = [pg_bin("pg_dump"), "--no-password", *flags, "-f", str(target)]
    started = time.monotonic()
    done = subprocess.run(argv, env=client_env(database_url), capture_output=True, text=True)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    size = target.stat().st_size
    if not keep:
        target.unlink()
    return {"wall": wall, "bytes": size, "load": os.getloadavg()}


def local_artifact_bytes(store_dir: Path) -> int:
    return sum(p.stat().st_size for p in store_dir.rglob(ARTIFACT_FILE))


def s3_artifact_bytes(client, bucket: str, prefix: str) -> int:
    total = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            if item["Key"].endswith("/" + ARTIFACT_FILE):
                total += item["Size"]
    return total


def s3_delete_prefix(client, bucket: str, prefix: str) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys})


def drop_database(database_url: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def timed_pg_restore(database_url: str, dump: Path, target: str, jobs: int) -> dict:
    """pg_restore of a custom-format dump into a new database (created first, untimed)."""
    import subprocess

    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    from backup_pipelines.lib.postgres.connection import client_env, pg_bin

    drop_database(database_url, target)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target)))
    argv = [pg_bin("pg_restore"), "--no-password", "--no-owner", f"--jobs={jobs}",
            "-d", target, str(dump)]  # fmt: skip
    load = os.getloadavg()
    started = time.monotonic()
    done = subprocess.run(
        argv, env=client_env(make_conninfo(database_url, dbname=target)), capture_output=True,
        text=True,
    )  # fmt: skip
    wall = time.monotonic() - started
    drop_database(database_url, target)
    if done.returncode != 0:
        raise RuntimeError(f"pg_restore -j {jobs} failed: {done.stderr.strip()[-2000:]}")
    return {"wall": wall, "jobs": jobs, "load": load}


def timed_restore_full_database(
    database_url: str, store_dir: Path, target: str, jobs: int = RESTORE_JOBS
) -> dict:
    """The product's restore of the whole database into a new one, with its own step log."""
    from backup_pipelines.lib.postgres.full_restore import restore_full_database
    from backup_pipelines.lib.store import LocalStore

    steps: list[tuple[float, str]] = []
    drop_database(database_url, target)
    load = os.getloadavg()
    started = time.monotonic()
    restored = restore_full_database(
        LocalStore(store_dir), PARTITION, database_url, target_database=target,
        jobs=jobs, log=lambda line: steps.append((time.monotonic() - started, line)),
    )  # fmt: skip
    wall = time.monotonic() - started
    drop_database(database_url, target)
    return {"wall": wall, "steps": steps, "rows": restored["rows"], "load": load}


def generate(cluster, memories: int, workspaces: int) -> tuple[str, dict, float, int]:
    import psycopg

    from backup_pipelines.devstack.sample_data import Scale, seed

    url = cluster.create_database("bench_memory")
    per_workspace = max(1, memories // workspaces)
    scale = Scale(
        sessions=max(20, per_workspace // 500),
        turns_per_session=10,
        memories=per_workspace,
        nodes=max(50, per_workspace // 100),
        edges=max(100, per_workspace // 50),
    )
    names = [f"ws_bench_{i:03d}" for i in range(workspaces)]
    started = time.monotonic()
    totals = seed(url, names, scale)
    with psycopg.connect(url, autocommit=True) as conn:
        # Set hint bits and the visibility map now, so that the first dump timed does not pay
        # for them (the first reader of freshly inserted rows writes every page again).
        conn.execute("VACUUM (FREEZE, ANALYZE)")
        conn.execute("CHECKPOINT")
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    return url, totals, time.monotonic() - started, size


def fmt_mb(n: float | None) -> str:
    return "-" if n is None else f"{n / MB:,.1f}"


def fmt_s(n: float | None) -> str:
    return "-" if n is None else f"{n:,.2f}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def dagster_summary(out: dict, artifact_bytes: int) -> dict:
    steps = out["steps"]
    asset_step = next((k for k in steps if "artifact_verifies" not in k), None)
    check_steps = [k for k in steps if k != asset_step]

    def span(key):
        times = steps.get(key, {})
        end = times.get("STEP_SUCCESS") or times.get("STEP_FAILURE")
        return end - times["STEP_START"] if end and "STEP_START" in times else None

    marks = out["marks"]
    run_start = out["run_events"].get("RUN_START")
    step_start = steps.get(asset_step, {}).get("STEP_START")
    return {
        # The ratios use the step's start->end (resources, store client, dump, commit,
        # metadata); the materialization's duration_seconds covers write_artifact only.
        "asset_seconds": span(asset_step) or out["metadata"].get("duration_seconds"),
        "metadata_seconds": out["metadata"].get("duration_seconds"),
        "check_step_seconds": sum(span(k) or 0 for k in check_steps) if check_steps else None,
        "wall": out["wall"],
        "startup_to_run_start": (run_start - out["launched"]) if run_start else None,
        "startup_to_asset_step": (step_start - out["launched"]) if step_start else None,
        "interpreter": marks["script_start"] - out["launched"],
        "import_dagster": marks["dagster_imported"] - marks["script_start"],
        "definitions": marks["definitions_built"] - marks["dagster_imported"],
        "job_resolve": marks["job_resolved"] - marks["definitions_built"],
        "instance": marks["instance_created"] - marks["job_resolved"],
        "launch_run": (run_start - marks["instance_created"]) if run_start else None,
        "bytes": artifact_bytes,
        "metadata_bytes": out["metadata"].get("bytes"),
        "uncompressed": (out["metadata"].get("tool") or {}).get("uncompressed_bytes"),
        "peak_rss": max(out["rss_poll_backup"], out["ru_maxrss_self"]),
        "rss_poll_backup": out["rss_poll_backup"],
        "ru_maxrss_self": out["ru_maxrss_self"],
        "rss_baseline": out["rss_baseline"],
        "pg_dump_rss": out["rss_poll_pg_dump"],
        "checks": out["checks"],
        "success": out["success"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--memories",
        type=int,
        default=500_000,
        help="memory entries in total (384-dim embeddings); 500000 give ~1.08 GB of "
        "pg_database_size (~2.3 GB of pg_dump stream)",
    )
    parser.add_argument("--workspaces", type=int, default=3)
    parser.add_argument(
        "--scale",
        type=float,
        help=f"size the database as N x the reference one ({REFERENCE_MEMORIES:,} memory "
        "entries, a 1.34 GB pg_dump stream); overrides --memories",
    )
    parser.add_argument(
        "--restore",
        action="store_true",
        help="also time restore_full_database (from the library's artifact) against "
        "pg_restore of the runbook's dump, each into a new database",
    )
    parser.add_argument(
        "--skip-runbook",
        action="store_true",
        help="skip the slow pg_dump --compress=9 (quick iterations only; the reported run needs it)",
    )
    parser.add_argument("--skip-library", action="store_true")
    parser.add_argument("--skip-s3", action="store_true")
    parser.add_argument(
        "--work-dir",
        default=str(ROOT / ".bench"),
        help="parent of the run's temp folder (default .bench, git-ignored)",
    )
    parser.add_argument("--child", nargs=2, metavar=("MODE", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.scale is not None:
        args.memories = round(REFERENCE_MEMORIES * args.scale)
    if args.restore and (args.skip_library or args.skip_runbook):
        parser.error("--restore needs the library's artifact and the runbook's dump")
    if args.child:
        mode, result_path = args.child
        return {"dagster": child_dagster, "library": child_library}[mode](result_path)

    import shutil
    import signal
    import tempfile

    def interrupted(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    # Clean up (servers, temp files) also when stopped with SIGTERM, or with SIGINT in a
    # background job (where SIGINT is inherited as ignored).
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)

    from backup_pipelines.devstack.postgres_cluster import PostgresCluster
    from backup_pipelines.devstack.s3_server import S3Server
    from backup_pipelines.lib.postgres.connection import pg_bin, tool_version

    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="full-dump-", dir=args.work_dir))
    cluster = PostgresCluster()
    s3 = None
    results: dict = {}
    try:
        log(f"python {sys.executable}; {tool_version(pg_bin('pg_dump'))}; {os.cpu_count()} CPUs")
        log(f"load average (1, 5, 15 min) at the start: {os.getloadavg()}")
        import shutil as _shutil

        free = _shutil.disk_usage(args.work_dir).free
        log(f"free disk under {args.work_dir}: {free / 1e9:.1f} GB")
        log(f"work folder {work}")
        cluster.start()
        log(f"PostgreSQL on port {cluster.port}; generating {args.memories:,} memory entries ...")
        url, totals, gen_seconds, db_size = generate(cluster, args.memories, args.workspaces)
        log(
            f"generated in {gen_seconds:.1f} s (incl. VACUUM FREEZE; excluded from timings): {totals}"
        )
        log(
            f"pg_database_size = {db_size:,} bytes ({db_size / GIB:.2f} GiB, {db_size / 1e9:.2f} GB)"
        )
        if db_size < 1e9:
            log("WARNING: database smaller than 1 GB; raise --memories")

        # Nothing of the caller's deployment leaks in, except the S3 part size knob.
        base_env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AWS_", "PG", "DAGSTER_", "BACKUP_")) or k == "BACKUP_S3_PART_MB"
        }
        base_env["DATABASE_URL"] = url

        floor_flags = ["--format=custom", "--compress=0"]
        log("floor #1: pg_dump --format=custom --compress=0 ...")
        results["floor1"] = timed_pg_dump(url, floor_flags, work / "floor.dump")
        log(f"  {results['floor1']['wall']:.2f} s, {results['floor1']['bytes']:,} bytes")

        local_dir = work / "store-local"
        log("dagster job, local store ...")
        env = {**base_env, "BACKUP_STORE_URL": f"file://{local_dir}"}
        out = run_child("dagster", env, work, "dagster-local")
        results["dagster_local"] = dagster_summary(out, local_artifact_bytes(local_dir))
        shutil.rmtree(local_dir, ignore_errors=True)
        log(f"  asset {results['dagster_local']['asset_seconds']} s, wall {out['wall']:.2f} s")

        if not args.skip_s3:
            log("starting moto S3 server ...")
            s3 = S3Server(bucket="bench-backups").start()
            prefix = f"bench-{os.getpid()}"
            env = {**base_env, **s3.env, "BACKUP_STORE_URL": f"s3://{s3.bucket}/{prefix}"}
            log("dagster job, S3 store (moto on loopback) ...")
            out = run_child("dagster", env, work, "dagster-s3")
            client = s3.client()
            results["dagster_s3"] = dagster_summary(
                out, s3_artifact_bytes(client, s3.bucket, prefix)
            )
            s3_delete_prefix(client, s3.bucket, prefix)
            s3.stop()
            s3 = None
            log(f"  asset {results['dagster_s3']['asset_seconds']} s, wall {out['wall']:.2f} s")

        if not args.skip_library:
            log("library call dump_full_database -> LocalStore ...")
            lib_dir = work / "store-library"
            env = {**base_env, "BACKUP_STORE_URL": f"file://{lib_dir}"}
            out = run_child("library", env, work, "library-local")
            out["artifact_bytes"] = local_artifact_bytes(lib_dir)
            results["library"] = out
            if not args.restore:
                shutil.rmtree(lib_dir, ignore_errors=True)
            log(f"  {out['seconds']:.2f} s")

        if not args.skip_runbook:
            log("runbook: pg_dump --format=custom --compress=9 --no-acl --no-owner (slow) ...")
            results["runbook"] = timed_pg_dump(
                url,
                ["--format=custom", "--compress=9", "--no-acl", "--no-owner"],
                work / "runbook.dump",
                keep=args.restore,
            )
            log(f"  {results['runbook']['wall']:.2f} s, {results['runbook']['bytes']:,} bytes")

        if args.restore:
            log(f"restore_full_database -j {RESTORE_JOBS} into a new database ...")
            results["restore_ours"] = timed_restore_full_database(
                url, work / "store-library", "bench_restored_ours"
            )
            for at, line in results["restore_ours"]["steps"]:
                log(f"  +{at:7.1f} s  {line}")
            log(f"  {results['restore_ours']['wall']:.2f} s")
            shutil.rmtree(work / "store-library", ignore_errors=True)
            for jobs in (1, RESTORE_JOBS):
                log(
                    f"runbook restore: pg_restore -j {jobs} of the -Z9 dump into a new database ..."
                )
                results[f"restore_runbook_j{jobs}"] = timed_pg_restore(
                    url, work / "runbook.dump", f"bench_restored_runbook_{jobs}", jobs
                )
                log(f"  {results[f'restore_runbook_j{jobs}']['wall']:.2f} s")
            (work / "runbook.dump").unlink(missing_ok=True)

        log("floor #2: pg_dump --format=custom --compress=0 ...")
        results["floor2"] = timed_pg_dump(url, floor_flags, work / "floor.dump")
        log(f"  {results['floor2']['wall']:.2f} s")
        report(results, gen_seconds, db_size, args)
    finally:
        if s3 is not None:
            s3.stop()
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
        log("servers stopped, temp files removed")
    return 0


def report(results: dict, gen_seconds: float, db_size: int, args) -> None:
    floor = min(results["floor1"]["wall"], results["floor2"]["wall"])
    floor_bytes = results["floor1"]["bytes"]
    runbook = results.get("runbook")
    print()
    print("=" * 100)
    scale = args.memories / REFERENCE_MEMORIES
    print(
        f"scale {scale:g} x the reference database ({REFERENCE_MEMORIES:,} entries, 1.34 GB "
        f"stream): the floor's stream here is {floor_bytes / 1e9:.2f} GB "
        f"({floor_bytes / 1.34e9:.2f} x 1.34 GB)"
    )
    print(
        f"database: {args.memories:,} memory entries in {args.workspaces} workspaces, "
        f"pg_database_size {db_size:,} bytes ({db_size / 1e9:.2f} GB); generation {gen_seconds:.1f} s (excluded)"
    )
    print(
        f"floor runs: {results['floor1']['wall']:.2f} s (first), {results['floor2']['wall']:.2f} s "
        f"(last); floor = the faster, {floor:.2f} s"
    )
    print()
    header = (
        f"{'run':<34} {'time s':>8} {'wall s':>8} {'start-up s':>10} {'size MB':>10} "
        f"{'peak RSS MB':>11} {'pg_dump MB':>10}"
    )
    print(header)
    print("-" * len(header))

    def row(name, seconds, wall, startup, size, rss, pg_rss):
        print(
            f"{name:<34} {fmt_s(seconds):>8} {fmt_s(wall):>8} {fmt_s(startup):>10} "
            f"{fmt_mb(size):>10} {fmt_mb(rss):>11} {fmt_mb(pg_rss):>10}"
        )

    row("(b) floor: pg_dump -Fc -Z0", floor, floor, None, floor_bytes, None, None)
    if runbook:
        row(
            "(a) runbook: pg_dump -Fc -Z9",
            runbook["wall"],
            runbook["wall"],
            None,
            runbook["bytes"],
            None,
            None,
        )
    lib = results.get("library")
    if lib:
        row(
            "library dump_full_database, local",
            lib["seconds"],
            lib["wall"],
            lib["marks"]["imported"] - lib["launched"],
            lib["artifact_bytes"],
            max(lib["rss_poll_backup"], lib["ru_maxrss_self"]),
            lib["rss_poll_pg_dump"],
        )
    for key, name in (
        ("dagster_local", "dagster full_dump, local store"),
        ("dagster_s3", "dagster full_dump, S3 (moto)"),
    ):
        d = results.get(key)
        if d:
            row(
                name,
                d["asset_seconds"],
                d["wall"],
                d["startup_to_run_start"],
                d["bytes"],
                d["peak_rss"],
                d["pg_dump_rss"],
            )
    print()
    print("time s: pg_dump wall time; library: its own timer; dagster: the asset step's start->end")
    print(
        "(STEP_START..STEP_SUCCESS events). wall s: whole subprocess incl. start-up and the verify"
    )
    print("check. start-up: process launch -> RUN_START. peak RSS: the backup process tree without")
    print("pg_dump (max of psutil polling and ru_maxrss); pg_dump MB: pg_dump alone (polled).")

    for key, name in (("dagster_local", "local store"), ("dagster_s3", "S3 store (moto)")):
        d = results.get(key)
        if not d:
            continue
        print()
        print(f"dagster run, {name}: success={d['success']}, checks={d['checks']}")
        print(
            f"  asset: step start->end {fmt_s(d['asset_seconds'])} s, metadata duration_seconds "
            f"{fmt_s(d['metadata_seconds'])} s; verify check step {fmt_s(d['check_step_seconds'])} s"
        )
        print(
            f"  start-up {fmt_s(d['startup_to_run_start'])} s to RUN_START "
            f"({fmt_s(d['startup_to_asset_step'])} s to the asset's STEP_START): interpreter "
            f"{fmt_s(d['interpreter'])}, import dagster {fmt_s(d['import_dagster'])}, import + build "
            f"Definitions {fmt_s(d['definitions'])}, resolve job {fmt_s(d['job_resolve'])}, "
            f"ephemeral instance {fmt_s(d['instance'])}, execute_in_process -> RUN_START "
            f"{fmt_s(d['launch_run'])}"
        )
        print(
            f"  artifact {d['bytes']:,} bytes (metadata says {d['metadata_bytes']}), "
            f"pg_dump stream {d['uncompressed']} bytes"
        )
        print(
            f"  peak RSS: psutil tree w/o pg_dump {fmt_mb(d['rss_poll_backup'])} MB, ru_maxrss "
            f"(python) {fmt_mb(d['ru_maxrss_self'])} MB, of which {fmt_mb(d['rss_baseline'])} MB "
            f"before the run started (imports, Definitions, instance); pg_dump "
            f"{fmt_mb(d['pg_dump_rss'])} MB"
        )

    print()
    print("ratios (same run, same database):")
    for key, name in (("dagster_local", "local"), ("dagster_s3", "S3")):
        d = results.get(key)
        if not d or d["asset_seconds"] is None:
            continue
        ratio = d["asset_seconds"] / floor
        print(
            f"  full_dump({name:>5}) time / floor time    = {d['asset_seconds']:.2f} / {floor:.2f} = "
            f"{ratio:.3f}  (aim <= {AIM_DUMP_OVER_FLOOR})  {verdict(ratio <= AIM_DUMP_OVER_FLOOR)}"
        )
    for key, name in (("dagster_local", "local"), ("dagster_s3", "S3")):
        d = results.get(key)
        if not d or not runbook:
            continue
        ratio = runbook["wall"] / d["asset_seconds"]
        print(
            f"  runbook time / full_dump({name:>5}) time  = {runbook['wall']:.2f} / {d['asset_seconds']:.2f} = "
            f"{ratio:.2f}  (aim >= {AIM_RUNBOOK_OVER_DUMP:g})  {verdict(ratio >= AIM_RUNBOOK_OVER_DUMP)}"
        )
    if runbook:
        d = results.get("dagster_local") or results.get("dagster_s3")
        ratio = d["bytes"] / runbook["bytes"]
        print(
            f"  full_dump size / runbook size          = {d['bytes']:,} / {runbook['bytes']:,} = "
            f"{ratio:.3f}  (aim <= {AIM_SIZE_OVER_RUNBOOK})  {verdict(ratio <= AIM_SIZE_OVER_RUNBOOK)}"
        )
    else:
        print("  runbook ratios: not measured (--skip-runbook); this run cannot be reported")
    d = results.get("dagster_s3")
    if d:
        from backup_pipelines.lib.store.s3 import S3_PART_SIZE

        part_mb = os.environ.get("BACKUP_S3_PART_MB", f"{S3_PART_SIZE >> 20} (default)")
        print(f"  (S3 part size BACKUP_S3_PART_MB = {part_mb})")
        print(
            f"  peak memory, S3 store                  = {d['peak_rss'] / MB:,.1f} MB  "
            f"(aim < {AIM_PEAK_RSS_S3 / MB:g} MB)  {verdict(d['peak_rss'] < AIM_PEAK_RSS_S3)}"
        )
    if lib:
        ratio = lib["seconds"] / floor
        print(
            f"  library dump_full_database / floor     = {lib['seconds']:.2f} / {floor:.2f} = {ratio:.3f}"
            f"  (info; same aim {AIM_DUMP_OVER_FLOOR})"
        )
    dump = results.get("dagster_local") or results.get("dagster_s3")
    if dump:
        print(
            f"  full_dump size / floor size            = {dump['bytes']:,} / {floor_bytes:,} = "
            f"{dump['bytes'] / floor_bytes:.3f}  (zstd -1 against no compression)"
        )
    ours = results.get("restore_ours")
    if ours:
        print()
        print("restores into a NEW database (same server, same data):")
        print(
            f"  restore_full_database -j {RESTORE_JOBS} (verify, decompress, pg_restore by "
            f"section, counts + objects checked): {ours['wall']:.2f} s  (load {ours['load'][0]:.1f})"
        )
        for jobs in (1, RESTORE_JOBS):
            r = results[f"restore_runbook_j{jobs}"]
            print(
                f"  pg_restore -j {jobs} of the runbook's -Z9 dump: {r['wall']:.2f} s  "
                f"(load {r['load'][0]:.1f}); ours / this = {ours['wall'] / r['wall']:.3f}"
            )
    loads = [r["load"][0] for r in results.values() if isinstance(r, dict) and "load" in r]
    if loads:
        print(
            f"load average (1 min) before the timed commands: {', '.join(f'{x:.1f}' for x in loads)}"
        )
    print("=" * 100, flush=True)


if __name__ == "__main__":
    sys.exit(main())
