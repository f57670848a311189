"""SQL Server backups into the store: the server writes `BACKUP ... WITH COMPRESSION, CHECKSUM`
to a folder it shares with this process, the file is streamed into the store with its sha256,
and the manifest records the backup's header (RESTORE HEADERONLY, cross-checked with
msdb.dbo.backupset) so restores can be planned from the store alone.

Backup types follow Ola Hallengren's ChangeBackupType: a differential with no full base, or
whose base is a full this store does not hold (taken outside this project), becomes a full and
says so; a log is skipped, with the reason, in SIMPLE recovery or before the first full.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePath

from backup_pipelines.lib.errors import BackupError
from backup_pipelines.lib.mssql.backupset import BackupSet, Kind
from backup_pipelines.lib.mssql.connection import (
    Log,
    connected,
    describe_server,
    literal,
    query,
    quote_name,
    run,
)
from backup_pipelines.lib.store import ArtifactWriter, BackupStore, iter_chunks
from backup_pipelines.lib.streams import Progress

BACKUP_FILE = "backup.bak"
STATS_PERCENT = 5
COPY_CHUNK = 4 << 20


@dataclass(frozen=True)
class Folders:
    """The folder SQL Server writes backups to (its own path), and the same folder as this
    process sees it (a shared volume; the same path on one machine)."""

    server: str
    local: Path

    def pair(self, name: str) -> tuple[str, Path]:
        if "/" in name or "\\" in name or name in ("", ".", ".."):
            raise BackupError(f"{name!r} is not a plain file name")
        separator = "\\" if "\\" in self.server and "/" not in self.server else "/"
        return self.server.rstrip("/\\") + separator + name, self.local / name


@dataclass(frozen=True)
class Decision:
    requested: Kind
    kind: Kind | None  # None: skipped
    reason: str = ""


def database_state(conn, database: str) -> dict:
    rows = query(
        conn,
        "SELECT name, state_desc, recovery_model_desc FROM sys.databases WHERE name = ?",
        database,
    )
    if not rows:
        raise BackupError(f"SQL Server has no database {database!r}")
    return rows[0]


def differential_base(conn, database: str) -> dict | None:
    """The newest full (not copy-only) msdb knows: the base a differential taken now builds on."""
    rows = query(
        conn,
        "SELECT TOP 1 checkpoint_lsn, backup_set_uuid, backup_finish_date "
        "FROM msdb.dbo.backupset WHERE database_name = ? AND type = 'D' AND is_copy_only = 0 "
        "ORDER BY backup_finish_date DESC",
        database,
    )
    return rows[0] if rows else None


def decide(requested: Kind, recovery_model: str, base: dict | None, held: set[int]) -> Decision:
    """What to take: `held` are the checkpoint LSNs of the fulls this store holds."""
    if requested is Kind.FULL:
        return Decision(requested, Kind.FULL)
    if requested is Kind.DIFF:
        if base is None:
            return Decision(
                requested, Kind.FULL, "no full backup exists yet: taking a full instead"
            )
        if int(base["checkpoint_lsn"]) not in held:
            return Decision(
                requested,
                Kind.FULL,
                f"the differential base (full backup {base['backup_set_uuid']}, finished "
                f"{base['backup_finish_date']}) is not in this store — taken outside this "
                "project: taking a full instead, so every differential here has its base here",
            )
        return Decision(requested, Kind.DIFF)
    if recovery_model.upper() == "SIMPLE":
        return Decision(
            requested,
            None,
            "the database is in SIMPLE recovery: there is no log to back up (point-in-time "
            "restore needs FULL recovery: ALTER DATABASE ... SET RECOVERY FULL, then a full backup)",
        )
    if base is None:
        return Decision(
            requested, None, "no full backup exists yet: the log chain starts with the first full"
        )
    return Decision(requested, Kind.LOG)


def backup_statement(kind: Kind, database: str, server_path: str) -> str:
    target = "LOG" if kind is Kind.LOG else "DATABASE"
    options = ["COMPRESSION", "CHECKSUM", "FORMAT", "INIT", f"STATS = {STATS_PERCENT}"]
    if kind is Kind.DIFF:
        options.insert(0, "DIFFERENTIAL")
    return (
        f"BACKUP {target} {quote_name(database)} TO DISK = {literal(server_path)} "
        f"WITH {', '.join(options)}"
    )


def read_header(conn, server_path: str, location=None) -> tuple[BackupSet, dict]:
    rows = run(
        conn, f"RESTORE HEADERONLY FROM DISK = {literal(server_path)}", what="RESTORE HEADERONLY"
    ).rows
    if len(rows) != 1:
        raise BackupError(
            f"RESTORE HEADERONLY of {server_path} returned {len(rows)} backup sets, expected one "
            "(the file is written WITH FORMAT, INIT)"
        )
    return BackupSet.from_headeronly(rows[0], location), rows[0]


def cross_check(conn, header: BackupSet) -> dict:
    """msdb must record the same backup: the file on disk is the one this run wrote."""
    rows = query(
        conn,
        "SELECT type, first_lsn, last_lsn, checkpoint_lsn, database_backup_lsn, is_copy_only, "
        "backup_size, compressed_backup_size FROM msdb.dbo.backupset WHERE backup_set_uuid = ?",
        header.backup_set_guid,
    )
    if not rows:
        raise BackupError(
            f"msdb.dbo.backupset has no backup set {header.backup_set_guid}: the backup file "
            "is not the one this run took"
        )
    row = rows[0]
    recorded = (int(row["first_lsn"]), int(row["last_lsn"]), int(row["checkpoint_lsn"]))
    if recorded != (header.first_lsn, header.last_lsn, header.checkpoint_lsn):
        raise BackupError(
            f"backup set {header.backup_set_guid}: msdb records LSNs {recorded}, the file's "
            f"header {(header.first_lsn, header.last_lsn, header.checkpoint_lsn)}"
        )
    return {
        "backup_size": int(row["backup_size"] or 0),
        "compressed_backup_size": int(row["compressed_backup_size"] or 0),
    }


def file_name(database: str, kind: Kind) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in database)[:64]
    return f"{safe}_{kind}_{stamp}_{secrets.token_hex(4)}.bak"


def take_backup(
    connection_string: str,
    database: str,
    requested: Kind,
    folders: Folders,
    writer: ArtifactWriter,
    held_fulls: set[int],
    log: Log | None = None,
) -> dict | None:
    """Back up `database` into `writer`; the manifest fields, or None when skipped (the reason
    is logged). `held_fulls`: checkpoint LSNs of the fulls the store holds (for ChangeBackupType)."""
    log = log or (lambda _m: None)
    started = time.monotonic()
    with connected(connection_string, "master") as conn:
        state = database_state(conn, database)
        if state["state_desc"] != "ONLINE":
            raise BackupError(f"database {database} is {state['state_desc']}, not ONLINE")
        decision = decide(
            requested, state["recovery_model_desc"], differential_base(conn, database), held_fulls
        )
        if decision.reason:
            log(f"{requested} backup of {database}: {decision.reason}")
        if decision.kind is None:
            return None
        version = query(conn, "SELECT SERVERPROPERTY('ProductVersion') AS version")[0]["version"]
        server_path, local_path = folders.pair(file_name(database, decision.kind))
        try:
            run(
                conn,
                backup_statement(decision.kind, database, server_path),
                log=log,
                what=f"BACKUP {decision.kind}",
            )
            header, raw = read_header(conn, server_path, writer.ref)
            sizes = cross_check(conn, header)
            copied = copy_into_store(local_path, writer, log)
        finally:
            _remove(local_path)
    return {
        "captured_at": _iso(header.finished_at),
        "header": {**header.to_manifest(), **sizes, **_header_extras(raw)},
        "counts": {"backup_bytes": copied},
        "source": {
            "kind": "sqlserver",
            "server": describe_server(connection_string),
            "database": database,
            "server_version": str(version),
            "recovery_model": state["recovery_model_desc"],
        },
        "tool": {
            "name": f"BACKUP {'LOG' if decision.kind is Kind.LOG else 'DATABASE'}",
            "options": "COMPRESSION, CHECKSUM",
            "requested": str(requested),
            "taken": str(decision.kind),
            "reason": decision.reason,
        },
        "duration_seconds": round(time.monotonic() - started, 3),
    }


def _header_extras(raw: dict) -> dict:
    """HEADERONLY fields kept for the operator (not used by the planner)."""
    keep = (
        "ForkPointLSN",
        "DifferentialBaseLSN",
        "DifferentialBaseGUID",
        "RecoveryModel",
        "BackupTypeDescription",
    )
    return {key: str(raw[key]) for key in keep if key in raw and raw[key] is not None}


def copy_into_store(local_path: Path, writer: ArtifactWriter, log: Log) -> int:
    """The server's backup file into the artifact, streamed and hashed (never held in memory)."""
    progress = Progress(f"copy {local_path.name} into the store", log)
    try:
        source = open(local_path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise BackupError(
            f"cannot read the backup file {local_path} the server wrote ({exc.strerror}): the "
            "backup folder must be shared between SQL Server and this process (MSSQL_BACKUP_DIR "
            "as the server sees it, MSSQL_BACKUP_LOCAL_DIR as this process sees it)"
        ) from None
    with source, writer.open_file(BACKUP_FILE) as out:
        for chunk in iter_chunks(source, COPY_CHUNK):
            out.write(chunk)
            progress.add(bytes_in=len(chunk))
    log(progress.line())
    return progress.bytes_in


def fetch_from_store(store: BackupStore, ref, manifest: dict, local_path: Path) -> None:
    """A stored backup file back onto the shared folder (sha256 checked as it streams)."""
    try:
        with store.open_file(ref, manifest, BACKUP_FILE) as reader, open(local_path, "wb") as out:
            for chunk in iter_chunks(reader, COPY_CHUNK):
                out.write(chunk)
    except BaseException:
        _remove(local_path)
        raise


def verify_stored_backup(
    connection_string: str,
    store: BackupStore,
    ref,
    manifest: dict,
    folders: Folders,
    log: Log | None = None,
) -> list[str]:
    """The stored copy itself, checked by SQL Server: RESTORE VERIFYONLY ... WITH CHECKSUM."""
    server_path, local_path = folders.pair(f"verify_{secrets.token_hex(6)}.bak")
    try:
        fetch_from_store(store, ref, manifest, local_path)
        with connected(connection_string, "master") as conn:
            outcome = run(
                conn,
                # STATS: progress, so a long check is not taken for a silent server
                f"RESTORE VERIFYONLY FROM DISK = {literal(server_path)} WITH CHECKSUM, "
                f"STATS = {STATS_PERCENT}",
                log=log,
                what="RESTORE VERIFYONLY",
            )
        return outcome.messages
    finally:
        _remove(local_path)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def server_folder_of(physical_name: str) -> str:
    """The folder of a database file as the server names it (for MOVE targets beside it)."""
    return str(PurePath(physical_name).parent)
