"""Memory rows read from PostgreSQL: one workspace's, streamed, and its newest one (a probe a
restore must bring back)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
from psycopg import sql

from backup_pipelines.lib.mapping import MEMORY_COLUMNS, MemoryRow
from backup_pipelines.lib.policy import Policy
from backup_pipelines.lib.workspaces import validate_workspace_id


def iter_memory_rows(
    conn: psycopg.Connection,
    workspace: str,
    policy: Policy,
    batch: int = 2000,
    schema: str | None = None,
) -> Iterator[MemoryRow]:
    """Stream one workspace's memory rows (a server-side cursor: memory stays flat)."""
    workspace = validate_workspace_id(workspace)
    query = sql.SQL("SELECT {cols} FROM {tbl} WHERE workspace_id = %s ORDER BY id").format(
        cols=sql.SQL(", ").join(sql.Identifier(c) for c in MEMORY_COLUMNS),
        tbl=sql.Identifier(schema or policy.schema, policy.memory_table),
    )
    with conn.cursor(name=f"memory_rows_{workspace}") as cursor:
        cursor.itersize = batch
        cursor.execute(query, (workspace,))
        for record in cursor:
            yield MemoryRow(*record)


def newest_memory(conn: psycopg.Connection, workspace: str, policy: Policy) -> MemoryRow | None:
    """The workspace's most recent memory row (a probe that a restore brought back)."""
    query = sql.SQL(
        "SELECT {cols} FROM {tbl} WHERE workspace_id = %s ORDER BY id DESC LIMIT 1"
    ).format(
        cols=sql.SQL(", ").join(sql.Identifier(c) for c in MEMORY_COLUMNS),
        tbl=sql.Identifier(policy.schema, policy.memory_table),
    )
    row = conn.execute(query, (validate_workspace_id(workspace),)).fetchone()
    return MemoryRow(*row) if row else None
