"""How the product uses the server: per-agent copy between databases, cancels, concurrency,
prepared statements, and the stand-in process itself."""

from __future__ import annotations

import contextlib
import socket
import threading

import pyodbc
import pytest

from .conftest import REAL
from .helpers import connect, error_number, run

OPTS = "WITH COMPRESSION, CHECKSUM"
MEMORY_DDL = (
    "CREATE TABLE dbo.agents (id INT NOT NULL PRIMARY KEY, name NVARCHAR(50) NOT NULL);"
    "CREATE TABLE dbo.memories (id INT IDENTITY(1,1) NOT NULL PRIMARY KEY, agent_id INT NOT NULL "
    "REFERENCES dbo.agents (id), body NVARCHAR(200) NOT NULL, created_at DATETIME2 NOT NULL DEFAULT SYSUTCDATETIME())"
)


def test_mssql_per_agent_copy_between_databases(
    mssql_connection_string, mssql_databases, mssql_dirs
):
    backups, data = mssql_dirs
    live = mssql_databases.create("live")
    copy = mssql_databases.name("agentcopy")
    with connect(mssql_connection_string) as conn:
        run(conn, f"USE [{live}]; {MEMORY_DDL}")
        conn.execute("INSERT INTO dbo.agents VALUES (?, ?), (?, ?)", 1, "one", 2, "two")
        for i in range(6):
            conn.execute(
                "INSERT INTO dbo.memories (agent_id, body) VALUES (?, ?)", 1 + i % 2, f"memory {i}"
            )
        run(conn, f"BACKUP DATABASE [{live}] TO DISK = N'{backups}/live.bak' {OPTS}")
        conn.execute("DELETE FROM dbo.memories WHERE agent_id = ?", 1)  # agent 1 loses its memory
        conn.execute("INSERT INTO dbo.memories (agent_id, body) VALUES (?, ?)", 2, "after backup")
        logical = {
            r.Type: r.LogicalName
            for r in conn.execute(f"RESTORE FILELISTONLY FROM DISK = N'{backups}/live.bak'")
        }
        move = f"MOVE N'{logical['D']}' TO N'{data}/{copy}.mdf', MOVE N'{logical['L']}' TO N'{data}/{copy}_log.ldf'"
        run(
            conn,
            f"USE master; RESTORE DATABASE [{copy}] FROM DISK = N'{backups}/live.bak' WITH RECOVERY, {move}",
        )
        run(conn, f"SET IDENTITY_INSERT [{live}].dbo.memories ON")
        cur = conn.cursor()
        cur.execute(
            f"INSERT INTO [{live}].dbo.memories (id, agent_id, body, created_at) "
            f"SELECT s.id, s.agent_id, s.body, s.created_at FROM [{copy}].dbo.memories s "
            f"WHERE s.agent_id = ? AND NOT EXISTS (SELECT 1 FROM [{live}].dbo.memories l WHERE l.id = s.id)",
            1,
        )
        assert cur.rowcount == 3
        run(conn, f"SET IDENTITY_INSERT [{live}].dbo.memories OFF")
        rows = conn.execute(
            f"SELECT id, agent_id, body FROM [{live}].dbo.memories ORDER BY id"
        ).fetchall()
        assert [tuple(r) for r in rows] == [
            (1, 1, "memory 0"), (2, 2, "memory 1"), (3, 1, "memory 2"), (4, 2, "memory 3"),
            (5, 1, "memory 4"), (6, 2, "memory 5"), (7, 2, "after backup"),
        ]  # fmt: skip
        assert conn.execute(f"SELECT COUNT(*) FROM [{copy}].dbo.memories").fetchone()[0] == 6
        conn.execute(f"INSERT INTO [{live}].dbo.memories (agent_id, body) VALUES (?, ?)", 1, "new")
        assert conn.execute(f"SELECT MAX(id) FROM [{live}].dbo.memories").fetchone()[0] == 8


def test_mssql_closing_an_undrained_backup_cancels_it(
    mssql_connection_string, mssql_databases, mssql_dirs
):
    backups, _ = mssql_dirs
    db = mssql_databases.create("cancel")
    path = backups / "cancelled.bak"
    with connect(mssql_connection_string) as conn:
        run(conn, f"CREATE TABLE [{db}].dbo.t (id INT PRIMARY KEY, body NVARCHAR(MAX))")
        conn.execute(f"INSERT INTO [{db}].dbo.t VALUES (1, ?)", "x" * 2_000_000)
        for i in range(2, 12):
            conn.execute(
                f"INSERT INTO [{db}].dbo.t SELECT ?, body FROM [{db}].dbo.t WHERE id = 1", i
            )
        cur = conn.cursor()
        cur.execute(f"BACKUP DATABASE [{db}] TO DISK = N'{path}' WITH STATS = 1")
        cur.close()  # not drained: FreeTDS sends a cancel (ATTENTION)
        assert conn.execute("SELECT 1").fetchone()[0] == 1
        finished = conn.execute(
            "SELECT COUNT(*) FROM msdb.dbo.backupset b JOIN msdb.dbo.backupmediafamily f "
            "ON f.media_set_id = b.media_set_id WHERE f.physical_device_name = ?",
            str(path),
        ).fetchone()[0]
        if finished:  # the server was faster than the cancel: then the backup must be whole
            run(conn, f"RESTORE VERIFYONLY FROM DISK = N'{path}'")


