"""PostgreSQL backups: the whole database with pg_dump, one workspace with COPY in one snapshot.

`pg_dump` cannot filter rows (there is no `--where`), so a workspace dump reads every
workspace table with `COPY (SELECT ... WHERE workspace_id = ...) TO STDOUT` inside ONE
`REPEATABLE READ READ ONLY` transaction; its exported snapshot also feeds `pg_dump
--schema-only`, so the DDL and every table are the same point in time.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections import deque
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from backup_pipelines.lib.errors import SourceError
from backup_pipelines.lib.policy import Policy
from backup_pipelines.lib.store import ArtifactWriter
from backup_pipelines.lib.streams import Log, Progress, zstd_compressing
from backup_pipelines.lib.workspaces import is_valid_workspace_id, validate_workspace_id

PG_ENV = {
    "host": "PGHOST",
    "port": "PGPORT",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "dbname": "PGDATABASE",
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "options": "PGOPTIONS",
    "connect_timeout": "PGCONNECT_TIMEOUT",
}
CHUNK = 1 << 20


def describe_database(database_url: str) -> str:
    """host:port/dbname, never the password: safe for logs, metadata and errors."""
    try:
        params = conninfo_to_dict(database_url)
    except psycopg.ProgrammingError:
        return "<unparseable DATABASE_URL>"
    host = params.get("host", "localhost")
    return f"{host}:{params.get('port', 5432)}/{params.get('dbname', params.get('user', ''))}"


def connect(database_url: str, **kwargs) -> psycopg.Connection:
    kwargs.setdefault("connect_timeout", 10)
    try:
        return psycopg.connect(database_url, **kwargs)
    except psycopg.Error as exc:
        # psycopg's message names host and port, never the password.
        raise SourceError(
            f"cannot connect to PostgreSQL {describe_database(database_url)}: "
            f"{str(exc).strip().splitlines()[0]} — check DATABASE_URL and that the server is up"
        ) from exc


def client_env(database_url: str) -> dict[str, str]:
    """Environment for pg_dump/pg_restore/psql: credentials travel in env, never in argv."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    for key, value in conninfo_to_dict(database_url).items():
        if key in PG_ENV and value is not None:
            env[PG_ENV[key]] = str(value)
    return env


def pg_bin(name: str) -> str:
    """A PostgreSQL client binary: PG_BIN_DIR, then PATH, then the newest Debian install."""
    candidates = []
    if os.environ.get("PG_BIN_DIR"):
        candidates.append(os.path.join(os.environ["PG_BIN_DIR"], name))
    found = shutil.which(name)
    if found:
        candidates.append(found)
    debian = "/usr/lib/postgresql"
    if os.path.isdir(debian):
        for version in sorted(
            os.listdir(debian), key=lambda v: int(v) if v.isdigit() else 0, reverse=True
        ):
            candidates.append(os.path.join(debian, version, "bin", name))
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return candidate
    raise SourceError(
        f"{name} not found: install the PostgreSQL client (Debian: postgresql-client) or set PG_BIN_DIR"
    )


def tool_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    return out.strip()


def major_version(version_text: str) -> int:
    match = re.search(r"(\d+)(?:\.\d+)?", version_text)
    return int(match.group(1)) if match else 0


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


@dataclass
class Snapshot:
    """The point in time one transaction sees, and how to share it with pg_dump."""

    snapshot_id: str
    captured_at: str
    wal_lsn: str | None
    txid_snapshot: str
    database: str
    server_version: str


def open_snapshot(conn: psycopg.Connection) -> Snapshot:
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    row = conn.execute(
        "SELECT pg_export_snapshot(), to_char(now() AT TIME ZONE 'UTC', "
        '\'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"\'), '
        "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text "
        "ELSE pg_current_wal_lsn()::text END, txid_current_snapshot()::text, "
        "current_database(), current_setting('server_version')"
    ).fetchone()
    return Snapshot(*row)


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


def list_workspaces(database_url: str, policy: Policy) -> tuple[list[str], list[str]]:
    """(valid ids, invalid ids) found in the workspace registry table."""
    query = sql.SQL("SELECT {col}::text FROM {tbl} ORDER BY 1").format(
        col=sql.Identifier(policy.workspace_registry_column),
        tbl=sql.Identifier(policy.schema, policy.workspace_registry_table),
    )
    with connect(database_url) as conn:
        try:
            ids = [r[0] for r in conn.execute(query)]
        except psycopg.errors.UndefinedTable as exc:
            raise SourceError(
                f"workspace registry table {policy.schema}.{policy.workspace_registry_table} "
                f"does not exist in {describe_database(database_url)}"
            ) from exc
    valid = [i for i in ids if is_valid_workspace_id(i)]
    return valid, [i for i in ids if not is_valid_workspace_id(i)]


class _StderrTail:
    """Keeps the last lines a child process wrote to stderr, for the error message."""

    def __init__(self, stream) -> None:
        self.lines: deque[str] = deque(maxlen=20)
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line.decode(errors="replace").rstrip())

    def text(self) -> str:
        self._thread.join(timeout=5)
        return "\n".join(self.lines)


