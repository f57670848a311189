"""sys.* and INFORMATION_SCHEMA.* views, materialized per statement into temp tables.

Database-level views (sys.tables, sys.columns, sys.foreign_keys, INFORMATION_SCHEMA.COLUMNS, ...)
are built from the database's catalog tables (``__standin_objects/columns/keys/indexes``);
server-level views (sys.databases, sys.master_files, sys.dm_exec_sessions) from the server's
registry. Column names and types follow SQL Server's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from .catalog_views import SERVER_LEVEL, VIEWS  # noqa: F401  (re-exported)
from .dbfile import P, schema_prefix
from .functions import TYPE_NAMES
from .sqltypes import SqlType, parse_type
from .tsql import quote_ident

ACTIONS = {"NO_ACTION": 0, "CASCADE": 1, "SET_NULL": 2, "SET_DEFAULT": 3}


@dataclass
class Meta:
    """The catalog tables of one database, read once per statement."""

    db: str
    objects: dict[int, tuple]  # id -> (name, type, parent, create_date)
    columns: list[
        tuple
    ]  # (object_id, column_id, name, SqlType, nullable, identity, seed, incr, default)
    keys: list[
        tuple
    ]  # (constraint_id, table_id, kind, ordinal, column, ref_table_id, ref_column, del, upd)
    indexes: list[tuple]  # (object_id, index_id, name, unique, pk, uq, columns)
    identity: dict[int, int | None]

    @classmethod
    def load(cls, conn, alias: str | None, db: str) -> Meta:
        s = schema_prefix(alias)
        q = lambda sql: conn.execute(sql).fetchall()  # noqa: E731
        objects = {
            r[0]: r[1:]
            for r in q(
                f"SELECT +object_id, +name, +type, +parent_object_id, +create_date FROM {s}{P}objects"
            )
        }
        columns = [
            (*r[:3], parse_type(r[3]), *r[4:])
            for r in q(
                f"SELECT +object_id, +column_id, +name, +type_sql, +is_nullable, +is_identity, +seed, +increment, +default_sql "
                f"FROM {s}{P}columns ORDER BY 1, 2"
            )
        ]
        keys = q(
            f"SELECT +constraint_id, +table_id, +kind, +ordinal, +column_name, +ref_table_id, +ref_column, "
            f"+on_delete, +on_update FROM {s}{P}keys ORDER BY 1, 4"
        )
        indexes = [
            (*r[:6], json.loads(r[6]))
            for r in q(
                f"SELECT +object_id, +index_id, +name, +is_unique, +is_primary_key, +is_unique_constraint, +columns "
                f"FROM {s}{P}indexes ORDER BY 1, 2"
            )
        ]
        identity = dict(q(f"SELECT +object_id, +current FROM {s}{P}identity"))
        return cls(db, objects, columns, keys, indexes, identity)

    def tables(self) -> list[tuple[int, tuple]]:
        return sorted(
            ((i, o) for i, o in self.objects.items() if o[1] == "U"), key=lambda x: x[1][0].lower()
        )

    def table_columns(self, table_id: int) -> list[tuple]:
        return [c for c in self.columns if c[0] == table_id]

    def column_id(self, table_id: int, name: str) -> int | None:
        for c in self.columns:
            if c[0] == table_id and c[2].lower() == name.lower():
                return c[1]
        return None

    def constraints(self) -> list[tuple[int, tuple]]:
        return sorted(
            ((i, o) for i, o in self.objects.items() if o[1] in ("PK", "UQ", "F")),
            key=lambda x: x[0],
        )


def _type_desc(kind: str) -> str:
    return {
        "U": "USER_TABLE",
        "PK": "PRIMARY_KEY_CONSTRAINT",
        "UQ": "UNIQUE_CONSTRAINT",
        "F": "FOREIGN_KEY_CONSTRAINT",
        "C": "CHECK_CONSTRAINT",
        "D": "DEFAULT_CONSTRAINT",
    }.get(kind, kind)


def _info_type(t: SqlType):
    """CHARACTER_MAXIMUM_LENGTH, OCTET_LENGTH, NUMERIC_PRECISION, RADIX, SCALE, DATETIME_PRECISION."""
    n = t.name
    if n in (
        "nvarchar",
        "nchar",
        "varchar",
        "char",
        "varbinary",
        "binary",
        "text",
        "ntext",
        "image",
    ):
        chars = -1 if t.length == -1 else t.length
        octets = -1 if t.length == -1 else t.length * (2 if n.startswith("n") else 1)
        return chars, octets, None, None, None, None
    if n in ("int", "bigint", "smallint", "tinyint"):
        return None, None, {"int": 10, "bigint": 19, "smallint": 5, "tinyint": 3}[n], 10, 0, None
    if n in ("decimal", "numeric"):
        return None, None, t.precision, 10, t.scale, None
    if n in ("float", "real"):
        return None, None, 53 if n == "float" else 24, 2, None, None
    if n in ("datetime2", "datetimeoffset", "time"):
        return None, None, None, None, None, t.scale
    if n in ("datetime", "date"):
        return None, None, None, None, None, 3 if n == "datetime" else 0
    return None, None, None, None, None, None


def db_rows(view: str, m: Meta) -> list[tuple]:
    """Rows of a database-level view."""
    d = m.db
    if view == "sys.schemas":
        return [("dbo", 1, 1), ("guest", 2, 2), ("INFORMATION_SCHEMA", 3, 4), ("sys", 4, 4)]
    if view in ("sys.objects", "sys.tables"):
        rows = []
        for oid, (name, kind, parent, created) in sorted(m.objects.items()):
            if view == "sys.tables" and kind != "U":
                continue
            row = (name, oid, None, 1, parent, kind, _type_desc(kind), created, created, 0)
            rows.append(row + ((0,) if view == "sys.tables" else ()))
        return rows
    if view == "sys.columns":
        return [
            (
                c[0],
                c[2],
                c[1],
                c[3].system_type_id,
                c[3].system_type_id,
                c[3].max_length,
                c[3].precision,
                c[3].scale,
                "SQL_Latin1_General_CP1_CI_AS"
                if c[3].name in ("nvarchar", "varchar", "nchar", "char")
                else None,
                c[4],
                c[5],
                0,
                0,
            )
            for c in m.columns
        ]
    if view == "sys.types":
        seen = {}
        for type_id, name in TYPE_NAMES.items():
            t = parse_type(name) if name != "sysname" else SqlType("nvarchar", 128)
            seen[name] = (
                name,
                t.system_type_id if name != "sysname" else 231,
                type_id,
                4,
                t.max_length,
                t.precision,
                t.scale,
                1,
                0,
            )
        return list(seen.values())
    if view == "sys.identity_columns":
        return [(c[0], c[2], c[1], c[6], c[7], m.identity.get(c[0])) for c in m.columns if c[5]]
    if view == "sys.foreign_keys":
        rows = []
        for cid, (name, kind, parent, created) in m.constraints():
            if kind != "F":
                continue
            key = next(k for k in m.keys if k[0] == cid)
            rows.append(
                (
                    name,
                    cid,
                    1,
                    parent,
                    "F",
                    _type_desc("F"),
                    created,
                    key[5],
                    0,
                    ACTIONS[key[7]],
                    key[7],
                    ACTIONS[key[8]],
                    key[8],
                )
            )
        return rows
    if view == "sys.foreign_key_columns":
        return [
            (k[0], k[3], k[1], m.column_id(k[1], k[4]), k[5], m.column_id(k[5], k[6]))
            for k in m.keys
            if k[2] == "F"
        ]
    if view == "sys.key_constraints":
        rows = []
        for cid, (name, kind, parent, created) in m.constraints():
            if kind in ("PK", "UQ"):
                index_id = next((i[1] for i in m.indexes if i[0] == parent and i[2] == name), 1)
                rows.append((name, cid, 1, parent, kind, _type_desc(kind), created, index_id, 0))
        return rows
    if view == "sys.indexes":
        rows = []
        for oid, _ in m.tables():
            own = [i for i in m.indexes if i[0] == oid]
            if not any(i[4] for i in own):
                rows.append((oid, None, 0, 0, "HEAP", 0, 0, 0))
            for i in own:
                kind = 1 if i[4] else 2
                rows.append(
                    (
                        oid,
                        i[2],
                        i[1],
                        kind,
                        "CLUSTERED" if kind == 1 else "NONCLUSTERED",
                        i[3],
                        i[4],
                        i[5],
                    )
                )
        return rows
    if view == "sys.index_columns":
        return [
            (i[0], i[1], n, m.column_id(i[0], col), n, 0, 0)
            for i in m.indexes
            for n, col in enumerate(i[6], 1)
        ]
    if view == "information_schema.tables":
        return [(d, "dbo", o[0], "BASE TABLE") for _, o in m.tables()]
    if view == "information_schema.columns":
        rows = []
        for c in m.columns:
            table = m.objects[c[0]][0]
            coll = (
                "SQL_Latin1_General_CP1_CI_AS"
                if c[3].name in ("nvarchar", "varchar", "nchar", "char")
                else None
            )
            charset = ("UNICODE" if c[3].name.startswith("n") else "iso_1") if coll else None
            rows.append(
                (
                    d,
                    "dbo",
                    table,
                    c[2],
                    c[1],
                    c[8],
                    "YES" if c[4] else "NO",
                    c[3].name,
                    *_info_type(c[3]),
                    charset,
                    coll,
                )
            )
        return rows
    if view == "information_schema.table_constraints":
        kinds = {"PK": "PRIMARY KEY", "UQ": "UNIQUE", "F": "FOREIGN KEY"}
        return [
            (d, "dbo", o[0], d, "dbo", m.objects[o[2]][0], kinds[o[1]], "NO", "NO")
            for _, o in m.constraints()
        ]
    if view in (
        "information_schema.key_column_usage",
        "information_schema.constraint_column_usage",
    ):
        rows = []
        for k in m.keys:
            cname, table = m.objects[k[0]][0], m.objects[k[1]][0]
            if view.endswith("key_column_usage"):
                rows.append((d, "dbo", cname, d, "dbo", table, k[4], k[3]))
            elif k[2] != "F":
                rows.append((d, "dbo", table, k[4], d, "dbo", cname))
        return rows
    if view == "information_schema.referential_constraints":
        rows = []
        for cid, (name, kind, _, _) in m.constraints():
            if kind != "F":
                continue
            key = next(k for k in m.keys if k[0] == cid)
            unique = next(
                (o[0] for i, o in m.objects.items() if o[1] == "PK" and o[2] == key[5]), None
            )
            rule = lambda a: a.replace("_", " ")  # noqa: E731
            rows.append((d, "dbo", name, d, "dbo", unique, "SIMPLE", rule(key[8]), rule(key[7])))
        return rows
    if view == "information_schema.schemata":
        return [(d, s, "dbo") for s in ("dbo", "guest", "INFORMATION_SCHEMA", "sys")]
    raise KeyError(view)


def materialize(conn, view: str, rows: list[tuple], table: str) -> None:
    """(Re)fill temp.<table> with the view's columns (declared with the stand-in's types)."""
    from .sqltypes import register_decltype

    columns = VIEWS[view]
    decls = []
    for name, type_text in columns:
        decl = parse_type(type_text).decltype()
        register_decltype(decl)
        decls.append(f"{quote_ident(name)} {decl} COLLATE NOCASE")
    conn.execute(f"DROP TABLE IF EXISTS temp.{quote_ident(table)}")
    conn.execute(f"CREATE TEMP TABLE {quote_ident(table)} ({', '.join(decls)})")
    if rows:
        marks = ", ".join("?" * len(columns))
        conn.executemany(f"INSERT INTO temp.{quote_ident(table)} VALUES ({marks})", rows)


ServerRows = Callable[[str], list[tuple]]
