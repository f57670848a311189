"""SQL Server restores from the store: the catalog of recorded backups, the chain to a time,
and its execution — full and differential WITH NORECOVERY, the logs, the last one WITH STOPAT
and RECOVERY — into a new database by default (every file moved beside the originals), over the
live one only when asked (SINGLE_USER for the restore, MULTI_USER after).
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import PurePath

from backup_pipelines.lib.errors import BackupError, StoreError
from backup_pipelines.lib.mssql.backup import Folders, _remove, fetch_from_store
from backup_pipelines.lib.mssql.backupset import BackupSet, Kind
from backup_pipelines.lib.mssql.chain import RestorePlan, plan_restore
from backup_pipelines.lib.mssql.connection import Log, connected, literal, query, quote_name, run
from backup_pipelines.lib.store import ArtifactRef, BackupStore
from backup_pipelines.lib.store.copy import lease_store

ASSETS = {
    Kind.FULL: "mssql/full_backup",
    Kind.DIFF: "mssql/diff_backup",
    Kind.LOG: "mssql/log_backup",
}
STATS_PERCENT = 10
# STATS covers copying the pages; the redo (and, WITH RECOVERY, undo) that follows says nothing
# until it ends and can take long on a large log. Taking that silence for a hung server would
# cancel a restore over live halfway through recovery, so a restore may be silent this long.
RESTORE_SILENCE_SECONDS = 3600.0


@dataclass
class Catalog:
    """The backups of the store, as recorded in their manifests (by artifact)."""

    backups: list[BackupSet]
    manifests: dict[ArtifactRef, dict]
    problems: list[str]

    def manifest_of(self, backup: BackupSet) -> dict:
        return self.manifests[backup.location]


def read_catalog(store: BackupStore, until: datetime | None = None) -> Catalog:
    """Every recorded SQL Server backup dated up to `until` (a day's margin: a backup's folder
    is its partition's date, its finish time can be the next day). An unreadable manifest is a
    problem reported with the plan, never silently part of a chain."""
    backups: list[BackupSet] = []
    manifests: dict[ArtifactRef, dict] = {}
    problems: list[str] = []
    last_day = until.date().toordinal() + 1 if until else None
    for asset in ASSETS.values():
        for ref in store.list_artifacts(asset):
            if last_day is not None and datetime.fromisoformat(ref.date).toordinal() > last_day:
                continue
            try:
                manifest = store.require_manifest(ref)
                backups.append(BackupSet.from_manifest(manifest.get("header"), ref))
            except (BackupError, StoreError) as exc:
                problems.append(f"{store.location(ref)}: {exc}")
                continue
            manifests[ref] = manifest
    return Catalog(backups, manifests, problems)


def plan(store: BackupStore, target: datetime | None, database: str) -> tuple[RestorePlan, Catalog]:
    catalog = read_catalog(store, target)
    restore_plan = plan_restore(catalog.backups, target, database)
    restore_plan.notes += [f"skipped unreadable artifact {p}" for p in catalog.problems]
    return restore_plan, catalog


def scratch_database_name(prefix: str = "restore", now: datetime | None = None) -> str:
    return f"{prefix}_{now or datetime.now(UTC):%Y%m%dT%H%M%S}_{secrets.token_hex(4)}"


# A drill or agent restore killed outright (its run worker SIGKILLed, the machine lost) runs no
# cleanup, and its scratch database, a whole copy of the database, stays on the server. The
# next one drops those whose name says they were made over a day ago: none runs that long.
STALE_SCRATCH_AFTER = timedelta(hours=24)
_SCRATCH_NAME = re.compile(r"^(?:drill|agent)_([0-9]{8}T[0-9]{6})_[0-9a-f]{8}$")


def drop_stale_scratch_databases(
    connection_string: str, log: Log, now: datetime | None = None
) -> list[str]:
    """Drop the scratch databases made before STALE_SCRATCH_AFTER ago; returns their names.
    A failure is logged and left for the next run: it must not stop this one."""
    before = (now or datetime.now(UTC)) - STALE_SCRATCH_AFTER
    dropped: list[str] = []
    try:
        with connected(connection_string, "master") as conn:
            for row in query(conn, "SELECT name FROM sys.databases"):
                name = str(row["name"])
                match = _SCRATCH_NAME.fullmatch(name)
                if match is None:
                    continue
                made = datetime.strptime(match.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
                if made < before:
                    run(conn, f"DROP DATABASE {quote_name(name)}", what=f"DROP DATABASE {name}")
                    dropped.append(name)
                    log(f"dropped the scratch database {name}, left by a run that did not finish")
    except (BackupError, ValueError) as exc:
        log(f"the scratch databases of earlier runs could not be checked: {exc}")
    return dropped


def file_list(conn, server_path: str) -> list[dict]:
    return run(
        conn,
        f"RESTORE FILELISTONLY FROM DISK = {literal(server_path)}",
        what="RESTORE FILELISTONLY",
    ).rows


def moves_for(files: list[dict], target: str, data_folder: str) -> list[str]:
    """MOVE clauses placing every file of the backup beside the originals under new names."""
    separator = "\\" if "\\" in data_folder and "/" not in data_folder else "/"
    folder = data_folder.rstrip("/\\")
    clauses = []
    for entry in files:
        logical = str(entry["LogicalName"])
        suffix = PurePath(str(entry["PhysicalName"]).replace("\\", "/")).suffix or (
            ".ldf" if str(entry["Type"]).upper() == "L" else ".mdf"
        )
        safe = re.sub(r"[^A-Za-z0-9_-]", "_", logical)[:64]
        path = f"{folder}{separator}{target}_{safe}{suffix}"
        clauses.append(f"MOVE {literal(logical)} TO {literal(path)}")
    return clauses


def data_folder_of(conn, database: str, log: Log | None = None) -> str:
    """The folder of `database`'s first file; for a database that is gone (DROP DATABASE took
    its files), the server's default data folder."""
    rows = query(
        conn,
        "SELECT physical_name FROM sys.master_files WHERE database_id = DB_ID(?) ORDER BY file_id",
        database,
    )
    if rows:
        return str(PurePath(str(rows[0]["physical_name"]).replace("\\", "/")).parent)
    default = query(
        conn, "SELECT CAST(SERVERPROPERTY('InstanceDefaultDataPath') AS nvarchar(4000)) AS path"
    )
    path = default[0]["path"] if default else None
    if not path:
        raise BackupError(
            f"{database} has no files on this server (dropped?) and the server names no "
            "default data folder (SERVERPROPERTY('InstanceDefaultDataPath')): pass data_folder"
        )
    if log:
        log(f"{database} has no files on this server (dropped?): the server's default data "
            f"folder {path} takes the restored files")  # fmt: skip
    return str(path)


