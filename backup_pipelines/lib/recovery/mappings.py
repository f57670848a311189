"""The index mappings of a deployment checked against the live database: every table and
column the policy's `indexes.<engine>` names must exist, hold values the engine can take, and
be backed up. Run by `doctor` and by every restore (and drill) before anything is written,
so a schema the mapping does not fit is a clear error naming the table, the column and the
policy key — never a crash after SQL rows were committed."""

from __future__ import annotations

from collections.abc import Iterable

import psycopg

from backup_pipelines.lib.engines import IndexEngine
from backup_pipelines.lib.errors import ConfigError
from backup_pipelines.lib.policy import IndexMapping, Policy
from backup_pipelines.lib.postgres.catalog import columns_of, unique_columns
from backup_pipelines.lib.postgres.connection import connect, describe_database


def mapping_problems(
    conn: psycopg.Connection, policy: Policy, engines: Iterable[IndexEngine]
) -> list[str]:
    """Every problem of the engines' mappings against the database `conn` is connected to."""
    problems: list[str] = []
    for engine in engines:
        problems += _problems_of(conn, policy, engine, policy.index_mapping(engine.name))
    return problems


def _problems_of(conn, policy: Policy, engine: IndexEngine, mapping: IndexMapping) -> list[str]:
    table = f"{policy.schema}.{mapping.table}"
    backed_up_column = policy.workspace_column_of(mapping.table)
    if backed_up_column is None:
        return [
            f"{mapping.described('table')}: {table} is not one of the policy's "
            "workspace_tables, so its rows are not backed up and the index cannot be checked "
            "against them; add it to workspace_tables"
        ]
    columns = columns_of(conn, policy.schema, mapping.table)
    if columns is None:
        return [
            f"{mapping.described('table')}: table {table} does not exist in database "
            f"{conn.info.dbname}"
        ]
    problems = []
    if mapping.workspace_column != backed_up_column:
        problems.append(
            f"{mapping.described('workspace_column')}: {mapping.workspace_column!r}, but "
            f"workspace_tables backs {table} up by {backed_up_column!r}; use one column"
        )
    for key, column in mapping.column_keys():
        if column not in columns:
            problems.append(
                f"{mapping.described(key)}: table {table} has no column {column!r} "
                f"(its columns: {', '.join(columns)})"
            )
    if mapping.id_column in columns and mapping.id_column not in unique_columns(
        conn, policy.schema, mapping.table
    ):
        problems.append(
            f"{mapping.described('id_column')}: column {mapping.id_column!r} is neither the "
            f"primary key nor unique in {table}: an index entry needs one id per row"
        )
    return problems + engine.column_problems(mapping, columns)


def check_mappings(database_url: str, policy: Policy, engines: Iterable[IndexEngine]) -> None:
    """Raise one ConfigError listing every problem of the engines' mappings."""
    engines = list(engines)
    if not engines:
        return
    with connect(database_url) as conn:
        problems = mapping_problems(conn, policy, engines)
    if problems:
        raise ConfigError(
            f"the policy's index mapping does not fit database {describe_database(database_url)}"
            " (fix BACKUP_POLICY_FILE or the schema; nothing was written):\n  - "
            + "\n  - ".join(problems)
        )
