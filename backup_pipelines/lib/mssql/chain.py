"""The restore chain planner: for a target time T, which full, differential and log backups
restore a SQL Server database to T, exactly as SQL Server requires — from the store's catalog
alone (plain Python, no server, no msdb), so it works when the server is gone.

Rules (dbatools' selection, FACTS "SQL Server behaviour"):
- the full: finished at or before T, not copy-only (a copy-only full is never a differential
  base, and dbatools leaves it out of chains too), not damaged, the highest LastLSN;
- the differential: finished at or before T, based on that full (DatabaseBackupLSN == the full's
  CheckpointLSN), the highest LastLSN. A differential based on a full the store does not hold
  (taken outside this project) is never used, and said;
- the logs: the first one holds the anchor's LastLSN (FirstLSN <= anchor.LastLSN < LastLSN),
  each next one starts where the previous ended (FirstLSN == previous LastLSN), on the anchor's
  recovery fork (where a restore to a point started a new fork, the newer timeline wins), up to the FIRST log whose finish time is at or after T, which is restored
  WITH STOPAT = T. A gap, or logs that end before T, is refused before anything is restored,
  naming the missing LSN range and the newest reachable instant.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from backup_pipelines.lib.errors import BackupError
from backup_pipelines.lib.mssql.backupset import BackupSet, Kind


class ChainBroken(BackupError):
    """No chain of backups in the store restores the database to the target."""


@dataclass
class RestorePlan:
    database: str
    target: datetime  # the instant the database is restored to
    full: BackupSet
    diff: BackupSet | None
    logs: list[BackupSet]
    stop_at: datetime | None  # STOPAT of the last log; None: the last backup restored whole
    notes: list[str] = field(default_factory=list)

    @property
    def backups(self) -> list[BackupSet]:
        return [self.full, *([self.diff] if self.diff else []), *self.logs]

    def describe(self) -> list[str]:
        """The plan as an operator reads it before anything is restored."""
        lines = [f"restore {self.database} to {self.target.isoformat()}:"]
        for number, backup in enumerate(self.backups, 1):
            last = number == len(self.backups)
            how = "WITH RECOVERY" if last else "WITH NORECOVERY"
            if last and self.stop_at is not None:
                how = f"WITH STOPAT = {self.stop_at.isoformat()}, RECOVERY"
            lines.append(
                f"  {number}. {backup.kind} LSN {backup.first_lsn}..{backup.last_lsn} "
                f"finished {backup.finished_at.isoformat()} {how} ({backup.location})"
            )
        lines += [f"  note: {note}" for note in self.notes]
        return lines


def plan_restore(
    backups: Iterable[BackupSet], target: datetime | None = None, database: str | None = None
) -> RestorePlan:
    """The chain restoring `database` to `target` (None: the newest reachable instant)."""
    catalog = _Catalog(backups, database)
    full = catalog.full_for(target)
    diff, notes = catalog.diff_for(full, target)
    anchor = diff or full
    try:
        logs, stop_at, reached = catalog.logs_after(anchor, target)
    except ChainBroken as exc:
        raise ChainBroken("; ".join([str(exc), *notes])) from None
    notes += catalog.foreign_fulls(full, reached)
    if catalog.gap:
        notes.insert(0, f"LATEST IS NOT THE NEWEST BACKUP: {catalog.gap}")
    return RestorePlan(catalog.database, reached, full, diff, logs, stop_at, notes)


def reachable_window(
    backups: Iterable[BackupSet], database: str | None = None
) -> tuple[datetime, datetime]:
    """(oldest, newest) instant the store can restore the database to."""
    backups = list(backups)
    catalog = _Catalog(backups, database)
    oldest = min(b.finished_at for b in catalog.fulls)
    return oldest, plan_restore(backups, None, database).target


class _Catalog:
    """The backups of one database, indexed for the chain rules."""

    def __init__(self, backups: Iterable[BackupSet], database: str | None) -> None:
        usable = [b for b in backups if not b.is_damaged]
        names = {b.database for b in usable}
        if database is None:
            if len(names) > 1:
                raise ChainBroken(
                    f"the catalog holds backups of several databases ({', '.join(sorted(names))}): "
                    "name the database to restore"
                )
            database = next(iter(names), "")
        self.database = database
        mine = [b for b in usable if b.database == database]
        self.fulls = sorted(
            (b for b in mine if b.kind is Kind.FULL and not b.is_copy_only),
            key=lambda b: b.last_lsn,
        )
        if not self.fulls:
            raise ChainBroken(f"no full backup of {database or 'the database'} in the store")
        self.diffs = [b for b in mine if b.kind is Kind.DIFF]
        self.logs = sorted((b for b in mine if b.kind is Kind.LOG), key=lambda b: b.last_lsn)
        self._log_last_lsns = [b.last_lsn for b in self.logs]
        self.gap = ""  # set when "latest" stops short of newer logs
        self._logs_by_first: dict[int, list[BackupSet]] = defaultdict(list)
        for log in self.logs:
            self._logs_by_first[log.first_lsn].append(log)

    def full_for(self, target: datetime | None) -> BackupSet:
        fulls = [b for b in self.fulls if target is None or b.finished_at <= target]
        if not fulls:
            oldest = min(b.finished_at for b in self.fulls)
            raise ChainBroken(
                f"no full backup of {self.database} finished at or before {target.isoformat()}: "
                f"the oldest reachable instant is {oldest.isoformat()}"
            )
        return max(fulls, key=lambda b: (b.last_lsn, b.finished_at))

    def diff_for(self, full: BackupSet, target: datetime | None) -> tuple[BackupSet | None, list]:
        candidates = [
            d
            for d in self.diffs
            if (target is None or d.finished_at <= target) and d.first_lsn >= full.first_lsn
        ]
        based = [
            d
            for d in candidates
            if d.database_backup_lsn == full.checkpoint_lsn
            and d.first_recovery_fork_id == full.recovery_fork_id
        ]
        held = {b.checkpoint_lsn for b in self.fulls}
        notes = [
            f"{d.name} is not used: its base is a full backup (checkpoint LSN "
            f"{d.database_backup_lsn}) the store does not hold — taken outside this project"
            for d in candidates
            if d.database_backup_lsn not in held and d.last_lsn > full.last_lsn
        ]
        diff = max(based, key=lambda b: b.last_lsn, default=None)
        return diff, notes

    def logs_after(
        self, anchor: BackupSet, target: datetime | None
    ) -> tuple[list[BackupSet], datetime | None, datetime]:
        """(logs to restore, STOPAT, instant reached) from the anchor to the target."""
        if target is not None and target <= anchor.finished_at:
            return [], None, anchor.finished_at
        chain: list[BackupSet] = []
        fork = anchor.recovery_fork_id
        current = self._first_log(anchor, fork)
        expected = anchor.last_lsn
        while current is not None:
            chain.append(current)
            fork, expected = current.recovery_fork_id, current.last_lsn
            if target is not None and current.finished_at >= target:
                return chain, target, target
            current = self._next_log(expected, fork)
        reached = chain[-1].finished_at if chain else anchor.finished_at
        if target is None:
            if any(log.first_lsn > expected for log in self.logs):
                self.gap = self._gap_message(expected, reached, self.logs[-1].finished_at)
            return chain, None, reached
        raise ChainBroken(self._gap_message(expected, reached, target))

    def _first_log(self, anchor: BackupSet, fork: str) -> BackupSet | None:
        """The log holding the anchor's last LSN, on its fork."""
        start = bisect.bisect_right(self._log_last_lsns, anchor.last_lsn)
        for log in self.logs[start:]:
            if log.first_lsn > anchor.last_lsn:
                break  # sorted by last LSN: the first beyond the anchor does not hold it
            if (
                log.first_lsn <= anchor.last_lsn < log.last_lsn
                and log.first_recovery_fork_id == fork
            ):
                return log
        return None

    def _next_log(self, expected: int, fork: str) -> BackupSet | None:
        following = [
            log
            for log in self._logs_by_first.get(expected, [])
            if log.first_recovery_fork_id == fork
        ]
        # Two logs continue the same LSN on the same fork only when the database was restored
        # to a point and recovered there: the newer timeline is the one that holds the truth.
        return max(following, key=lambda log: log.finished_at, default=None)

    def _gap_message(self, expected: int, reached: datetime, target: datetime) -> str:
        later = [log for log in self.logs if log.first_lsn > expected]
        if later:
            first = min(later, key=lambda log: log.first_lsn)
            return (
                f"the log chain of {self.database} is broken: no log backup holds LSN "
                f"{expected} to {first.first_lsn} (the next one in the store, {first.name}, "
                f"starts there); {target.isoformat()} cannot be reached — the newest reachable "
                f"instant before the gap is {reached.isoformat()}"
            )
        return (
            f"{target.isoformat()} is after the newest log backup of {self.database} in the "
            f"store: the newest reachable instant is {reached.isoformat()}"
        )

    def foreign_fulls(self, full: BackupSet, reached: datetime) -> list[str]:
        """Fulls taken outside this project, seen through the logs that name them as base."""
        held = {b.checkpoint_lsn for b in self.fulls}
        foreign = sorted(
            {
                log.database_backup_lsn
                for log in self.logs
                if full.finished_at < log.finished_at <= reached
                and log.database_backup_lsn
                and log.database_backup_lsn not in held
            }
        )
        return [
            f"a full backup with checkpoint LSN {lsn} was taken outside this project (the store "
            "does not hold it); the log chain still restores across it"
            for lsn in foreign
        ]
