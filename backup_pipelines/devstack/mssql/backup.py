"""BACKUP DATABASE / BACKUP LOG: SQL Server's rules, progress messages and msdb history.

Rules enforced: not inside a transaction (3021), BACKUP LOG not in SIMPLE recovery (4208) and
not before a full backup has started the log chain (4214), no differential without a full
base (3035). A copy-only full is never a differential base and leaves the log chain alone; a
log backup (not copy-only) truncates the log it covered, so the next one starts at its LastLSN.
"""

from __future__ import annotations

import json
import math
import time
import uuid

from . import dbfile
from .backup_command import (
    MB,
    PAGE,
    Command,
    Progress,
    parse_command,
    summary,
)
from .backup_file import BackupWriter, read_sets
from .devices import URL, Device, open_device
from .engine import next_generation
from .errors import backup_failure, not_supported
from .headers import msdb_rows
from .statements import Output, Params
from .tds import SERVER_NAME
from .tsql import Cursor


def run_backup(session, cur: Cursor, out: Output, params: Params | None = None) -> None:
    cmd = parse_command(cur, params)
    if cmd.verb not in ("DATABASE", "LOG"):
        raise cur.error()
    log = cmd.verb == "LOG"
    diff = cmd.flag("DIFFERENTIAL") and not log
    verb = "BACKUP LOG" if log else "BACKUP DATABASE"
    if session.trancount:
        raise backup_failure(
            verb, 3021, "Cannot perform a backup or restore operation within a transaction."
        )
    engine = session.engine
    db = engine.get(cmd.name)
    if db is None:
        raise backup_failure(
            verb,
            911,
            f"Database '{cmd.name}' does not exist. Make sure that the name is entered correctly.",
        )
    if db.state != "ONLINE":
        raise backup_failure(
            verb,
            927,
            f"Database '{db.name}' cannot be opened. It is in the middle of a restore.",
            14,
        )
    if db.name.lower() == "tempdb":
        raise backup_failure(
            verb, 3147, "Backup and restore operations are not allowed on database tempdb."
        )
    tail = log and cmd.flag("NORECOVERY")
    if cmd.flag("STANDBY") or (cmd.flag("NORECOVERY") and not log):
        raise not_supported("BACKUP ... WITH STANDBY (or NORECOVERY on BACKUP DATABASE)")
    if tail:
        from .restore_common import check_exclusive

        check_exclusive(session, db, verb)
    device = open_device(engine, verb, cmd.devices, write=True, options=cmd.options)
    if log:
        if db.name.lower() == "master":
            raise backup_failure(
                verb,
                4212,
                "Cannot back up the log of the master database. Use BACKUP DATABASE instead.",
            )
        if db.recovery_model == "SIMPLE":
            raise backup_failure(
                verb,
                4208,
                "The statement BACKUP LOG is not allowed while the recovery model is "
                "SIMPLE. Use BACKUP DATABASE or change the recovery model using ALTER DATABASE.",
            )
        if not db.chain_established:
            raise backup_failure(
                verb,
                4214,
                "BACKUP LOG cannot be performed because there is no current database backup.",
            )
    if diff and db.diff_base is None:
        raise backup_failure(
            verb,
            3035,
            f'Cannot perform a differential backup for database "{db.name}", because a '
            "current database backup does not exist. Perform a full database backup by reissuing "
            "BACKUP DATABASE, omitting the WITH DIFFERENTIAL option.",
        )
    started = time.monotonic()
    progress = Progress(out, cmd.stats)
    writer = BackupWriter(
        device.path,
        init=cmd.flag("INIT") or cmd.flag("FORMAT") or device.device_type == URL,
        compressed=cmd.flag("COMPRESSION"),
        checksum=cmd.flag("CHECKSUM"),
    )
    try:
        if log:
            header, files = _log_backup(session, db, cmd, writer, progress, device)
        else:
            header, files = _data_backup(session, db, cmd, diff, writer, progress, device)
    except BaseException:
        writer.abort()
        raise
    finally:
        device.close()
    if tail:  # tail-log backup: the database is left RESTORING at the end of this log
        with engine.lock:
            db.state = "RESTORING"
            db.restore = {
                "redo_lsn": header["last_lsn"],
                "base_checkpoint": None,
                "base_guid": None,
                "point_time": header["backup_finish_date"],
                "stopped": False,
            }
            db.generation = next_generation()
            engine.save()
        session.release_database(db.name)
    label = "BACKUP DATABASE WITH DIFFERENTIAL" if diff else verb
    summary(out, label, files, header["Position"], started)
    out.done(None)


