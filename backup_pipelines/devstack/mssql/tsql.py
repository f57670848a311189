"""T-SQL lexing, batch splitting and small parsing helpers shared by the statement handlers."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import SqlError, syntax_error


@dataclass
class Tok:
    kind: str  # word, qid (quoted identifier), str, num, hex, var, gvar, param, op, lp, rp, comma, dot, semi
    text: str  # the value: identifier without quotes, string without quotes, operator, ...
    nstr: bool = False  # N'...' literal

    @property
    def up(self) -> str:
        return self.text.upper() if self.kind == "word" else ""

    def is_kw(self, *words: str) -> bool:
        return self.kind == "word" and self.text.upper() in words

    @property
    def is_name(self) -> bool:
        return self.kind in ("word", "qid")


_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+|--[^\n]*|/\*.*?\*/)
  | (?P<nstr>[Nn]'(?:[^']|'')*')
  | (?P<str>'(?:[^']|'')*')
  | (?P<br>\[(?:[^\]]|\]\])*\])
  | (?P<dq>"(?:[^"]|"")*")
  | (?P<hex>0[xX][0-9A-Fa-f]*)
  | (?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<gvar>@@\w+)
  | (?P<var>@\w+)
  | (?P<word>[A-Za-z_\#][\w\#$]*)
  | (?P<param>\?)
  | (?P<op><>|!=|<=|>=|!<|!>|\|\||[-+*/%=<>&|^~])
  | (?P<lp>\()
  | (?P<rp>\))
  | (?P<comma>,)
  | (?P<dot>\.)
  | (?P<semi>;)
    """,
    re.VERBOSE | re.DOTALL,
)


def lex(sql: str) -> list[Tok]:
    out: list[Tok] = []
    pos = 0
    while pos < len(sql):
        m = _TOKEN_RE.match(sql, pos)
        if not m:
            raise syntax_error(sql[pos : pos + 20].split()[0] if sql[pos:].strip() else sql[pos])
        kind = m.lastgroup
        text = m.group()
        pos = m.end()
        if kind == "ws":
            continue
        if kind == "nstr":
            out.append(Tok("str", text[2:-1].replace("''", "'"), nstr=True))
        elif kind == "str":
            out.append(Tok("str", text[1:-1].replace("''", "'")))
        elif kind == "br":
            out.append(Tok("qid", text[1:-1].replace("]]", "]")))
        elif kind == "dq":
            out.append(Tok("qid", text[1:-1].replace('""', '"')))
        else:
            out.append(Tok(kind, text))
    return out


# Statements that may follow another one in a batch without a semicolon.
_STARTERS = {
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "USE",
    "BACKUP",
    "RESTORE",
    "CREATE",
    "DROP",
    "ALTER",
    "DECLARE",
    "PRINT",
    "RAISERROR",
    "WAITFOR",
    "CHECKPOINT",
    "TRUNCATE",
    "EXEC",
    "EXECUTE",
    "SAVE",
    "DBCC",
}
_SET_OPTIONS = {
    "NOCOUNT",
    "XACT_ABORT",
    "IMPLICIT_TRANSACTIONS",
    "IDENTITY_INSERT",
    "LOCK_TIMEOUT",
    "TEXTSIZE",
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
    "ROWCOUNT",
    "STATISTICS",
    "DATEFIRST",
    "CURSOR_CLOSE_ON_COMMIT",
    "ANSI_DEFAULTS",
    "FMTONLY",
    "NOEXEC",
    "PARSEONLY",
    "SHOWPLAN_XML",
    "SHOWPLAN_ALL",
    "SHOWPLAN_TEXT",
}


def split_batch(tokens: list[Tok]) -> list[list[Tok]]:
    """Statements of a batch: split at semicolons and where a new statement obviously starts."""
    statements: list[list[Tok]] = []
    current: list[Tok] = []
    depth = 0

    def flush() -> None:
        nonlocal current
        if current:
            statements.append(current)
        current = []

    for i, tok in enumerate(tokens):
        if tok.kind == "lp":
            depth += 1
        elif tok.kind == "rp":
            depth -= 1
        if depth == 0 and tok.kind == "semi":
            flush()
            continue
        if depth == 0 and current and tok.kind == "word" and _starts_statement(current, tokens, i):
            flush()
        current.append(tok)
    flush()
    return statements


def _starts_statement(current: list[Tok], tokens: list[Tok], i: int) -> bool:
    word = tokens[i].up
    prev = current[-1]
    first = current[0].up
    if first == "IF" and len(current) >= 2 and _if_needs_body(current):
        return False
    if prev.is_kw("ON", "FOR", "INSTEAD", "OF", "NOT", "AFTER", "WITH") or prev.kind == "dot":
        return False
    if word in _STARTERS:
        if word == "BEGIN" and not _next_is(tokens, i, "TRAN", "TRANSACTION", "DISTRIBUTED"):
            return False
        return not (first == "BEGIN" and len(current) == 1)
    if word == "SET":
        return _next_is(tokens, i, *_SET_OPTIONS) and first != "UPDATE"
    if word in ("INSERT", "UPDATE", "DELETE", "MERGE"):
        return True
    if word == "SELECT":
        if first in ("INSERT", "WITH", "CREATE", "ALTER", "DECLARE"):
            return False
        return not prev.is_kw("UNION", "ALL", "EXCEPT", "INTERSECT", "DISTINCT")
    return False


