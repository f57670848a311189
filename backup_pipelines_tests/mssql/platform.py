"""The agent platform's SQL Server database, as the mssql tests build and change it, and the
product's backups of it into a store (what the Dagster assets run)."""

from __future__ import annotations

import itertools

from backup_pipelines.lib.mssql import backup
from backup_pipelines.lib.mssql.backupset import Kind
from backup_pipelines.lib.mssql.connection import connected, query, run
from backup_pipelines.lib.mssql.restore import ASSETS, read_catalog
from backup_pipelines.lib.store import ArtifactRef, BackupStore

SCHEMA = [
    "CREATE TABLE dbo.agents (agent_id NVARCHAR(64) NOT NULL PRIMARY KEY, name NVARCHAR(200) NOT NULL)",
    "CREATE TABLE dbo.episodes (id BIGINT NOT NULL PRIMARY KEY, agent_id NVARCHAR(64) NOT NULL "
    "REFERENCES dbo.agents(agent_id), body NVARCHAR(MAX) NOT NULL, created_at DATETIME2 NOT NULL)",
    "CREATE TABLE dbo.procedures (id INT IDENTITY(1,1) NOT NULL PRIMARY KEY, agent_id NVARCHAR(64) "
    "NOT NULL REFERENCES dbo.agents(agent_id), name NVARCHAR(200) NOT NULL, steps NVARCHAR(MAX))",
]
_ids = itertools.count(1)
_minutes = itertools.count(0)  # a distinct time window for every backup a test takes


def create_platform(connection_string: str, database: str, agents: list[str]) -> None:
    with connected(connection_string, database) as conn:
        for statement in SCHEMA:
            run(conn, statement)
        for agent in agents:
            run(
                conn,
                "INSERT INTO dbo.agents (agent_id, name) VALUES (?, ?)",
                agent,
                f"agent {agent}",
            )


def add_episodes(connection_string: str, database: str, agent: str, count: int) -> list[int]:
    ids = [next(_ids) for _ in range(count)]
    with connected(connection_string, database) as conn:
        for episode in ids:
            run(
                conn,
                "INSERT INTO dbo.episodes (id, agent_id, body, created_at) VALUES (?, ?, ?, SYSUTCDATETIME())",
                episode,
                agent,
                f"episode {episode} of {agent}",
            )
        run(
            conn,
            "INSERT INTO dbo.procedures (agent_id, name, steps) VALUES (?, ?, ?)",
            agent,
            f"p{ids[0]}",
            "[]",
        )
    return ids


def rows(connection_string: str, database: str, agent: str | None = None) -> dict[str, list]:
    """Every row of every platform table (of one agent), in key order."""
    where = " WHERE agent_id = ?" if agent else ""
    params = [agent] if agent else []
    with connected(connection_string, database) as conn:
        return {
            table: [
                tuple(r.values())
                for r in query(conn, f"SELECT * FROM dbo.{table}{where} ORDER BY 1", *params)
            ]
            for table in ("agents", "episodes", "procedures")
        }


def server_now(connection_string: str):
    from datetime import UTC

    with connected(connection_string, "master") as conn:
        return query(conn, "SELECT SYSUTCDATETIME() AS now")[0]["now"].replace(tzinfo=UTC)


def back_up(
    connection_string: str, database: str, store: BackupStore, kind: Kind, folders: backup.Folders,
    date: str = "2026-12-01", window: str | None = None, log=None,
) -> dict | None:  # fmt: skip
    """One backup as the asset takes it: into the store under its partition's folder."""
    if kind is not Kind.FULL and window is None:
        minute = next(_minutes) % (24 * 60)
        window = f"{minute // 60:02d}{minute % 60:02d}"
    ref = ArtifactRef(ASSETS[kind], date, None, window if kind is not Kind.FULL else None)
    held = {b.checkpoint_lsn for b in read_catalog(store).backups if b.kind is Kind.FULL}
    with store.begin(ref) as writer:
        fields = backup.take_backup(
            connection_string, database, kind, folders, writer, held, log=log
        )
        if fields is None:
            return None
        return writer.commit(**fields)
