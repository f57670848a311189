"""The weekly drill of the SQL Server database: its newest backups restored from the store into
a scratch database (the real chain planner and restore), checked by the server (`DBCC CHECKDB`,
the check a restore test owes the data's structure: RESTORE VERIFYONLY only reads checksums),
counted, timed against the RTO, and always dropped."""

from __future__ import annotations

import time

from backup_pipelines.lib.errors import BackupError, StoreError
from backup_pipelines.lib.mssql.backup import Folders
from backup_pipelines.lib.mssql.connection import Log, connected, query, quote_name, run
from backup_pipelines.lib.mssql.restore import (
    drop_stale_scratch_databases,
    execute_plan,
    plan,
    scratch_database_name,
)

# DBCC CHECKDB says nothing until it ends, and on a large database that takes hours: the
# silence a statement is allowed (10 minutes elsewhere) is this long for it.
CHECKDB_SILENCE_SECONDS = 4 * 3600.0


def drill_database(
    connection_string: str,
    store,
    database: str,
    folders: Folders,
    log: Log | None = None,
) -> dict:
    """Restore the newest reachable instant into `drill_<stamp>_<hex>`; never raises for a
    failed restore — the result says passed=False with the problems (the caller alerts)."""
    log = log or (lambda _m: None)
    drop_stale_scratch_databases(connection_string, log)
    scratch = scratch_database_name("drill")
    result = {"scratch": scratch, "passed": False, "problems": [], "counts": {}, "date": None}
    started = time.monotonic()
    try:
        restore_plan, catalog = plan(store, None, database)
        result["date"] = restore_plan.target.date().isoformat()
        execute_plan(connection_string, store, restore_plan, catalog, folders, scratch, log=log)
        with connected(connection_string, scratch) as conn:
            checked = run(
                conn,
                f"DBCC CHECKDB ({quote_name(scratch)}) WITH NO_INFOMSGS",
                what="DBCC CHECKDB",
                stall_seconds=CHECKDB_SILENCE_SECONDS,
            )
            tables = query(
                conn,
                "SELECT TABLE_SCHEMA AS s, TABLE_NAME AS t FROM INFORMATION_SCHEMA.TABLES "
                "WHERE TABLE_TYPE = 'BASE TABLE' ORDER BY 1, 2",
            )
            for table in tables:
                name = f"{quote_name(table['s'])}.{quote_name(table['t'])}"
                result["counts"][f"{table['s']}.{table['t']}"] = query(
                    conn, f"SELECT COUNT(*) AS n FROM {name}"
                )[0]["n"]
        result["checkdb"] = checked.messages[-3:]
        result["restored_to"] = restore_plan.target.isoformat()
        result["passed"] = True
    except (BackupError, StoreError) as exc:
        result["problems"].append(str(exc))
        log(f"SQL Server drill of {database} FAILED: {exc}")
    finally:
        result["seconds"] = round(time.monotonic() - started, 3)
        try:
            with connected(connection_string, "master") as conn:
                if query(conn, "SELECT name FROM sys.databases WHERE name = ?", scratch):
                    run(conn, f"DROP DATABASE {quote_name(scratch)}")
        except BackupError as exc:
            result["passed"] = False
            result["problems"].append(f"DRILL CLEANUP FAILED — drop {scratch} by hand: {exc}")
    return result
