"""Connections, types, transactions and errors through pyodbc + FreeTDS (stand-in or real server)."""

from __future__ import annotations

import struct
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pyodbc
import pytest

from .helpers import connect, error_number, run

TYPES_DDL = """
CREATE TABLE dbo.agents (
    id INT IDENTITY(1,1) NOT NULL CONSTRAINT PK_agents PRIMARY KEY,
    name NVARCHAR(100) NOT NULL,
    created_at DATETIME2(3) NOT NULL DEFAULT SYSUTCDATETIME()
);
CREATE TABLE dbo.memories (
    id BIGINT NOT NULL,
    agent_id INT NOT NULL,
    small SMALLINT NULL,
    flag BIT NULL,
    score FLOAT NULL,
    ratio REAL NULL,
    amount DECIMAL(18, 4) NULL,
    lsn NUMERIC(25, 0) NULL,
    title VARCHAR(200) NULL,
    body NVARCHAR(MAX) NULL,
    short_text NVARCHAR(50) NULL,
    blob VARBINARY(MAX) NULL,
    digest VARBINARY(32) NULL,
    seen_at DATETIME2(7) NULL,
    seen_offset DATETIMEOFFSET NULL,
    day DATE NULL,
    uid UNIQUEIDENTIFIER NULL,
    CONSTRAINT PK_memories PRIMARY KEY (id, agent_id),
    CONSTRAINT FK_memories_agents FOREIGN KEY (agent_id) REFERENCES dbo.agents (id)
);
"""


