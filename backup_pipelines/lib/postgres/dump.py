"""PostgreSQL backups: the whole database with pg_dump, one workspace with COPY in one snapshot.

`pg_dump` cannot filter rows (there is no `--where`), so a workspace dump reads every
workspace table with `COPY (SELECT ... WHERE workspace_id = ...) TO STDOUT` inside ONE
`REPEATABLE READ READ ONLY` transaction; its exported snapshot also feeds `pg_dump
--schema-only`, so the DDL and every table are the same point in time.

A server that stops answering mid-dump is not waited on forever: a watchdog abandons the dump
once nothing moved for BACKUP_STALL_SECONDS (it kills pg_dump and closes the connection), and
the error says so.
"""

from __future__ import annotations

import subprocess
import threading
from collections import deque
from dataclasses import asdict, dataclass

import psycopg
from psycopg import sql

from backup_pipelines.lib.errors import SourceError
from backup_pipelines.lib.policy import Policy
from backup_pipelines.lib.postgres.catalog import (
    Table,
    count_all_tables,
    discover_tables,
    primary_key,
    table_columns,
)
from backup_pipelines.lib.postgres.connection import (
    abort_connection,
    client_conninfo,
    client_env,
    client_failure,
    connect,
    describe_database,
    pg_bin,
    server_answers,
    tool_version,
)
from backup_pipelines.lib.postgres.copy_format import (
    BINARY,
    TEXT,
    choose_format,
    server_major,
)
from backup_pipelines.lib.postgres.database_swap import read_locale
from backup_pipelines.lib.store import ArtifactWriter
from backup_pipelines.lib.streams import Log, Progress, zstd_compressing
from backup_pipelines.lib.timeouts import Watchdog
from backup_pipelines.lib.workspaces import validate_workspace_id

CHUNK = 1 << 20


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


def _run_pg_dump(
    args: list[str], database_url: str, sink, progress: Progress | None, watchdog: Watchdog
) -> None:
    """Run pg_dump with stdout streamed into `sink`; raise with its stderr when it fails.
    `watchdog` kills it when its output stops."""
    process = subprocess.Popen(
        [pg_bin("pg_dump"), "--no-password", *args, f"--dbname={client_conninfo(database_url)}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=client_env(database_url),
    )
    watchdog.stop_with(process.kill)
    stderr = _StderrTail(process.stderr)
    try:
        # read1: whatever arrived, so a slow but moving dump is progress, not a stall.
        while chunk := process.stdout.read1(CHUNK):
            watchdog.progress()
            with watchdog.paused():  # a slow store is not a stalled server
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
            f"{client_failure(stderr.text())}"
        )


def _dump_watchdog(conn: psycopg.Connection, database_url: str, what: str) -> Watchdog:
    """A watchdog over one dump: on a stall of a server that no longer answers, it closes the
    snapshot connection (else even the rollback on the way out would wait on the hung
    server) and kills pg_dump if running."""
    watchdog = Watchdog("PostgreSQL", what, answers=lambda: server_answers(database_url))
    watchdog.stop_with(lambda: abort_connection(conn))
    return watchdog


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
    what = f"the full dump of {describe_database(database_url)}"
    with (
        connect(database_url, autocommit=True) as conn,
        _dump_watchdog(conn, database_url, what) as watchdog,
    ):
        snap = open_snapshot(conn)
        with writer.open_file(FULL_DUMP_FILE) as out:
            with zstd_compressing(out, level) as compressed:
                _run_pg_dump(
                    ["--format=custom", "--compress=0", f"--snapshot={snap.snapshot_id}"],
                    database_url,
                    compressed,
                    progress,
                    watchdog,
                )
            progress.add(bytes_out=out.bytes_written)
        watchdog.progress()
        rows = count_all_tables(conn)  # same snapshot as the dump: exact counts at its moment
        # A restore after DROP DATABASE has no live database to copy these from.
        locale = read_locale(conn, snap.database)
        conn.execute("COMMIT")
    if log:
        log(progress.line())
    return {
        "captured_at": snap.captured_at,
        "counts": {"rows": rows, "tables": len(rows)},
        "source": {**_source_facts(database_url, snap), "locale": asdict(locale)},
        "tool": {**_tool_facts(level), "format": "custom", "uncompressed_bytes": progress.bytes_in},
        "duration_seconds": round(progress.seconds, 3),
    }


SCHEMA_FILE = "schema.sql"


