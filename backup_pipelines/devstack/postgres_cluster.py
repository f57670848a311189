"""A throwaway PostgreSQL cluster on a free 127.0.0.1 port, for the demo, `make dev` and tests.

`initdb` and `postgres` refuse to run as root, so as root they run as the `postgres` user in
a data directory that user owns; a normal user runs them directly.

`settings` adds lines to postgresql.conf, e.g. WAL archiving through pgBackRest:

    PostgresCluster(settings={"wal_level": "replica", "archive_mode": "on",
                              "archive_command": "pgbackrest --config=F --stanza=S archive-push %p"})

`work_dir(name)` gives a folder the server's user owns (for a pgBackRest configuration,
repository or log that `archive_command` must reach), removed with the cluster.
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
    def __init__(
        self,
        port: int | None = None,
        user: str = "postgres",
        settings: dict[str, str] | None = None,
        base_dir: Path | None = None,
    ) -> None:
        """base_dir: an existing folder the server's OS user can enter, for the data
        directory and work_dir() folders (default: a new folder in the system temp dir)."""
        self.port = port or free_port()
        self.user = user
        self.settings = dict(settings or {})
        self.data_dir: Path | None = None
        self._base: Path | None = base_dir

    @property
    def os_user(self) -> str | None:
        """The operating-system user the server runs as when it is not the caller (root)."""
        return "postgres" if os.geteuid() == 0 else None

    def work_dir(self, name: str) -> Path:
        """A folder next to the data directory that the server's user owns (mode 0700)."""
        if self._base is None:
            self._base = Path(tempfile.mkdtemp(prefix="backup-pipelines-pg-"))
            if os.geteuid() == 0:
                shutil.chown(self._base, "postgres")
        path = self._base / name
        path.mkdir(mode=0o700, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(path, "postgres", "postgres")
        return path

    @property
    def url_base(self) -> str:
        return f"postgresql://{self.user}@{LOOPBACK}:{self.port}"

    def url(self, database: str = "postgres") -> str:
        return f"{self.url_base}/{database}"

    def start(self) -> PostgresCluster:
        initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
        # Not pytest's tmp_path: mode 0700 and owned by root, the postgres user cannot enter it.
        self.data_dir = self.work_dir("data")
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
        if self.settings:
            with open(self.data_dir / "postgresql.conf", "a") as conf:
                conf.write("\n# backup_pipelines devstack settings\n")
                for key, value in self.settings.items():
                    quoted = str(value).replace("'", "''")
                    conf.write(f"{key} = '{quoted}'\n")
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
        if "archive_timeout" in self.settings:
            # Seen here: a checkpointer that started its first sleep during startup ignores
            # archive_timeout until checkpoint_timeout (5 min); a reload wakes it.
            self._run([pg_ctl, "-D", str(self.data_dir), "reload"])
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
