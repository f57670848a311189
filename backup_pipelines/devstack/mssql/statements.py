"""Running a batch: splitting it, dispatching each statement, and SELECT/INSERT/UPDATE/DELETE.

Statement errors follow SQL Server: constraint violations end the statement (the batch goes
on, the transaction stays open); compile-time errors (102, 207, 208, ...) end the batch;
with XACT_ABORT ON any error rolls the transaction back and ends the batch.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from typing import Protocol

from .errors import SqlError, lock_timeout
from .selectlist import coerce
from .sqltypes import SqlType, infer_type, to_storage
from .translate import TableInfo, Translated, translate
from .tsql import Tok, lex, quote_ident, split_batch

CMD_SELECT, CMD_INSERT, CMD_DELETE, CMD_UPDATE = 0xC1, 0xC3, 0xC4, 0xC5
TXN_STARTERS = {"SELECT", "INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "ALTER", "TRUNCATE"}


class Output(Protocol):
    def info(self, number: int, text: str, state: int = 1) -> None: ...
    def error(self, err: SqlError) -> None: ...
    def result(self, columns: list[tuple[str, SqlType]], rows: list) -> None: ...
    def envchange_database(self, new: str, old: str) -> None: ...
    def transaction(self, begin: bool, descriptor: bytes, rollback: bool = False) -> None: ...
    def done(self, count: int | None, cmd: int = 0, error: bool = False) -> None: ...
    def flush(self) -> None: ...
    def cancelled(self) -> bool: ...


@dataclass
class Params:
    """Values of @P1.. parameters (names without '@') and their declared types."""

    values: dict
    types: dict[str, SqlType]


def execute_batch(session, sql: str, out: Output, params: Params | None = None) -> None:
    try:
        _execute_batch(session, sql, out, params)
    finally:
        session.request = None


def _execute_batch(session, sql: str, out: Output, params: Params | None) -> None:
    from .admin import execute_other

    session.refresh_attachments()
    try:
        statements = split_batch(lex(sql))
    except SqlError as err:
        out.error(err)
        out.done(None, error=True)
        return
    for stmt in statements:
        session._cat_counter = 0
        session.request = _request(session, stmt)
        try:
            head = stmt[0].up
            if head in ("INSERT", "UPDATE", "DELETE", "WITH"):
                run_data(session, stmt, out, params)
            elif head == "SELECT":
                run_data(session, stmt, out, params, no_tables=_is_select_without_from(stmt))
            else:
                execute_other(session, stmt, out, params)
        except SqlError as err:
            _statement_failed(session, err, out)
            if err.batch_abort or session.xact_abort:
                return
        except sqlite3.Error as exc:
            err = map_sqlite_error(session, exc, None)
            _statement_failed(session, err, out)
            if err.batch_abort or session.xact_abort:
                return
        if out.cancelled():
            return


def _request(session, stmt: list[Tok]) -> dict:
    """What sys.dm_exec_requests shows for the statement (command as SQL Server names it)."""
    import time

    from .dbfile import fmt_time, utcnow

    words = [t.up for t in stmt[:2]]
    command = " ".join(words) if words[0] in ("BACKUP", "RESTORE") else words[0]
    db = session.engine.get(session.current_db)
    return {"command": command, "start": fmt_time(utcnow()), "clock": time.monotonic(), "percent": 0.0,
            "database_id": db.database_id if db else 1}  # fmt: skip


def _statement_failed(session, err: SqlError, out: Output) -> None:
    if session.xact_abort and session.trancount:
        rollback_transaction(session, out)
    out.error(err)
    out.done(None, error=True)


def _is_select_without_from(stmt: list[Tok]) -> bool:
    depth = 0
    for tok in stmt:
        depth += tok.kind == "lp"
        depth -= tok.kind == "rp"
        if depth == 0 and tok.is_kw("FROM"):
            return False
    return True


def start_implicit_transaction(session, out: Output, head: str) -> None:
    if session.implicit_transactions and session.trancount == 0 and head in TXN_STARTERS:
        session.trancount = 1
        session.tx_descriptor = session.new_descriptor()
        out.transaction(True, session.tx_descriptor)


def rollback_transaction(session, out: Output) -> None:
    session.rollback_sqlite()
    if session.trancount:
        session.trancount = 0
        out.transaction(False, session.tx_descriptor, rollback=True)
        session.tx_descriptor = b"\x00" * 8


def bind_values(params: Params | None) -> dict:
    if params is None:
        return {}
    return {k: to_storage(v) for k, v in params.values.items()}


def run_data(
    session, stmt: list[Tok], out: Output, params: Params | None, no_tables: bool = False
) -> None:
    head = stmt[0].up
    if not no_tables:
        start_implicit_transaction(session, out, head)
    tr = translate(stmt, session, params.types if params else {})
    bind = bind_values(params)
    write = head in ("INSERT", "UPDATE", "DELETE")
    if not write:
        cur = _execute(session, tr, bind)
        _send_rows(cur, tr, out, session)
        return
    db = session.engine.get(tr.target.db)
    session.begin_write(db)
    autocommit = session.trancount == 0
    if not autocommit:
        session.conn.execute("SAVEPOINT stmt")
    try:
        base = (
            _identity_base(session, tr) if tr.identity in ("values", "select", "default") else None
        )
        if base is not None:
            bind["__idb"] = base
        cur = _execute(session, tr, bind)
        rows = cur.fetchall() if tr.returning else None
        count = len(rows) if rows is not None else cur.rowcount
        _identity_after(session, tr, base, count)
        if autocommit:
            session.commit_sqlite()
        else:
            session.conn.execute("RELEASE stmt")
    except BaseException as exc:
        if autocommit:
            session.rollback_sqlite()
        else:
            session.conn.execute("ROLLBACK TO stmt")
            session.conn.execute("RELEASE stmt")
        if isinstance(exc, sqlite3.Error):
            raise map_sqlite_error(session, exc, tr) from None
        raise
    session.rowcount = count
    if rows is not None:
        _send_result(out, tr, [d[0] for d in cur.description], rows)
    cmd = {"INSERT": CMD_INSERT, "UPDATE": CMD_UPDATE, "DELETE": CMD_DELETE}[head]
    out.done(None if session.nocount else count, cmd)


def _execute(session, tr: Translated, bind: dict):
    try:
        return session.conn.execute(tr.sql, bind)
    except sqlite3.ProgrammingError as exc:
        m = re.search(r"binding parameter :(\w+)", str(exc))
        if m:
            raise SqlError(
                137, f'Must declare the scalar variable "@{m.group(1)}".', 15, 2, batch_abort=True
            ) from None
        raise
    except sqlite3.Error as exc:
        raise map_sqlite_error(session, exc, tr) from None


def _send_rows(cur, tr: Translated, out: Output, session) -> None:
    try:
        rows = cur.fetchall()
    except sqlite3.Error as exc:
        raise map_sqlite_error(session, exc, tr) from None
    names = [d[0] for d in cur.description or []]
    _send_result(out, tr, names, rows)
    session.rowcount = len(rows)
    out.done(None if session.nocount else len(rows), CMD_SELECT)


def _send_result(out: Output, tr: Translated, names: list[str], rows: list) -> None:
    if tr.item_names is not None and len(tr.item_names) == len(names):
        names = [n if n is not None else names[i] for i, n in enumerate(tr.item_names)]
    static = tr.item_types if len(tr.item_types) == len(names) else [None] * len(names)
    if tr.returning and tr.target is not None:
        static = [(tr.target.column(n) or (None, None))[1] for n in names]
    elif tr.item_names is None and len(tr.tables) == 1 and len(tr.tables[0].columns) == len(names):
        static = [c[1] for c in tr.tables[0].columns]  # SELECT * FROM one table: its column types
    rows = [tuple(coerce(v, static[i]) for i, v in enumerate(row)) for row in rows]
    columns = []
    for i, name in enumerate(names):
        sqltype = static[i] or infer_type([row[i] for row in rows])
        columns.append((name, sqltype))
    out.result(columns, rows)


def _identity_base(session, tr: Translated) -> int:
    table = tr.target
    row = session.conn.execute(
        f"SELECT +current FROM {quote_ident(table.alias)}.__standin_identity WHERE object_id = ?",
        (table.object_id,),
    ).fetchone()
    _, seed, incr = table.identity
    return seed if row is None or row[0] is None else row[0] + incr


def _identity_after(session, tr: Translated, base: int | None, count: int) -> None:
    table: TableInfo | None = tr.target
    if table is None or table.identity is None or tr.identity is None or count <= 0:
        return
    a, col = quote_ident(table.alias), quote_ident(table.identity[0])
    if base is not None:
        last = base + (count - 1) * table.identity[2]
    else:
        fn = "max" if table.identity[2] > 0 else "min"
        last = session.conn.execute(
            f"SELECT {fn}(+{col}) FROM {a}.{quote_ident(table.name)}"
        ).fetchone()[0]
        row = session.conn.execute(
            f"SELECT +current FROM {a}.__standin_identity WHERE object_id = ?", (table.object_id,)
        ).fetchone()
        if row is not None and row[0] is not None and (last - row[0]) * table.identity[2] < 0:
            last = row[0]
    session.conn.execute(
        f"UPDATE {a}.__standin_identity SET current = ? WHERE object_id = ?",
        (last, table.object_id),
    )
    session.last_identity = last


# ---- errors ------------------------------------------------------------------------------------
def map_sqlite_error(session, exc: Exception, tr: Translated | None) -> SqlError:
    msg = str(exc)
    verb = (tr.kind.upper() if tr else "INSERT") if tr is None or tr.kind != "select" else "SELECT"
    table = tr.target if tr else None
    m = re.match(r"no such table: (?:\w+\.)?(.+)", msg)
    if m:
        return SqlError(208, f"Invalid object name '{m.group(1)}'.", 16, 1, batch_abort=True)
    m = re.match(r"no such column: (?:.+\.)?(.+)", msg)
    if m:
        return SqlError(207, f"Invalid column name '{m.group(1)}'.", 16, 1, batch_abort=True)
    m = re.match(r'near "(.+?)": syntax error', msg)
    if m:
        return SqlError(102, f"Incorrect syntax near '{m.group(1)}'.", 15, 1, batch_abort=True)
    m = re.match(r"ambiguous column name: (?:.+\.)?(.+)", msg)
    if m:
        return SqlError(209, f"Ambiguous column name '{m.group(1)}'.", 16, 1, batch_abort=True)
    if "locked" in msg or "busy" in msg:
        return session.lock_error() if session is not None else lock_timeout()
    if "user-defined function raised exception" in msg:
        return _then_terminated(
            SqlError(
                245, "Conversion failed when converting a value to the column's data type.", 16, 1
            )
        )
    m = re.match(r"NOT NULL constraint failed: (?:.+\.)?(.+)", msg)
    if m and table is not None:
        return _then_terminated(
            SqlError(
                515,
                f"Cannot insert the value NULL into column '{m.group(1)}', table '{table.db}.dbo.{table.name}'; "
                f"column does not allow nulls. {'UPDATE' if verb == 'UPDATE' else 'INSERT'} fails.",
                16,
                2,
            )
        )
    if msg.startswith("UNIQUE constraint failed") and table is not None:
        return _then_terminated(_unique_error(session, table, msg))
    if "FOREIGN KEY constraint failed" in msg and table is not None:
        return _then_terminated(_fk_error(session, table, verb))
    m = re.match(r"CHECK constraint failed: (.+)", msg)
    if m and table is not None:
        return _then_terminated(
            SqlError(
                547,
                f'The {verb} statement conflicted with the CHECK constraint "{m.group(1)}". The conflict '
                f'occurred in database "{table.db}", table "dbo.{table.name}".',
                16,
                0,
            )
        )
    return SqlError(50000, f"SQL Server stand-in (SQLite): {msg}", 16, 1, batch_abort=True)


def _then_terminated(err: SqlError) -> SqlError:
    return err.then(3621, "The statement has been terminated.", 0, 0)


def _unique_error(session, table: TableInfo, msg: str) -> SqlError:
    cols = [c.split(".")[-1].lower() for c in msg.split(":", 1)[1].split(",")]
    a = quote_ident(table.alias)
    rows = session.conn.execute(
        f"SELECT +o.name, +o.type, +k.column_name FROM {a}.__standin_keys k JOIN {a}.__standin_objects o "
        f"ON o.object_id = k.constraint_id WHERE k.table_id = ? AND k.kind IN ('PK', 'UQ') ORDER BY k.ordinal",
        (table.object_id,),
    ).fetchall()
    by_name: dict[str, tuple[str, list[str]]] = {}
    for name, kind, col in rows:
        by_name.setdefault(name, (kind, []))[1].append(col.lower())
    for name, (kind, key_cols) in by_name.items():
        if sorted(key_cols) == sorted(cols):
            word = "PRIMARY KEY" if kind == "PK" else "UNIQUE KEY"
            return SqlError(
                2627,
                f"Violation of {word} constraint '{name}'. Cannot insert duplicate key in "
                f"object 'dbo.{table.name}'. The duplicate key value is (<duplicate>).",
                14,
                1,
            )
    return SqlError(
        2601,
        f"Cannot insert duplicate key row in object 'dbo.{table.name}' with unique index. "
        "The duplicate key value is (<duplicate>).",
        14,
        1,
    )


def _fk_error(session, table: TableInfo, verb: str) -> SqlError:
    a = quote_ident(table.alias)
    if verb == "DELETE":
        row = session.conn.execute(
            f"SELECT +o.name, +t.name, +k.column_name FROM {a}.__standin_keys k "
            f"JOIN {a}.__standin_objects o ON o.object_id = k.constraint_id "
            f"JOIN {a}.__standin_objects t ON t.object_id = k.table_id WHERE k.kind = 'F' AND k.ref_table_id = ?",
            (table.object_id,),
        ).fetchone()
        name, child, col = row or ("?", "?", "?")
        return SqlError(
            547,
            f'The DELETE statement conflicted with the REFERENCE constraint "{name}". The '
            f'conflict occurred in database "{table.db}", table "dbo.{child}", column \'{col}\'.',
            16,
            0,
        )
    row = session.conn.execute(
        f"SELECT +o.name, +t.name, +k.ref_column FROM {a}.__standin_keys k "
        f"JOIN {a}.__standin_objects o ON o.object_id = k.constraint_id "
        f"JOIN {a}.__standin_objects t ON t.object_id = k.ref_table_id WHERE k.kind = 'F' AND k.table_id = ?",
        (table.object_id,),
    ).fetchone()
    if row is None:  # the table is a parent whose referenced key was updated
        return SqlError(
            547,
            f'The {verb} statement conflicted with a REFERENCE constraint in database "{table.db}".',
            16,
            0,
        )
    name, parent, col = row
    return SqlError(
        547,
        f'The {verb} statement conflicted with the FOREIGN KEY constraint "{name}". The '
        f'conflict occurred in database "{table.db}", table "dbo.{parent}", column \'{col}\'.',
        16,
        0,
    )