def dump_workspace(
    database_url: str,
    workspace: str,
    policy: Policy,
    writer: ArtifactWriter,
    log: Log | None = None,
    binary: bool = True,
) -> dict:
    """Every workspace table's rows of one workspace, from one snapshot, one file per table:
    binary COPY where every column's type allows it (copy_format), else text; each table's
    manifest entry says which (`copy_format`). `binary=False` writes text only, as before."""
    workspace = validate_workspace_id(workspace)  # before any connection or SQL
    progress = Progress(f"{writer.ref.asset} {writer.ref.date}|{workspace}", log)
    what = f"the dump of workspace {workspace} from {describe_database(database_url)}"
    with (
        connect(database_url, autocommit=True) as conn,
        _dump_watchdog(conn, database_url, what) as watchdog,
    ):
        snap = open_snapshot(conn)
        tables = discover_tables(conn, policy)
        with writer.open_file(SCHEMA_FILE) as out:
            args = ["--schema-only", "--no-owner", "--no-acl", f"--snapshot={snap.snapshot_id}"]
            for table in tables:
                args.append(f"--table={table.schema}.{table.name}")
            _run_pg_dump(args, database_url, out, None, watchdog)
        table_entries = [
            _copy_table(conn, table, workspace, writer, policy, progress, watchdog, binary)
            for table in tables
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
            "format": _formats_of(table_entries),
            "method": "COPY in one REPEATABLE READ snapshot",
        },
        "duration_seconds": round(progress.seconds, 3),
        "uncompressed_bytes": progress.bytes_in,
    }


def _copy_table(
    conn,
    table: Table,
    workspace: str,
    writer,
    policy: Policy,
    progress: Progress,
    watchdog: Watchdog,
    binary: bool = True,
) -> dict:
    watchdog.progress()
    columns = table_columns(conn, table)
    copy_format, types = copy_format_of(conn, table, columns, binary)
    query = sql.SQL("COPY (SELECT {cols} FROM {tbl} WHERE {col} = {ws}) TO STDOUT{fmt}").format(
        cols=sql.SQL(", ").join(sql.Identifier(c) for c in columns),
        tbl=table.identifier,
        col=sql.Identifier(table.workspace_column),
        ws=sql.Literal(workspace),
        fmt=sql.SQL(" (FORMAT binary)" if copy_format == BINARY else ""),
    )
    rows = _copy_out(conn, query, writer, table.file_name, policy, progress, watchdog, copy_format)
    if copy_format == BINARY:
        rows = _copied_rows(conn, table, rows)
    entry = {
        "table": table.qualified,
        "workspace_column": table.workspace_column,
        "columns": columns,
        "rows": rows,
        "file": table.file_name,
        "copy_format": copy_format,
    }
    if copy_format == BINARY:
        entry["column_types"] = types
        entry["server_major"] = server_major(conn)
        entry.update(_ids_file(conn, table, workspace, writer, policy, progress, watchdog, rows))
    return entry


def _copy_out(conn, query, writer, name: str, policy, progress, watchdog, copy_format) -> int:
    """One COPY TO STDOUT streamed zstd-compressed into file `name`; the rows counted (text:
    one row per line, newlines inside values being escaped; binary: by the server, at the end:
    `_copied_rows`)."""
    rows = 0
    with writer.open_file(name) as out:
        with (
            zstd_compressing(out, policy.zstd_level) as compressed,
            conn.cursor() as cur,
            cur.copy(query) as copy,
        ):
            for chunk in copy:
                watchdog.progress()
                data = bytes(chunk)
                lines = 0 if copy_format == BINARY else data.count(b"\n")
                rows += lines
                with watchdog.paused():
                    compressed.write(data)
                progress.add(bytes_in=len(data), rows=lines)
            if copy_format == BINARY:  # read before the cursor closes
                rows = cur.rowcount if cur.rowcount is not None else -1
                progress.add(rows=max(rows, 0))
        progress.add(bytes_out=out.bytes_written)
    return rows


def _ids_file(conn, table: Table, workspace, writer, policy, progress, watchdog, rows) -> dict:
    """Beside a binary table with a one-column primary key, its ids in COPY text, from the same
    snapshot: the consistency gate reads them without walking every field of every binary row
    (2-3x the CPU of the whole text parse). Covered by the manifest's sha256 like the data file
    it describes; a table without one is walked field by field instead (postgres.ids)."""
    key = primary_key(conn, table.schema, table.name)
    if len(key) != 1:
        return {}
    query = sql.SQL("COPY (SELECT {key} FROM {tbl} WHERE {col} = {ws}) TO STDOUT").format(
        key=sql.Identifier(key[0]),
        tbl=table.identifier,
        col=sql.Identifier(table.workspace_column),
        ws=sql.Literal(workspace),
    )
    name = f"{table.qualified}.ids.zst"
    ids = _copy_out(conn, query, writer, name, policy, progress, watchdog, TEXT)
    if ids != rows:
        raise SourceError(f"{table.qualified}: {ids} ids but {rows} rows in the same snapshot")
    return {"ids_file": name, "ids_column": key[0]}


def copy_format_of(conn, table: Table, columns: list[str], binary: bool) -> tuple[str, list]:
    if not binary:
        return TEXT, []
    return choose_format(conn, table, columns)


def _copied_rows(conn, table: Table, rows: int) -> int:
    """The rows the server says its COPY TO sent (binary rows have no line to count)."""
    if rows < 0:
        raise SourceError(
            f"COPY of {table.qualified}: the server did not say how many rows it sent"
        )
    return rows


def _formats_of(entries: list[dict]) -> str:
    formats = sorted({e["copy_format"] for e in entries}) or [TEXT]
    return "copy-" + "+".join(formats)