def _base_header(session, db, cmd: Command, kind: str, writer: BackupWriter) -> dict:
    position = len(read_sets(writer.path, writer.start)) + 1 if writer.start else 1
    return {
        "name": cmd.options.get("NAME"),
        "description": cmd.options.get("DESCRIPTION"),
        "type": kind,
        "compressed": cmd.flag("COMPRESSION"),
        "Position": position,
        "device_type": 2,
        "user_name": session.user,
        "server_name": SERVER_NAME,
        "database_name": db.name,
        "database_creation_date": db.create_date,
        "binding_id": str(uuid.uuid4()).upper(),
        "family_guid": db.family_guid,
        "database_guid": db.database_guid,
        "is_single_user": db.user_access == "SINGLE_USER",
        "has_backup_checksums": cmd.flag("CHECKSUM"),
        "is_copy_only": cmd.flag("COPY_ONLY") and not cmd.flag("DIFFERENTIAL"),
        "recovery_model": db.recovery_model,
        "backup_set_guid": str(uuid.uuid4()).upper(),
        "media_guid": str(uuid.uuid4()).upper(),
        "is_force_offline": cmd.verb == "LOG" and cmd.flag("NORECOVERY"),
        "begins_log_chain": False,
        "first_recovery_fork_guid": db.fork_guid,
        "last_recovery_fork_guid": db.fork_guid,
        "fork_point_lsn": None,
        "differential_base_lsn": None,
        "differential_base_guid": None,
        "database_backup_lsn": (db.diff_base or {}).get("checkpoint_lsn", 0),
    }


def _files(db, data_pages: int, log_pages: int, data_bytes: int, log_bytes: int) -> list[dict]:
    data_name, log_name = db.logical_names
    guid = uuid.uuid5(uuid.NAMESPACE_URL, db.database_guid)
    return [
        {
            "logical_name": data_name,
            "physical_name": db.data_path,
            "type": "D",
            "file_id": 1,
            "size": max(data_bytes, PAGE),
            "unique_id": str(guid).upper(),
            "backup_size": data_pages * PAGE,
            "pages": data_pages,
        },
        {
            "logical_name": log_name,
            "physical_name": db.log_path,
            "type": "L",
            "file_id": 2,
            "size": 8 * MB,
            "unique_id": str(uuid.uuid5(guid, "log")).upper(),
            "backup_size": log_pages * PAGE,
            "pages": log_pages,
        },
    ]


def _data_backup(
    session, db, cmd: Command, diff: bool, writer: BackupWriter, progress: Progress, device: Device
):
    engine = session.engine
    copy_only = cmd.flag("COPY_ONLY") and not diff
    start_date = dbfile.fmt_time(dbfile.utcnow())
    starts_chain = db.recovery_model != "SIMPLE" and not copy_only and not db.chain_established
    with dbfile.write_locked(db.path) as conn:
        if starts_chain:
            db.capture_log = True
        ckpt, _, _ = dbfile.write_record(conn, None, "checkpoint", None, keep=db.capture_log)
        dbfile.set_meta(conn, None, "last_checkpoint_lsn", ckpt)
        if starts_chain:
            conn.execute("DELETE FROM __standin_log WHERE lsn < ?", (ckpt,))
            dbfile.set_meta(conn, None, "log_chain_start", ckpt)
        elif not db.capture_log:
            conn.execute("DELETE FROM __standin_log")
    header = _base_header(session, db, cmd, "I" if diff else "D", writer)
    with dbfile.read_locked(db.path) as conn:
        last_lsn = int(dbfile.get_meta(conn, None, "next_lsn"))
        log_bytes = conn.execute(
            "SELECT coalesce(sum(length(body)), 0) FROM __standin_log WHERE lsn >= ?", (ckpt,)
        ).fetchone()[0]
        size = db.path.stat().st_size
        done = 0
        with open(db.path, "rb") as f:
            while True:
                chunk = f.read(1 << 20)
                if not chunk:
                    break
                writer.write(chunk)
                done += len(chunk)
                progress.update(done / max(size, 1))
        finish_date = dbfile.fmt_time(dbfile.utcnow())
    data_pages, log_pages = math.ceil(size / PAGE), max(1, math.ceil(log_bytes / PAGE))
    header.update(
        {
            "first_lsn": ckpt,
            "last_lsn": last_lsn,
            "checkpoint_lsn": ckpt,
            "backup_start_date": start_date,
            "backup_finish_date": finish_date,
            "backup_size": writer.raw_bytes + 3 * PAGE,
            "files": _files(db, data_pages, log_pages, size, log_bytes),
        }
    )
    if diff:
        header["differential_base_lsn"] = db.diff_base["checkpoint_lsn"]
        header["differential_base_guid"] = db.diff_base["guid"]
    _finish(
        engine, writer, header, device, "BACKUP LOG" if header["type"] == "L" else "BACKUP DATABASE"
    )
    with engine.lock:
        if not diff and not copy_only:
            db.diff_base = {"checkpoint_lsn": ckpt, "guid": header["backup_set_guid"]}
        if db.recovery_model != "SIMPLE" and not copy_only:
            if not db.chain_established:
                db.log_begins_chain = True
            db.capture_log = db.chain_established = True
        engine.save()
    return header, [
        (db.name, db.logical_names[0], data_pages),
        (db.name, db.logical_names[1], log_pages),
    ]


