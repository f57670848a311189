"""Point-in-time tier benchmark, printed in one run:

1. Achieved WAL RPO under a steady write load: for every commit, the seconds until its WAL
   segment is in the pgBackRest repository (pg_stat_archiver's last archived segment, which
   archive_command only advances once pgBackRest stored it), with the recommended
   archive_timeout.
2. Restore time of a ~1 GB database: pgBackRest PITR (restore into a new data directory,
   recovery to T, promotion, verification) vs the logical full dump restored with the
   project's `restore full` (lib.restore.restore_full_database: parallel pg_restore into a new
   database).

    .venv/bin/python bench/bench_pitr.py [--memories 450000] [--archive-timeout 60] [--load-seconds 150]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from backup_pipelines.devstack.postgres_cluster import PostgresCluster  # noqa: E402
from backup_pipelines.lib.postgres import pgbackrest, pitr  # noqa: E402

STANZA = "bench"


def log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", flush=True)


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def measure_rpo(url: str, seconds: float, interval: float = 0.5) -> list[float]:
    """Insert one row every `interval` s for `seconds`; per commit, the seconds until
    pg_stat_archiver says its segment is archived."""
    commits: list[tuple[float, str]] = []  # (monotonic commit time, segment)
    lags: list[float] = []
    stop = threading.Event()

    def writer():
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS rpo_probe (id serial, at timestamptz)")
            while not stop.is_set():
                conn.execute("INSERT INTO rpo_probe (at) VALUES (clock_timestamp())")
                # the insert position: the commit's end (the write position may lag behind)
                segment = conn.execute(
                    "SELECT pg_walfile_name(pg_current_wal_insert_lsn())"
                ).fetchone()[0]
                commits.append((time.monotonic(), segment))
                time.sleep(interval)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    end_writes = time.monotonic() + seconds
    done = 0
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            last = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()[0]
            now = time.monotonic()
            if now >= end_writes and not stop.is_set():
                stop.set()
                thread.join()
            pending = commits[done:]
            for committed_at, segment in pending:
                if last and last[:24] >= segment:
                    lags.append(now - committed_at)
                    done += 1
                else:
                    break
            if stop.is_set() and done == len(commits):
                return lags
            if now > end_writes + 600:
                raise TimeoutError("WAL not archived within 10 minutes after the load")
            time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--memories", type=int, default=450_000, help="~1 GB at 450k")
    parser.add_argument("--archive-timeout", type=int, default=60)
    parser.add_argument("--load-seconds", type=float, default=150)
    parser.add_argument("--work-dir", default=str(ROOT / ".bench"))
    parser.add_argument("--rpo-only", action="store_true", help="only the WAL RPO part")
    args = parser.parse_args(argv)

    from backup_pipelines.devstack.sample_data import Scale, seed
    from backup_pipelines.lib.postgres.dump import dump_full_database
    from backup_pipelines.lib.postgres.full_restore import restore_full_database
    from backup_pipelines.lib.store import ArtifactRef, LocalStore

    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    cluster = PostgresCluster()
    base = cluster.work_dir("pgbackrest")
    config_path = base / "pgbackrest.conf"
    cluster.settings = {
        "wal_level": "replica",
        "archive_mode": "on",
        "archive_timeout": str(args.archive_timeout),
        "archive_command": pgbackrest.archive_command(config_path, STANZA),
    }
    restored = None
    results: dict = {"load_before": loadavg(), "cores": os.cpu_count()}
    try:
        cluster.start()
        settings = pgbackrest.StanzaSettings(
            STANZA,
            str(cluster.data_dir),
            cluster.port,
            str(cluster.data_dir),
            "postgres",
            pgbackrest.Repository("posix", str(base / "repo")),
            log_dir=str(base / "log"),
            lock_dir=str(base / "lock"),
            spool_dir=str(base / "spool"),
        )
        pgbackrest.write_config(config_path, settings, cluster.os_user)
        stanza = pgbackrest.Stanza(STANZA, config_path, cluster.os_user)
        stanza.stanza_create()
        stanza.check()

        log(
            f"WAL RPO: one commit every 0.5 s for {args.load_seconds:.0f} s, archive_timeout={args.archive_timeout}s"
        )
        lags = measure_rpo(cluster.url(), args.load_seconds)
        results["rpo"] = lags
        if args.rpo_only:
            report(results, args)
            return 0

        url = cluster.create_database("bench_memory")
        per = args.memories // 3
        log(f"generating {args.memories} memories ...")
        started = time.monotonic()
        seed(
            url,
            [f"ws_{i}" for i in range(3)],
            Scale(
                sessions=max(20, per // 500),
                turns_per_session=10,
                memories=per,
                nodes=max(50, per // 100),
                edges=max(100, per // 50),
            ),
        )
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM (FREEZE, ANALYZE)")
            conn.execute("CHECKPOINT")
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
            cluster_size = conn.execute(
                "SELECT sum(pg_database_size(oid)) FROM pg_database"
            ).fetchone()[0]
        results["db_size"], results["cluster_size"] = int(size), int(cluster_size)
        log(f"generated {size / 1e9:.2f} GB in {time.monotonic() - started:.0f} s")

        log("pgbackrest backup --type=full ...")
        started = time.monotonic()
        record = stanza.backup("full")
        results["backup_seconds"] = time.monotonic() - started
        results["backup_repo_bytes"] = record.repo_size

        store = LocalStore(Path(args.work_dir) / f"pitr-store-{os.getpid()}")
        ref = ArtifactRef("postgres/full_dump", datetime.now(UTC).date().isoformat())
        log("logical full dump (dump_full_database) ...")
        started = time.monotonic()
        with store.begin(ref) as writer:
            writer.commit(**dump_full_database(url, writer, 1))
        results["dump_seconds"] = time.monotonic() - started

        with psycopg.connect(url, autocommit=True) as conn:
            target = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        pitr_wait_archive(cluster.url())

        log("PITR restore into a new data directory ...")
        results["load_during"] = loadavg()
        config = pitr.PitrConfig(stanza, url, pg_data=str(cluster.data_dir))
        started = time.monotonic()
        restored = pitr.restore_to_time(config, target, target_dir=cluster.work_dir("restored"))
        results["pitr_seconds"] = time.monotonic() - started
        restored.remove()
        restored = None

        log("logical restore (restore_full_database, pg_restore -j 2) ...")
        started = time.monotonic()
        restore_full_database(store, ref.date, url, target_database="bench_memory_logical", jobs=2)
        results["logical_seconds"] = time.monotonic() - started
    finally:
        if restored:
            restored.remove()
        cluster.stop()
        shutil.rmtree(Path(args.work_dir) / f"pitr-store-{os.getpid()}", ignore_errors=True)
    report(results, args)
    return 0


def pitr_wait_archive(url: str) -> None:
    """A commit after the target, its segment switched out and archived."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS pitr_tick (at timestamptz DEFAULT clock_timestamp())"
        )
        conn.execute("INSERT INTO pitr_tick DEFAULT VALUES")
        segment = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            last = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()[0]
            if last and last[:24] >= segment:
                return
            time.sleep(0.2)
    raise TimeoutError("segment not archived")