def database_exists(conn, name: str) -> str | None:
    rows = query(conn, "SELECT state_desc FROM sys.databases WHERE name = ?", name)
    return rows[0]["state_desc"] if rows else None


def execute_plan(
    connection_string: str,
    store: BackupStore,
    restore_plan: RestorePlan,
    catalog: Catalog,
    folders: Folders,
    target_database: str,
    overwrite_live: bool = False,
    data_folder: str | None = None,
    log: Log | None = None,
) -> dict:
    """Run the plan into `target_database`; a new database by default. A failure removes a
    database this call created; over the live database it leaves it RESTORING and says so."""
    log = log or (lambda _m: None)
    quote_name(target_database)
    started = time.monotonic()
    with connected(connection_string, "master") as conn:
        existing = database_exists(conn, target_database)
        if existing and not overwrite_live:
            raise BackupError(
                f"database {target_database} already exists: restore under another name, or "
                "over it only with the explicit overwrite option"
            )
        if overwrite_live and target_database != restore_plan.database:
            raise BackupError("the overwrite option restores over the backed-up database only")
        folder = data_folder or data_folder_of(conn, restore_plan.database, log)
        created = not existing
        single_user = False
        steps = []
        try:
            if existing:
                run(
                    conn,
                    f"ALTER DATABASE {quote_name(target_database)} SET SINGLE_USER WITH ROLLBACK IMMEDIATE",
                )
                single_user = True
            for number, backup in enumerate(restore_plan.backups, 1):
                last = number == len(restore_plan.backups)
                steps.append(
                    _restore_one(
                        conn, store, catalog, backup, folders, target_database, folder,
                        restore_plan, first=number == 1, last=last, replace=bool(existing), log=log,
                    )
                )  # fmt: skip
            state = database_exists(conn, target_database)
            if state != "ONLINE":
                raise BackupError(
                    f"after the last restore step {target_database} is {state}, not ONLINE"
                )
        except BaseException:
            if created and database_exists(conn, target_database):
                log(f"restore failed: dropping the database {target_database} it created")
                run(conn, f"DROP DATABASE {quote_name(target_database)}")
            elif existing:
                log(
                    f"restore over {target_database} failed: the database is "
                    f"{database_exists(conn, target_database)}; rerun the restore, or RESTORE "
                    "DATABASE ... WITH RECOVERY to bring it online as it is"
                )
            raise
        finally:
            if single_user and database_exists(conn, target_database) == "ONLINE":
                run(conn, f"ALTER DATABASE {quote_name(target_database)} SET MULTI_USER")
    return {
        "database": target_database,
        "restored_to": restore_plan.target.isoformat(),
        "steps": steps,
        "plan": restore_plan.describe(),
        "seconds": round(time.monotonic() - started, 3),
    }