def _log_backup(
    session, db, cmd: Command, writer: BackupWriter, progress: Progress, device: Device
):
    engine = session.engine
    copy_only = cmd.flag("COPY_ONLY")
    start_date = dbfile.fmt_time(dbfile.utcnow())
    header = _base_header(session, db, cmd, "L", writer)
    with dbfile.write_locked(db.path) as conn:
        chain_start = int(dbfile.get_meta(conn, None, "log_chain_start"))
        dbfile.write_record(conn, None, "logbackup", None, keep=True)
        last_lsn = int(dbfile.get_meta(conn, None, "next_lsn"))
        total = conn.execute(
            "SELECT count(*) FROM __standin_log WHERE lsn >= ? AND lsn < ?", (chain_start, last_lsn)
        ).fetchone()[0]
        for i, (lsn, end, when, kind, body) in enumerate(
            dbfile.log_records(conn, chain_start, last_lsn), 1
        ):
            line = (
                json.dumps({"lsn": lsn, "end": end, "time": when, "kind": kind, "body": body})
                + "\n"
            )
            writer.write(line.encode())
            progress.update(i / max(total, 1))
        progress.update(1.0)
        ckpt = dbfile.get_meta(conn, None, "last_checkpoint_lsn")
        finish_date = dbfile.fmt_time(dbfile.utcnow())
        fork_point = (
            db.fork_point_lsn
            if db.fork_point_lsn and chain_start <= db.fork_point_lsn < last_lsn
            else None
        )
        pages = max(1, math.ceil(writer.raw_bytes / PAGE))
        begins = db.log_begins_chain
        header.update(
            {
                "first_lsn": chain_start,
                "last_lsn": last_lsn,
                "checkpoint_lsn": int(ckpt or chain_start),
                "backup_start_date": start_date,
                "backup_finish_date": finish_date,
                "backup_size": writer.raw_bytes + 2 * PAGE,
                "begins_log_chain": begins and not copy_only,
                "fork_point_lsn": fork_point,
                "files": _files(db, 0, pages, 0, writer.raw_bytes)[1:],
            }
        )
        if fork_point is not None and db.previous_fork_guid:
            header["first_recovery_fork_guid"] = db.previous_fork_guid
        _finish(
            engine,
            writer,
            header,
            device,
            "BACKUP LOG" if header["type"] == "L" else "BACKUP DATABASE",
        )
        if not copy_only:
            conn.execute("DELETE FROM __standin_log WHERE lsn < ?", (last_lsn,))
            dbfile.set_meta(conn, None, "log_chain_start", last_lsn)
    if not copy_only and db.log_begins_chain:
        with engine.lock:
            db.log_begins_chain = False
            engine.save()
    return header, [(db.name, db.logical_names[1], pages)]


def _finish(engine, writer: BackupWriter, header: dict, device: Device, verb: str) -> None:
    header["compressed_backup_size"] = (
        writer.stored_bytes + 3 * 8 * 1024 if header["compressed"] else header["backup_size"]
    )
    header["device_type"] = device.device_type
    writer.finish(header)
    device.commit(verb)
    name = device.name

    def build(next_id):
        return msdb_rows(
            header,
            next_id("backupmediaset", "media_set_id"),
            next_id("backupset", "backup_set_id"),
            name,
            device.device_type,
        )

    engine.msdb_write(build)
