"""The SQL Server restore chain planner on recorded histories: which full, differential and logs
restore to T, and every way a chain breaks, named before anything is restored."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from backup_pipelines.lib.mssql.backupset import BackupSet, InvalidBackupHeader, Kind
from backup_pipelines.lib.mssql.chain import ChainBroken, plan_restore, reachable_window

DAY = datetime(2026, 12, 1, tzinfo=UTC)


class History:
    """A database's backups as SQL Server would record them: LSNs grow with the work done,
    logs chain LastLSN -> FirstLSN, differentials name their base full's checkpoint LSN."""

    def __init__(self, database: str = "agents") -> None:
        self.database = database
        self.clock = DAY
        self.lsn = 37_000_000_000_100_000
        self.fork = str(uuid.uuid4())
        self.base: int | None = None  # checkpoint LSN of the newest (non copy-only) full
        self.log_from: int | None = None  # where the next log backup starts
        self.sets: list[BackupSet] = []

    def work(self, minutes: float = 15, lsns: int = 1_000) -> None:
        self.clock += timedelta(minutes=minutes)
        self.lsn += lsns

    def _take(self, kind: Kind, first: int, **extra) -> BackupSet:
        started = self.clock
        checkpoint = self.lsn + 1
        self.lsn += 3
        self.clock += timedelta(seconds=20)
        backup = BackupSet(
            kind=kind,
            database=self.database,
            first_lsn=first,
            last_lsn=self.lsn,
            checkpoint_lsn=checkpoint,
            database_backup_lsn=extra.pop("base", self.base or 0),
            started_at=started,
            finished_at=self.clock,
            backup_set_guid=str(uuid.uuid4()),
            first_recovery_fork_id=self.fork,
            recovery_fork_id=self.fork,
            location=f"{kind}@{self.clock:%H:%M}",
            **extra,
        )
        self.sets.append(backup)
        return backup

    def full(self, copy_only: bool = False, keep: bool = True) -> BackupSet:
        backup = self._take(Kind.FULL, self.lsn - 500, is_copy_only=copy_only)
        if not copy_only:
            self.base = backup.checkpoint_lsn
            if self.log_from is None:
                self.log_from = backup.first_lsn
        if not keep:  # taken outside this project: the store never sees it
            self.sets.remove(backup)
        return backup

    def diff(self) -> BackupSet:
        return self._take(Kind.DIFF, self.lsn - 400)

    def log(self, keep: bool = True) -> BackupSet:
        backup = self._take(Kind.LOG, self.log_from)
        self.log_from = backup.last_lsn
        if not keep:
            self.sets.remove(backup)
        return backup

    def day(self) -> None:
        """The runbook's day: a full at 00:00, a diff every 4 h, a log every 15 min."""
        self.full()
        for quarter in range(1, 96):
            self.work()
            if quarter % 16 == 0:
                self.diff()
            self.log()


def test_mssql_plan_to_a_time_between_two_logs_uses_the_newest_diff_and_stops_at_t():
    history = History()
    history.day()
    target = DAY + timedelta(hours=9, minutes=7)
    plan = plan_restore(history.sets, target)
    diffs_before = [b for b in history.sets if b.kind is Kind.DIFF and b.finished_at <= target]
    assert plan.full.kind is Kind.FULL and plan.full.finished_at < DAY + timedelta(minutes=1)
    assert plan.diff == max(diffs_before, key=lambda b: b.last_lsn)  # the 08:00 differential
    assert plan.logs[0].first_lsn <= plan.diff.last_lsn < plan.logs[0].last_lsn
    assert all(a.last_lsn == b.first_lsn for a, b in zip(plan.logs, plan.logs[1:], strict=False))
    assert plan.logs[-1].finished_at >= target > plan.logs[-2].finished_at
    assert plan.stop_at == plan.target == target
    assert "STOPAT" in plan.describe()[-1]


def test_mssql_plan_at_the_moment_a_diff_finished_needs_no_log():
    history = History()
    history.day()
    diff = next(b for b in history.sets if b.kind is Kind.DIFF)
    plan = plan_restore(history.sets, diff.finished_at)
    assert (plan.diff, plan.logs, plan.stop_at) == (diff, [], None)


def test_mssql_plan_to_latest_follows_the_whole_chain():
    history = History()
    history.day()
    plan = plan_restore(history.sets)
    assert plan.target == history.sets[-1].finished_at
    assert plan.logs[-1] == history.sets[-1] and plan.stop_at is None


