"""Secrets out of what Dagster records: the event log, sensor ticks, compute logs.

Dagster turns every exception raised in an op, asset, check, sensor or schedule into a
`SerializableErrorInfo` (the message from `format_exception_only`, the stack as formatted
frames — source lines, no local values — and the same for its cause and context) through
one constructor, `SerializableErrorInfo.from_traceback`; that is what the event log, the run
failure, the tick history and the UI show, and what the run alert sensor quotes. Our own
errors are scrubbed when made (lib/errors.py), but a cause from a library is not: psycopg's
"missing '=' after ..." quotes the whole malformed DATABASE_URL, password included.

`install()` therefore wraps that constructor so every message and frame is scrubbed
(lib/secrets.py), and wraps the process's log-record factory so a log line (Dagster's
`context.log`, which also feeds the event log, or any library logger written to the compute
logs) is scrubbed too. It is installed when the code location loads, in every process that
loads it (code server, run and step workers), before any of our code runs. Dagster's own
`DAGSTER_REDACT_USER_CODE_ERRORS` would hide every message, leaving on-call nothing to read.
"""

from __future__ import annotations

import logging
import threading

from dagster_shared.error import SerializableErrorInfo

from backup_pipelines.lib.secrets import scrub

_installed = False
_lock = threading.Lock()


def install() -> None:
    """Scrub Dagster's error records and every log record of this process (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        _scrub_error_infos()
        _scrub_log_records()
        _installed = True


def _scrub_error_infos() -> None:
    from_traceback = SerializableErrorInfo.from_traceback.__func__

    def scrubbed_from_traceback(cls, tb):
        # Causes and contexts are built by recursive calls to cls.from_traceback: this one.
        info = from_traceback(cls, tb)
        return info._replace(message=scrub(info.message), stack=[scrub(s) for s in info.stack])

    SerializableErrorInfo.from_traceback = classmethod(scrubbed_from_traceback)


def _scrub_log_records() -> None:
    make_record = logging.getLogRecordFactory()

    def scrubbed_record(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a record whose arguments do not format: leave it to logging
            return record
        cleaned = scrub(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        if record.exc_info and not record.exc_text:
            # Rendered now, scrubbed; handlers print exc_text instead of rendering it again.
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
        return record

    logging.setLogRecordFactory(scrubbed_record)