def test_mssql_concurrent_connections(mssql_connection_string, mssql_databases):
    db = mssql_databases.create("conc")
    with connect(mssql_connection_string, database=db) as conn:
        run(
            conn,
            "CREATE TABLE dbo.t (id INT IDENTITY(1,1) PRIMARY KEY, worker INT NOT NULL, n INT NOT NULL)",
        )
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            with connect(mssql_connection_string, database=db) as own:
                cur = own.cursor()
                for n in range(
                    15
                ):  # the same statement on one cursor: prepared once, executed again
                    cur.execute("INSERT INTO dbo.t (worker, n) VALUES (?, ?)", worker, n)
                assert own.execute("SELECT DB_NAME()").fetchone()[0] == db
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    with connect(mssql_connection_string, database=db) as conn:
        counts = conn.execute(
            "SELECT worker, COUNT(*), COUNT(DISTINCT id) FROM dbo.t GROUP BY worker ORDER BY worker"
        ).fetchall()
        assert [tuple(r) for r in counts] == [(w, 15, 15) for w in range(4)]
        assert 3702 in _fails(conn, f"DROP DATABASE [{db}]")  # in use by this very connection


def _fails(conn, sql: str) -> list[int]:
    with pytest.raises(pyodbc.Error) as failure:
        run(conn, sql)
    return error_number(failure.value)


def test_mssql_differential_needs_its_own_base(
    mssql_connection_string, mssql_databases, mssql_dirs
):
    backups, data = mssql_dirs
    db = mssql_databases.create("base")
    copy = mssql_databases.name("base_copy")
    with connect(mssql_connection_string) as conn:
        run(conn, f"CREATE TABLE [{db}].dbo.t (id INT PRIMARY KEY)")
        run(conn, f"BACKUP DATABASE [{db}] TO DISK = N'{backups}/full1.bak' {OPTS}")
        run(conn, f"BACKUP DATABASE [{db}] TO DISK = N'{backups}/full2.bak' {OPTS}")
        conn.execute(f"INSERT INTO [{db}].dbo.t VALUES (1)")
        run(conn, f"BACKUP DATABASE [{db}] TO DISK = N'{backups}/diff.bak' {OPTS}, DIFFERENTIAL")
        logical = {
            r.Type: r.LogicalName
            for r in conn.execute(f"RESTORE FILELISTONLY FROM DISK = N'{backups}/full1.bak'")
        }
        move = f"MOVE N'{logical['D']}' TO N'{data}/{copy}.mdf', MOVE N'{logical['L']}' TO N'{data}/{copy}_log.ldf'"
        run(
            conn,
            f"RESTORE DATABASE [{copy}] FROM DISK = N'{backups}/full1.bak' WITH NORECOVERY, {move}",
        )
        assert 3136 in _fails(
            conn, f"RESTORE DATABASE [{copy}] FROM DISK = N'{backups}/diff.bak' WITH NORECOVERY"
        )
        run(
            conn,
            f"RESTORE DATABASE [{copy}] FROM DISK = N'{backups}/full2.bak' WITH NORECOVERY, REPLACE, {move}",
        )
        run(conn, f"RESTORE DATABASE [{copy}] FROM DISK = N'{backups}/diff.bak' WITH RECOVERY")
        assert conn.execute(f"SELECT id FROM [{copy}].dbo.t").fetchall()[0][0] == 1


