"""Statements other than SELECT/INSERT/UPDATE/DELETE: transactions, SET, USE, IF, databases,
table DDL (in tableddl.py), BACKUP/RESTORE (in backup.py), and what FreeTDS sends itself."""

from __future__ import annotations

import time

from .errors import SqlError, not_supported, syntax_error
from .sqltypes import SqlType
from .statements import Output, Params, rollback_transaction, run_data
from .tsql import Cursor, Tok

SET_ACCEPTED = {
    "QUOTED_IDENTIFIER",
    "ANSI_NULLS",
    "ANSI_WARNINGS",
    "ANSI_PADDING",
    "ANSI_NULL_DFLT_ON",
    "ARITHABORT",
    "CONCAT_NULL_YIELDS_NULL",
    "DATEFORMAT",
    "NUMERIC_ROUNDABORT",
    "TRANSACTION",
    "DEADLOCK_PRIORITY",
    "LANGUAGE",
    "TEXTSIZE",
    "STATISTICS",
    "DATEFIRST",
    "CURSOR_CLOSE_ON_COMMIT",
    "ANSI_DEFAULTS",
    "ROWCOUNT",
}


def execute_other(session, stmt: list[Tok], out: Output, params: Params | None) -> None:
    from .backup import run_backup
    from .restore import run_restore
    from .tableddl import execute_table_ddl

    cur = Cursor(stmt)
    head = cur.next().up
    if head == "USE":
        use_database(session, cur.name(), out)
    elif head in ("BEGIN", "COMMIT", "ROLLBACK", "SAVE"):
        transaction_statement(session, head, cur, out)
    elif head == "SET":
        set_option(session, cur, out)
    elif head == "IF":
        if_statement(session, stmt, out, params)
    elif (
        head in ("CREATE", "DROP", "ALTER")
        and cur.peek() is not None
        and cur.peek().is_kw("DATABASE")
    ):
        from .databases import database_statement

        database_statement(session, head, cur, out)
    elif head in ("CREATE", "DROP", "ALTER", "TRUNCATE"):
        if cur.peek() is not None and cur.peek().is_kw("CREDENTIAL"):
            from .databases import credential_statement

            credential_statement(session, head, cur, out)
        else:
            execute_table_ddl(session, head, cur, out)
    elif head == "BACKUP":
        run_backup(session, cur, out, params)
    elif head == "RESTORE":
        run_restore(session, cur, out, params)
    elif head and head.startswith("SP_DATATYPE_INFO"):
        datatype_info(stmt, out)
    elif head in ("EXEC", "EXECUTE"):
        exec_statement(session, cur, out, params)
    elif head == "DBCC":
        dbcc(session, cur, out)
    elif head == "CHECKPOINT":
        out.done(None)
    elif head == "WAITFOR":
        waitfor(cur, out)
    elif head == "RAISERROR":
        raiserror(cur, out)
    elif head == "PRINT":
        value = cur.literal()
        out.info(0, str(value), state=1)
    elif head == "DECLARE":
        raise not_supported("local variables (DECLARE)")
    else:
        raise syntax_error(stmt[0].text)


def use_database(session, name: str, out: Output) -> None:
    db = session.database(name, for_use=True)
    old = session.current_db
    session.alias(db)
    session.current_db = db.name
    out.envchange_database(db.name, old)
    out.info(5701, f"Changed database context to '{db.name}'.", state=2)


def transaction_statement(session, head: str, cur: Cursor, out: Output) -> None:
    if head == "BEGIN":
        cur.accept("DISTRIBUTED")
        cur.expect("TRAN", "TRANSACTION")
        begin_transaction(session, out)
        return
    if head == "SAVE":
        cur.expect("TRAN", "TRANSACTION")
        raise not_supported("SAVE TRANSACTION")
    cur.accept("TRAN", "TRANSACTION", "WORK")
    if head == "COMMIT":
        if session.trancount == 0:
            raise SqlError(
                3902,
                "The COMMIT TRANSACTION request has no corresponding BEGIN TRANSACTION.",
                16,
                1,
            )
        commit_transaction(session, out)
    else:
        if session.trancount == 0:
            raise SqlError(
                3903,
                "The ROLLBACK TRANSACTION request has no corresponding BEGIN TRANSACTION.",
                16,
                1,
            )
        rollback_transaction(session, out)


def begin_transaction(session, out: Output) -> None:
    session.trancount += 1
    if session.trancount == 1:
        session.tx_descriptor = session.new_descriptor()
        out.transaction(True, session.tx_descriptor)


def commit_transaction(session, out: Output) -> None:
    session.trancount -= 1
    if session.trancount == 0:
        try:
            session.commit_sqlite()
        finally:
            out.transaction(False, session.tx_descriptor)
            session.tx_descriptor = b"\x00" * 8


