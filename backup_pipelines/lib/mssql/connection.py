"""Talking to SQL Server through pyodbc: connections that never show their secrets, statements
whose every result set is drained (BACKUP and RESTORE report progress in several; an undrained
cursor can end the statement early without an error), SQL Server's error numbers, and a
timeout on silence rather than on a statement's length (a length limit kills a long backup;
a server that stops answering must not hang a run forever).
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from backup_pipelines.lib.errors import BackupError, SourceError

Log = Callable[[str], None]
LOGIN_TIMEOUT_SECONDS = 15
# No message or result set for this long: the server is taken for hung and the statement
# cancelled. BACKUP/RESTORE WITH STATS report every few percent, so a live one never trips it.
DEFAULT_STALL_SECONDS = 600.0
TIMEOUT_SQLSTATE = "HYT00"  # ODBC: timeout expired
SECRET_KEYS = re.compile(r"(?i)\b(PWD|PASSWORD|ACCESSTOKEN)\s*=\s*(\{(?:[^}]|\}\})*\}|[^;]*)")
ERROR_NUMBER = re.compile(r"\((\d{1,6})\)")
IDENTIFIER = re.compile(r"^[^\x00-\x1f\]\[]{1,128}$")


class MssqlError(SourceError):
    """SQL Server refused a statement; `numbers` are its error numbers (3013, 4305, ...)."""

    def __init__(self, message: str, numbers: list[int]) -> None:
        self.numbers = numbers
        super().__init__(message)


def redact(connection_string: str) -> str:
    """The connection string without its password or token: safe for logs and errors."""
    return SECRET_KEYS.sub(lambda m: f"{m.group(1)}=***", connection_string)


def describe_server(connection_string: str) -> str:
    """server,port/database — what an error or a manifest may say about where."""
    fields = dict(
        (key.strip().upper(), value.strip())
        for key, _, value in (part.partition("=") for part in connection_string.split(";"))
        if key.strip()
    )
    server = fields.get("SERVER", "?")
    port = fields.get("PORT")
    database = fields.get("DATABASE", "")
    return f"{server}{',' + port if port else ''}/{database}"


def database_of(connection_string: str) -> str:
    return describe_server(connection_string).rpartition("/")[2]


def quote_name(name: str) -> str:
    """[name] for T-SQL, refusing what no database or file name should hold."""
    if not isinstance(name, str) or not IDENTIFIER.fullmatch(name):
        raise BackupError(f"{name!r} is not a usable SQL Server name")
    return f"[{name}]"


def literal(text: str) -> str:
    """N'text' for the statements that take no parameters (BACKUP ... TO DISK = ...)."""
    if "\x00" in text:
        raise BackupError("a NUL character cannot be part of a SQL Server string")
    return "N'" + text.replace("'", "''") + "'"


def error_numbers(exc: Exception) -> list[int]:
    return [int(n) for n in ERROR_NUMBER.findall(" ".join(str(a) for a in exc.args))]


def connect(connection_string: str, autocommit: bool = True, database: str | None = None):
    """A pyodbc connection (autocommit by default: BACKUP and RESTORE refuse transactions)."""
    import pyodbc

    if database is not None:
        connection_string = (
            re.sub(r"(?i)(^|;)\s*DATABASE\s*=[^;]*", "", connection_string).rstrip(";")
            + f";DATABASE={database}"
        )
    try:
        return pyodbc.connect(
            connection_string, autocommit=autocommit, timeout=LOGIN_TIMEOUT_SECONDS
        )
    except pyodbc.Error as exc:
        raise SourceError(
            f"cannot connect to SQL Server {describe_server(connection_string)}: "
            f"{_message(exc)} — check MSSQL_CONNECTION_STRING and that the server is up"
        ) from None


def _message(exc: Exception) -> str:
    text = " ".join(str(a) for a in exc.args[1:] or exc.args)
    text = re.sub(r"\[[^\]]*\]", "", text)  # [FreeTDS][SQL Server] prefixes
    return redact(re.sub(r"\s+", " ", text).replace("(SQLExecDirectW)", "").strip())


@dataclass
class Outcome:
    """What a statement returned: every result set's rows and every message, in order."""

    results: list[list[dict]] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    rowcount: int = -1  # rows the statement changed (INSERT, UPDATE, DELETE); -1 otherwise

    @property
    def rows(self) -> list[dict]:
        """The last result set that had columns."""
        return self.results[-1] if self.results else []


def run(
    conn,
    statement: str,
    *params: Any,
    log: Log | None = None,
    stall_seconds: float = DEFAULT_STALL_SECONDS,
    what: str = "statement",
) -> Outcome:
    """Execute and drain every result set, collecting rows and messages (pyodbc keeps only the
    current result set's messages, so they are read after every step)."""
    import pyodbc

    outcome = Outcome()
    # The driver's query timeout counts silence: each packet from the server starts it again
    # (a BACKUP's STATS messages keep a long one alive), and once it runs out the driver
    # sends a cancel and gives up on its answer after as long again. A cancel sent from
    # another thread does not end a read waiting on a silent server: with FreeTDS that call
    # never returned.
    conn.timeout = max(1, math.ceil(stall_seconds))  # taken by the cursors made from now on
    cursor = conn.cursor()
    try:
        cursor.execute(statement, *params)
        outcome.rowcount = cursor.rowcount
        while True:
            _collect(cursor, outcome, log)
            if not cursor.nextset():
                break
    except pyodbc.Error as exc:
        if exc.args and exc.args[0] == TIMEOUT_SQLSTATE:
            raise MssqlError(
                f"SQL Server {what} made no progress for {stall_seconds:.0f} s and was "
                "cancelled (server hung or unreachable)",
                [],
            ) from None
        raise MssqlError(f"SQL Server {what} failed: {_message(exc)}", error_numbers(exc)) from None
    finally:
        with contextlib.suppress(pyodbc.Error):  # a connection the timeout left dead
            cursor.close()
    return outcome


def _collect(cursor, outcome: Outcome, log: Log | None) -> None:
    for _state, text in cursor.messages or []:
        line = re.sub(r"\[[^\]]*\]", "", str(text)).strip()
        outcome.messages.append(line)
        if log:
            log(line)
    if cursor.description is not None:
        names = [column[0] for column in cursor.description]
        outcome.results.append([dict(zip(names, row, strict=True)) for row in cursor.fetchall()])


def query(conn, statement: str, *params: Any) -> list[dict]:
    """The rows of a plain SELECT."""
    return run(conn, statement, *params, what="query").rows


@contextmanager
def connected(connection_string: str, database: str | None = None) -> Iterator[Any]:
    conn = connect(connection_string, database=database)
    try:
        yield conn
    finally:
        conn.close()
