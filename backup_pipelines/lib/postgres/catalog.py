"""What the database holds: the workspace tables the policy names (wildcards resolved, in
foreign-key order), their columns and keys, the workspace registry, and row counts."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from backup_pipelines.lib.errors import SourceError
from backup_pipelines.lib.policy import Policy
from backup_pipelines.lib.postgres.connection import connect, describe_database
from backup_pipelines.lib.workspaces import is_valid_workspace_id


@dataclass(frozen=True)
class Table:
    schema: str
    name: str
    workspace_column: str

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def file_name(self) -> str:
        return f"{self.qualified}.copy.zst"


def ordered_by_foreign_keys(conn: psycopg.Connection, tables: list[Table]) -> list[Table]:
    """Parents before children, so a restore loads rows without foreign-key failures."""
    by_name = {t.qualified: t for t in tables}
    edges = conn.execute(
        """
        SELECT DISTINCT cn.nspname || '.' || c.relname, pn.nspname || '.' || p.relname
        FROM pg_constraint k
        JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace
        JOIN pg_class p ON p.oid = k.confrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace
        WHERE k.contype = 'f' AND k.conrelid <> k.confrelid
        """
    ).fetchall()
    parents = {name: set() for name in by_name}
    for child, parent in edges:
        if child in by_name and parent in by_name:
            parents[child].add(parent)
    ordered: list[Table] = []
    placed: set[str] = set()
    remaining = [t.qualified for t in tables]
    while remaining:
        ready = [n for n in remaining if parents[n] <= placed]
        if not ready:  # a cycle: keep the configured order for what is left
            ready = remaining[:1]
        for name in ready:
            ordered.append(by_name[name])
            placed.add(name)
            remaining.remove(name)
    return ordered


def discover_tables(conn: psycopg.Connection, policy: Policy) -> list[Table]:
    """The workspace tables the policy names, wildcards resolved, in foreign-key order."""
    existing = [
        r[0]
        for r in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind IN ('r', 'p') ORDER BY c.relname",
            (policy.schema,),
        )
    ]
    tables: list[Table] = []
    for rule in policy.workspace_tables:
        matched = [name for name in existing if rule.matches(name)]
        if not matched and not rule.is_wildcard:
            raise SourceError(
                f"table {policy.schema}.{rule.pattern} listed in the policy's workspace_tables "
                f"does not exist in database {conn.info.dbname}; fix BACKUP_POLICY_FILE or the schema"
            )
        for name in matched:
            if all(t.name != name for t in tables):
                tables.append(Table(policy.schema, name, rule.workspace_column))
    _require_workspace_columns(conn, tables)
    return ordered_by_foreign_keys(conn, tables)


def _require_workspace_columns(conn: psycopg.Connection, tables: list[Table]) -> None:
    for table in tables:
        found = conn.execute(
            "SELECT 1 FROM information_schema.columns WHERE table_schema = %s "
            "AND table_name = %s AND column_name = %s",
            (table.schema, table.name, table.workspace_column),
        ).fetchone()
        if not found:
            raise SourceError(
                f"table {table.qualified} has no column {table.workspace_column!r} naming the "
                "workspace; set its workspace_column in the policy's workspace_tables"
            )


def table_columns(conn: psycopg.Connection, table: Table) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
            "AND NOT attisdropped ORDER BY attnum",
            (table.identifier.as_string(conn),),
        )
    ]


def list_workspaces(
    database_url: str, policy: Policy, only: str | None = None
) -> tuple[list[str], list[str]]:
    """(valid ids, invalid ids) found in the workspace registry table; with `only`, just that
    id if the table lists it (a backup step's check: one row read, not the whole registry)."""
    query = sql.SQL("SELECT {col}::text FROM {tbl}{where} ORDER BY 1").format(
        col=sql.Identifier(policy.workspace_registry_column),
        tbl=sql.Identifier(policy.schema, policy.workspace_registry_table),
        where=sql.SQL(" WHERE {col}::text = %s").format(
            col=sql.Identifier(policy.workspace_registry_column)
        )
        if only is not None
        else sql.SQL(""),
    )
    table = f"{policy.schema}.{policy.workspace_registry_table}"
    with connect(database_url) as conn:
        try:
            ids = [r[0] for r in conn.execute(query, (only,) if only is not None else None)]
        except psycopg.errors.UndefinedTable as exc:
            raise SourceError(
                f"workspace registry table {table} does not exist in "
                f"{describe_database(database_url)}; set the policy's workspace_registry_table"
            ) from exc
        except psycopg.errors.UndefinedColumn as exc:
            conn.rollback()
            present = live_columns(conn, policy.schema, policy.workspace_registry_table)
            raise SourceError(
                f"workspace registry table {table} has no column "
                f"{policy.workspace_registry_column!r} (in {describe_database(database_url)}); "
                "set the policy's workspace_registry_column to the column holding the "
                f"workspace ids; the table's columns: {', '.join(present)}"
            ) from exc
    valid = [i for i in ids if is_valid_workspace_id(i)]
    return valid, [i for i in ids if not is_valid_workspace_id(i)]


def count_all_tables(conn: psycopg.Connection) -> dict[str, int]:
    names = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "AND n.nspname NOT LIKE 'pg_toast%%' ORDER BY 1, 2"
    ).fetchall()
    counts = {}
    for schema, name in names:
        query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))
        counts[f"{schema}.{name}"] = conn.execute(query).fetchone()[0]
    return counts