def _restore_one(
    conn, store, catalog, backup: BackupSet, folders, target, data_folder, restore_plan,
    first: bool, last: bool, replace: bool, log: Log,
) -> dict:  # fmt: skip
    server_path, local_path = folders.pair(f"restore_{secrets.token_hex(6)}.bak")
    try:
        fetch_from_store(store, backup.location, catalog.manifest_of(backup), local_path)
        options = [f"STATS = {STATS_PERCENT}"]
        if first:
            options += (
                moves_for(file_list(conn, server_path), target, data_folder) if not replace else []
            )
            options += ["REPLACE"] if replace else []
        if last and restore_plan.stop_at is not None and backup.kind is Kind.LOG:
            options.append(
                f"STOPAT = {literal(restore_plan.stop_at.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%S.%f')[:-3])}"
            )
        options.append("RECOVERY" if last else "NORECOVERY")
        what = "LOG" if backup.kind is Kind.LOG else "DATABASE"
        statement = (
            f"RESTORE {what} {quote_name(target)} FROM DISK = {literal(server_path)} "
            f"WITH {', '.join(options)}"
        )
        log(
            f"restoring {backup.name} ({', '.join(o for o in options if not o.startswith('MOVE'))})"
        )
        outcome = run(
            conn, statement, log=log, what=f"RESTORE {what}", stall_seconds=RESTORE_SILENCE_SECONDS
        )
        return {
            "backup": str(backup.location),
            "kind": str(backup.kind),
            "messages": outcome.messages[-2:],
        }
    finally:
        _remove(local_path)


def restore_database(
    connection_string: str,
    store: BackupStore,
    database: str,
    target: datetime | None,
    folders: Folders,
    target_database: str | None = None,
    overwrite_live: bool = False,
    dry_run: bool = False,
    log: Log | None = None,
    lease_owner: str | None = None,
) -> dict:
    """Plan from the store and restore `database` to `target` (None: latest) into a new
    database (default `<database>_restored_<stamp>`), or over it when `overwrite_live`: then
    under the whole-database lease, refused while an agent restore writes into live (and
    such a restore refused while this one runs)."""
    log = log or (lambda _m: None)
    restore_plan, catalog = plan(store, target, database)
    for line in restore_plan.describe():
        log(line)
    name = (
        database
        if overwrite_live
        else target_database or f"{database}_restored_{datetime.now(UTC):%Y%m%dT%H%M%S}"
    )
    if dry_run:
        return {
            "database": name,
            "restored_to": restore_plan.target.isoformat(),
            "plan": restore_plan.describe(),
            "dry_run": True,
        }
    if not overwrite_live:  # a new database: nobody else writes into it
        return execute_plan(connection_string, store, restore_plan, catalog, folders, name, log=log)
    with lease_store(store, log).restore_lease(None, lease_owner, log):
        return execute_plan(
            connection_string, store, restore_plan, catalog, folders, name, True, log=log
        )
