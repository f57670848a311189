"""The rows an index is derived from, read from PostgreSQL with the columns its mapping names:
one workspace's, streamed, and the probe a restore must bring back (its newest row)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
from psycopg import sql

from backup_pipelines.lib.mapping import Row
from backup_pipelines.lib.policy import IndexMapping
from backup_pipelines.lib.workspaces import validate_workspace_id


def _select(mapping: IndexMapping, schema: str) -> sql.Composed:
    return sql.SQL("SELECT {cols} FROM {tbl} WHERE {ws} = %s").format(
        cols=sql.SQL(", ").join(sql.Identifier(c) for c in mapping.columns()),
        tbl=sql.Identifier(schema, mapping.table),
        ws=sql.Identifier(mapping.workspace_column),
    )


def iter_index_rows(
    conn: psycopg.Connection,
    workspace: str,
    mapping: IndexMapping,
    schema: str,
    batch: int = 2000,
) -> Iterator[Row]:
    """Stream one workspace's rows of the mapping's table, as column -> value mappings, in id
    order (a server-side cursor: memory stays flat)."""
    workspace = validate_workspace_id(workspace)
    query = sql.SQL("{} ORDER BY {}").format(
        _select(mapping, schema), sql.Identifier(mapping.id_column)
    )
    with conn.cursor(name=f"index_rows_{workspace}") as cursor:
        cursor.itersize = batch
        cursor.execute(query, (workspace,))
        names = [column.name for column in cursor.description]
        for record in cursor:
            yield dict(zip(names, record, strict=True))


def probe_row(
    conn: psycopg.Connection, workspace: str, mapping: IndexMapping, schema: str
) -> Row | None:
    """The workspace's newest row by the mapping's probe column (a memory that a restore
    brought back and a search must find); None when no probe is configured or no row exists."""
    if not mapping.probe_column:
        return None
    query = sql.SQL("{} ORDER BY {} DESC NULLS LAST, {} DESC LIMIT 1").format(
        _select(mapping, schema),
        sql.Identifier(mapping.probe_column),
        sql.Identifier(mapping.id_column),
    )
    with conn.cursor() as cursor:
        cursor.execute(query, (validate_workspace_id(workspace),))
        record = cursor.fetchone()
        if record is None:
            return None
        return dict(zip([c.name for c in cursor.description], record, strict=True))