def live_columns(conn, schema: str, name: str) -> list[str]:
    rows = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
        (sql.Identifier(schema, name).as_string(conn),),
    ).fetchall()
    return [r[0] for r in rows]


def primary_key(conn, schema: str, name: str) -> list[str]:
    rows = conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary",
        (sql.Identifier(schema, name).as_string(conn),),
    ).fetchall()
    return [r[0] for r in rows]


@dataclass(frozen=True)
class ColumnInfo:
    """What a column holds, as the mapping checks need it."""

    name: str
    type: str  # as PostgreSQL prints it: "bigint", "real[]", "timestamp with time zone"
    base: str  # pg_type.typname: int8, _float4, bytea, uuid, jsonb, vector, an enum's name
    category: str  # pg_type.typcategory: N numeric, S string, D date/time, B boolean,
    #                A array, E enum, U user-defined (uuid, bytea, json, jsonb, vector)
    element_category: str | None  # an array's element's category
    nullable: bool


def columns_of(conn: psycopg.Connection, schema: str, name: str) -> dict[str, ColumnInfo] | None:
    """The columns of table `schema.name` (None when there is no such table)."""
    rows = conn.execute(
        """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod), t.typname, t.typcategory,
               e.typcategory, NOT a.attnotnull
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_type t ON t.oid = a.atttypid LEFT JOIN pg_type e ON e.oid = t.typelem AND t.typcategory = 'A'
        WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')
          AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum
        """,
        (schema, name),
    ).fetchall()
    if not rows:
        exists = conn.execute(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
            (schema, name),
        ).fetchone()
        return {} if exists else None
    return {r[0]: ColumnInfo(*r) for r in rows}


def unique_columns(conn: psycopg.Connection, schema: str, name: str) -> set[str]:
    """Columns that alone are the primary key or carry a unique index."""
    rows = conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = i.indkey[0] WHERE i.indrelid = %s::regclass AND i.indisunique "
        "AND i.indnatts = 1 AND i.indpred IS NULL",
        (sql.Identifier(schema, name).as_string(conn),),
    ).fetchall()
    return {r[0] for r in rows}


def enum_types_ddl(conn: psycopg.Connection, tables: list[str]) -> list[str]:
    """CREATE TYPE statements of the enum types the columns of `tables` ("schema.name") use,
    directly or as array elements: `pg_dump --table` leaves types out of a table's DDL."""
    rows = conn.execute(
        """
        SELECT DISTINCT tn.nspname, t.typname, t.oid
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_type at ON at.oid = a.atttypid
        JOIN pg_type t ON t.oid = CASE WHEN at.typcategory = 'A' THEN at.typelem ELSE at.oid END
        JOIN pg_namespace tn ON tn.oid = t.typnamespace
        WHERE n.nspname || '.' || c.relname = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped
          AND t.typtype = 'e'
        ORDER BY 1, 2
        """,
        (tables,),
    ).fetchall()
    statements = []
    for schema, name, oid in rows:
        labels = [
            r[0]
            for r in conn.execute(
                "SELECT enumlabel FROM pg_enum WHERE enumtypid = %s ORDER BY enumsortorder", (oid,)
            )
        ]
        statements.append(
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}; CREATE TYPE {} AS ENUM ({})")
            .format(
                sql.Identifier(schema),
                sql.Identifier(schema, name),
                sql.SQL(", ").join(sql.Literal(label) for label in labels),
            )
            .as_string(conn)
        )
    return statements
