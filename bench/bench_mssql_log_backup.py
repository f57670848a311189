"""Orchestration overhead of a SQL Server log backup run, end to end, against the TDS stand-in:
from the schedule's tick (the run request for the last completed 15-minute window) to the
committed manifest, through Dagster (`execute_in_process` on a persistent instance, what a run
worker does), against the log backup itself (BACKUP LOG + copy into the store, measured inside the
run). The aim: under 10 s of the 15-minute window.

    .venv/bin/python bench/bench_mssql_log_backup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dagster as dg

from backup_pipelines.devstack.mssql import MssqlStandinProcess
from backup_pipelines.lib.mssql.connection import connected, run
from backup_pipelines_tests.mssql.platform import add_episodes, create_platform

WINDOW_SECONDS = 15 * 60


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"machine load average (1, 5, 15 min): {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    work = Path(tempfile.mkdtemp(prefix="bench-mssql-log-"))
    (work / "backups").mkdir()
    with MssqlStandinProcess() as server:
        with connected(server.connection_string(), "master") as conn:
            run(conn, "CREATE DATABASE [platform]")
        create_platform(server.connection_string(), "platform", ["a1"])
        os.environ.update(
            MSSQL_CONNECTION_STRING=server.connection_string("platform"),
            MSSQL_BACKUP_DIR=str(work / "backups"),
            BACKUP_STORE_URL=f"file://{work}/store",
            DAGSTER_HOME=str(work / "dagster_home"),
        )
        (work / "dagster_home").mkdir()
        for name in ("DATABASE_URL", "TYPESENSE_URL", "QDRANT_URL"):
            os.environ.pop(name, None)
        started = time.perf_counter()
        from backup_pipelines.definitions import build_definitions

        defs = build_definitions()
        print(
            f"code location loaded in {time.perf_counter() - started:.2f} s (once per code server)"
        )
        instance = dg.DagsterInstance.get()
        full = defs.resolve_job_def("mssql_full_backup_job")
        assert full.execute_in_process(instance=instance, partition_key="2026-12-01").success
        schedule = defs.resolve_schedule_def("mssql_log_backup")
        job = defs.resolve_job_def("mssql_log_backup_job")
        totals, inside = [], []
        moment = datetime(2026, 12, 1, 1, 0, tzinfo=UTC)
        for number in range(args.runs):
            add_episodes(server.connection_string("platform"), "platform", "a1", 20)
            moment += timedelta(minutes=15)
            tick_started = time.perf_counter()
            with dg.build_schedule_context(
                instance=instance, scheduled_execution_time=moment
            ) as ctx:
                [request] = list(schedule.evaluate_tick(ctx).run_requests or [])
            result = job.execute_in_process(instance=instance, partition_key=request.partition_key)
            total = time.perf_counter() - tick_started
            assert result.success
            [materialization] = result.asset_materializations_for_node("mssql__log_backup")
            backup_seconds = materialization.metadata["duration_seconds"].value
            totals.append(total)
            inside.append(backup_seconds)
            print(
                f"run {number + 1}: window {request.partition_key}: tick -> manifest {total:.2f} s "
                f"(backup itself {backup_seconds:.2f} s, orchestration {total - backup_seconds:.2f} s)"
            )
        overhead = [t - b for t, b in zip(totals, inside, strict=True)]
        median_total = statistics.median(totals)
        print(
            f"median tick -> manifest {median_total:.2f} s = {median_total / WINDOW_SECONDS:.4f} x the "
            f"15-minute window; median orchestration overhead {statistics.median(overhead):.2f} s "
            f"({'PASS' if median_total < 10 else 'MISS'}: aim under 10 s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