def set_option(session, cur: Cursor, out: Output) -> None:
    option = cur.next().up
    if option == "IDENTITY_INSERT":
        parts = cur.dotted()
        on = cur.accept("ON")
        if not on:
            cur.expect("OFF")
        db = session.database(parts[0] if len(parts) >= 3 else session.current_db)
        info = session.table_info(db, parts[-1])
        if info is None:
            raise SqlError(
                208, f"Invalid object name '{'.'.join(parts)}'.", 16, 1, batch_abort=True
            )
        if info.identity is None:
            raise SqlError(
                8106,
                f"Table '{'.'.join(parts)}' does not have the identity property. Cannot perform SET operation.",
                16,
                1,
            )
        key = (db.name.lower(), info.name.lower())
        if on and session.identity_insert not in (None, key):
            raise SqlError(
                8107,
                f"IDENTITY_INSERT is already ON for table '{session.identity_insert[0]}.dbo."
                f"{session.identity_insert[1]}'. Cannot perform SET operation for table '{info.name}'.",
                16,
                1,
            )
        session.identity_insert = (
            key if on else (None if session.identity_insert == key else session.identity_insert)
        )
        return
    if option == "LOCK_TIMEOUT":
        value = cur.literal()
        session.set_lock_timeout(int(value))
        return
    if option in ("NOCOUNT", "XACT_ABORT", "IMPLICIT_TRANSACTIONS"):
        on = cur.accept("ON")
        if not on:
            cur.expect("OFF")
        attr = {
            "NOCOUNT": "nocount",
            "XACT_ABORT": "xact_abort",
            "IMPLICIT_TRANSACTIONS": "implicit_transactions",
        }
        setattr(session, attr[option], on)
        return
    if option in SET_ACCEPTED or option.startswith("ANSI"):
        return
    raise syntax_error(option)


IF_BODY_STARTERS = {"COMMIT", "ROLLBACK", "BEGIN", "SELECT", "INSERT", "UPDATE", "DELETE", "DROP",
                    "CREATE", "EXEC", "EXECUTE", "SET", "ALTER", "PRINT", "USE", "BACKUP", "RESTORE",
                    "TRUNCATE"}  # fmt: skip


def if_statement(session, stmt: list[Tok], out: Output, params: Params | None) -> None:
    """IF <condition> <statement>: SQLite evaluates the (translated) condition."""
    from .statements import _is_select_without_from, bind_values
    from .translate import Translated, _rewrite

    depth, split = 0, None
    for i in range(2, len(stmt)):
        depth += stmt[i].kind == "lp"
        depth -= stmt[i].kind == "rp"
        if depth == 0 and stmt[i].up in IF_BODY_STARTERS:
            split = i
            break
    if split is None:
        raise syntax_error(stmt[-1].text)
    condition, body = stmt[1:split], stmt[split:]
    sql = (
        "SELECT CASE WHEN "
        + _rewrite(condition, session, Translated("select", ""))
        + " THEN 1 ELSE 0 END"
    )
    if not session.conn.execute(sql, bind_values(params)).fetchone()[0]:
        return
    head = body[0].up
    if head in ("SELECT", "INSERT", "UPDATE", "DELETE"):
        run_data(
            session, body, out, params, no_tables=head == "SELECT" and _is_select_without_from(body)
        )
    else:
        execute_other(session, body, out, params)


def dbcc(session, cur: Cursor, out: Output) -> None:
    """DBCC CHECKDB [(db)] [WITH NO_INFOMSGS, ...]: SQLite's integrity_check of the database file."""
    from .tsql import quote_ident

    if not cur.accept("CHECKDB"):
        raise not_supported(f"DBCC {cur.peek().text if cur.peek() else ''}")
    name = session.current_db
    if cur.peek() is not None and cur.peek().kind == "lp":
        args = cur.skip_parens()
        if args and args[0].kind in ("str", "word", "qid"):
            name = args[0].text
    options = {t.up for t in cur.toks[cur.pos :] if t.kind == "word"}
    db = session.database(name)
    problems = [
        r[0]
        for r in session.conn.execute(f"PRAGMA {quote_ident(session.alias(db))}.integrity_check")
    ]
    problems = [p for p in problems if p != "ok"]
    for problem in problems[:20]:
        out.error(SqlError(8939, f"Table error: database '{db.name}': {problem}", 16, 98))
    if "NO_INFOMSGS" not in options or problems:
        out.info(
            8989,
            f"CHECKDB found 0 allocation errors and {len(problems)} consistency errors in database '{db.name}'.",
        )
        out.info(
            2528,
            "DBCC execution completed. If DBCC printed error messages, contact your system administrator.",
        )
    out.done(None)


