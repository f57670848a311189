"""RESTORE HEADERONLY / FILELISTONLY / LABELONLY / VERIFYONLY / DATABASE / LOG.

A restore sequence: RESTORE DATABASE (full, then optionally a differential) leaves the database
RESTORING at the backup's LastLSN (its redo point) WITH NORECOVERY; each RESTORE LOG must start
at or before the redo point (else 4305) and end after it (else 4326) and redoes the records from
the redo point on; STOPAT stops before the first transaction committed after the given time.
RECOVERY brings the database ONLINE on a new recovery fork.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path

from . import dbfile
from .backup_command import Command, Progress, parse_command, summary
from .backup_file import BackupDamaged, BackupFormatError, read_payload, read_sets
from .devices import open_device
from .engine import Database, next_generation, write_log_placeholder
from .errors import SqlError, backup_failure
from .headers import FILELISTONLY, HEADERONLY, LABELONLY, filelist_rows, headeronly_row
from .restore_common import check_exclusive, damaged, record_history, stopat_of
from .sqltypes import parse_datetime
from .statements import Output, Params
from .tsql import Cursor

VERBS = {
    "DATABASE": "RESTORE DATABASE",
    "LOG": "RESTORE LOG",
    "HEADERONLY": "RESTORE HEADERONLY",
    "FILELISTONLY": "RESTORE FILELIST",
    "VERIFYONLY": "VERIFY DATABASE",
    "LABELONLY": "RESTORE LABELONLY",
}
CREATED_BY = {"D": "BACKUP DATABASE", "I": "BACKUP DATABASE WITH DIFFERENTIAL", "L": "BACKUP LOG"}


def run_restore(session, cur: Cursor, out: Output, params: Params | None = None) -> None:
    cmd = parse_command(cur, params)
    verb = VERBS.get(cmd.verb)
    if verb is None:
        raise cur.error()
    if session.trancount:
        raise backup_failure(
            verb, 3021, "Cannot perform a backup or restore operation within a transaction."
        )
    if cmd.verb == "DATABASE" and not cmd.devices:
        from .restore_log import recover_only

        recover_only(session, cmd, out)
        return
    device = open_device(session.engine, verb, cmd.devices, write=False, options=cmd.options)
    try:
        _restore_from(session, cmd, verb, device.path, device.name, out)
    finally:
        device.close()


def _restore_from(session, cmd: Command, verb: str, path: Path, name: str, out: Output) -> None:
    try:
        sets = read_sets(path)
    except BackupFormatError:
        raise backup_failure(
            verb,
            3241,
            f"The media family on device '{name}' is incorrectly formed. SQL Server "
            "cannot process this media family.",
        ) from None
    if cmd.verb == "HEADERONLY":
        out.result(HEADERONLY, [headeronly_row(h) for h in sets])
        out.done(len(sets), 0xC1)
        return
    if cmd.verb == "LABELONLY":
        h = sets[0]
        out.result(
            LABELONLY,
            [
                (
                    None,
                    h["media_guid"],
                    1,
                    1,
                    h["media_guid"],
                    1,
                    1,
                    None,
                    "Microsoft SQL Server",
                    4608,
                    h["backup_start_date"],
                    1,
                    h["compressed"],
                )
            ],
        )
        out.done(1, 0xC1)
        return
    position = int(cmd.options.get("FILE", 1))
    if not 1 <= position <= len(sets):
        raise backup_failure(verb, 4038, f"Cannot find file ID {position} on device '{name}'.")
    header = sets[position - 1]
    if cmd.verb == "FILELISTONLY":
        rows = filelist_rows(header)
        out.result(FILELISTONLY, rows)
        out.done(len(rows), 0xC1)
        return
    if cmd.verb == "VERIFYONLY":
        _verify(path, header, verb, Progress(out, cmd.stats))
        out.info(3262, f"The backup set on file {position} is valid.")
        out.done(None)
        return
    if cmd.verb == "DATABASE":
        if header["type"] == "L":
            raise _wrong_type(verb, name, header)
        restore_data(session, cmd, path, header, out)
    else:
        if header["type"] != "L":
            raise _wrong_type(verb, name, header)
        from .restore_log import restore_log

        restore_log(session, cmd, path, header, out)


def _wrong_type(verb: str, path: str, header: dict) -> SqlError:
    return backup_failure(
        verb,
        3135,
        f"The backup set in file '{path}' was created by {CREATED_BY[header['type']]} "
        "and cannot be used for this restore operation.",
    )


def _verify(path: Path, header: dict, verb: str, progress: Progress) -> None:
    total = max(header["_end"] - header["_start"], 1)
    done = 0
    try:
        for chunk in read_payload(path, header):
            done += len(chunk)
            progress.update(min(done / max(header.get("backup_size", total), 1), 0.99))
        progress.update(1.0)
    except BackupDamaged as exc:
        raise damaged(verb, header, exc) from None


def _plan_files(
    session, cmd: Command, header: dict, target: str, existing: Database | None, verb: str
):
    moves = {logical.lower(): dest for logical, dest in cmd.options.get("MOVE", [])}
    known = {f["logical_name"].lower() for f in header["files"]}
    for logical in moves:
        if logical not in known:
            raise backup_failure(
                verb,
                3234,
                f"Logical file '{logical}' is not part of database "
                f"'{header['database_name']}'. Use RESTORE FILELISTONLY to list the logical file names.",
            )
    paths = {}
    for f in header["files"]:
        dest = moves.get(f["logical_name"].lower(), f["physical_name"])
        if not Path(dest).parent.is_dir():
            err = SqlError(
                5133,
                f'Directory lookup for the file "{dest}" failed with the operating system error '
                "2(The system cannot find the file specified.).",
                16,
                1,
            )
            raise _planning_failed(err, f["logical_name"], dest, verb)
        for other in session.engine.databases.values():
            if other is existing:
                continue
            if dest in (other.data_path, other.log_path):
                err = SqlError(
                    1834,
                    f"The file '{dest}' cannot be overwritten.  It is being used by database "
                    f"'{other.name}'.",
                    16,
                    1,
                )
                raise _planning_failed(err, f["logical_name"], dest, verb)
        paths[f["type"]] = (f["logical_name"], dest)
    return paths


def _planning_failed(err: SqlError, logical: str, dest: str, verb: str) -> SqlError:
    err.then(
        3156,
        f"File '{logical}' cannot be restored to '{dest}'. Use WITH MOVE to identify a valid location for the file.",
    )
    err.then(
        3119,
        "Problems were identified while planning for the RESTORE statement. Previous messages provide details.",
    )
    return err.then(3013, f"{verb} is terminating abnormally.")


def restore_data(session, cmd: Command, path: Path, header: dict, out: Output) -> None:
    verb = "RESTORE DATABASE"
    engine = session.engine
    name = cmd.name
    stopat = stopat_of(cmd)
    if stopat is not None and parse_datetime(header["backup_finish_date"]) > stopat:
        raise backup_failure(
            verb,
            4338,
            "The STOPAT clause specifies a point too early to allow this backup set to "
            "be restored. Choose a different stop point or use RESTORE DATABASE WITH RECOVERY to "
            "recover at the current point.",
        )
    db = engine.get(name)
    if header["type"] == "I":
        if db is None:
            raise backup_failure(
                verb,
                3118,
                f'The database "{name}" does not exist. RESTORE can only create a database '
                "when restoring either a full backup or a file backup of the primary file.",
            )
        check_exclusive(session, db, verb)
        seq = db.restore or {}
        if db.state != "RESTORING":
            raise backup_failure(
                verb,
                3117,
                "The log or differential backup cannot be restored because no files are "
                "ready to rollforward.",
            )
        if (
            seq.get("base_checkpoint") != header["differential_base_lsn"]
            or seq.get("base_guid") != header["differential_base_guid"]
        ):
            raise backup_failure(
                verb,
                3136,
                "This differential backup cannot be restored because the database has "
                "not been restored to the correct earlier state.",
            )
        paths = {"D": (db.logical_names[0], db.data_path), "L": (db.logical_names[1], db.log_path)}
    else:
        if db is not None:
            check_exclusive(session, db, verb)
            if not cmd.flag("REPLACE") and db.state == "ONLINE":
                if db.family_guid != header["family_guid"]:
                    raise backup_failure(
                        verb,
                        3154,
                        f"The backup set holds a backup of a database other than the "
                        f"existing '{db.name}' database.",
                    )
                if db.recovery_model != "SIMPLE" and stopat is None and _tail_not_backed_up(db):
                    raise backup_failure(
                        verb,
                        3159,
                        f'The tail of the log for the database "{db.name}" has not been '
                        "backed up. Use BACKUP LOG WITH NORECOVERY to backup the log if it contains "
                        "work you do not want to lose. Use the WITH REPLACE or WITH STOPAT clause of "
                        "the RESTORE statement to just overwrite the contents of the log.",
                    )
        paths = _plan_files(session, cmd, header, name, db, verb)
    started = time.monotonic()
    progress = Progress(out, cmd.stats)
    with engine.lock:
        if db is None:
            db = Database(
                name=name,
                database_id=_new_id(engine),
                data_path=paths["D"][1],
                log_path=paths["L"][1],
                create_date=header["database_creation_date"],
                database_guid="",
                family_guid="",
                fork_guid="",
                state="RESTORING",
            )
            engine.databases[name.lower()] = db
        previous_state = db.state
        db.state = "RESTORING"
    session.release_database(name)
    data_path = Path(paths["D"][1])
    try:
        _install_payload(path, header, data_path, progress, verb)
    except BaseException:
        with engine.lock:
            if previous_state == "RESTORING" and not db.database_guid:
                engine.databases.pop(name.lower(), None)
            else:
                db.state = previous_state
        raise
    old_paths = (db.data_path, db.log_path)
    with engine.lock:
        db.data_path, db.log_path = str(data_path), paths["L"][1]
        db.logical_data, db.logical_log = paths["D"][0], paths["L"][0]
        db.generation = next_generation()
        db.family_guid = header["family_guid"]
        db.database_guid = str(uuid.uuid4()).upper()
        db.fork_guid = header["last_recovery_fork_guid"]
        db.recovery_model = header["recovery_model"]
        db.create_date = header["database_creation_date"]
        db.user_access, db.single_user_spid = "MULTI_USER", None
        db.capture_log = db.chain_established = header["recovery_model"] != "SIMPLE"
        db.log_begins_chain = False
        if header["type"] == "D":
            db.diff_base = (
                None
                if header["is_copy_only"]
                else {"checkpoint_lsn": header["checkpoint_lsn"], "guid": header["backup_set_guid"]}
            )
            base = (header["checkpoint_lsn"], header["backup_set_guid"])
        else:
            db.diff_base = {
                "checkpoint_lsn": header["differential_base_lsn"],
                "guid": header["differential_base_guid"],
            }
            base = (header["differential_base_lsn"], header["differential_base_guid"])
        db.restore = {
            "redo_lsn": header["last_lsn"],
            "base_checkpoint": base[0],
            "base_guid": base[1],
            "point_time": header["backup_finish_date"],
            "stopped": False,
            "stopat_pending": False,
        }
        engine.save()
    for old in old_paths:
        if (
            old not in (db.data_path, db.log_path)
            and Path(old).exists()
            and old.startswith(str(engine.storage))
        ):
            Path(old).unlink(missing_ok=True)
    write_log_placeholder(Path(db.log_path), db.name)
    dbfile.reset_after_restore(data_path, keep_log=False)
    data_pages = header["files"][0]["pages"]
    log_pages = header["files"][1]["pages"] if len(header["files"]) > 1 else 1
    summary_files = [
        (db.name, db.logical_names[0], data_pages),
        (db.name, db.logical_names[1], log_pages),
    ]
    record_history(engine, session, db, header, cmd)
    if not cmd.flag("NORECOVERY"):
        from .restore_log import recover

        recover(session, db)
    summary(out, verb, summary_files, header["Position"], started)
    out.done(None)


def _tail_not_backed_up(db: Database) -> bool:
    conn = dbfile.connect(db.path)
    try:
        next_lsn = int(dbfile.get_meta(conn, None, "next_lsn"))
        start = int(dbfile.get_meta(conn, None, "log_chain_start"))
        return next_lsn > start
    finally:
        conn.close()


def _new_id(engine) -> int:
    used = {d.database_id for d in engine.databases.values()}
    return next(i for i in range(5, 32768) if i not in used)


def _install_payload(
    path: Path, header: dict, data_path: Path, progress: Progress, verb: str
) -> None:
    """Stream the payload into a temp file beside the destination; rename only when intact."""
    fd, tmp_name = tempfile.mkstemp(
        prefix=data_path.name + ".", suffix=".restoring", dir=data_path.parent
    )
    try:
        written = 0
        total = max(header["files"][0]["size"], 1)
        with os.fdopen(fd, "wb") as tmp:
            try:
                for chunk in read_payload(path, header):
                    tmp.write(chunk)
                    written += len(chunk)
                    progress.update(min(written / total, 0.99))
            except BackupDamaged as exc:
                raise damaged(verb, header, exc) from None
            tmp.flush()
            os.fsync(tmp.fileno())
        progress.update(1.0)
        Path(str(data_path) + "-journal").unlink(missing_ok=True)
        os.replace(tmp_name, data_path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
