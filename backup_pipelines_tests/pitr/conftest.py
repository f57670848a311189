"""A PostgreSQL 15 cluster archiving its WAL through real pgBackRest into a local repository,
with a full backup, shared by the point-in-time tests of this package."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from backup_pipelines.devstack.postgres_cluster import PostgresCluster
from backup_pipelines.lib.postgres import pgbackrest, pitr

STANZA = "agent"


@dataclass
class ArchivingCluster:
    cluster: PostgresCluster
    stanza: pgbackrest.Stanza
    config_path: Path

    @property
    def url(self) -> str:
        return self.cluster.url()

    def pitr_config(self) -> pitr.PitrConfig:
        return pitr.PitrConfig(self.stanza, self.url, pg_data=str(self.cluster.data_dir))

    def env(self) -> dict[str, str]:
        return {
            "DATABASE_URL": self.url,
            "PGBACKREST_CONFIG": str(self.config_path),
            "PGBACKREST_STANZA": STANZA,
            "PGBACKREST_PG_DATA": str(self.cluster.data_dir),
        }


def start_archiving_cluster(
    repo: pgbackrest.Repository | None = None, secrets=()
) -> ArchivingCluster:
    cluster = PostgresCluster()
    base = cluster.work_dir("pgbackrest")
    config_path = base / "pgbackrest.conf"
    cluster.settings = {
        "wal_level": "replica",
        "archive_mode": "on",
        "archive_timeout": "30",
        "archive_command": pgbackrest.archive_command(config_path, STANZA),
    }
    try:
        cluster.start()
        settings = pgbackrest.StanzaSettings(
            STANZA,
            str(cluster.data_dir),
            cluster.port,
            str(cluster.data_dir),
            "postgres",
            repo or pgbackrest.Repository("posix", str(base / "repo")),
            log_dir=str(base / "log"),
            lock_dir=str(base / "lock"),
            spool_dir=str(base / "spool"),
        )
        pgbackrest.write_config(config_path, settings, cluster.os_user)
        stanza = pgbackrest.Stanza(STANZA, config_path, cluster.os_user, tuple(secrets))
        stanza.stanza_create()
        stanza.check()
    except BaseException:
        cluster.stop()
        raise
    return ArchivingCluster(cluster, stanza, config_path)


@pytest.fixture(scope="module")
def archiving():
    archiving = start_archiving_cluster()
    try:
        with psycopg.connect(archiving.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE items (id int PRIMARY KEY, body text NOT NULL)")
            conn.execute("INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 500) g")
        archiving.stanza.backup("full")
        yield archiving
    finally:
        archiving.cluster.stop()


def checksum(url: str, table: str = "items") -> tuple[int, str]:
    with psycopg.connect(url, autocommit=True) as conn:
        count, digest = conn.execute(
            f"SELECT count(*), md5(coalesce(string_agg(id || ':' || body, ',' ORDER BY id), '')) FROM {table}"
        ).fetchone()
    return count, digest


def archive_now(url: str, timeout: float = 60) -> str:
    """Commit something AFTER everything before it, switch WAL and wait until that segment is
    in the archive (recovery to a time needs a later commit in archived WAL)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS pitr_ticks (at timestamptz DEFAULT clock_timestamp())"
        )
        conn.execute("INSERT INTO pitr_ticks DEFAULT VALUES")
        # The segment the switch completes holds that commit (pg_current_wal_lsn() is the
        # WRITE position: with synchronous_commit=off the commit may not be written yet).
        segment = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()[0]
            if last and last[:24] >= segment:
                return segment
            time.sleep(0.1)
    raise TimeoutError(f"WAL segment {segment} not archived within {timeout:.0f} s")
