"""One database = one SQLite file (its "data file"), holding the user tables plus the stand-in's
internal tables: catalog metadata, the LSN counter and the logical transaction log.

Log records (``__standin_log``): ``lsn`` (numeric(25,0)-style, strictly increasing), ``end_lsn``
(the LSN after the record), ``commit_time`` (UTC, microseconds), ``kind`` and ``body``. A
transaction's body is JSON: the DDL statements it ran, then the final image of every row it
touched (by rowid) and the rowids it deleted. Capture triggers on every table write the rowids
into ``__standin_dirty``; the commit turns them into one record inside the same SQLite
transaction, so data and log commit atomically.
"""

from __future__ import annotations

import base64
import contextlib
import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from .ddl import INTERNAL_PREFIX, SCHEMA, capture_triggers
from .tsql import quote_ident

LSN_BLOCK = 100_000
FIRST_LSN = (37 * 10**10 + 16) * LSN_BLOCK + 1
FIRST_OBJECT_ID = 245_575_913
P = INTERNAL_PREFIX

INTERNAL_TABLES = [
    f"CREATE TABLE {SCHEMA}{P}meta (key TEXT PRIMARY KEY, value)",
    f"CREATE TABLE {SCHEMA}{P}dirty (tbl TEXT NOT NULL, rid INTEGER NOT NULL)",
    f"CREATE TABLE {SCHEMA}{P}log (lsn INTEGER PRIMARY KEY, end_lsn INTEGER NOT NULL, "
    "commit_time TEXT NOT NULL, kind TEXT NOT NULL, body TEXT)",
    f"CREATE TABLE {SCHEMA}{P}objects (object_id INTEGER PRIMARY KEY, name TEXT, type TEXT, "
    "parent_object_id INTEGER, create_date TEXT)",
    f"CREATE TABLE {SCHEMA}{P}columns (object_id INTEGER, column_id INTEGER, name TEXT, "
    "type_sql TEXT, is_nullable INTEGER, is_identity INTEGER, seed INTEGER, increment INTEGER, "
    "default_sql TEXT, PRIMARY KEY (object_id, column_id))",
    f"CREATE TABLE {SCHEMA}{P}keys (constraint_id INTEGER, table_id INTEGER, kind TEXT, "
    "ordinal INTEGER, column_name TEXT, ref_table_id INTEGER, ref_column TEXT, on_delete TEXT, "
    "on_update TEXT)",
    f"CREATE TABLE {SCHEMA}{P}indexes (object_id INTEGER, index_id INTEGER, name TEXT, "
    "is_unique INTEGER, is_primary_key INTEGER, is_unique_constraint INTEGER, columns TEXT)",
    f"CREATE TABLE {SCHEMA}{P}identity (object_id INTEGER PRIMARY KEY, current INTEGER)",
    *capture_triggers(f"{P}identity"),
]


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def fmt_time(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f")


def schema_prefix(alias: str | None) -> str:
    return f"{quote_ident(alias)}." if alias else ""


def bind_schema(sql: str, alias: str | None) -> str:
    return sql.replace(SCHEMA, schema_prefix(alias))


def connect(path: Path, timeout: float = 30.0) -> sqlite3.Connection:
    """A plain connection to one database file (no type conversion), autocommit mode."""
    from .functions import register_functions

    conn = sqlite3.connect(
        str(path), timeout=timeout, isolation_level=None, check_same_thread=False
    )
    conn.execute("PRAGMA foreign_keys = OFF")
    conn.execute("PRAGMA synchronous = NORMAL")
    register_functions(conn, None)
    return conn


def create_file(path: Path, created: datetime) -> None:
    """A new, empty database file with the internal tables and the first LSN."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(path)
    try:
        conn.execute("BEGIN")
        for sql in INTERNAL_TABLES:
            conn.execute(bind_schema(sql, None))
        meta = {
            "next_lsn": FIRST_LSN,
            "log_chain_start": FIRST_LSN,
            "last_commit_time": fmt_time(created),
            "next_object_id": FIRST_OBJECT_ID,
        }
        conn.executemany(f"INSERT INTO {P}meta VALUES (?, ?)", list(meta.items()))
        conn.execute("COMMIT")
    finally:
        conn.close()


def get_meta(conn: sqlite3.Connection, alias: str | None, key: str):
    row = conn.execute(
        f"SELECT +value FROM {schema_prefix(alias)}{P}meta WHERE key = ?", (key,)
    ).fetchone()
    return row[0] if row else None


def set_meta(conn: sqlite3.Connection, alias: str | None, key: str, value) -> None:
    conn.execute(
        f"INSERT OR REPLACE INTO {schema_prefix(alias)}{P}meta VALUES (?, ?)", (key, value)
    )


def alloc_object_id(conn: sqlite3.Connection, alias: str | None) -> int:
    value = int(get_meta(conn, alias, "next_object_id"))
    set_meta(conn, alias, "next_object_id", value + 16_000_057)
    return value


# ---- commit: turn dirty rowids into one log record ------------------------------------------
def _encode(value):
    if isinstance(value, bytes):
        return {"$b": base64.b64encode(value).decode()}
    return value


def _decode(value):
    if isinstance(value, dict):
        return base64.b64decode(value["$b"])
    return value


def table_columns(conn: sqlite3.Connection, alias: str | None, table: str) -> list[str]:
    rows = conn.execute(f"PRAGMA {schema_prefix(alias)}table_info({quote_ident(table)})").fetchall()
    return [r[1] for r in rows]


def collect_changes(conn: sqlite3.Connection, alias: str | None) -> list[dict]:
    """Final images of the rows changed in this transaction, per table (and deleted rowids)."""
    s = schema_prefix(alias)
    dirty = conn.execute(f"SELECT DISTINCT +tbl, +rid FROM {s}{P}dirty ORDER BY 1, 2").fetchall()
    by_table: dict[str, list[int]] = {}
    for tbl, rid in dirty:
        by_table.setdefault(tbl, []).append(rid)
    changes = []
    for tbl, rids in by_table.items():
        cols = table_columns(conn, alias, tbl)
        if not cols:
            continue  # dropped later in the same transaction
        select = ", ".join(f"+{quote_ident(c)}" for c in cols)
        found: dict[int, list] = {}
        for i in range(0, len(rids), 500):
            chunk = rids[i : i + 500]
            marks = ", ".join("?" * len(chunk))
            sql = f"SELECT rowid, {select} FROM {s}{quote_ident(tbl)} WHERE rowid IN ({marks})"
            for row in conn.execute(sql, chunk):
                found[row[0]] = [row[0], *(_encode(v) for v in row[1:])]
        changes.append(
            {
                "table": tbl,
                "columns": cols,
                "rows": [found[r] for r in rids if r in found],
                "deleted": [r for r in rids if r not in found],
            }
        )
    return changes


def write_record(
    conn: sqlite3.Connection, alias: str | None, kind: str, body: dict | None, keep: bool
) -> tuple[int, int, datetime]:
    """Allocate the record's LSN range and commit time; store it when the log is kept."""
    text = json.dumps(body, separators=(",", ":")) if body is not None else None
    lsn = int(get_meta(conn, alias, "next_lsn"))
    blocks = 1 + (len(text) // 8192 if text else 0)
    end = lsn + blocks * LSN_BLOCK
    last = parse_time(get_meta(conn, alias, "last_commit_time"))
    now = max(utcnow(), last + timedelta(microseconds=1))
    set_meta(conn, alias, "next_lsn", end)
    set_meta(conn, alias, "last_commit_time", fmt_time(now))
    if keep:
        conn.execute(
            f"INSERT INTO {schema_prefix(alias)}{P}log VALUES (?, ?, ?, ?, ?)",
            (lsn, end, fmt_time(now), kind, text),
        )
    return lsn, end, now


def commit_changes(
    conn: sqlite3.Connection, alias: str | None, ddl: list[str], keep: bool
) -> tuple[int, int, datetime] | None:
    """Called inside the write transaction just before COMMIT."""
    s = schema_prefix(alias)
    has_dirty = conn.execute(f"SELECT 1 FROM {s}{P}dirty LIMIT 1").fetchone() is not None
    if not has_dirty and not ddl:
        return None
    body = {"ddl": ddl, "changes": collect_changes(conn, alias)} if keep else None
    conn.execute(f"DELETE FROM {s}{P}dirty")
    return write_record(conn, alias, "xact", body, keep)


def apply_body(conn: sqlite3.Connection, body: dict) -> None:
    """Redo one transaction record on a connection whose main database is the target."""
    for sql in body.get("ddl", []):
        conn.execute(bind_schema(sql, None))
    for change in body.get("changes", []):
        table = quote_ident(change["table"])
        for rid in change["deleted"]:
            conn.execute(f"DELETE FROM {table} WHERE rowid = ?", (rid,))
        if change["rows"]:
            cols = ", ".join(["rowid", *(quote_ident(c) for c in change["columns"])])
            marks = ", ".join("?" * (len(change["columns"]) + 1))
            conn.executemany(
                f"INSERT OR REPLACE INTO {table} ({cols}) VALUES ({marks})",
                [[_decode(v) for v in row] for row in change["rows"]],
            )
    conn.execute(f"DELETE FROM {P}dirty")


def log_records(conn: sqlite3.Connection, start: int, end: int) -> Iterator[tuple]:
    """(lsn, end_lsn, commit_time, kind, body) with start <= lsn < end, in LSN order."""
    yield from conn.execute(
        f"SELECT lsn, end_lsn, commit_time, kind, body FROM {P}log WHERE lsn >= ? AND lsn < ? ORDER BY lsn",
        (start, end),
    )


@contextlib.contextmanager
def write_locked(path: Path, timeout: float = 120.0) -> Iterator[sqlite3.Connection]:
    """A connection holding the database's write lock (BEGIN IMMEDIATE); commits on success."""
    conn = connect(path, timeout)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    finally:
        conn.close()


@contextlib.contextmanager
def read_locked(path: Path, timeout: float = 120.0) -> Iterator[sqlite3.Connection]:
    """A connection holding a SHARED lock: no writer can commit, so the file is consistent."""
    conn = connect(path, timeout)
    try:
        conn.execute("BEGIN")
        conn.execute(f"SELECT count(*) FROM {P}meta").fetchone()
        try:
            yield conn
        finally:
            conn.execute("ROLLBACK")
    finally:
        conn.close()


def reset_after_restore(path: Path, keep_log: bool) -> None:
    """A restored file starts with an empty log and no leftover dirty rows."""
    with write_locked(path) as conn:
        conn.execute(f"DELETE FROM {P}dirty")
        if not keep_log:
            conn.execute(f"DELETE FROM {P}log")
        set_meta(conn, None, "log_chain_start", int(get_meta(conn, None, "next_lsn")))
