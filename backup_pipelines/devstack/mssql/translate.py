"""SELECT / INSERT / UPDATE / DELETE: T-SQL tokens to SQLite SQL.

What is rewritten: [brackets] and N'..' (by the lexer), table references (one-, two- and
three-part names become ``"<attach alias>"."<table>"``; sys.* and INFORMATION_SCHEMA.* become
per-statement temp tables), TOP n and OFFSET .. FETCH (LIMIT/OFFSET), CAST/CONVERT (a typed
``__CAST``), @@globals, table hints (dropped), '+' next to a string literal ('||'), OUTPUT
INSERTED.x (RETURNING), and the IDENTITY column of INSERT targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from .errors import SqlError, not_supported, syntax_error
from .sqltypes import SqlType, parse_type
from .tsql import Cursor, Tok, quote_ident, render, split_commas

HINTS = {
    "NOLOCK",
    "READUNCOMMITTED",
    "UPDLOCK",
    "HOLDLOCK",
    "ROWLOCK",
    "PAGLOCK",
    "TABLOCK",
    "TABLOCKX",
    "READPAST",
    "XLOCK",
    "SERIALIZABLE",
    "REPEATABLEREAD",
    "READCOMMITTED",
    "NOWAIT",
    "INDEX",
    "FORCESEEK",
    "FORCESCAN",
    "SNAPSHOT",
    "READCOMMITTEDLOCK",
}
CLAUSE_END = {
    "WHERE",
    "GROUP",
    "ORDER",
    "HAVING",
    "UNION",
    "EXCEPT",
    "INTERSECT",
    "ON",
    "SET",
    "VALUES",
    "SELECT",
    "OUTPUT",
    "OPTION",
    "FOR",
    "LIMIT",
    "USING",
}
NOT_ALIAS = CLAUSE_END | {
    "JOIN",
    "INNER",
    "LEFT",
    "RIGHT",
    "FULL",
    "CROSS",
    "OUTER",
    "WITH",
    "DEFAULT",
    "FROM",
    "AS",
    "APPLY",
    "OFFSET",
    "FETCH",
    "WHEN",
    "THEN",
}


@dataclass
class TableInfo:
    """What the translator needs to know about a user table."""

    db: str
    alias: str
    name: str
    object_id: int
    columns: list[tuple[str, SqlType, bool, bool]]  # name, type, nullable, identity
    identity: tuple[str, int, int] | None = None  # column, seed, increment
    catalog: bool = False  # a sys.* / INFORMATION_SCHEMA view (read only)

    def column(self, name: str):
        for col in self.columns:
            if col[0].lower() == name.lower():
                return col
        return None


class Context(Protocol):
    def resolve_table(self, parts: list[str]) -> tuple[str, TableInfo | None, str]:
        """(SQL for the reference, table info or None for catalog views, default alias)."""

    def global_var(self, name: str) -> list[Tok]: ...

    def identity_insert_on(self, table: TableInfo) -> bool: ...


@dataclass
class Translated:
    kind: str
    sql: str
    target: TableInfo | None = None
    identity: str | None = None  # "values", "select", "default" (generated) or "explicit"
    returning: list[str] | None = None
    item_types: list[SqlType | None] = field(default_factory=list)
    item_names: list[str | None] | None = None
    tables: list[TableInfo] = field(default_factory=list)


class _Frame:
    def __init__(self) -> None:
        self.limit: list[Tok] | None = None
        self.offset: list[Tok] | None = None
        self.clause = ""


def translate(
    tokens: list[Tok], ctx: Context, param_types: dict[str, SqlType] | None = None
) -> Translated:
    kind = tokens[0].up
    if kind == "WITH":
        raise not_supported("common table expressions")
    if kind == "INSERT":
        from .translate_insert import translate_insert

        return translate_insert(tokens, ctx, param_types or {})
    out = Translated(kind.lower(), "")
    if kind == "SELECT":
        _check_select_into(tokens)
        tokens = _expand_checksum_star(tokens, ctx)
    body = _rewrite(tokens, ctx, out, returning_ok=kind in ("UPDATE", "DELETE"))
    out.sql = body
    if kind == "SELECT":
        out.item_types, out.item_names = select_items(tokens, out.tables, param_types or {})
    if kind == "UPDATE" and out.tables:
        _check_identity_update(tokens, out.tables[0])
    if kind in ("UPDATE", "DELETE") and out.tables:
        out.target = out.tables[0]
        if out.target.catalog:
            raise SqlError(259, "Ad hoc updates to system catalogs are not allowed.", 16, 1)
    return out


def _expand_checksum_star(tokens: list[Tok], ctx: Context) -> list[Tok]:
    """CHECKSUM(*) / BINARY_CHECKSUM(*) over the single table of the FROM clause."""
    stars = [
        i
        for i in range(len(tokens) - 3)
        if tokens[i].up in ("CHECKSUM", "BINARY_CHECKSUM")
        and tokens[i + 1].kind == "lp"
        and tokens[i + 2].text == "*"
        and tokens[i + 3].kind == "rp"
    ]
    if not stars:
        return tokens
    depth, start = 0, None
    for i, tok in enumerate(tokens):
        depth += tok.kind == "lp"
        depth -= tok.kind == "rp"
        if depth == 0 and tok.is_kw("FROM"):
            start = i + 1
    if start is None:
        raise not_supported("CHECKSUM(*) without FROM")
    cur = Cursor(tokens, start)
    _, info, _ = ctx.resolve_table(cur.dotted())
    if info is None or (cur.peek() is not None and cur.peek().kind == "comma"):
        raise not_supported("CHECKSUM(*) over more than one user table")
    columns: list[Tok] = []
    for name, *_ in info.columns:
        columns += [Tok("comma", ","), Tok("qid", name)] if columns else [Tok("qid", name)]
    out = list(tokens)
    for i in reversed(stars):
        out[i + 2 : i + 3] = columns
    return out


def _check_select_into(tokens: list[Tok]) -> None:
    depth = 0
    for tok in tokens:
        depth += tok.kind == "lp"
        depth -= tok.kind == "rp"
        if depth == 0 and tok.is_kw("INTO"):
            raise not_supported("SELECT ... INTO")


def _check_identity_update(tokens: list[Tok], table: TableInfo) -> None:
    if table.identity is None:
        return
    for i, tok in enumerate(tokens[:-1]):
        if (
            tok.is_name
            and tok.text.lower() == table.identity[0].lower()
            and tokens[i + 1].text == "="
        ):
            prev = tokens[i - 1] if i else None
            if prev is not None and (prev.is_kw("SET") or prev.kind == "comma"):
                raise SqlError(8102, f"Cannot update identity column '{table.identity[0]}'.", 16, 1)


def _rewrite(tokens: list[Tok], ctx: Context, out: Translated, returning_ok: bool = False) -> str:
    """The general pass: returns SQLite text; records referenced tables in out.tables."""
    cur = Cursor(tokens)
    frames = [_Frame()]
    result: list[Tok] = []
    returning: list[Tok] = []
    while not cur.done:
        tok = cur.next()
        frame = frames[-1]
        if tok.kind == "lp":
            frames.append(_Frame())
            result.append(tok)
            continue
        if tok.kind == "rp":
            done_frame = frames.pop() if len(frames) > 1 else frame
            _close_limit(result, done_frame)
            result.append(tok)
            continue
        if tok.kind == "word":
            up = tok.up
            if up in CLAUSE_END:
                frame.clause = up.lower()
            if up == "TOP":
                frame.limit = _top(cur)
                continue
            if up == "OFFSET" and cur.peek() is not None:
                frame.offset, frame.limit = _offset_fetch(cur)
                continue
            if up == "OUTPUT" and returning_ok:
                returning = _output(cur)
                continue
            if up in ("FROM", "JOIN", "INTO", "UPDATE", "DELETE"):
                if up == "FROM":
                    frame.clause = "from"
                result.append(tok)
                if up == "DELETE" and not (cur.peek() is not None and cur.peek().is_kw("FROM")):
                    result.append(Tok("word", "FROM"))
                if cur.peek() is not None and cur.peek().is_name and not cur.peek().is_kw("FROM"):
                    result.extend(_table_ref(cur, ctx, out))
                continue
            if up == "ISNULL" and _peek_kind(cur, "lp"):
                result.append(Tok("word", "ifnull"))
                continue
            if up in ("CAST", "CONVERT", "TRY_CAST", "TRY_CONVERT") and _peek_kind(cur, "lp"):
                result.extend(_cast(cur, up, ctx, out))
                continue
            if up == "COUNT_BIG":
                result.append(Tok("word", "count"))
                continue
            if up == "STRING_AGG":
                result.append(Tok("word", "group_concat"))
                continue
            if up in ("LEFT", "RIGHT") and _peek_kind(cur, "lp"):
                args = split_commas(cur.skip_parens())
                if len(args) != 2:
                    raise syntax_error(up)
                sub = [_rewrite_expr(a, ctx, out) for a in args]
                start = "1" if up == "LEFT" else f"-({sub[1]})"
                result.append(Tok("raw", f"substr({sub[0]}, {start}, {sub[1]})"))
                continue
        if (
            tok.kind == "comma"
            and frame.clause == "from"
            and cur.peek() is not None
            and cur.peek().is_name
        ):
            result.append(tok)
            result.extend(_table_ref(cur, ctx, out))
            continue
        if tok.kind == "gvar":
            result.extend(ctx.global_var(tok.text.upper()))
            continue
        if tok.is_name and cur.peek() is not None and cur.peek().kind == "dot":
            cur.pos -= 1
            parts = cur.dotted()
            if len(parts) >= 3:
                parts = parts[-2:]
            result.extend(_chain(parts))
            continue
        if tok.kind == "op" and tok.text == "+" and _stringy(result, cur):
            result.append(Tok("op", "||"))
            continue
        result.append(tok)
    _close_limit(result, frames[0])
    sql = render(result)
    if returning:
        names = [t.text for t in returning]
        out.returning = names
        sql += " RETURNING " + ", ".join("*" if n == "*" else quote_ident(n) for n in names)
    return sql


def _rewrite_expr(tokens: list[Tok], ctx: Context, out: Translated) -> str:
    return _rewrite(tokens, ctx, out) if tokens else ""


def _peek_kind(cur: Cursor, kind: str) -> bool:
    tok = cur.peek()
    return tok is not None and tok.kind == kind


def _stringy(result: list[Tok], cur: Cursor) -> bool:
    prev = result[-1] if result else None
    nxt = cur.peek()
    return (prev is not None and prev.kind == "str") or (nxt is not None and nxt.kind == "str")


def _chain(parts: list[str]) -> list[Tok]:
    out: list[Tok] = []
    for i, part in enumerate(parts):
        if i:
            out.append(Tok("dot", "."))
        out.append(Tok("qid", part))
    return out


def _close_limit(result: list[Tok], frame: _Frame) -> None:
    if frame.limit is not None:
        result.append(Tok("word", "LIMIT"))
        result.extend(frame.limit)
        if frame.offset is not None:
            result.append(Tok("word", "OFFSET"))
            result.extend(frame.offset)
        frame.limit = frame.offset = None


def _top(cur: Cursor) -> list[Tok]:
    inner = cur.skip_parens() if _peek_kind(cur, "lp") else [cur.next()]
    if cur.accept("PERCENT"):
        raise not_supported("TOP ... PERCENT")
    if cur.accept("WITH"):
        cur.expect("TIES")
        raise not_supported("TOP ... WITH TIES")
    return [Tok("lp", "("), *inner, Tok("rp", ")")]


def _offset_fetch(cur: Cursor) -> tuple[list[Tok], list[Tok]]:
    offset: list[Tok] = []
    while not cur.done and not cur.peek().is_kw("ROW", "ROWS"):
        offset.append(cur.next())
    cur.expect("ROW", "ROWS")
    limit = [Tok("num", "-1")]
    if cur.accept("FETCH"):
        cur.expect("NEXT", "FIRST")
        limit = []
        while not cur.done and not cur.peek().is_kw("ROW", "ROWS"):
            limit.append(cur.next())
        cur.expect("ROW", "ROWS")
        cur.expect("ONLY")
    return [Tok("lp", "("), *offset, Tok("rp", ")")], [Tok("lp", "("), *limit, Tok("rp", ")")]


def _output(cur: Cursor) -> list[Tok]:
    names: list[Tok] = []
    while not cur.done and not cur.peek().is_kw(
        "VALUES", "SELECT", "WHERE", "FROM", "DEFAULT", "INTO"
    ):
        tok = cur.next()
        if tok.is_kw("INSERTED", "DELETED"):
            cur.expect_kind("dot")
            target = cur.next()
            names.append(Tok("word", "*") if target.kind == "op" else target)
        elif tok.kind != "comma":
            raise not_supported("OUTPUT expressions other than INSERTED.column / DELETED.column")
    if cur.accept("INTO"):
        raise not_supported("OUTPUT ... INTO")
    return names


RESERVED = NOT_ALIAS | {"SELECT", "WHERE", "FROM", "INTO", "NULL", "NOT", "AND", "OR", "IS", "IN"}


def _table_ref(cur: Cursor, ctx: Context, out: Translated) -> list[Tok]:
    if cur.peek().kind == "word" and cur.peek().up in RESERVED:
        raise syntax_error(cur.peek().text)
    parts = cur.dotted()
    sql, info, default_alias = ctx.resolve_table(parts)
    if info is not None:
        out.tables.append(info)
    toks: list[Tok] = [Tok("raw", sql)]
    alias = None
    if cur.accept("AS") or (
        cur.peek() is not None and cur.peek().is_name and cur.peek().up not in NOT_ALIAS
    ):
        alias = cur.name()
    if cur.peek() is not None and cur.peek().is_kw("WITH") and _is_hint(cur, 1):
        cur.next()
        cur.skip_parens()
    elif _is_hint(cur, 0):
        cur.skip_parens()
    if alias is None and default_alias:
        alias = default_alias
    if alias:
        toks += [Tok("word", "AS"), Tok("qid", alias)]
    return toks


def _is_hint(cur: Cursor, offset: int) -> bool:
    lp, word = cur.peek(offset), cur.peek(offset + 1)
    return lp is not None and lp.kind == "lp" and word is not None and word.up in HINTS


def _cast(cur: Cursor, fn: str, ctx: Context, out: Translated) -> list[Tok]:
    inner = cur.skip_parens()
    if fn in ("CAST", "TRY_CAST"):
        depth, split = 0, None
        for i, tok in enumerate(inner):
            depth += tok.kind == "lp"
            depth -= tok.kind == "rp"
            if depth == 0 and tok.is_kw("AS"):
                split = i
        if split is None:
            raise syntax_error(fn)
        expr, type_toks = inner[:split], inner[split + 1 :]
    else:
        args = split_commas(inner)
        if len(args) < 2:
            raise syntax_error(fn)
        type_toks, expr = args[0], args[1]
    type_text = "".join(t.text if t.kind != "comma" else "," for t in type_toks)
    try:
        parse_type(type_text)
    except ValueError:
        raise SqlError(243, f"Type {type_text} is not a defined system type.", 16, 2) from None
    inner_sql = _rewrite_expr(expr, ctx, out)
    return [Tok("raw", f"__CAST('{type_text}', {inner_sql})")]


from .selectlist import select_items  # noqa: E402  (kept apart: typing of select lists)
