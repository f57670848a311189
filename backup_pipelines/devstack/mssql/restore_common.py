"""Pieces shared by RESTORE DATABASE and RESTORE LOG."""

from __future__ import annotations

from datetime import datetime

from . import dbfile
from .backup_command import PAGE, Command
from .backup_file import BackupDamaged
from .engine import Database
from .errors import SqlError, backup_failure
from .sqltypes import parse_datetime


def damaged(verb: str, header: dict, exc: BackupDamaged) -> SqlError:
    if verb == "VERIFY DATABASE":
        return backup_failure(verb, 3189, "Damage to the backup set was detected.")
    page = exc.offset // PAGE
    return backup_failure(
        verb,
        3183,
        f"RESTORE detected an error on page (1:{page}) in database "
        f'"{header["database_name"]}" as read from the backup set.',
    )


def stopat_of(cmd: Command) -> datetime | None:
    value = cmd.options.get("STOPAT")
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    try:
        return parse_datetime(str(value)).replace(tzinfo=None)
    except ValueError:
        raise SqlError(
            241, "Conversion failed when converting date and/or time from character string.", 16, 1
        ) from None


def check_exclusive(session, db: Database, verb: str) -> None:
    if session.current_db.lower() == db.name.lower():
        raise backup_failure(
            verb,
            3102,
            f"{verb} cannot process database '{db.name}' because it is in use by this "
            "session. It is recommended that the master database be used when performing this "
            "operation.",
        )
    if session.engine.users_of(db, except_spid=session.spid):
        raise backup_failure(
            verb, 3101, "Exclusive access could not be obtained because the database is in use."
        )


def record_history(engine, session, db: Database, header: dict, cmd: Command) -> None:
    def build(next_id):
        return {
            "restorehistory": [
                {
                    "restore_history_id": next_id("restorehistory", "restore_history_id"),
                    "restore_date": dbfile.fmt_time(dbfile.utcnow()),
                    "destination_database_name": db.name,
                    "user_name": session.user,
                    "backup_set_id": _backup_set_id(engine, header["backup_set_guid"]),
                    "restore_type": header["type"],
                    "replace": int(cmd.flag("REPLACE")),
                    "recovery": int(not cmd.flag("NORECOVERY")),
                    "restart": 0,
                    "stop_at": dbfile.fmt_time(stopat_of(cmd)) if stopat_of(cmd) else None,
                    "device_count": 1,
                    "stop_before": 0,
                }
            ]
        }

    engine.msdb_write(build)


def _backup_set_id(engine, guid: str) -> int:
    conn = dbfile.connect(engine.get("msdb").path)
    try:
        row = conn.execute(
            "SELECT backup_set_id FROM backupset WHERE backup_set_uuid = ? COLLATE NOCASE", (guid,)
        ).fetchone()
        return int(row[0]) if row else 0
    finally:
        conn.close()
