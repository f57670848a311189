"""A throwaway PostgreSQL cluster on a free 127.0.0.1 port, for the demo, `make dev` and tests.

`initdb` and `postgres` refuse to run as root, so as root they run as the `postgres` user in
a data directory that user owns; a normal user runs them directly.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from backup_pipelines.devstack.ports import LOOPBACK, free_port
from backup_pipelines.lib.postgres.connection import pg_bin


def _as_server_user(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


class PostgresCluster:
    def __init__(self, port: int | None = None, user: str = "postgres") -> None:
        self.port = port or free_port()
        self.user = user
        self.data_dir: Path | None = None
        self._base: Path | None = None

    @property
    def url_base(self) -> str:
        return f"postgresql://{self.user}@{LOOPBACK}:{self.port}"

    def url(self, database: str = "postgres") -> str:
        return f"{self.url_base}/{database}"

    def start(self) -> PostgresCluster:
        initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
        # Not pytest's tmp_path: mode 0700 and owned by root, the postgres user cannot enter it.
        self._base = Path(tempfile.mkdtemp(prefix="backup-pipelines-pg-"))
        self.data_dir = self._base / "data"
        self.data_dir.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self._base, "postgres")
            shutil.chown(self.data_dir, "postgres")
        self._run(
            [
                initdb,
                "-D",
                str(self.data_dir),
                "--auth=trust",
                "-U",
                self.user,
                "-E",
                "UTF8",
                "--no-sync",
            ]
        )
        options = (
            f"-c listen_addresses={LOOPBACK} -p {self.port} -k {self.data_dir} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=60 -c shared_buffers=256MB -c max_wal_size=4GB"
        )
        self._run(
            [
                pg_ctl,
                "-D",
                str(self.data_dir),
                "-w",
                "-t",
                "60",
                "-l",
                str(self.data_dir / "server.log"),
                "-o",
                options,
                "start",
            ]
        )
        return self

    def _run(self, argv: list[str]) -> None:
        result = subprocess.run(_as_server_user(argv), capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(
                f"{Path(argv[0]).name} failed: {result.stderr.strip() or result.stdout.strip()}"
            )

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.data_dir and self.data_dir.exists():
            with contextlib.suppress(Exception):
                self._run(
                    [pg_bin("pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "-w", "stop"]
                )
        if self._base:
            shutil.rmtree(self._base, ignore_errors=True)
            self._base = None

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