def test_mssql_missing_log_is_refused_naming_the_lsn_gap_and_newest_reachable_instant():
    history = History()
    history.full()
    kept = []
    for number in range(8):
        history.work()
        kept.append(history.log(keep=number != 4))
    before_gap = kept[3]
    with pytest.raises(ChainBroken) as refused:
        plan_restore(history.sets, history.clock)
    message = str(refused.value)
    assert f"LSN {before_gap.last_lsn}" in message
    assert before_gap.finished_at.isoformat() in message
    # Up to the gap, the chain still restores.
    assert plan_restore(history.sets, before_gap.finished_at).logs[-1] == before_gap


def test_mssql_target_after_the_newest_log_or_before_the_oldest_full_is_refused():
    history = History()
    history.work()
    history.full()
    history.work()
    newest = history.log()
    with pytest.raises(
        ChainBroken,
        match=re.escape(f"newest reachable instant is {newest.finished_at.isoformat()}"),
    ):
        plan_restore(history.sets, newest.finished_at + timedelta(minutes=1))
    with pytest.raises(ChainBroken, match="oldest reachable instant"):
        plan_restore(history.sets, DAY)
    oldest, latest = reachable_window(history.sets)
    assert (oldest, latest) == (history.sets[0].finished_at, newest.finished_at)


def test_mssql_copy_only_full_is_never_a_base():
    history = History()
    full = history.full()
    history.work()
    history.log()
    history.work()
    history.full(copy_only=True)
    history.work()
    diff = history.diff()
    history.work()
    history.log()
    plan = plan_restore(history.sets)
    assert plan.full == full and plan.diff == diff
    assert diff.database_backup_lsn == full.checkpoint_lsn


def test_mssql_foreign_full_moves_the_diff_base_the_planner_names_it():
    history = History()
    history.full()
    history.work()
    history.log()
    history.work()
    history.full(keep=False)  # taken outside this project
    history.work()
    foreign_diff = history.diff()
    history.work()
    history.log()
    # The logs bridge the foreign full: restorable, and the plan says what it did not use.
    plan = plan_restore(history.sets)
    assert plan.diff is None and len(plan.logs) == 2
    assert any(
        "not used" in note and str(foreign_diff.database_backup_lsn) in note for note in plan.notes
    )
    assert any("taken outside this project" in note for note in plan.notes)
    # Without the log that bridges it, the only way across is that diff: refused, named.
    history2 = [b for b in history.sets if b is not plan.logs[0]]
    with pytest.raises(ChainBroken) as refused:
        plan_restore(history2, history.clock)
    assert str(foreign_diff.database_backup_lsn) in str(refused.value)
    assert "taken outside this project" in str(refused.value)


def test_mssql_logs_of_another_recovery_fork_are_not_chained():
    history = History()
    history.full()
    history.work()
    first_log = history.log()
    # The database was restored to a point inside the next log's range and recovered: a new
    # fork starts there, and the old timeline's later logs overlap it in LSNs.
    history.work()
    old_timeline = history.log()
    old_fork, history.fork = history.fork, str(uuid.uuid4())
    history.lsn, history.log_from = first_log.last_lsn + 10, first_log.last_lsn
    history.work()
    new_timeline = history.log()
    # Its first LSN was written on the old fork; it ends on the new one.
    history.sets[-1] = new_timeline = BackupSet(
        **{**new_timeline.__dict__, "first_recovery_fork_id": old_fork}
    )
    plan = plan_restore(history.sets, new_timeline.finished_at)
    assert plan.logs == [first_log, new_timeline] and old_timeline not in plan.logs


def test_mssql_damaged_backup_is_skipped():
    history = History()
    history.full()
    history.work()
    history.log()
    history.work()
    diff = history.diff()
    history.sets[-1] = BackupSet(**{**diff.__dict__, "is_damaged": True})
    assert plan_restore(history.sets).diff is None


def test_mssql_recorded_header_round_trips_and_tampering_is_refused():
    history = History()
    backup = history.full()
    recorded = backup.to_manifest()
    assert BackupSet.from_manifest(recorded, backup.location) == backup
    for key, value in [
        ("first_lsn", "12; DROP TABLE x"),
        ("last_lsn", str(10**30)),
        ("type", "tail"),
        ("backup_set_guid", "../../etc"),
        ("finished_at", "yesterday"),
        ("is_copy_only", "no"),
    ]:
        with pytest.raises(InvalidBackupHeader, match=key if key != "type" else "type"):
            BackupSet.from_manifest({**recorded, key: value}, "somewhere")
    with pytest.raises(InvalidBackupHeader):
        BackupSet.from_manifest(["not", "an", "object"], "somewhere")


def test_mssql_several_databases_need_a_name():
    one, other = History("agents"), History("billing")
    one.full()
    other.full()
    with pytest.raises(ChainBroken, match="several databases"):
        plan_restore(one.sets + other.sets)
    assert plan_restore(one.sets + other.sets, database="billing").full.database == "billing"
