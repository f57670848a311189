"""Starting and stopping the stand-in: in-process, or as `python -m backup_pipelines.devstack.qdrant`."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

from backup_pipelines.devstack.ports import LOOPBACK, free_port, wait_for_port
from backup_pipelines.devstack.qdrant.auth import ApiKeys
from backup_pipelines.devstack.qdrant.cluster import ClusterLayout
from backup_pipelines.devstack.qdrant.http import StandinHTTPServer
from backup_pipelines.devstack.qdrant.models import LOOPBACK_HOSTS, STORAGE_VERSION
from backup_pipelines.devstack.qdrant.storage import StandinState

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Starting and stopping
# ---------------------------------------------------------------------------------------------


class QdrantStandin:
    """The stand-in as an in-process server: ``url = QdrantStandin(dir).start()``, then ``stop()``.

    Also a context manager. ``port=0`` lets the OS pick a free port (see ``url``).
    ``read_only_api_key`` is the server's `service.read_only_api_key`; ``version`` the server
    version it reports and stamps on its snapshots; ``cluster`` makes it one peer of a
    simulated cluster; ``recovery_delay`` stretches each snapshot recovery (seconds).
    """

    def __init__(
        self,
        storage: str | os.PathLike,
        port: int = 0,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        snapshots: str | os.PathLike | None = None,
        *,
        read_only_api_key: str | None = None,
        version: str = STORAGE_VERSION,
        cluster: ClusterLayout | None = None,
        recovery_delay: float = 0.0,
    ):
        if host not in LOOPBACK_HOSTS:
            raise ValueError(f"the stand-in binds to loopback only, not {host}")
        self.storage = Path(storage)
        self.snapshots = Path(snapshots) if snapshots else None
        self.host, self.port, self.api_key = host, port, api_key
        self.keys = ApiKeys(api_key, read_only_api_key)
        self.version, self.cluster, self.recovery_delay = version, cluster, recovery_delay
        self._server: StandinHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the stand-in is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def state(self) -> StandinState:
        if self._server is None:
            raise RuntimeError("the stand-in is not running")
        return self._server.state

    def _new_server(self) -> StandinHTTPServer:
        state = StandinState(
            self.storage, self.snapshots, self.version, self.cluster, self.recovery_delay
        )
        return StandinHTTPServer((self.host, self.port), state, self.keys)

    def start(self) -> str:
        self._server = self._new_server()
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="qdrant-standin", daemon=True
        )
        self._thread.start()
        return self.url

    def serve_forever(self) -> None:
        """Run in the calling thread until stop() (used by the command line)."""
        self._server = self._new_server()
        try:
            self._server.serve_forever()
        finally:
            self._close()

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        if self._thread is not None:
            self._thread.join()
        self._close()

    def _close(self) -> None:
        if self._server is not None:
            self._server.server_close()
            self._server.state.close()
            self._server = None

    def __enter__(self) -> QdrantStandin:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class QdrantStandinProcess:
    """The Qdrant stand-in in a process of its own, spoken to over real HTTP."""

    def __init__(self, api_key: str | None = None, read_only_api_key: str | None = None) -> None:
        self.port = free_port()
        self.api_key = api_key
        self.read_only_api_key = read_only_api_key
        self._dir = Path(tempfile.mkdtemp(prefix="qdrant-standin-"))
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> QdrantStandinProcess:
        argv = [sys.executable, "-m", "backup_pipelines.devstack.qdrant"]
        argv += ["--port", str(self.port), "--storage", str(self._dir)]
        # Keys go through the environment, never argv (argv is visible to every local user).
        env = {**os.environ, "QDRANT_STANDIN_API_KEY": self.api_key or ""}
        env["QDRANT_STANDIN_READ_ONLY_API_KEY"] = self.read_only_api_key or ""
        self._process = subprocess.Popen(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port(self.port, timeout=30)
        return self

    def stop(self) -> None:
        if self._process:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> QdrantStandinProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def parse_arguments(argv: Iterable[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", choices=LOOPBACK_HOSTS)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--storage", required=True, help="folder of collections, aliases, snapshots"
    )
    parser.add_argument("--snapshots", help="snapshots folder (default: STORAGE/snapshots)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("QDRANT_STANDIN_API_KEY") or None,
        help="require this key (api-key header or bearer token); default $QDRANT_STANDIN_API_KEY",
    )
    parser.add_argument(
        "--read-only-api-key",
        default=os.environ.get("QDRANT_STANDIN_READ_ONLY_API_KEY") or None,
        help="a key that may read only; default $QDRANT_STANDIN_READ_ONLY_API_KEY",
    )
    parser.add_argument(
        "--version", default=STORAGE_VERSION, help="server version to report and stamp"
    )
    parser.add_argument(
        "--cluster-peers", type=int, default=1, help="pretend to be one of N peers (default 1)"
    )
    parser.add_argument(
        "--cluster-replicated",
        action="store_true",
        help="with --cluster-peers: one shard replicated on every peer (else one shard each)",
    )
    parser.add_argument(
        "--recovery-delay", type=float, default=0.0, help="seconds added to every recovery"
    )
    return parser.parse_args(list(argv) if argv is not None else None)


def main(argv: Iterable[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    standin = QdrantStandin(
        arguments.storage,
        arguments.port,
        arguments.api_key,
        arguments.host,
        arguments.snapshots,
        read_only_api_key=arguments.read_only_api_key,
        version=arguments.version,
        cluster=ClusterLayout(arguments.cluster_peers, arguments.cluster_replicated),
        recovery_delay=arguments.recovery_delay,
    )

    def stop_on_signal(signum: int, frame: object) -> None:
        # shutdown() blocks until serve_forever returns, so it must run on another thread.
        threading.Thread(target=lambda: standin._server and standin._server.shutdown()).start()

    signal.signal(signal.SIGTERM, stop_on_signal)
    log.info(
        "Qdrant stand-in %s on http://%s:%s", arguments.version, arguments.host, arguments.port
    )
    with contextlib.suppress(KeyboardInterrupt):
        standin.serve_forever()


if __name__ == "__main__":
    main()
