"""BACKUP/RESTORE statement parsing, progress messages and the closing summary messages."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .errors import Cancelled, SqlError, not_supported
from .statements import Output, Params
from .tsql import Cursor

PAGE = 8192
MB = 1048576


@dataclass
class Command:
    verb: str
    name: str | None = None
    devices: list[tuple[str, str]] = field(default_factory=list)
    options: dict = field(default_factory=dict)

    def flag(self, name: str) -> bool:
        return bool(self.options.get(name))

    @property
    def stats(self) -> int | None:
        value = self.options.get("STATS")
        if value is None:
            return None
        return 10 if value is True else max(1, min(100, int(value)))


def _value(cur: Cursor, params: Params | None):
    tok = cur.next()
    if tok.kind == "var":
        if params is None or tok.text[1:] not in params.values:
            raise SqlError(
                137, f'Must declare the scalar variable "{tok.text}".', 15, 2, batch_abort=True
            )
        return params.values[tok.text[1:]]
    if tok.kind in ("str", "word", "qid"):
        return tok.text
    if tok.kind == "num":
        return int(tok.text) if tok.text.isdigit() else float(tok.text)
    raise cur.error()


def parse_command(cur: Cursor, params: Params | None) -> Command:
    """After BACKUP or RESTORE: DATABASE|LOG name | HEADERONLY|..., TO|FROM devices, WITH options."""
    cmd = Command(cur.next().up)
    if cmd.verb in ("DATABASE", "LOG"):
        cmd.name = str(_value(cur, params))
    if cur.accept("TO", "FROM"):
        while True:
            kind = cur.next().up
            if kind not in ("DISK", "URL", "TAPE"):
                raise cur.error()
            tok = cur.next()
            if tok.kind != "op" or tok.text != "=":
                raise cur.error()
            cmd.devices.append((kind, str(_value(cur, params))))
            if not cur.accept_kind("comma"):
                break
    if cur.accept("WITH"):
        while not cur.done:
            key = cur.next().up
            if key == "MOVE":
                logical = str(_value(cur, params))
                cur.expect("TO")
                cmd.options.setdefault("MOVE", []).append((logical, str(_value(cur, params))))
            elif key == "ENCRYPTION":
                raise not_supported("backup ENCRYPTION")
            elif cur.peek() is not None and cur.peek().kind == "op" and cur.peek().text == "=":
                cur.next()
                cmd.options[key] = _value(cur, params)
            else:
                cmd.options[key] = True
            if not cur.accept_kind("comma"):
                break
    if not cur.done:
        raise cur.error()
    return cmd


class Progress:
    """'n percent processed.' messages, each in its own result set (DONE with DONE_MORE)."""

    def __init__(self, out: Output, stats: int | None) -> None:
        self.out, self.step, self.next = out, stats, stats

    def update(self, fraction: float) -> None:
        if self.out.cancelled():
            raise Cancelled
        session = getattr(self.out, "session", None)
        if session is not None and session.request is not None:
            session.request["percent"] = round(min(fraction, 1.0) * 100, 3)
        if self.step is None:
            return
        percent = int(fraction * 100)
        while self.next is not None and self.next <= percent and self.next <= 100:
            self.out.info(3211, f"{self.next} percent processed.")
            self.out.done(None)
            self.out.flush()
            self.next += self.step


def summary(
    out: Output, verb: str, files: list[tuple[str, str, int]], position: int, started: float
) -> None:
    """The 4035 lines and the closing 3014 message."""
    for db_name, file_name, pages in files:
        out.info(
            4035,
            f"Processed {pages} pages for database '{db_name}', file '{file_name}' on file {position}.",
        )
    total = sum(p for _, _, p in files)
    seconds = max(time.monotonic() - started, 0.001)
    rate = total * PAGE / MB / seconds
    out.info(
        3014,
        f"{verb} successfully processed {total} pages in {seconds:.3f} seconds ({rate:.3f} MB/sec).",
    )