def report(results: dict, args) -> None:
    lags = sorted(results["rpo"])
    p95 = lags[int(0.95 * (len(lags) - 1))]
    print()
    print(
        f"machine: {results['cores']} cores, load average before {results['load_before']}, during restores {results.get('load_during', '-')}"
    )
    print(
        f"WAL RPO, archive_timeout={args.archive_timeout}s, {len(lags)} commits over {args.load_seconds:.0f} s:"
    )
    print(
        f"  commit -> segment in repository: median {statistics.median(lags):.1f} s, p95 {p95:.1f} s, max {lags[-1]:.1f} s"
    )
    if "db_size" not in results:  # --rpo-only
        return
    print(
        f"database {results['db_size'] / 1e9:.2f} GB (cluster {results['cluster_size'] / 1e9:.2f} GB)"
    )
    print(
        f"  pgbackrest full backup        {results['backup_seconds']:7.1f} s  ({results['backup_repo_bytes'] / 1e6:.0f} MB in the repository)"
    )
    print(f"  logical full dump             {results['dump_seconds']:7.1f} s")
    print(f"  PITR restore (new data dir)   {results['pitr_seconds']:7.1f} s")
    print(f"  logical restore (restore full){results['logical_seconds']:7.1f} s")
    print(
        f"  PITR / logical restore        = {results['pitr_seconds'] / results['logical_seconds']:.2f}"
    )


if __name__ == "__main__":
    sys.exit(main())
