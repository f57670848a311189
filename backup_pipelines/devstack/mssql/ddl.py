"""CREATE TABLE / CREATE INDEX / ALTER TABLE ADD: T-SQL definitions to SQLite DDL plus the rows
of the stand-in's catalog tables (which sys.* and INFORMATION_SCHEMA are built from).

Every statement produced here names its schema as ``"__SCHEMA__".``; the session replaces it
with the database's ATTACH alias, log replay with nothing. The list is also what the
transaction log records for DDL, so a log restore re-runs exactly the same statements.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import SqlError, not_supported, syntax_error
from .sqltypes import CHAR_TYPES, NCHAR_TYPES, SqlType, parse_type
from .tsql import Cursor, Tok, quote_ident, quote_str, render

SCHEMA = '"__SCHEMA__".'
INTERNAL_PREFIX = "__standin_"


@dataclass
class ColumnDef:
    name: str
    sqltype: SqlType
    nullable: bool = True
    identity: tuple[int, int] | None = None
    default: list[Tok] | None = None


@dataclass
class ConstraintDef:
    kind: str  # PK, UQ, F, C
    name: str
    columns: list[str] = field(default_factory=list)
    ref_table: str = ""
    ref_columns: list[str] = field(default_factory=list)
    on_delete: str = "NO_ACTION"
    on_update: str = "NO_ACTION"
    check: list[Tok] = field(default_factory=list)


@dataclass
class TableDef:
    parts: list[str]
    columns: list[ColumnDef]
    constraints: list[ConstraintDef]

    @property
    def name(self) -> str:
        return self.parts[-1]


def parse_create_table(cur: Cursor) -> TableDef:
    """After CREATE TABLE: name ( column | constraint, ... ) [ON filegroup] [WITH (...)]."""
    parts = cur.dotted()
    body = cur.skip_parens()
    from .tsql import split_commas

    table = TableDef(parts, [], [])
    for item in split_commas(body):
        c = Cursor(item)
        if c.peek().is_kw("CONSTRAINT", "PRIMARY", "UNIQUE", "FOREIGN", "CHECK", "INDEX"):
            if c.peek().is_kw("INDEX"):
                continue  # inline index: the stand-in skips it (no effect on results)
            table.constraints.append(_constraint(c, table.name))
        else:
            table.columns.append(_column(c, table))
    if not table.columns:
        raise syntax_error(")")
    names = [col.name.lower() for col in table.columns]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise SqlError(
            2705,
            f"Column names in each table must be unique. Column name '{dup}' "
            f"in table '{table.name}' is specified more than once.",
            16,
            3,
        )
    return table


def _type_tokens(c: Cursor) -> str:
    """The type of a column definition as text, e.g. 'nvarchar(200)'."""
    name = c.name()
    if c.peek() is not None and c.peek().kind == "dot":
        c.next()
        name = c.name()
    if c.peek() is not None and c.peek().kind == "lp":
        args = c.skip_parens()
        name += "(" + ",".join(t.text for t in args if t.kind != "comma") + ")"
    elif name.lower() in ("double",) and c.accept("PRECISION"):
        name = "float"
    return name


def _column(c: Cursor, table: TableDef) -> ColumnDef:
    name = c.name()
    if c.peek() is not None and c.peek().is_kw("AS"):
        raise not_supported("computed columns")
    type_text = _type_tokens(c)
    try:
        col = ColumnDef(name, parse_type(type_text))
    except ValueError:
        raise SqlError(
            2715,
            f"Column, parameter, or variable #{len(table.columns) + 1}: "
            f"Cannot find data type {type_text.split('(')[0]}.",
            16,
            6,
        ) from None
    while not c.done:
        if c.accept("IDENTITY"):
            seed, incr = 1, 1
            if c.peek() is not None and c.peek().kind == "lp":
                args = [t for t in c.skip_parens() if t.kind == "num"]
                if len(args) == 2:
                    seed, incr = int(args[0].text), int(args[1].text)
            col.identity = (seed, incr)
            col.nullable = False
        elif c.accept("NOT"):
            c.expect("NULL")
            col.nullable = False
        elif c.accept("NULL"):
            col.nullable = True
        elif c.accept("DEFAULT"):
            col.default = _default_expr(c)
        elif c.accept("COLLATE"):
            c.name()
        elif c.accept("CONSTRAINT"):
            cname = c.name()
            if c.peek().is_kw("DEFAULT"):
                continue
            table.constraints.append(_inline_constraint(c, cname, name, table.name))
        elif c.peek().is_kw("PRIMARY", "UNIQUE", "REFERENCES", "FOREIGN", "CHECK"):
            table.constraints.append(_inline_constraint(c, "", name, table.name))
        elif c.accept("ROWGUIDCOL", "SPARSE", "FILESTREAM", "CLUSTERED", "NONCLUSTERED"):
            continue
        else:
            raise c.error()
    for con in table.constraints:
        if con.kind == "PK" and name in con.columns:
            col.nullable = False
    return col


def _default_expr(c: Cursor) -> list[Tok]:
    if c.peek().kind == "lp":
        return c.skip_parens()
    tok = c.next()
    if tok.kind == "op" and tok.text == "-":
        return [tok, c.next()]
    if tok.kind == "word" and c.peek() is not None and c.peek().kind == "lp":
        args = c.skip_parens()
        return [tok, Tok("lp", "("), *args, Tok("rp", ")")]
    return [tok]


def _inline_constraint(c: Cursor, cname: str, column: str, table: str) -> ConstraintDef:
    if c.accept("PRIMARY"):
        c.expect("KEY")
        c.accept("CLUSTERED", "NONCLUSTERED")
        return ConstraintDef("PK", cname or _auto_name("PK", table), [column])
    if c.accept("UNIQUE"):
        c.accept("CLUSTERED", "NONCLUSTERED")
        return ConstraintDef("UQ", cname or _auto_name("UQ", table), [column])
    if c.accept("CHECK"):
        return ConstraintDef("C", cname or _auto_name("CK", table), check=c.skip_parens())
    c.accept("FOREIGN") and c.expect("KEY")
    con = ConstraintDef("F", cname or _auto_name("FK", table), [column])
    _references(c, con)
    return con


def _constraint(c: Cursor, table: str) -> ConstraintDef:
    cname = c.name() if c.accept("CONSTRAINT") else ""
    if c.accept("PRIMARY"):
        c.expect("KEY")
        c.accept("CLUSTERED", "NONCLUSTERED")
        con = ConstraintDef("PK", cname or _auto_name("PK", table), _column_list(c))
    elif c.accept("UNIQUE"):
        c.accept("CLUSTERED", "NONCLUSTERED")
        con = ConstraintDef("UQ", cname or _auto_name("UQ", table), _column_list(c))
    elif c.accept("CHECK"):
        return ConstraintDef("C", cname or _auto_name("CK", table), check=c.skip_parens())
    else:
        c.expect("FOREIGN")
        c.expect("KEY")
        con = ConstraintDef("F", cname or _auto_name("FK", table), _column_list(c))
        _references(c, con)
    if c.accept("WITH"):
        c.skip_parens()
    if c.accept("ON"):
        c.name()
    return con


def _column_list(c: Cursor) -> list[str]:
    from .tsql import split_commas

    return [part[0].text for part in split_commas(c.skip_parens())]


def _references(c: Cursor, con: ConstraintDef) -> None:
    c.expect("REFERENCES")
    con.ref_table = c.dotted()[-1]
    if c.peek() is not None and c.peek().kind == "lp":
        con.ref_columns = _column_list(c)
    while c.accept("ON"):
        which = "on_delete" if c.accept("DELETE") else ("on_update" if c.accept("UPDATE") else "")
        if not which:
            raise c.error()
        if c.accept("CASCADE"):
            action = "CASCADE"
        elif c.accept("NO"):
            c.expect("ACTION")
            action = "NO_ACTION"
        elif c.accept("SET"):
            action = (
                "SET_NULL" if c.accept("NULL") else ("SET_DEFAULT" if c.accept("DEFAULT") else "")
            )
        else:
            raise c.error()
        setattr(con, which, action)
    c.accept("NOT") and c.accept("FOR") and c.accept("REPLICATION")


def _auto_name(prefix: str, table: str) -> str:
    return f"{prefix}__{table[:8]}__{secrets.token_hex(8).upper()}"


# ---- SQLite statements ----------------------------------------------------------------------
def column_sql(col: ColumnDef, render_expr: Callable[[list[Tok]], str]) -> str:
    sql = f"{quote_ident(col.name)} {col.sqltype.decltype()}"
    if not col.nullable and col.identity is None:
        sql += " NOT NULL"
    if col.default is not None:
        sql += f" DEFAULT ({render_expr(col.default)})"
    if col.sqltype.name in CHAR_TYPES | NCHAR_TYPES | {"uniqueidentifier"}:
        sql += " COLLATE NOCASE"
    return sql


def capture_triggers(table: str) -> list[str]:
    """Triggers that record each changed rowid; the commit turns them into a log record."""
    q, lit = quote_ident(table), quote_str(table)
    dirty = f"INSERT INTO {INTERNAL_PREFIX}dirty (tbl, rid) VALUES"
    return [
        f'CREATE TRIGGER {SCHEMA}"__cap_i_{table}" AFTER INSERT ON {q} BEGIN {dirty} ({lit}, NEW.rowid); END',
        f'CREATE TRIGGER {SCHEMA}"__cap_u_{table}" AFTER UPDATE ON {q} BEGIN {dirty} ({lit}, OLD.rowid), ({lit}, NEW.rowid); END',
        f'CREATE TRIGGER {SCHEMA}"__cap_d_{table}" AFTER DELETE ON {q} BEGIN {dirty} ({lit}, OLD.rowid); END',
    ]


def create_table_statements(
    table: TableDef,
    alloc_id: Callable[[], int],
    lookup_table: Callable[[str], tuple[int, dict[str, ColumnDef], list[str]] | None],
    render_expr: Callable[[list[Tok]], str],
    now: str,
) -> list[str]:
    """SQLite DDL and catalog inserts for CREATE TABLE (raises 1767/1769/1776 like SQL Server)."""
    table_id = alloc_id()
    cols = {c.name.lower(): c for c in table.columns}
    defs = [column_sql(c, render_expr) for c in table.columns]
    meta = [_obj(table_id, table.name, "U", 0, now)]
    for i, col in enumerate(table.columns, 1):
        meta.append(
            f"INSERT INTO {SCHEMA}{INTERNAL_PREFIX}columns VALUES ({table_id}, {i}, "
            f"{quote_str(col.name)}, {quote_str(col.sqltype.sql())}, {int(col.nullable)}, "
            f"{int(col.identity is not None)}, {col.identity[0] if col.identity else 'NULL'}, "
            f"{col.identity[1] if col.identity else 'NULL'}, "
            f"{quote_str('(' + render(col.default) + ')') if col.default else 'NULL'})"
        )
        if col.identity:
            meta.append(f"INSERT INTO {SCHEMA}{INTERNAL_PREFIX}identity VALUES ({table_id}, NULL)")
    index_id = 1
    for con in table.constraints:
        con_id = alloc_id()
        meta.append(
            _obj(
                con_id,
                con.name,
                {"PK": "PK", "UQ": "UQ", "F": "F", "C": "C"}[con.kind],
                table_id,
                now,
            )
        )
        for name in con.columns:
            if name.lower() not in cols:
                raise SqlError(
                    1911 if con.kind != "F" else 1769,
                    f"Column name '{name}' does not exist in the target table or view.",
                    16,
                    1,
                )
        qcols = ", ".join(quote_ident(cols[n.lower()].name) for n in con.columns)
        if con.kind in ("PK", "UQ"):
            word = "PRIMARY KEY" if con.kind == "PK" else "UNIQUE"
            defs.append(f"CONSTRAINT {quote_ident(con.name)} {word} ({qcols})")
            meta.append(
                _index_row(table_id, index_id, con.name, True, con.kind == "PK", con.columns)
            )
            index_id += 1
        elif con.kind == "C":
            defs.append(f"CONSTRAINT {quote_ident(con.name)} CHECK ({render_expr(con.check)})")
            continue
        else:
            ref = _resolve_reference(con, table, lookup_table)
            _ref_id, ref_cols = ref
            refs = ", ".join(quote_ident(n) for n in ref_cols)
            sql = f"CONSTRAINT {quote_ident(con.name)} FOREIGN KEY ({qcols}) REFERENCES {quote_ident(con.ref_table)} ({refs})"
            for word, action in (("DELETE", con.on_delete), ("UPDATE", con.on_update)):
                if action != "NO_ACTION":
                    sql += f" ON {word} {action.replace('_', ' ')}"
            defs.append(sql)
            con.ref_columns = ref_cols
        for ordinal, name in enumerate(con.columns, 1):
            ref_col = quote_str(con.ref_columns[ordinal - 1]) if con.kind == "F" else "NULL"
            ref_tid = ref[0] if con.kind == "F" else "NULL"
            meta.append(
                f"INSERT INTO {SCHEMA}{INTERNAL_PREFIX}keys VALUES ({con_id}, {table_id}, "
                f"{quote_str(con.kind)}, {ordinal}, {quote_str(cols[name.lower()].name)}, "
                f"{ref_tid}, {ref_col}, {quote_str(con.on_delete)}, {quote_str(con.on_update)})"
            )
    create = f"CREATE TABLE {SCHEMA}{quote_ident(table.name)} ({', '.join(defs)})"
    return [create, *capture_triggers(table.name), *meta]


def _resolve_reference(con, table, lookup_table) -> tuple[int, list[str]]:
    if con.ref_table.lower() == table.name.lower():
        raise not_supported("self-referencing foreign keys")
    found = lookup_table(con.ref_table)
    if found is None:
        raise SqlError(
            1767, f"Foreign key '{con.name}' references invalid table '{con.ref_table}'.", 16, 0
        )
    ref_id, ref_cols, pk_cols = found
    wanted = con.ref_columns or pk_cols
    if not wanted or any(c.lower() not in ref_cols for c in wanted):
        raise SqlError(
            1776,
            f"There are no primary or candidate keys in the referenced table "
            f"'dbo.{con.ref_table}' that match the referencing column list in the "
            f"foreign key '{con.name}'.",
            16,
            0,
        )
    return ref_id, [ref_cols[c.lower()].name for c in wanted]


def _obj(object_id: int, name: str, kind: str, parent: int, now: str) -> str:
    return (
        f"INSERT INTO {SCHEMA}{INTERNAL_PREFIX}objects VALUES ({object_id}, {quote_str(name)}, "
        f"{quote_str(kind)}, {parent}, {quote_str(now)})"
    )


def _index_row(
    table_id: int,
    index_id: int,
    name: str,
    unique: bool,
    pk: bool,
    columns: list[str],
    constraint: bool = True,
) -> str:
    return (
        f"INSERT INTO {SCHEMA}{INTERNAL_PREFIX}indexes VALUES ({table_id}, {index_id}, "
        f"{quote_str(name)}, {int(unique)}, {int(pk)}, {int(constraint and unique and not pk)}, "
        f"{quote_str(json.dumps(columns))})"
    )


def create_index_statements(
    cur: Cursor, unique: bool, table_id: int, table_cols: dict[str, ColumnDef], next_index_id: int
) -> tuple[str, list[str]]:
    """After CREATE [UNIQUE] [NON]CLUSTERED INDEX: name ON table (cols) [INCLUDE (...)] [WITH (...)].

    Returns the table name and the statements."""
    name = cur.name()
    cur.expect("ON")
    table = cur.dotted()[-1]
    columns = []
    from .tsql import split_commas

    for part in split_commas(cur.skip_parens()):
        if part[0].text.lower() not in table_cols:
            raise SqlError(
                1911,
                f"Column name '{part[0].text}' does not exist in the target table or view.",
                16,
                1,
            )
        columns.append(table_cols[part[0].text.lower()].name)
    while not cur.done:
        if cur.accept("INCLUDE", "WITH"):
            cur.skip_parens()
        elif cur.accept("WHERE"):
            raise not_supported("filtered indexes")
        elif cur.accept("ON"):
            cur.name()
        else:
            raise cur.error()
    qcols = ", ".join(quote_ident(c) for c in columns)
    sql = f"CREATE {'UNIQUE ' if unique else ''}INDEX {SCHEMA}{quote_ident(table + '__' + name)} ON {quote_ident(table)} ({qcols})"
    return table, [
        sql,
        _index_row(table_id, next_index_id, name, unique, False, columns, constraint=False),
    ]