def waitfor(cur: Cursor, out: Output) -> None:
    cur.expect("DELAY")
    text = str(cur.literal())
    h, m, s = ([*text.split(":"), "0", "0"])[:3]
    deadline = time.monotonic() + int(h) * 3600 + int(m) * 60 + float(s)
    while time.monotonic() < deadline:
        if out.cancelled():
            return
        time.sleep(min(0.05, max(deadline - time.monotonic(), 0)))
    out.done(None)


def raiserror(cur: Cursor, out: Output) -> None:
    """RAISERROR ('text', severity, state) [WITH NOWAIT]: severity 0-10 is a message (50000),
    11-18 an error. NOWAIT sends what the batch has produced so far at once: SQL Server holds
    messages back until its buffer fills or the batch ends, so this is how a long batch shows
    progress (and how a client's timeout, which counts silence, sees it alive)."""
    cur.expect_kind("lp")
    text = str(cur.literal())
    cur.expect_kind("comma")
    severity = int(cur.literal())
    cur.expect_kind("comma")
    state = int(cur.literal())
    cur.expect_kind("rp")
    nowait = cur.accept("WITH")
    if nowait:
        cur.expect("NOWAIT")
    if severity > 10:
        raise SqlError(50000, text, severity=min(severity, 18), state=state)
    out.info(50000, text, state=state)
    out.done(None)
    if nowait:
        out.flush()


def exec_statement(session, cur: Cursor, out: Output, params: Params | None) -> None:
    name = cur.dotted()[-1].lower()
    if name.startswith("sp_datatype_info"):
        datatype_info([Tok("word", name), *cur.toks[cur.pos :]], out)
        return
    raise not_supported(f"EXEC {name}")


# sp_datatype_info_100 <type>, 3: what SQL Server answers for the types pyodbc asks about on
# connect (the first row's COLUMN_SIZE becomes pyodbc's maximum length / datetime precision).
_TYPES = {
    12: [("varchar", 8000)],
    -9: [("nvarchar", 4000), ("sysname", 128)],
    -3: [("varbinary", 8000)],
    93: [("datetime", 23), ("datetime2", 27), ("smalldatetime", 16)],
    -1: [("text", 2147483647), ("varchar(max)", 2147483647)],
    -10: [("ntext", 1073741823), ("nvarchar(max)", 1073741823)],
    4: [("int", 10)],
    -5: [("bigint", 19)],
}
_COLUMNS = [
    ("TYPE_NAME", SqlType("nvarchar", 128)),
    ("DATA_TYPE", SqlType("smallint")),
    ("PRECISION", SqlType("int")),
    ("LITERAL_PREFIX", SqlType("varchar", 32)),
    ("LITERAL_SUFFIX", SqlType("varchar", 32)),
    ("CREATE_PARAMS", SqlType("varchar", 32)),
    ("NULLABLE", SqlType("smallint")),
    ("CASE_SENSITIVE", SqlType("smallint")),
    ("SEARCHABLE", SqlType("smallint")),
    ("UNSIGNED_ATTRIBUTE", SqlType("smallint")),
    ("MONEY", SqlType("smallint")),
    ("AUTO_INCREMENT", SqlType("smallint")),
    ("LOCAL_TYPE_NAME", SqlType("nvarchar", 128)),
    ("MINIMUM_SCALE", SqlType("smallint")),
    ("MAXIMUM_SCALE", SqlType("smallint")),
    ("SQL_DATA_TYPE", SqlType("smallint")),
    ("SQL_DATETIME_SUB", SqlType("smallint")),
    ("NUM_PREC_RADIX", SqlType("int")),
    ("INTERVAL_PRECISION", SqlType("smallint")),
    ("USERTYPE", SqlType("smallint")),
]


def datatype_info(stmt: list[Tok], out: Output) -> None:
    nums = [t for t in stmt[1:] if t.kind == "num"]
    negative = any(t.kind == "op" and t.text == "-" for t in stmt[1:2])
    code = int(nums[0].text) * (-1 if negative else 1) if nums else 0
    rows = []
    for name, size in _TYPES.get(code, []):
        scale = {"datetime": 3, "datetime2": 7}.get(name)
        quoted = "'" if code in (12, -9, -1, -10) else None
        rows.append(
            (
                name,
                code,
                size,
                quoted,
                quoted,
                None,
                1,
                0,
                3,
                None,
                0,
                None,
                name,
                scale,
                scale,
                9 if code == 93 else code,
                3 if code == 93 else None,
                None,
                None,
                0,
            )
        )
    out.result(_COLUMNS, rows)
    out.done(None if not rows else len(rows), 0xC1)
