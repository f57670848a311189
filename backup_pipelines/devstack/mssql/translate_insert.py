"""INSERT translation: explicit column lists, IDENTITY values and OUTPUT INSERTED (RETURNING).

An INSERT into a table with an IDENTITY column gets the column added: VALUES rows get
``:__idb + k * increment`` and INSERT ... SELECT numbers its rows with row_number(); the
session binds ``__idb`` (the next identity value) inside the write transaction. Listing the
identity column needs SET IDENTITY_INSERT ON (else 544).
"""

from __future__ import annotations

from .errors import SqlError, syntax_error
from .sqltypes import SqlType
from .translate import Context, Translated, _output, _peek_kind, _rewrite
from .tsql import Cursor, Tok, quote_ident, split_commas


def translate_insert(
    tokens: list[Tok], ctx: Context, param_types: dict[str, SqlType]
) -> Translated:
    cur = Cursor(tokens, 1)
    cur.accept("INTO")
    parts = cur.dotted()
    ref_sql, info, _ = ctx.resolve_table(parts)
    if info is None or info.catalog:
        raise SqlError(259, "Ad hoc updates to system catalogs are not allowed.", 16, 1)
    cur.accept("WITH") and cur.skip_parens()
    columns: list[str] | None = None
    if _peek_kind(cur, "lp"):
        columns = []
        for part in split_commas(cur.skip_parens()):
            name = part[-1].text
            if info.column(name) is None:
                raise SqlError(207, f"Invalid column name '{name}'.", 16, 1, batch_abort=True)
            columns.append(info.column(name)[0])
    out = Translated("insert", "", target=info, tables=[info])
    returning = _output(cur) if cur.accept("OUTPUT") else []
    identity = info.identity[0] if info.identity else None
    if columns is None:
        columns = [c[0] for c in info.columns if not c[3]]
    explicit = identity is not None and identity.lower() in (c.lower() for c in columns)
    if explicit and not ctx.identity_insert_on(info):
        raise SqlError(
            544,
            f"Cannot insert explicit value for identity column in table '{info.name}' "
            "when IDENTITY_INSERT is set to OFF.",
            16,
            1,
        )
    rest = tokens[cur.pos :]
    if not rest:
        raise syntax_error(parts[-1])
    head = f"INSERT INTO {ref_sql}"
    if rest[0].is_kw("DEFAULT"):
        if identity is None:
            out.sql = f"{head} DEFAULT VALUES"
        else:
            out.sql, out.identity = f"{head} ({quote_ident(identity)}) VALUES (:__idb)", "default"
    elif identity is not None and not explicit:
        collist = ", ".join(quote_ident(c) for c in [identity, *columns])
        if rest[0].is_kw("VALUES"):
            out.identity = "values"
            out.sql = f"{head} ({collist}) VALUES " + _values_with_identity(
                rest[1:], ctx, out, info.identity[2]
            )
        else:
            inner = _rewrite(rest, ctx, out)
            step = info.identity[2]
            out.identity = "select"
            out.sql = f"{head} ({collist}) SELECT :__idb + (row_number() OVER () - 1) * {step}, __src.* FROM ({inner}) AS __src"
    else:
        collist = ", ".join(quote_ident(c) for c in columns)
        out.identity = "explicit" if explicit else None
        out.sql = f"{head} ({collist}) {_rewrite(rest, ctx, out)}"
    if returning:
        out.returning = [t.text for t in returning]
        out.sql += " RETURNING " + ", ".join(
            "*" if t.text == "*" else quote_ident(t.text) for t in returning
        )
    return out


def _values_with_identity(tokens: list[Tok], ctx: Context, out: Translated, step: int) -> str:
    rows = split_commas(tokens)
    parts = []
    for i, row in enumerate(rows):
        if not row or row[0].kind != "lp" or row[-1].kind != "rp":
            raise syntax_error(row[0].text if row else ",")
        inner = _rewrite(row[1:-1], ctx, out)
        parts.append(f"(:__idb + {i * step}, {inner})")
    return ", ".join(parts)