def _datetimeoffset(raw: bytes) -> datetime:
    """pyodbc has no datetimeoffset type: the documented output converter (SQL type -155)."""
    y, mo, d, h, mi, s, ns, oh, om = struct.unpack("<6hI2h", raw)
    return datetime(y, mo, d, h, mi, s, ns // 1000, timezone(timedelta(hours=oh, minutes=om)))


def test_mssql_connects_and_reports_version(mssql_connection_string):
    with connect(mssql_connection_string) as conn:
        version = conn.execute("SELECT @@VERSION").fetchone()[0]
        product = conn.execute("SELECT SERVERPROPERTY('ProductVersion')").fetchone()[0]
        assert "Microsoft SQL Server" in version
        assert int(str(product).split(".")[0]) >= 16
        assert tuple(
            conn.execute("SELECT DB_NAME(), @@TRANCOUNT, DB_ID(N'master')").fetchone()
        ) == ("master", 0, 1)
        now = conn.execute("SELECT SYSUTCDATETIME()").fetchone()[0]
        assert isinstance(now, datetime)


def test_mssql_login_failure_is_18456(mssql_server):
    with pytest.raises(pyodbc.Error) as failure:
        pyodbc.connect(mssql_server.connection_string(password="not-the-password"), timeout=10)
    assert 18456 in error_number(failure.value)


def test_mssql_types_round_trip_through_parameters(mssql_connection_string, mssql_databases):
    db = mssql_databases.create("types")
    with connect(mssql_connection_string, database=db) as conn:
        conn.add_output_converter(-155, _datetimeoffset)
        run(conn, TYPES_DDL)
        conn.execute("INSERT INTO dbo.agents (name) VALUES (?), (?)", "alice", "bob")
        agents = conn.execute("SELECT id, name, created_at FROM dbo.agents ORDER BY id").fetchall()
        assert [(a.id, a.name) for a in agents] == [(1, "alice"), (2, "bob")]
        assert all(isinstance(a.created_at, datetime) for a in agents)
        row = (
            2**40 + 7, 1, -12, True, 1.25, 0.5, Decimal("1234.5678"), Decimal("37000000012300001"),
            "plain ascii", "ünïcödé " * 1000, "short", bytes(range(256)) * 40, b"\x01" * 32,
            datetime(2026, 12, 1, 13, 5, 0, 123000),
            "2026-12-01 13:05:00.4560000 +02:00",
            date(2026, 12, 1), uuid.UUID("6f9619ff-8b86-d011-b42d-00c04fc964ff"),
        )  # fmt: skip
        marks = ", ".join("?" * len(row))
        conn.execute(f"INSERT INTO dbo.memories VALUES ({marks})", *row)
        conn.execute(
            "INSERT INTO dbo.memories (id, agent_id) VALUES (?, ?)", 2, 2
        )  # every other column NULL
        got = conn.execute(
            "SELECT * FROM dbo.memories WHERE id = ? AND agent_id = ?", row[0], 1
        ).fetchone()
        expected = list(row)
        expected[14] = datetime(2026, 12, 1, 13, 5, 0, 456000, timezone(timedelta(hours=2)))
        expected[16] = str(row[16]).upper()
        assert list(got) == expected
        assert [type(v) for v in got[:4]] == [int, int, int, bool]
        nulls = conn.execute("SELECT * FROM dbo.memories WHERE id = 2").fetchone()
        assert list(nulls[2:]) == [None] * 15
        assert tuple(
            conn.execute("SELECT COUNT(*), MAX(seen_at) FROM dbo.memories").fetchone()
        ) == (2, row[13])
        assert (
            conn.execute(
                "SELECT TOP 1 body FROM dbo.memories WHERE title LIKE ? ORDER BY id", "plain%"
            ).fetchone()[0]
            == row[9]
        )


def test_mssql_catalog_lists_columns_and_keys(mssql_connection_string, mssql_databases):
    db = mssql_databases.create("catalog")
    with connect(mssql_connection_string, database=db) as conn:
        run(conn, TYPES_DDL)
        cols = conn.execute(
            "SELECT COLUMN_NAME, DATA_TYPE, IS_NULLABLE FROM INFORMATION_SCHEMA.COLUMNS "
            "WHERE TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
            "agents",
        ).fetchall()
        assert [tuple(c) for c in cols] == [
            ("id", "int", "NO"),
            ("name", "nvarchar", "NO"),
            ("created_at", "datetime2", "NO"),
        ]
        pk = conn.execute(
            "SELECT k.COLUMN_NAME FROM INFORMATION_SCHEMA.TABLE_CONSTRAINTS c "
            "JOIN INFORMATION_SCHEMA.KEY_COLUMN_USAGE k ON k.CONSTRAINT_NAME = c.CONSTRAINT_NAME "
            "WHERE c.TABLE_NAME = 'memories' AND c.CONSTRAINT_TYPE = 'PRIMARY KEY' ORDER BY k.ORDINAL_POSITION"
        ).fetchall()
        assert [r[0] for r in pk] == ["id", "agent_id"]
        fk = conn.execute(
            "SELECT OBJECT_NAME(parent_object_id), OBJECT_NAME(referenced_object_id) FROM sys.foreign_keys"
        ).fetchall()
        assert [tuple(r) for r in fk] == [("memories", "agents")]
        identity = conn.execute(
            "SELECT c.name, TYPE_NAME(c.system_type_id), c.is_identity FROM sys.columns c "
            "WHERE c.object_id = OBJECT_ID(N'dbo.agents') ORDER BY c.column_id"
        ).fetchall()
        assert [tuple(r) for r in identity] == [
            ("id", "int", True),
            ("name", "nvarchar", False),
            ("created_at", "datetime2", False),
        ]


def test_mssql_rollback_and_commit_with_autocommit_off(mssql_connection_string, mssql_databases):
    db = mssql_databases.create("tx")
    with connect(mssql_connection_string, database=db) as setup:
        setup.execute("CREATE TABLE dbo.t (id INT PRIMARY KEY, v NVARCHAR(10))")
    with connect(mssql_connection_string, autocommit=False, database=db) as conn:
        assert conn.execute("SELECT @@TRANCOUNT").fetchone()[0] == 1
        conn.execute("INSERT INTO dbo.t VALUES (?, ?)", 1, "gone")
        assert conn.execute("SELECT COUNT(*) FROM dbo.t").fetchone()[0] == 1
        conn.rollback()
        assert conn.execute("SELECT COUNT(*) FROM dbo.t").fetchone()[0] == 0
        conn.execute("INSERT INTO dbo.t VALUES (?, ?)", 2, "kept")
        conn.commit()
    with connect(mssql_connection_string, database=db) as check:
        assert [tuple(r) for r in check.execute("SELECT id, v FROM dbo.t").fetchall()] == [
            (2, "kept")
        ]
        run(check, "BEGIN TRANSACTION; INSERT INTO dbo.t VALUES (3, N'x'); ROLLBACK")
        assert check.execute("SELECT COUNT(*) FROM dbo.t").fetchone()[0] == 1


def test_mssql_second_connection_does_not_see_uncommitted_rows(
    mssql_connection_string, mssql_databases
):
    db = mssql_databases.create("iso")
    with connect(mssql_connection_string, database=db) as setup:
        setup.execute("CREATE TABLE dbo.t (id INT PRIMARY KEY)")
        setup.execute("INSERT INTO dbo.t VALUES (1)")
    with (
        connect(mssql_connection_string, autocommit=False, database=db) as writer,
        connect(mssql_connection_string, database=db) as reader,
    ):
        writer.execute("INSERT INTO dbo.t VALUES (2)")
        reader.execute("SET LOCK_TIMEOUT 500")
        try:
            seen = [r[0] for r in reader.execute("SELECT id FROM dbo.t ORDER BY id").fetchall()]
        except pyodbc.Error as exc:  # a real server blocks on the row lock instead
            assert 1222 in error_number(exc)
            seen = [1]
        assert seen == [1]
        writer.commit()
        assert [r[0] for r in reader.execute("SELECT id FROM dbo.t ORDER BY id").fetchall()] == [
            1,
            2,
        ]


def _error(conn, sql: str, *params) -> list[int]:
    with pytest.raises(pyodbc.Error) as failure:
        run(conn, sql, *params)
    return error_number(failure.value)


def test_mssql_errors_carry_sql_server_numbers(mssql_connection_string, mssql_databases):
    db = mssql_databases.create("errors")
    with connect(mssql_connection_string, database=db) as conn:
        run(
            conn,
            "CREATE TABLE dbo.parent (id INT IDENTITY(1,1) PRIMARY KEY, name NVARCHAR(20) NOT NULL)",
        )
        run(
            conn,
            "CREATE TABLE dbo.child (id INT PRIMARY KEY, parent_id INT NOT NULL REFERENCES dbo.parent (id))",
        )
        conn.execute("INSERT INTO dbo.parent (name) VALUES (?)", "p")
        assert 208 in _error(conn, "SELECT * FROM dbo.missing")
        assert 207 in _error(conn, "SELECT missing_column FROM dbo.parent")
        assert 102 in _error(conn, "SELECT * FROM WHERE")
        assert 515 in _error(conn, "INSERT INTO dbo.parent (name) VALUES (NULL)")
        assert 544 in _error(conn, "INSERT INTO dbo.parent (id, name) VALUES (5, N'x')")
        assert 547 in _error(conn, "INSERT INTO dbo.child VALUES (1, 99)")
        conn.execute("INSERT INTO dbo.child VALUES (1, 1)")
        assert 2627 in _error(conn, "INSERT INTO dbo.child VALUES (?, ?)", 1, 1)
        assert 547 in _error(conn, "DELETE FROM dbo.parent")
        assert 1801 in _error(conn, f"CREATE DATABASE [{db}]")
        assert 3701 in _error(conn, "DROP DATABASE [no_such_database_here]")
        run(conn, "SET IDENTITY_INSERT dbo.parent ON")
        conn.execute("INSERT INTO dbo.parent (id, name) VALUES (?, ?)", 10, "explicit")
        run(conn, "SET IDENTITY_INSERT dbo.parent OFF")
        conn.execute("INSERT INTO dbo.parent (name) VALUES (?)", "next")
        assert conn.execute("SELECT MAX(id) FROM dbo.parent").fetchone()[0] == 11
