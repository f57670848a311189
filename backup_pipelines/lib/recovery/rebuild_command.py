"""The platform's own reindexer as the way to rebuild an index from SQL (the policy's
`indexes.<engine>.rebuild_command`, e.g. the runbook's `reindex --workspace {workspace}`):
run without a shell, bounded by a timeout, every line of its output logged, a failure a clear
error. Placeholders: {workspace}, and {collection} — the collection to build, which is a
scratch collection during a restore drill."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Sequence

from backup_pipelines.lib.errors import BackupError
from backup_pipelines.lib.streams import Log

TAIL_LINES = 20


def command_line(command: Sequence[str], workspace: str, collection: str) -> list[str]:
    return [part.format(workspace=workspace, collection=collection) for part in command]


def run_rebuild_command(
    command: Sequence[str],
    workspace: str,
    collection: str,
    database_url: str,
    timeout_seconds: float,
    log: Log,
) -> dict:
    """Run the reindexer for one workspace; DATABASE_URL in its environment names the database
    the rows were restored into (the drill's scratch database during a drill)."""
    argv = command_line(command, workspace, collection)
    shown = " ".join(argv)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "BACKUP_REBUILD_WORKSPACE": workspace,
        "BACKUP_REBUILD_COLLECTION": collection,
    }
    log(f"rebuilding {collection} with the platform's reindexer: {shown}")
    started = time.monotonic()
    try:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # so a timeout stops the whole process group
        )
    except OSError as exc:
        raise BackupError(
            f"rebuild command `{shown}` could not start: {exc.strerror or exc}; check "
            "indexes.<engine>.rebuild_command in the policy"
        ) from exc
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    reader = threading.Thread(target=_relay, args=(process, tail, log), daemon=True)
    reader.start()
    try:
        code = process.wait(timeout=timeout_seconds)
    except subprocess.TimeoutExpired:
        _stop(process)
        reader.join(timeout=5)
        raise BackupError(
            f"rebuild command `{shown}` did not finish within {timeout_seconds:g} s and was "
            f"stopped; {_last(tail)}raise indexes.<engine>.rebuild_timeout_seconds if it needs longer"
        ) from None
    reader.join(timeout=5)
    seconds = round(time.monotonic() - started, 3)
    if code != 0:
        raise BackupError(
            f"rebuild command `{shown}` failed with exit code {code} after {seconds:g} s; "
            f"{_last(tail)}the index of {workspace} was not rebuilt"
        )
    log(f"rebuild command finished in {seconds:g} s")
    return {"source": "command", "command": shown, "exit_code": 0, "seconds": seconds}


def _relay(process: subprocess.Popen, tail: deque, log: Log) -> None:
    for raw in process.stdout:
        line = raw.decode("utf-8", "replace").rstrip()
        tail.append(line)
        log(f"reindex: {line}")
    process.stdout.close()


def _last(tail: deque) -> str:
    return f"its last output: {' | '.join(tail)}; " if tail else "it printed nothing; "


def _stop(process: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue
