"""One SQL Server backup as the chain planner sees it: the header fields of `RESTORE HEADERONLY`
(cross-checked with `msdb.dbo.backupset`) that decide which backups restore together.

The header is recorded in the artifact's manifest at backup time, so a restore can be planned
from the store's catalog alone, when the server and its msdb are gone. A manifest is untrusted
input: `BackupSet.from_manifest` checks every field it reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from backup_pipelines.lib.errors import BackupError

GUID = re.compile(r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")
# LSNs are numeric(25,0): at most 25 decimal digits.
MAX_LSN = 10**25 - 1


class Kind(StrEnum):
    FULL = "full"
    DIFF = "diff"
    LOG = "log"


# RESTORE HEADERONLY BackupType and msdb.dbo.backupset.type for each kind.
HEADER_TYPES = {1: Kind.FULL, 5: Kind.DIFF, 2: Kind.LOG}
MSDB_TYPES = {"D": Kind.FULL, "I": Kind.DIFF, "L": Kind.LOG}


class InvalidBackupHeader(BackupError):
    """A recorded backup header is missing a field or holds a value SQL Server never writes."""


@dataclass(frozen=True)
class BackupSet:
    """The fields that place a backup in its database's chain. LSNs are ints; `last_lsn` is the
    NEXT LSN after the backup (a log links to the next when last_lsn == next.first_lsn)."""

    kind: Kind
    database: str
    first_lsn: int
    last_lsn: int
    checkpoint_lsn: int
    database_backup_lsn: int  # diffs and logs: the base full's checkpoint_lsn
    started_at: datetime
    finished_at: datetime
    backup_set_guid: str
    first_recovery_fork_id: str
    recovery_fork_id: str
    is_copy_only: bool = False
    has_checksums: bool = True
    is_damaged: bool = False
    location: Any = None  # where the artifact is (the planner never looks inside)

    @property
    def name(self) -> str:
        """How an operator finds it: kind, finish time and the location."""
        where = f" at {self.location}" if self.location is not None else ""
        return f"{self.kind} backup finished {self.finished_at.isoformat()}{where}"

    def to_manifest(self) -> dict:
        return {
            "type": str(self.kind),
            "database": self.database,
            "first_lsn": str(self.first_lsn),
            "last_lsn": str(self.last_lsn),
            "checkpoint_lsn": str(self.checkpoint_lsn),
            "database_backup_lsn": str(self.database_backup_lsn),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "backup_set_guid": self.backup_set_guid,
            "first_recovery_fork_id": self.first_recovery_fork_id,
            "recovery_fork_id": self.recovery_fork_id,
            "is_copy_only": self.is_copy_only,
            "has_checksums": self.has_checksums,
            "is_damaged": self.is_damaged,
        }

    @classmethod
    def from_manifest(cls, header: Any, location: Any = None) -> BackupSet:
        """The recorded header (manifest["header"]), every field checked."""
        if not isinstance(header, dict):
            raise InvalidBackupHeader(f"{location}: the manifest's header is not an object")
        where = f"{location}: header"
        try:
            kind = Kind(header["type"])
        except (KeyError, ValueError) as exc:
            raise InvalidBackupHeader(
                f"{where} type {header.get('type')!r} is not full/diff/log"
            ) from exc
        return cls(
            kind=kind,
            database=_text(header, "database", where),
            first_lsn=_lsn(header, "first_lsn", where),
            last_lsn=_lsn(header, "last_lsn", where),
            checkpoint_lsn=_lsn(header, "checkpoint_lsn", where),
            database_backup_lsn=_lsn(header, "database_backup_lsn", where),
            started_at=_time(header, "started_at", where),
            finished_at=_time(header, "finished_at", where),
            backup_set_guid=_guid(header, "backup_set_guid", where),
            first_recovery_fork_id=_guid(header, "first_recovery_fork_id", where),
            recovery_fork_id=_guid(header, "recovery_fork_id", where),
            is_copy_only=_flag(header, "is_copy_only", where),
            has_checksums=_flag(header, "has_checksums", where),
            is_damaged=_flag(header, "is_damaged", where),
            location=location,
        )

    @classmethod
    def from_headeronly(cls, row: dict, location: Any = None) -> BackupSet:
        """A `RESTORE HEADERONLY` row (column name -> value, as pyodbc returns them)."""
        kind = HEADER_TYPES.get(int(row["BackupType"]))
        if kind is None:
            raise InvalidBackupHeader(
                f"{location}: BackupType {row['BackupType']} is not a database, differential "
                "or log backup (file or filegroup backups are not supported)"
            )
        return cls(
            kind=kind,
            database=str(row["DatabaseName"]),
            first_lsn=int(row["FirstLSN"]),
            last_lsn=int(row["LastLSN"]),
            checkpoint_lsn=int(row["CheckpointLSN"]),
            database_backup_lsn=int(row["DatabaseBackupLSN"] or 0),
            started_at=_as_utc(row["BackupStartDate"]),
            finished_at=_as_utc(row["BackupFinishDate"]),
            backup_set_guid=str(row["BackupSetGUID"]).lower(),
            first_recovery_fork_id=str(row["FirstRecoveryForkID"]).lower(),
            recovery_fork_id=str(row["RecoveryForkID"]).lower(),
            is_copy_only=bool(row["IsCopyOnly"]),
            has_checksums=bool(row["HasBackupChecksums"]),
            is_damaged=bool(row["IsDamaged"]),
            location=location,
        )


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _as_utc(value: datetime) -> datetime:
    # SQL Server's backup dates are the server's local time without a zone; the product runs
    # servers in UTC (documented) and the stand-in answers in UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _text(header: dict, key: str, where: str) -> str:
    value = header.get(key)
    if not isinstance(value, str) or not value or len(value) > 128:
        raise InvalidBackupHeader(f"{where} {key} {value!r} is not a database name")
    return value


def _lsn(header: dict, key: str, where: str) -> int:
    value = header.get(key)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidBackupHeader(f"{where} {key} {value!r} is not an LSN")
    try:
        number = int(value)
    except ValueError as exc:
        raise InvalidBackupHeader(f"{where} {key} {value!r} is not an LSN") from exc
    if not 0 <= number <= MAX_LSN:
        raise InvalidBackupHeader(f"{where} {key} {value!r} is out of range for an LSN")
    return number


def _time(header: dict, key: str, where: str) -> datetime:
    value = header.get(key)
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidBackupHeader(f"{where} {key} {value!r} is not an ISO 8601 time") from exc
    if moment.tzinfo is None:
        raise InvalidBackupHeader(f"{where} {key} {value!r} has no time zone")
    return moment.astimezone(UTC)


def _guid(header: dict, key: str, where: str) -> str:
    value = header.get(key)
    if not isinstance(value, str) or not GUID.fullmatch(value):
        raise InvalidBackupHeader(f"{where} {key} {value!r} is not a GUID")
    return value.lower()


def _flag(header: dict, key: str, where: str) -> bool:
    value = header.get(key, False)
    if not isinstance(value, bool):
        raise InvalidBackupHeader(f"{where} {key} {value!r} is not true/false")
    return value