@pytest.mark.skipif(bool(REAL), reason="the stand-in process only")
def test_mssql_standin_process_stops_and_frees_its_port():
    from backup_pipelines.devstack.mssql import MssqlStandinProcess

    with MssqlStandinProcess() as server:
        with connect(server.connection_string()) as conn:
            assert conn.execute("SELECT 1").fetchone()[0] == 1
        port, storage = server.port, server.storage
    assert not server.running
    assert not storage.exists()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.skipif(
    bool(REAL), reason="a real SQL Server speaks HTTPS only to S3; the local endpoint is plain HTTP"
)
def test_mssql_backup_to_url_on_s3_and_restore_from_it(
    mssql_connection_string, mssql_databases, mssql_dirs, s3_server
):
    from backup_pipelines.devstack.s3_server import ACCESS_KEY, SECRET_KEY

    _, data = mssql_dirs
    db = mssql_databases.create("s3")
    copy = mssql_databases.name("s3_copy")
    prefix = f"s3://127.0.0.1:{s3_server.port}/{s3_server.bucket}"
    folder = f"{prefix}/mssql/{db}"
    with connect(mssql_connection_string) as conn:
        if conn.execute("SELECT 1 FROM sys.credentials WHERE name = ?", prefix).fetchone() is None:
            run(
                conn,
                f"CREATE CREDENTIAL [{prefix}] WITH IDENTITY = 'S3 Access Key', SECRET = '{ACCESS_KEY}:{SECRET_KEY}'",
            )
        run(conn, f"CREATE TABLE [{db}].dbo.t (id INT PRIMARY KEY, body NVARCHAR(MAX))")
        conn.execute(f"INSERT INTO [{db}].dbo.t VALUES (1, ?)", "s3 " * 1000)
        run(
            conn,
            f"BACKUP DATABASE [{db}] TO URL = N'{folder}/full.bak' WITH FORMAT, COMPRESSION, CHECKSUM, MAXTRANSFERSIZE = 5242880",
        )
        conn.execute(f"INSERT INTO [{db}].dbo.t VALUES (2, N'after')")
        run(
            conn,
            f"BACKUP LOG [{db}] TO URL = N'{folder}/log.trn' WITH FORMAT, COMPRESSION, CHECKSUM",
        )
        assert 3201 in _fails(
            conn, f"BACKUP DATABASE [{db}] TO URL = N'{folder}/full.bak' WITH COMPRESSION"
        )
        full = conn.execute(f"RESTORE HEADERONLY FROM URL = N'{folder}/full.bak'").fetchone()
        assert full.DatabaseName == db and full.BackupType == 1
        device = conn.execute(
            "SELECT f.physical_device_name, f.device_type FROM msdb.dbo.backupset b JOIN msdb.dbo.backupmediafamily f "
            "ON f.media_set_id = b.media_set_id WHERE b.backup_set_uuid = ?",
            full.BackupSetGUID,
        ).fetchone()
        assert tuple(device) == (f"{folder}/full.bak", 9)
        logical = {
            r.Type: r.LogicalName
            for r in conn.execute(f"RESTORE FILELISTONLY FROM URL = N'{folder}/full.bak'")
        }
        move = f"MOVE N'{logical['D']}' TO N'{data}/{copy}.mdf', MOVE N'{logical['L']}' TO N'{data}/{copy}_log.ldf'"
        run(
            conn,
            f"RESTORE DATABASE [{copy}] FROM URL = N'{folder}/full.bak' WITH NORECOVERY, {move}",
        )
        run(conn, f"RESTORE LOG [{copy}] FROM URL = N'{folder}/log.trn' WITH RECOVERY")
        assert [
            r[0] for r in conn.execute(f"SELECT id FROM [{copy}].dbo.t ORDER BY id").fetchall()
        ] == [1, 2]
    keys = [
        o["Key"]
        for o in s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix=f"mssql/{db}/")[
            "Contents"
        ]
    ]
    assert sorted(keys) == [f"mssql/{db}/full.bak", f"mssql/{db}/log.trn"]


def _through_proxy(connection_string: str):
    """A TCP proxy in front of the server and the connection string that goes through it."""
    import re

    from backup_pipelines_tests.faults.proxy import TcpProxy

    server = re.search(r"(?i)SERVER=([^;,]+)(?:,(\d+))?", connection_string)
    port = re.search(r"(?i)\bPORT=(\d+)", connection_string)
    proxy = TcpProxy(server.group(1), int(server.group(2) or (port and port.group(1)) or 1433))
    proxy.start()
    through = re.sub(r"(?i)SERVER=[^;]+", "SERVER=127.0.0.1", connection_string)
    through = re.sub(r"(?i)\bPORT=\d+", f"PORT={proxy.port}", through)
    if not port:
        through += f";PORT={proxy.port}"
    return proxy, through


def test_mssql_a_silent_server_fails_the_statement_and_a_talking_one_is_never_cut(
    mssql_connection_string,
):
    """The product's statements end on the server's silence, not on their length: a batch
    that reports progress (RAISERROR ... WITH NOWAIT, as BACKUP's STATS) runs past the limit;
    a server that goes silent mid-statement (hung, or its network black-holed) fails it
    within twice the limit, named, where a cancel from a watchdog thread waited forever."""
    import time

    from backup_pipelines.lib.mssql.connection import MssqlError
    from backup_pipelines.lib.mssql.connection import connect as product_connect
    from backup_pipelines.lib.mssql.connection import run as product_run
    from backup_pipelines_tests.faults.proxy import outcome_within

    talking = ";".join(
        f"RAISERROR('step {n}', 0, 1) WITH NOWAIT; WAITFOR DELAY '00:00:01'" for n in range(5)
    )
    with contextlib.closing(product_connect(mssql_connection_string)) as conn:
        started = time.monotonic()
        outcome = product_run(conn, f"{talking}; SELECT 1 AS done", stall_seconds=2)
        assert time.monotonic() - started >= 5  # past the 2-s limit, alive all along
        assert outcome.rows == [{"done": 1}]
        assert [m for m in outcome.messages if m.startswith("step")] == [
            f"step {n}" for n in range(5)
        ]

    proxy, through = _through_proxy(mssql_connection_string)
    try:
        conn = product_connect(through)
        assert product_run(conn, "SELECT 1 AS one").rows == [{"one": 1}]
        proxy.hang()
        failed = outcome_within(
            30, product_run, conn, "SELECT 2 AS two", stall_seconds=2, what="probe"
        )
        assert isinstance(failed, MssqlError), failed
        assert "probe made no progress for 2 s and was cancelled" in str(failed)
    finally:
        proxy.stop()
