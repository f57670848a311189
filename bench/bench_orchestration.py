"""Orchestration overhead of one tiny workspace's daily backup, run through the daemon.

The production shape on loopback (the deployed-shape tests' harness: PostgreSQL storage, code
server, webserver, daemon; every sensor and schedule switched off so only the measured runs
happen), one workspace of a few dozen rows, then N runs of `workspace_backup_job` launched
through GraphQL into the queue, one after the other, for each executor:

- wall: run created (queued) -> run finished, and run start -> end, from the run records;
- CPU seconds of the Dagster processes over each run, with psutil: the code server, daemon
  and webserver themselves, and the run worker the code server starts for the run (with the
  multiprocess executor's step processes under it); the idle CPU of the long-lived processes
  over a quiet interval is measured too and subtracted;
- what 1,000 workspaces a day cost at that rate, against a 2-core machine's day.

    .venv/bin/python bench/bench_orchestration.py [--runs 3] [--executors in_process,multiprocess]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from backup_pipelines.devstack import sample_data  # noqa: E402
from backup_pipelines.devstack.postgres_cluster import PostgresCluster  # noqa: E402
from backup_pipelines.devstack.qdrant import QdrantStandinProcess  # noqa: E402
from backup_pipelines.devstack.typesense_server import TypesenseServer  # noqa: E402
from backup_pipelines_tests.deploy.deployment import Deployment, wait_for  # noqa: E402

WORKSPACE = "bench_tiny"
TINY = sample_data.Scale(
    sessions=2, turns_per_session=3, memories=20, nodes=3, edges=4, embedding_dim=16
)
DAY_CPU_SECONDS_2_CORES = 2 * 24 * 3600


def own_cpu(pid: int) -> float:
    """CPU seconds of one process itself (no children)."""
    try:
        times = psutil.Process(pid).cpu_times()
        return times.user + times.system
    except psutil.NoSuchProcess:
        return 0.0


def dagster_cpu(deployment: Deployment) -> dict[str, float]:
    return {name: own_cpu(p.pid) for name, p in deployment.procs.items()}


def run_workers(code_server: psutil.Process) -> list[psutil.Process]:
    """The code server's run workers: its children (multiprocessing spawns), bar Python's
    multiprocessing resource tracker."""
    found = []
    for child in code_server.children():
        try:
            if "resource_tracker" not in " ".join(child.cmdline()):
                found.append(child)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    return found


class RunWorkerMeter:
    """Samples the run workers (children of the code server) every
    0.1 s: a worker's own CPU + its reaped children's + its live descendants', at one instant
    (so a step process reaped between samples is counted once); the last sample of each worker
    is its figure (what it spends after that sample, in its last 0.1 s, is missed)."""

    def __init__(self, deployment: Deployment) -> None:
        import threading

        self.code_server = psutil.Process(deployment.procs["code-server"].pid)
        self.seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for child in run_workers(self.code_server):
                try:
                    with child.oneshot():
                        t = child.cpu_times()
                        total = t.user + t.system + t.children_user + t.children_system
                    for grandchild in child.children(recursive=True):
                        with contextlib.suppress(psutil.NoSuchProcess):
                            g = grandchild.cpu_times()
                            total += g.user + g.system
                    self.seen[child.pid] = max(total, self.seen.get(child.pid, 0.0))
                except (psutil.NoSuchProcess, psutil.ZombieProcess):
                    pass
            self._stop.wait(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def total(self) -> float:
        return sum(self.seen.values())


def run_workers_alive(deployment: Deployment) -> bool:
    code = psutil.Process(deployment.procs["code-server"].pid)
    for worker in run_workers(code):
        with contextlib.suppress(psutil.NoSuchProcess):
            if worker.status() != psutil.STATUS_ZOMBIE:
                return True
    return False


def index_workspace(database_url, typesense, qdrant_url):
    import psycopg

    from backup_pipelines.lib.policy import Policy
    from backup_pipelines.lib.qdrant.client import QdrantHttp
    from backup_pipelines.lib.typesense.client import TypesenseClient
    from backup_pipelines_tests.helpers import index_workspace as index

    ts = TypesenseClient(typesense.url, typesense.api_key)
    qd = QdrantHttp(qdrant_url, None)
    with psycopg.connect(database_url) as conn:
        index(conn, WORKSPACE, Policy(), ts, qd)


def measure(executor: str, runs: int, pg, typesense, qdrant_url, source, base: Path) -> dict:
    dagster_db = pg.create_database(f"dagster_bench_{uuid.uuid4().hex[:6]}").rsplit("/", 1)[1]
    deployment = Deployment(
        home=base / f"home_{executor}",
        dagster_db_port=pg.port,
        dagster_db_name=dagster_db,
        module="backup_pipelines.definitions",
        code_env={
            "DATABASE_URL": source,
            "TYPESENSE_URL": typesense.url,
            "TYPESENSE_API_KEY": typesense.api_key,
            "QDRANT_URL": qdrant_url,
            "BACKUP_STORE_URL": f"file://{base / ('store_' + executor)}",
            "BACKUP_AUTOMATION_OFF": "*",
            "BACKUP_RUN_EXECUTOR": executor,
        },
    )
    results = []
    with deployment:
        deployment.add_workspace_partition(WORKSPACE)
        time.sleep(10)  # let start-up work settle before the idle measurement
        before, started = dagster_cpu(deployment), time.monotonic()
        time.sleep(30)
        idle_rate = (sum(dagster_cpu(deployment).values()) - sum(before.values())) / (
            time.monotonic() - started
        )
        for i in range(runs):
            date = f"2026-11-{10 + i:02d}"
            before, started = dagster_cpu(deployment), time.monotonic()
            with RunWorkerMeter(deployment) as meter:
                run_id = deployment.launch_run("workspace_backup_job", f"{date}|{WORKSPACE}")
                run = deployment.wait_runs_done([run_id], 900)[run_id]
                wait_for(lambda: not run_workers_alive(deployment), 300, "the run worker to exit")
            elapsed = time.monotonic() - started
            after = dagster_cpu(deployment)
            cpu = {k: after[k] - before[k] for k in after}
            cpu["run worker"] = meter.total()
            results.append(
                {
                    "status": run["status"],
                    "queued_to_finished": run["endTime"] - run["creationTime"],
                    "start_to_end": run["endTime"] - run["startTime"],
                    "cpu": cpu,
                    "cpu_total": sum(cpu.values()),
                    "cpu_minus_idle": sum(cpu.values()) - idle_rate * elapsed,
                }
            )
            print(
                f"  {executor:12s} run {i + 1}: {run['status']}, queued->finished "
                f"{results[-1]['queued_to_finished']:.1f} s, start->end "
                f"{results[-1]['start_to_end']:.1f} s, CPU {results[-1]['cpu_total']:.1f} s "
                f"({', '.join(f'{k} {v:.1f}' for k, v in cpu.items())})",
                flush=True,
            )
    return {"idle_rate": idle_rate, "runs": results}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--executors", default="in_process,multiprocess")
    parser.add_argument("--workspaces-per-day", type=int, default=1000)
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every server and Dagster process started here is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    load = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    base = Path(tempfile.mkdtemp(prefix="bench-orchestration-"))
    summary = {}
    with (
        contextlib.ExitStack() as cleanup,
        PostgresCluster() as pg,
        TypesenseServer(api_key=uuid.uuid4().hex) as typesense,
        QdrantStandinProcess() as qdrant,
    ):
        cleanup.callback(shutil.rmtree, base, ignore_errors=True)
        source = pg.create_database("bench_source")
        sample_data.seed(source, [WORKSPACE], TINY)
        index_workspace(source, typesense, qdrant.url)
        for executor in args.executors.split(","):
            summary[executor] = measure(
                executor, args.runs, pg, typesense, qdrant.url, source, base
            )
    print()
    print(
        "| executor | runs | queued->finished s (median) | start->end s | Dagster CPU s/run | minus idle | "
        f"{args.workspaces_per_day:,} workspaces/day: CPU s | share of a 2-core day |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for executor, found in summary.items():
        runs = [r for r in found["runs"] if r["status"] == "SUCCESS"]
        if not runs:
            print(f"| {executor} | 0 | - | - | - | - | - | - |")
            continue
        wall = statistics.median(r["queued_to_finished"] for r in runs)
        work = statistics.median(r["start_to_end"] for r in runs)
        cpu = statistics.median(r["cpu_total"] for r in runs)
        net = statistics.median(r["cpu_minus_idle"] for r in runs)
        day = net * args.workspaces_per_day
        print(
            f"| {executor} | {len(runs)} | {wall:.1f} | {work:.1f} | {cpu:.1f} | {net:.1f} | "
            f"{day:,.0f} | {100 * day / DAY_CPU_SECONDS_2_CORES:.0f}% |"
        )
    for executor, found in summary.items():
        print(f"idle CPU of the Dagster processes ({executor}): {found['idle_rate']:.3f} CPU s/s")
    aim = {
        e: statistics.median(r["cpu_minus_idle"] for r in f["runs"])
        for e, f in summary.items()
        if f["runs"]
    }
    for executor, value in aim.items():
        print(
            f"aim < 5 CPU s per workspace run ({executor}): {'PASS' if value < 5 else 'MISS'} ({value:.1f})"
        )


if __name__ == "__main__":
    main()
