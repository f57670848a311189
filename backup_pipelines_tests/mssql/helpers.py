"""Helpers of the mssql tests (pyodbc against the stand-in or a real SQL Server)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import datetime, timedelta

import pyodbc


@contextlib.contextmanager
def connect(
    connection_string: str, autocommit: bool = True, database: str | None = None
) -> Iterator[pyodbc.Connection]:
    """A connection closed at the end of the block (pyodbc's own `with` does not close)."""
    cs = connection_string
    if database is not None:
        cs = cs.rsplit("DATABASE=", 1)[0] + f"DATABASE={database}"
    conn = pyodbc.connect(cs, autocommit=autocommit, timeout=10)
    try:
        yield conn
    finally:
        conn.close()


def run(conn: pyodbc.Connection, sql: str, *params) -> list[tuple[str, str]]:
    """Execute and drain every result set; returns every message (collected after each nextset)."""
    cur = conn.cursor()
    cur.execute(sql, *params)
    messages = list(cur.messages)
    while cur.nextset():
        messages += cur.messages
    cur.close()
    return messages


def message_numbers(messages: list[tuple[str, str]]) -> list[int]:
    return [int(code.rsplit("(", 1)[1].rstrip(")")) for code, _ in messages]


def error_number(exc: pyodbc.Error) -> list[int]:
    """SQL Server message numbers in a pyodbc error, e.g. [3021, 3013]."""
    import re

    return [int(n) for n in re.findall(r"\((\d{3,5})\)", str(exc))]


def server_time(conn: pyodbc.Connection) -> datetime:
    """The server's clock (SYSDATETIME: the clock STOPAT is read in)."""
    return conn.execute("SELECT SYSDATETIME()").fetchone()[0]


def wait_until_server_time_passes(
    conn: pyodbc.Connection, moment: datetime, margin_ms: int = 30
) -> None:
    """Wait (polling the server clock) until the server's time is past moment + margin."""
    target = moment + timedelta(milliseconds=margin_ms)
    deadline = time.monotonic() + 10
    while server_time(conn) <= target:
        if time.monotonic() > deadline:
            raise TimeoutError("the server clock does not move")


def header(conn: pyodbc.Connection, path) -> pyodbc.Row:
    rows = conn.execute(f"RESTORE HEADERONLY FROM DISK = N'{path}'").fetchall()
    assert len(rows) == 1
    return rows[0]


def wait_until_no_sessions_use(conn: pyodbc.Connection, database: str) -> None:
    """Closing a connection is noticed by the server a moment later: wait for it."""
    deadline = time.monotonic() + 10
    sql = "SELECT COUNT(*) FROM sys.dm_exec_sessions WHERE database_id = DB_ID(?) AND session_id <> @@SPID"
    while conn.execute(sql, database).fetchone()[0]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"sessions still use {database}")
