"""MssqlStandinProcess: the SQL Server stand-in in a process of its own, on a free loopback port."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from backup_pipelines.devstack.ports import LOOPBACK, free_port, wait_for_port

DEFAULT_PASSWORD = "Standin!Passw0rd"


class MssqlStandinProcess:
    """Start with `with MssqlStandinProcess() as mssql:`; `mssql.connection_string()` is what
    pyodbc.connect takes (FreeTDS driver, TDS 7.4). The storage folder is removed on stop unless
    it was given."""

    def __init__(self, storage: Path | None = None, password: str = DEFAULT_PASSWORD) -> None:
        self.port = free_port()
        self.password = password
        self._owns_dir = storage is None
        self.storage = storage or Path(tempfile.mkdtemp(prefix="mssql-standin-"))
        self._process: subprocess.Popen | None = None

    def connection_string(self, database: str = "master", password: str | None = None) -> str:
        pwd = self.password if password is None else password
        return (
            f"DRIVER={{FreeTDS}};SERVER={LOOPBACK};PORT={self.port};UID=sa;PWD={{{pwd}}};"
            f"TDS_Version=7.4;DATABASE={database}"
        )

    def start(self) -> MssqlStandinProcess:
        argv = [
            sys.executable,
            "-m",
            "backup_pipelines.devstack.mssql",
            "--port",
            str(self.port),
            "--storage",
            str(self.storage),
            "--parent-pid",
            str(os.getpid()),
        ]
        env = dict(os.environ, MSSQL_STANDIN_PASSWORD=self.password)
        self._process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
        try:
            wait_for_port(self.port, timeout=30)
        except TimeoutError:
            self.stop()
            raise
        return self

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        if self._process:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._owns_dir:
            shutil.rmtree(self.storage, ignore_errors=True)

    def __enter__(self) -> MssqlStandinProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
