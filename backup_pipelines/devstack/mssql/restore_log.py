"""RESTORE LOG (with STOPAT) and recovery: redo of the stand-in's logical log records.

Each RESTORE LOG must begin at or before the database's redo point (else 4305) and end after it
(else 4326); its records from the redo point on are redone in LSN order, stopping before the
first transaction committed after STOPAT. A log that ends before STOPAT leaves the database
RESTORING (4322) for the next log. RECOVERY brings the database ONLINE on a new recovery fork.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime
from pathlib import Path

from . import dbfile
from .backup_command import Command, Progress, summary
from .backup_file import BackupDamaged, read_payload
from .engine import Database, next_generation
from .errors import backup_failure, not_supported
from .restore_common import check_exclusive, damaged, record_history, stopat_of
from .sqltypes import parse_datetime
from .statements import Output


def restore_log(session, cmd: Command, path: Path, header: dict, out: Output) -> None:
    verb = "RESTORE LOG"
    engine = session.engine
    db = engine.get(cmd.name)
    if db is None:
        raise backup_failure(
            verb,
            3118,
            f'The database "{cmd.name}" does not exist. RESTORE can only create a database '
            "when restoring either a full backup or a file backup of the primary file.",
        )
    check_exclusive(session, db, verb)
    if db.state != "RESTORING" or not db.restore:
        raise backup_failure(
            verb,
            3117,
            "The log or differential backup cannot be restored because no files are ready "
            "to rollforward.",
        )
    if db.family_guid != header["family_guid"]:
        raise backup_failure(
            verb,
            3154,
            f"The backup set holds a backup of a database other than the existing '{db.name}' database.",
        )
    seq = db.restore
    if seq.get("stopped"):
        raise backup_failure(
            verb,
            4332,
            f"RESTORE LOG has been halted. To use the database in its current state, run "
            f"RESTORE DATABASE {db.name} WITH RECOVERY.",
        )
    redo = int(seq["redo_lsn"])
    if header["first_lsn"] > redo:
        raise backup_failure(
            verb,
            4305,
            f"The log in this backup set begins at LSN {header['first_lsn']}, which is too "
            f"recent to apply to the database. An earlier log backup that includes LSN {redo} can be restored.",
        )
    if header["last_lsn"] <= redo:
        raise backup_failure(
            verb,
            4326,
            f"The log in this backup set terminates at LSN {header['last_lsn']}, which is "
            f"too early to apply to the database. A more recent log backup that includes LSN {redo} "
            "can be restored.",
        )
    stopat = stopat_of(cmd)
    if stopat is not None and stopat < parse_datetime(seq["point_time"]):
        raise backup_failure(
            verb,
            4335,
            "The specified STOPAT time is too early. All or part of the database is "
            "already rolled forward beyond that point.",
        )
    started = time.monotonic()
    progress = Progress(out, cmd.stats)
    records = _read_log_payload(path, header, verb, progress)
    stop_lsn, last_time = _apply_records(db, records, redo, header["last_lsn"], stopat)
    beyond = (
        stopat is not None
        and stop_lsn is None
        and parse_datetime(header["backup_finish_date"]) < stopat
    )
    with engine.lock:
        seq = dict(db.restore)
        seq["redo_lsn"] = stop_lsn if stop_lsn is not None else header["last_lsn"]
        seq["stopped"] = stop_lsn is not None
        seq["stopat_used"] = seq.get("stopat_used") or stopat is not None
        if last_time:
            seq["point_time"] = last_time
        db.restore = seq
        engine.save()
    pages = header["files"][0]["pages"] if header["files"] else 1
    record_history(engine, session, db, header, cmd)
    if beyond:
        out.info(
            4322,
            "This backup set contains records that were logged before the designated point in time. The "
            "database is being left in the restoring state so that more roll forward can be performed.",
        )
    elif not cmd.flag("NORECOVERY"):
        recover(session, db)
    summary(out, verb, [(db.name, db.logical_names[1], pages)], header["Position"], started)
    out.done(None)


def _read_log_payload(path: Path, header: dict, verb: str, progress: Progress) -> list[dict]:
    """All records of the set, read only after the whole set matched its digest."""
    buffer = bytearray()
    try:
        for chunk in read_payload(path, header):
            buffer.extend(chunk)
            progress.update(min(len(buffer) / max(header["backup_size"], 1), 0.99))
    except BackupDamaged as exc:
        raise damaged(verb, header, exc) from None
    progress.update(1.0)
    return [json.loads(line) for line in buffer.decode().splitlines() if line]


def _apply_records(
    db: Database, records: list[dict], redo: int, last_lsn: int, stopat: datetime | None
):
    """Redo records from the redo point; returns (LSN where STOPAT stopped or None, last commit time)."""
    stop_lsn, last_time = None, None
    with dbfile.write_locked(db.path) as conn:
        for rec in records:
            if rec["lsn"] < redo or rec["lsn"] >= last_lsn:
                continue
            if rec["kind"] != "xact":
                continue
            if stopat is not None and dbfile.parse_time(rec["time"]) > stopat:
                stop_lsn = rec["lsn"]
                break
            dbfile.apply_body(conn, json.loads(rec["body"]))
            last_time = rec["time"]
        dbfile.set_meta(conn, None, "next_lsn", stop_lsn if stop_lsn is not None else last_lsn)
        if last_time:
            dbfile.set_meta(conn, None, "last_commit_time", last_time)
        conn.execute("DELETE FROM __standin_log")
    return stop_lsn, last_time


def recover(session, db: Database) -> None:
    """RESTORING -> ONLINE, on a new recovery fork starting at the redo point."""
    engine = session.engine
    redo = int(db.restore["redo_lsn"]) if db.restore else None
    with dbfile.write_locked(db.path) as conn:
        if redo is not None:
            dbfile.set_meta(conn, None, "next_lsn", redo)
            dbfile.set_meta(conn, None, "log_chain_start", redo)
        conn.execute("DELETE FROM __standin_log")
        conn.execute("DELETE FROM __standin_dirty")
    with engine.lock:
        db.previous_fork_guid = db.fork_guid
        db.fork_guid = str(uuid.uuid4()).upper()
        db.fork_point_lsn = redo
        db.state = "ONLINE"
        db.restore = None
        db.generation = next_generation()
        engine.save()


def recover_only(session, cmd: Command, out: Output) -> None:
    verb = "RESTORE DATABASE"
    db = session.engine.get(cmd.name)
    if db is None:
        raise backup_failure(
            verb,
            3118,
            f'The database "{cmd.name}" does not exist. RESTORE can only create a database '
            "when restoring either a full backup or a file backup of the primary file.",
        )
    if cmd.flag("NORECOVERY") or cmd.flag("STANDBY"):
        raise not_supported("RESTORE DATABASE ... WITH NORECOVERY without a backup device")
    if db.state != "RESTORING":
        raise backup_failure(verb, 3153, "The database is already fully recovered.")
    started = time.monotonic()
    recover(session, db)
    summary(out, verb, [], 0, started)
    out.done(None)