def _run_pg_dump(args: list[str], database_url: str, sink, progress: Progress | None) -> None:
    """Run pg_dump with stdout streamed into `sink`; raise with its stderr when it fails."""
    process = subprocess.Popen(
        [pg_bin("pg_dump"), "--no-password", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=client_env(database_url),
    )
    stderr = _StderrTail(process.stderr)
    try:
        while chunk := process.stdout.read(CHUNK):
            sink.write(chunk)
            if progress:
                progress.add(bytes_in=len(chunk))
    except BaseException:
        process.kill()
        process.wait()
        raise
    if process.wait() != 0:
        raise SourceError(
            f"pg_dump of {describe_database(database_url)} failed (exit {process.returncode}): "
            f"{stderr.text() or 'no message'}"
        )


def _source_facts(database_url: str, snap: Snapshot) -> dict:
    return {
        "kind": "postgresql",
        "database": snap.database,
        "server": describe_database(database_url),
        "server_version": snap.server_version,
        "wal_lsn": snap.wal_lsn,
        "txid_snapshot": snap.txid_snapshot,
    }


def _tool_facts(level: int) -> dict:
    return {
        "name": "pg_dump",
        "version": tool_version(pg_bin("pg_dump")),
        "compression": f"zstd level {level}",
    }


FULL_DUMP_FILE = "database.dump.zst"


def dump_full_database(
    database_url: str, writer: ArtifactWriter, level: int = 1, log: Log | None = None
) -> dict:
    """`pg_dump --format=custom` of the whole database, zstd-compressed, streamed into `writer`.

    pg_dump's own gzip (the runbook's --compress=9) is the bottleneck on embedding-heavy data;
    pg_dump runs uncompressed and zstd compresses on the other cores at about the same size.
    Returns the manifest fields.
    """
    progress = Progress(f"{writer.ref.asset} {writer.ref.date}", log)
    with connect(database_url, autocommit=True) as conn:
        snap = open_snapshot(conn)
        with writer.open_file(FULL_DUMP_FILE) as out:
            with zstd_compressing(out, level) as compressed:
                _run_pg_dump(
                    ["--format=custom", "--compress=0", f"--snapshot={snap.snapshot_id}"],
                    database_url,
                    compressed,
                    progress,
                )
            progress.add(bytes_out=out.bytes_written)
        rows = count_all_tables(conn)  # same snapshot as the dump: exact counts at its moment
        conn.execute("COMMIT")
    if log:
        log(progress.line())
    return {
        "captured_at": snap.captured_at,
        "counts": {"rows": rows, "tables": len(rows)},
        "source": _source_facts(database_url, snap),
        "tool": {**_tool_facts(level), "format": "custom", "uncompressed_bytes": progress.bytes_in},
        "duration_seconds": round(progress.seconds, 3),
    }


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


SCHEMA_FILE = "schema.sql"


def dump_workspace(
    database_url: str,
    workspace: str,
    policy: Policy,
    writer: ArtifactWriter,
    log: Log | None = None,
) -> dict:
    """Every workspace table's rows of one workspace, from one snapshot, one file per table."""
    workspace = validate_workspace_id(workspace)  # before any connection or SQL
    progress = Progress(f"{writer.ref.asset} {writer.ref.date}|{workspace}", log)
    with connect(database_url, autocommit=True) as conn:
        snap = open_snapshot(conn)
        tables = discover_tables(conn, policy)
        with writer.open_file(SCHEMA_FILE) as out:
            args = ["--schema-only", "--no-owner", "--no-acl", f"--snapshot={snap.snapshot_id}"]
            for table in tables:
                args.append(f"--table={table.schema}.{table.name}")
            _run_pg_dump(args, database_url, out, None)
        table_entries = [
            _copy_table(conn, table, workspace, writer, policy, progress) for table in tables
        ]
        conn.execute("COMMIT")
    if log:
        log(progress.line())
    return {
        "captured_at": snap.captured_at,
        "counts": {"rows": {t["table"]: t["rows"] for t in table_entries}},
        "tables": table_entries,
        "source": _source_facts(database_url, snap),
        "tool": {
            **_tool_facts(policy.zstd_level),
            "format": "copy-text",
            "method": "COPY in one REPEATABLE READ snapshot",
        },
        "duration_seconds": round(progress.seconds, 3),
        "uncompressed_bytes": progress.bytes_in,
    }


def _copy_table(
    conn, table: Table, workspace: str, writer, policy: Policy, progress: Progress
) -> dict:
    columns = table_columns(conn, table)
    query = sql.SQL("COPY (SELECT {cols} FROM {tbl} WHERE {col} = {ws}) TO STDOUT").format(
        cols=sql.SQL(", ").join(sql.Identifier(c) for c in columns),
        tbl=table.identifier,
        col=sql.Identifier(table.workspace_column),
        ws=sql.Literal(workspace),
    )
    rows = 0
    with writer.open_file(table.file_name) as out:
        with (
            zstd_compressing(out, policy.zstd_level) as compressed,
            conn.cursor() as cur,
            cur.copy(query) as copy,
        ):
            for chunk in copy:
                data = bytes(chunk)
                # COPY text format: one row per line (newlines inside values are escaped).
                lines = data.count(b"\n")
                rows += lines
                compressed.write(data)
                progress.add(bytes_in=len(data), rows=lines)
        progress.add(bytes_out=out.bytes_written)
    return {
        "table": table.qualified,
        "workspace_column": table.workspace_column,
        "columns": columns,
        "rows": rows,
        "file": table.file_name,
    }
