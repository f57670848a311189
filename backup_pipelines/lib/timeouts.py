"""How long to wait for a service before calling it hung, and a watchdog for long transfers.

Three settings, from the environment (read when used, so a process picks up its own):

- BACKUP_CONNECT_TIMEOUT (10 s): connecting to PostgreSQL, S3, Typesense or Qdrant.
- BACKUP_READ_TIMEOUT (20 s): waiting for the answer to an ordinary request (S3, Typesense,
  Qdrant). A call is retried on transient failures, but given up after 3 x this in all.
- BACKUP_STALL_SECONDS (300 s): a transfer (dump, restore, export, snapshot download, import
  batch) that moves no byte for this long is abandoned. A transfer may take hours; only
  silence counts.
- BACKUP_LEASE_WAIT_SECONDS (600 s): how long a backup waits for the lease of its partition
  while a restore (or another backup step of the same run) holds it, before failing with the
  holder named.
- BACKUP_DISCOVERY_INTERVAL_SECONDS (300 s): how often the workspace discovery sensor reads the
  SQL registry (a new workspace's first backup, a vanished workspace's alert, come this soon).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator

from backup_pipelines.lib.errors import ConfigError, ServiceStalled

CONNECT_TIMEOUT_VARIABLE = "BACKUP_CONNECT_TIMEOUT"
READ_TIMEOUT_VARIABLE = "BACKUP_READ_TIMEOUT"
STALL_VARIABLE = "BACKUP_STALL_SECONDS"
LEASE_WAIT_VARIABLE = "BACKUP_LEASE_WAIT_SECONDS"
DISCOVERY_INTERVAL_VARIABLE = "BACKUP_DISCOVERY_INTERVAL_SECONDS"
DEFAULTS = {
    CONNECT_TIMEOUT_VARIABLE: 10.0,
    READ_TIMEOUT_VARIABLE: 20.0,
    STALL_VARIABLE: 300.0,
    LEASE_WAIT_VARIABLE: 600.0,
    DISCOVERY_INTERVAL_VARIABLE: 300.0,
}
# Ordinary requests: retries stop once this many read timeouts have passed since the first try.
READ_TIMEOUTS_PER_CALL = 3


def seconds_from_env(variable: str) -> float:
    """A positive number of seconds from `variable`, or its default; anything else is a
    ConfigError naming the variable."""
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return DEFAULTS[variable]
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{variable}={raw!r} is not a positive number of seconds")
    return value


def connect_timeout() -> float:
    return seconds_from_env(CONNECT_TIMEOUT_VARIABLE)


def read_timeout() -> float:
    return seconds_from_env(READ_TIMEOUT_VARIABLE)


def stall_seconds() -> float:
    return seconds_from_env(STALL_VARIABLE)


def lease_wait_seconds() -> float:
    return seconds_from_env(LEASE_WAIT_VARIABLE)


class Watchdog:
    """Abandons a transfer that stops moving: when no progress() was reported for `seconds`
    (time spent in paused() blocks does not count) and the service does not answer a probe
    (`answers`, when given), it runs every registered stop action once (kill the child
    process, close the connection's socket), which makes the blocked call fail; leaving the
    `with` block then raises ServiceStalled naming the service and `what`.

    The probe tells a busy server from a hung one: an index build or a lock wait moves no
    byte for minutes, yet the server answers a new connection; a hung server does not.

        with Watchdog("PostgreSQL", "pg_dump of db:5432/x", answers=probe) as watchdog:
            watchdog.stop_with(process.kill)
            for chunk in ...:
                watchdog.progress()
    """

    def __init__(
        self,
        service: str,
        what: str,
        seconds: float | None = None,
        answers: Callable[[], bool] | None = None,
    ) -> None:
        self.service = service
        self.what = what
        self.seconds = stall_seconds() if seconds is None else seconds
        self.fired = False
        self._answers = answers
        self._actions: list[Callable[[], object]] = []
        self._last = time.monotonic()
        self._paused = 0
        self._started = time.monotonic()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="stall-watchdog", daemon=True)

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._done.set()
        self._thread.join()
        if self.fired:
            raise self.error() from exc

    def stop_with(self, action: Callable[[], object]) -> None:
        """Run `action` (once) if the transfer stalls."""
        self._actions.append(action)

    def progress(self) -> None:
        self._last = time.monotonic()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent here is not the watched service's (e.g. writing to the store)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1
            self.progress()

    def error(self) -> ServiceStalled:
        probe = (
            f" and it did not answer a new connection within {connect_timeout():g} s "
            f"({CONNECT_TIMEOUT_VARIABLE})"
            if self._answers
            else ""
        )
        return ServiceStalled(
            f"{self.service} stalled during {self.what}: nothing moved for {self.seconds:g} s "
            f"({STALL_VARIABLE}){probe}; abandoned {time.monotonic() - self._started:.0f} s "
            "after it started. Check that the server is up and reachable, then run it again."
        )

    def _stalled(self) -> bool:
        idle = time.monotonic() - self._last
        return not self._paused and idle > self.seconds

    def _watch(self) -> None:
        interval = min(1.0, self.seconds / 4)
        while not self._done.wait(interval):
            if not self._stalled():
                continue
            if self._answers is not None and self._answers():
                self.progress()  # busy, not hung: look again after another quiet period
                continue
            if self._done.is_set() or not self._stalled():  # it moved while we probed
                continue
            self.fired = True
            for action in self._actions:
                with contextlib.suppress(Exception):
                    action()
            return
