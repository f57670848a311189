"""SQL Server for the mssql tests: the stand-in (started once per session, stopped at the end),
or a real server when MSSQL_TEST_CONNECTION_STRING is set (opt-in).

For a real server, backups and MOVE targets are paths on the server: set MSSQL_TEST_BACKUP_DIR
(and optionally MSSQL_TEST_DATA_DIR) to a folder the server writes and this machine can read
and modify at the same path (e.g. a bind mount), or the tests that touch backup files skip.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pytest

REAL = os.environ.get("MSSQL_TEST_CONNECTION_STRING")


class RealServer:
    def __init__(self, connection_string: str) -> None:
        self._cs = connection_string

    def connection_string(self, database: str = "master", password: str | None = None) -> str:
        cs = re.sub(r"(?i)DATABASE=[^;]*;?", "", self._cs).rstrip(";") + f";DATABASE={database}"
        if password is not None:
            cs = re.sub(r"(?i)PWD=(\{[^}]*\}|[^;]*)", f"PWD={{{password}}}", cs)
        return cs


@pytest.fixture(scope="session")
def mssql_server():
    if REAL:
        yield RealServer(REAL)
        return
    from backup_pipelines.devstack.mssql import MssqlStandinProcess

    with MssqlStandinProcess() as server:
        yield server
    assert not server.running


@pytest.fixture(scope="session")
def mssql_connection_string(mssql_server) -> str:
    return mssql_server.connection_string()


@pytest.fixture
def mssql_dirs(tmp_path):
    """(backup dir, data dir) as the server sees them; the same paths are readable here."""
    if REAL:
        backup_dir = os.environ.get("MSSQL_TEST_BACKUP_DIR")
        if not backup_dir:
            pytest.skip("MSSQL_TEST_BACKUP_DIR is not set for the real server")
        sub = Path(backup_dir) / uuid.uuid4().hex[:8]
        sub.mkdir(parents=True)
        data = os.environ.get("MSSQL_TEST_DATA_DIR", str(sub))
        return sub, Path(data)
    backups = tmp_path / "backups"
    data = tmp_path / "data"
    backups.mkdir()
    data.mkdir()
    return backups, data


class Databases:
    """Unique database names for one test; every one of them is dropped at the end."""

    def __init__(self, connection_string: str) -> None:
        self.connection_string = connection_string
        self.names: list[str] = []

    def name(self, prefix: str = "db") -> str:
        """A fresh name (for a database a RESTORE will create)."""
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        self.names.append(name)
        return name

    def create(self, prefix: str = "db", recovery: str = "FULL") -> str:
        import pyodbc

        name = self.name(prefix)
        with pyodbc.connect(self.connection_string, autocommit=True, timeout=10) as conn:
            conn.execute(f"CREATE DATABASE [{name}]")
            conn.execute(f"ALTER DATABASE [{name}] SET RECOVERY {recovery}")
        return name

    def drop_all(self) -> None:
        import pyodbc

        with pyodbc.connect(self.connection_string, autocommit=True, timeout=10) as conn:
            for name in reversed(self.names):
                row = conn.execute(
                    "SELECT state_desc FROM sys.databases WHERE name = ?", name
                ).fetchone()
                if row is None:
                    continue
                if row[0] == "RESTORING":
                    cur = conn.execute(f"RESTORE DATABASE [{name}] WITH RECOVERY")
                    while cur.nextset():
                        pass
                conn.execute(f"ALTER DATABASE [{name}] SET SINGLE_USER WITH ROLLBACK IMMEDIATE")
                conn.execute(f"DROP DATABASE [{name}]")


@pytest.fixture
def mssql_databases(mssql_connection_string):
    databases = Databases(mssql_connection_string)
    yield databases
    databases.drop_all()
