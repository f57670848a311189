"""CREATE/DROP TABLE, CREATE/DROP INDEX, ALTER TABLE ... ADD, TRUNCATE TABLE.

DDL runs in the session's write transaction like DML (SQLite DDL is transactional), and the
statements it ran are recorded for the transaction's log record (see dbfile)."""

from __future__ import annotations

from . import dbfile
from .ddl import (
    SCHEMA,
    ColumnDef,
    column_sql,
    create_index_statements,
    create_table_statements,
    parse_create_table,
)
from .errors import SqlError, not_supported
from .sqltypes import register_decltype
from .statements import Output, start_implicit_transaction
from .translate import Translated, _rewrite
from .tsql import Cursor, quote_ident, quote_str


def execute_table_ddl(session, head: str, cur: Cursor, out: Output) -> None:
    start_implicit_transaction(session, out, head)
    unique = False
    if head == "CREATE":
        unique = cur.accept("UNIQUE")
        cur.accept("CLUSTERED", "NONCLUSTERED")
    what = cur.next().up
    if head == "CREATE" and what == "TABLE":
        _run(session, out, *_create_table(session, cur))
    elif head == "CREATE" and what == "INDEX":
        _run(session, out, *_create_index(session, cur, unique))
    elif head == "DROP" and what == "TABLE":
        if_exists = cur.accept("IF") and (cur.expect("EXISTS") or True)
        targets = [cur.dotted()]
        while cur.accept_kind("comma"):
            targets.append(cur.dotted())
        for parts in targets:
            found = _drop_table(session, parts, if_exists)
            if found:
                _run(session, out, *found)
    elif head == "DROP" and what == "INDEX":
        _run(session, out, *_drop_index(session, cur))
    elif head == "ALTER" and what == "TABLE":
        _run(session, out, *_alter_table(session, cur))
    elif head == "TRUNCATE" and what == "TABLE":
        _run(session, out, *_truncate(session, cur))
    else:
        raise not_supported(f"{head} {what}")
    out.done(None)


def _run(session, out: Output, db, statements: list[str], decltypes: list[str] = ()) -> None:
    """Execute DDL statements in the session's write transaction (atomically)."""
    for decl in decltypes:
        register_decltype(decl)
    session.begin_write(db)
    alias = session.alias(db)
    autocommit = session.trancount == 0
    if not autocommit:
        session.conn.execute("SAVEPOINT ddl")
    try:
        for sql in statements:
            session.conn.execute(dbfile.bind_schema(sql, alias))
        session.ddl_ops.setdefault(db.name.lower(), []).extend(statements)
        if autocommit:
            session.commit_sqlite()
        else:
            session.conn.execute("RELEASE ddl")
    except BaseException:
        if autocommit:
            session.rollback_sqlite()
        else:
            session.conn.execute("ROLLBACK TO ddl")
            session.conn.execute("RELEASE ddl")
        raise


def _target(session, parts: list[str]):
    if len(parts) >= 3 and parts[-3]:
        db = session.database(parts[-3])
    else:
        db = session.database(session.current_db)
    if len(parts) >= 2 and parts[-2].lower() not in ("", "dbo"):
        raise not_supported(f"schema '{parts[-2]}' (only dbo)")
    return db


def _render_expr(session):
    def render(tokens):
        return _rewrite(tokens, session, Translated("select", ""))

    return render


def _create_table(session, cur: Cursor):
    table = parse_create_table(cur)
    db = _target(session, table.parts)
    if table.name.startswith("#"):
        raise not_supported("temporary tables")
    if session.table_info(db, table.name) is not None:
        raise SqlError(
            2714, f"There is already an object named '{table.name}' in the database.", 16, 6
        )
    session.begin_write(db)
    alias = session.alias(db)

    def lookup(name: str):
        info = session.table_info(db, name)
        if info is None:
            return None
        cols = {c[0].lower(): ColumnDef(c[0], c[1], c[2]) for c in info.columns}
        pk = session.conn.execute(
            f"SELECT +column_name FROM {quote_ident(alias)}.__standin_keys WHERE table_id = ? AND kind = 'PK' ORDER BY ordinal",
            (info.object_id,),
        ).fetchall()
        return info.object_id, cols, [r[0] for r in pk]

    now = dbfile.fmt_time(dbfile.utcnow())
    statements = create_table_statements(
        table,
        lambda: dbfile.alloc_object_id(session.conn, alias),
        lookup,
        _render_expr(session),
        now,
    )
    return db, statements, [c.sqltype.decltype() for c in table.columns]


