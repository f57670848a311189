"""Static typing and naming of a SELECT's top-level items.

SQLite gives column values their declared type only for plain column references; expressions
(SYSUTCDATETIME(), CAST(..), MAX(col), @P1, COUNT(*)) come back untyped, and SQLite names an
unnamed expression after its text where SQL Server leaves it nameless. This module works both
out from the T-SQL tokens: a type per item (or None: type it from the values) and a name per
item (None when the query has a `*`, so SQLite's names are kept).
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from .functions import STATIC_TYPES
from .sqltypes import SqlType, parse_datetime, parse_type, typed
from .tsql import Tok, split_commas

AGGREGATES_KEEPING_TYPE = {"MAX", "MIN", "SUM", "ISNULL", "COALESCE", "ABS", "ROUND", "AVG"}
END_OF_LIST = {
    "FROM",
    "WHERE",
    "GROUP",
    "ORDER",
    "HAVING",
    "UNION",
    "EXCEPT",
    "INTERSECT",
    "INTO",
    "OPTION",
    "FOR",
    "OFFSET",
}


def select_items(tokens: list[Tok], tables, param_types: dict[str, SqlType]):
    items = _items(tokens)
    if items is None:
        return [], None
    types, names = [], []
    for item in items:
        expr, alias = _split_alias(item)
        types.append(_type_of(expr, tables, param_types))
        names.append(alias if alias is not None else _natural_name(expr))
    return types, names


def _items(tokens: list[Tok]) -> list[list[Tok]] | None:
    i = 1
    while i < len(tokens) and tokens[i].is_kw("DISTINCT", "ALL"):
        i += 1
    if i < len(tokens) and tokens[i].is_kw("TOP"):
        i += 1
        if i < len(tokens) and tokens[i].kind == "lp":
            depth = 0
            while i < len(tokens):
                depth += tokens[i].kind == "lp"
                depth -= tokens[i].kind == "rp"
                i += 1
                if depth == 0:
                    break
        else:
            i += 1
    depth, end = 0, len(tokens)
    for j in range(i, len(tokens)):
        depth += tokens[j].kind == "lp"
        depth -= tokens[j].kind == "rp"
        if depth == 0 and tokens[j].up in END_OF_LIST:
            end = j
            break
    items = split_commas(tokens[i:end])
    for item in items:
        if item[-1].kind == "op" and item[-1].text == "*":
            return None
    return items


def _split_alias(item: list[Tok]) -> tuple[list[Tok], str | None]:
    if len(item) >= 3 and item[-2].is_kw("AS") and item[-1].kind in ("word", "qid", "str"):
        return item[:-2], item[-1].text
    if len(item) >= 3 and item[0].is_name and item[1].kind == "op" and item[1].text == "=":
        return item[2:], item[0].text
    if len(item) >= 2 and item[-1].kind in ("word", "qid") and not item[-1].is_kw("END"):
        prev = item[-2]
        if (
            prev.kind in ("rp", "num", "str", "qid", "gvar", "var")
            or prev.is_kw("END")
            or (
                prev.kind == "word"
                and prev.up not in ("AS", "CASE", "ELSE", "THEN", "WHEN", "AND", "OR", "NOT")
            )
        ) and not (len(item) >= 2 and item[-2].kind == "dot"):
            return item[:-1], item[-1].text
    return item, None


def _natural_name(expr: list[Tok]) -> str:
    if all(t.is_name or t.kind == "dot" for t in expr) and expr[-1].is_name:
        return expr[-1].text
    return ""


def _type_of(expr: list[Tok], tables, param_types: dict[str, SqlType]) -> SqlType | None:
    if not expr:
        return None
    if len(expr) == 1:
        tok = expr[0]
        if tok.kind == "gvar":
            return STATIC_TYPES.get(tok.text.upper())
        if tok.kind == "var":
            return param_types.get(tok.text[1:])
        if tok.kind == "str":
            length = max(len(tok.text), 1)
            return SqlType("nvarchar" if tok.nstr else "varchar", length)
        if tok.kind == "num":
            if any(c in tok.text for c in ".eE"):
                return None
            return (
                SqlType("int")
                if abs(int(tok.text)) < 2**31
                else SqlType("numeric", 0, len(tok.text), 0)
            )
        if tok.is_name:
            return _column_type(tok.text, tables)
    if all(t.is_name or t.kind == "dot" for t in expr):
        return _column_type(expr[-1].text, tables)
    if len(expr) >= 3 and expr[0].kind == "word" and expr[1].kind == "lp" and expr[-1].kind == "rp":
        if _matching(expr, 1) != len(expr) - 1:
            return None
        fn = expr[0].up
        inner = expr[2:-1]
        if fn in ("CAST", "TRY_CAST"):
            for i in range(len(inner) - 1, -1, -1):
                if inner[i].is_kw("AS"):
                    return _parse(inner[i + 1 :])
            return None
        if fn in ("CONVERT", "TRY_CONVERT"):
            args = split_commas(inner)
            return _parse(args[0]) if args else None
        if fn in AGGREGATES_KEEPING_TYPE:
            args = split_commas(inner)
            return _type_of(args[0], tables, param_types) if args else None
        return STATIC_TYPES.get(fn)
    return None


def _matching(expr: list[Tok], start: int) -> int:
    depth = 0
    for i in range(start, len(expr)):
        depth += expr[i].kind == "lp"
        depth -= expr[i].kind == "rp"
        if depth == 0:
            return i
    return -1


def _parse(tokens: list[Tok]) -> SqlType | None:
    try:
        return parse_type("".join(t.text if t.kind != "comma" else "," for t in tokens))
    except ValueError:
        return None


def _column_type(name: str, tables) -> SqlType | None:
    for table in tables:
        col = table.column(name)
        if col is not None:
            return col[1]
    return None


def coerce(value, sqltype: SqlType | None):
    """A plain value of a statically typed item as that type (typed values pass through)."""
    if value is None or sqltype is None or hasattr(value, "sqltype"):
        return value
    n = sqltype.name
    try:
        if n in ("datetime2", "datetime", "smalldatetime", "datetimeoffset", "date") and isinstance(
            value, str
        ):
            parsed = parse_datetime(value)
            value = parsed.date() if n == "date" else parsed
            if n != "datetimeoffset" and isinstance(value, datetime):
                value = value.replace(tzinfo=None)
        elif n in ("decimal", "numeric", "money") and isinstance(value, (int, float, str)):
            value = Decimal(str(value)).quantize(Decimal(1).scaleb(-sqltype.scale))
        elif n in ("int", "bigint", "smallint", "tinyint", "bit") and isinstance(
            value, (float, str)
        ):
            value = int(float(value))
        elif n in ("float", "real") and isinstance(value, (int, str)):
            value = float(value)
        elif n in ("nvarchar", "varchar", "nchar", "char") and not isinstance(value, str):
            value = str(value)
        elif n == "uniqueidentifier":
            value = str(value).upper()
        elif isinstance(value, date) and not isinstance(value, datetime) and n == "date":
            pass
    except (ValueError, ArithmeticError):
        return value
    return typed(value, sqltype)
