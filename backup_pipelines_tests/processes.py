"""Start Dagster processes so that they can always be stopped: own session (process group),
default signal handling (a shell that started pytest with `&` passes SIGINT/SIGTERM ignored,
and `dagster api grpc` ignores SIGTERM anyway: FACTS), SIGKILL of the group as the fallback."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path


def _default_signals() -> None:
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(number, signal.SIG_DFL)


def start(argv: list[str], env: dict, log: Path, cwd: Path | None = None) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_default_signals,  # resets signal dispositions only
        )


def stop(process: subprocess.Popen, grace_seconds: float = 20) -> None:
    """SIGTERM to the process group, then SIGKILL to the group; never raises."""
    for sig, wait in ((signal.SIGTERM, grace_seconds), (signal.SIGKILL, 30)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; children of the group (run workers) may not be.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        return