def _if_needs_body(current: list[Tok]) -> bool:
    """`IF <condition> <statement>`: the statement after the condition belongs to the IF."""
    body_words = {
        "COMMIT",
        "ROLLBACK",
        "BEGIN",
        "SELECT",
        "INSERT",
        "UPDATE",
        "DELETE",
        "DROP",
        "CREATE",
        "EXEC",
        "EXECUTE",
        "SET",
        "ALTER",
        "PRINT",
        "RETURN",
    }
    return not any(t.up in body_words for t in current[1:])


def _next_is(tokens: list[Tok], i: int, *words: str) -> bool:
    return i + 1 < len(tokens) and tokens[i + 1].up in words


# ---- parsing helpers ----------------------------------------------------------------------
class Cursor:
    """A position in a statement's tokens with expect/accept helpers."""

    def __init__(self, tokens: list[Tok], pos: int = 0) -> None:
        self.toks = tokens
        self.pos = pos

    @property
    def done(self) -> bool:
        return self.pos >= len(self.toks)

    def peek(self, offset: int = 0) -> Tok | None:
        i = self.pos + offset
        return self.toks[i] if 0 <= i < len(self.toks) else None

    def next(self) -> Tok:
        if self.done:
            raise syntax_error(self.toks[-1].text if self.toks else "")
        tok = self.toks[self.pos]
        self.pos += 1
        return tok

    def accept(self, *words: str) -> bool:
        tok = self.peek()
        if tok is not None and tok.is_kw(*words):
            self.pos += 1
            return True
        return False

    def accept_kind(self, kind: str) -> Tok | None:
        tok = self.peek()
        if tok is not None and tok.kind == kind:
            self.pos += 1
            return tok
        return None

    def expect(self, *words: str) -> None:
        if not self.accept(*words):
            raise self.error()

    def expect_kind(self, kind: str) -> Tok:
        tok = self.accept_kind(kind)
        if tok is None:
            raise self.error()
        return tok

    def name(self) -> str:
        tok = self.next()
        if not tok.is_name:
            raise syntax_error(tok.text)
        return tok.text

    def dotted(self) -> list[str]:
        """A multi-part name a.b.c (a..c gives an empty middle part)."""
        parts = [self.name()]
        while self.peek() is not None and self.peek().kind == "dot":
            self.pos += 1
            if self.peek() is not None and self.peek().kind == "dot":
                parts.append("")
                continue
            parts.append(self.name())
        return parts

    def literal(self):
        """A string or number literal, or a parameter value (resolved by the caller)."""
        tok = self.next()
        if tok.kind == "str":
            return tok.text
        if tok.kind == "num":
            return float(tok.text) if any(c in tok.text for c in ".eE") else int(tok.text)
        if tok.kind == "op" and tok.text == "-" and self.peek() and self.peek().kind == "num":
            value = self.literal()
            return -value
        if tok.kind in ("var", "param"):
            return tok
        if tok.is_kw("NULL"):
            return None
        raise syntax_error(tok.text)

    def error(self) -> SqlError:
        tok = self.peek()
        return syntax_error(tok.text if tok else (self.toks[-1].text if self.toks else ""))

    def skip_parens(self) -> list[Tok]:
        """Consume a parenthesized group; returns the tokens inside."""
        self.expect_kind("lp")
        depth, start = 1, self.pos
        while depth:
            tok = self.next()
            depth += tok.kind == "lp"
            depth -= tok.kind == "rp"
        return self.toks[start : self.pos - 1]


def split_commas(tokens: list[Tok]) -> list[list[Tok]]:
    """Split a token list at top-level commas."""
    parts: list[list[Tok]] = [[]]
    depth = 0
    for tok in tokens:
        if tok.kind == "lp":
            depth += 1
        elif tok.kind == "rp":
            depth -= 1
        if tok.kind == "comma" and depth == 0:
            parts.append([])
        else:
            parts[-1].append(tok)
    return [p for p in parts if p]


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def render(tokens: list[Tok]) -> str:
    """Tokens back to SQLite text (identifiers double-quoted, strings single-quoted)."""
    out: list[str] = []
    prev: Tok | None = None
    for tok in tokens:
        if tok.kind == "qid":
            text = quote_ident(tok.text)
        elif tok.kind == "str":
            text = quote_str(tok.text)
        elif tok.kind == "raw":
            text = tok.text
        elif tok.kind == "hex":
            digits = tok.text[2:]
            text = f"X'{digits if len(digits) % 2 == 0 else '0' + digits}'"
        else:
            text = tok.text
        glue = prev is not None and (prev.kind == "dot" or tok.kind in ("dot", "comma", "rp"))
        glue = glue or (prev is not None and prev.kind == "lp")
        out.append(text if glue or not out else " " + text)
        prev = tok
    return "".join(out)


def unquote_name(text: str) -> str:
    """[x] or "x" or x -> x (for names given as strings, e.g. N'dbo.t')."""
    text = text.strip()
    if len(text) >= 2 and text[0] == "[" and text[-1] == "]":
        return text[1:-1].replace("]]", "]")
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return text[1:-1]
    return text


def split_name(text: str) -> list[str]:
    """'db.dbo.[t]' -> ['db', 'dbo', 't'] (string arguments of OBJECT_ID and friends)."""
    try:
        cur = Cursor(lex(text))
        parts = cur.dotted()
        return parts if cur.done else [unquote_name(text)]
    except SqlError:
        return [unquote_name(text)]