def _drop_table(session, parts: list[str], if_exists: bool):
    db = _target(session, parts)
    info = session.table_info(db, parts[-1])
    if info is None:
        if if_exists:
            return None
        raise SqlError(
            3701,
            f"Cannot drop the table '{'.'.join(parts)}', because it does not exist or you do "
            "not have permission.",
            11,
            5,
        )
    a = quote_ident(info.alias)
    ref = session.conn.execute(
        f"SELECT 1 FROM {a}.__standin_keys WHERE kind = 'F' AND ref_table_id = ? AND table_id <> ? LIMIT 1",
        (info.object_id, info.object_id),
    ).fetchone()
    if ref:
        raise SqlError(
            3726,
            f"Could not drop object 'dbo.{info.name}' because it is referenced by a FOREIGN KEY "
            "constraint.",
            16,
            1,
        )
    oid = info.object_id
    p = f"{SCHEMA}__standin_"
    return db, [
        f"DROP TABLE {SCHEMA}{quote_ident(info.name)}",
        f"DELETE FROM {p}columns WHERE object_id = {oid}",
        f"DELETE FROM {p}keys WHERE table_id = {oid}",
        f"DELETE FROM {p}indexes WHERE object_id = {oid}",
        f"DELETE FROM {p}identity WHERE object_id = {oid}",
        f"DELETE FROM {p}objects WHERE object_id = {oid} OR parent_object_id = {oid}",
    ]


def _create_index(session, cur: Cursor, unique: bool):
    save = cur.pos
    cur.name()
    cur.expect("ON")
    parts = cur.dotted()
    cur.pos = save
    db = _target(session, parts)
    info = session.table_info(db, parts[-1])
    if info is None:
        raise SqlError(
            1088,
            f'Cannot find the object "{".".join(parts)}" because it does not exist or you '
            "do not have permissions.",
            16,
            12,
        )
    session.begin_write(db)
    cols = {c[0].lower(): ColumnDef(c[0], c[1], c[2]) for c in info.columns}
    a = quote_ident(info.alias)
    next_id = session.conn.execute(
        f"SELECT coalesce(max(+index_id), 1) + 1 FROM {a}.__standin_indexes WHERE object_id = ?",
        (info.object_id,),
    ).fetchone()[0]
    _, statements = create_index_statements(cur, unique, info.object_id, cols, next_id)
    return db, statements


def _drop_index(session, cur: Cursor):
    parts = cur.dotted()
    if cur.accept("ON"):
        table_parts, index = cur.dotted(), parts[-1]
    else:
        table_parts, index = parts[:-1], parts[-1]
    db = _target(session, table_parts)
    info = session.table_info(db, table_parts[-1])
    if info is None:
        raise SqlError(
            3701,
            f"Cannot drop the index '{'.'.join(parts)}', because it does not exist or you do "
            "not have permission.",
            11,
            7,
        )
    return db, [
        f"DROP INDEX {SCHEMA}{quote_ident(info.name + '__' + index)}",
        f"DELETE FROM {SCHEMA}__standin_indexes WHERE object_id = {info.object_id} AND name = {quote_str(index)}",
    ]


def _alter_table(session, cur: Cursor):
    parts = cur.dotted()
    db = _target(session, parts)
    info = session.table_info(db, parts[-1])
    if info is None:
        raise SqlError(
            4902,
            f'Cannot find the object "{".".join(parts)}" because it does not exist or you '
            "do not have permissions.",
            16,
            1,
        )
    if not cur.accept("ADD"):
        raise not_supported("ALTER TABLE other than ADD column")
    from .ddl import TableDef, _column

    holder = TableDef(parts, [], [])
    col = _column(cur, holder)
    if holder.constraints or col.identity:
        raise not_supported("ALTER TABLE ADD with constraints or IDENTITY")
    if not col.nullable and col.default is None:
        raise SqlError(
            4901,
            "ALTER TABLE only allows columns to be added that can contain nulls, or have a "
            "DEFAULT definition specified.",
            16,
            1,
        )
    if info.column(col.name) is not None:
        raise SqlError(
            2705,
            f"Column names in each table must be unique. Column name '{col.name}' in table "
            f"'{info.name}' is specified more than once.",
            16,
            4,
        )
    position = len(info.columns) + 1
    default = quote_str("(" + _render_expr(session)(col.default) + ")") if col.default else "NULL"
    return (
        db,
        [
            f"ALTER TABLE {SCHEMA}{quote_ident(info.name)} ADD COLUMN {column_sql(col, _render_expr(session))}",
            f"INSERT INTO {SCHEMA}__standin_columns VALUES ({info.object_id}, {position}, {quote_str(col.name)}, "
            f"{quote_str(col.sqltype.sql())}, {int(col.nullable)}, 0, NULL, NULL, {default})",
        ],
        [col.sqltype.decltype()],
    )


def _truncate(session, cur: Cursor):
    parts = cur.dotted()
    db = _target(session, parts)
    info = session.table_info(db, parts[-1])
    if info is None:
        raise SqlError(
            4701,
            f'Cannot find the object "{".".join(parts)}" because it does not exist or you '
            "do not have permissions.",
            16,
            1,
        )
    a = quote_ident(info.alias)
    if session.conn.execute(
        f"SELECT 1 FROM {a}.__standin_keys WHERE kind = 'F' AND ref_table_id = ?", (info.object_id,)
    ).fetchone():
        raise SqlError(
            4712,
            f"Cannot truncate table '{info.name}' because it is being referenced by a FOREIGN KEY "
            "constraint.",
            16,
            1,
        )
    # Row deletions and the identity reset are row changes (the capture triggers log them).
    session.begin_write(db)
    session.conn.execute(f"DELETE FROM {a}.{quote_ident(info.name)}")
    session.conn.execute(
        f"UPDATE {a}.__standin_identity SET current = NULL WHERE object_id = ?", (info.object_id,)
    )
    return db, []
