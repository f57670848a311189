"""Retention over 30 simulated days of the SQL Server runbook's schedule (a full daily, a
differential every 4 hours, a log every 15 minutes): it keeps every chain it promises — any
instant of the point-in-time window restorable, every kept differential with its base — and
deletes every other log."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import pytest

from backup_pipelines.lib.lifecycle.retention import plan_retention
from backup_pipelines.lib.mssql.backupset import BackupSet, Kind
from backup_pipelines.lib.mssql.chain import plan_restore
from backup_pipelines.lib.mssql.restore import ASSETS
from backup_pipelines.lib.policy import Policy
from backup_pipelines.lib.store import ArtifactRef, LocalStore
from backup_pipelines_tests.mssql.test_mssql_chain import History

DAYS = 30
TODAY = date(2026, 12, 31)


def ref_for(backup: BackupSet) -> ArtifactRef:
    started = backup.started_at
    window = None if backup.kind is Kind.FULL else started.strftime("%H%M")
    return ArtifactRef(ASSETS[backup.kind], started.strftime("%Y-%m-%d"), None, window)


@pytest.fixture(scope="module")
def history():
    simulated = History()
    simulated.clock = datetime.combine(TODAY - timedelta(days=DAYS), time(), tzinfo=UTC)
    for _day in range(DAYS):
        simulated.day()
        simulated.work()
    return simulated


@pytest.fixture(scope="module")
def store(history, tmp_path_factory):
    store = LocalStore(tmp_path_factory.mktemp("mssql-retention") / "store")
    for backup in history.sets:
        with store.begin(ref_for(backup)) as writer:
            writer.write_bytes("backup.bak", backup.backup_set_guid.encode())
            writer.commit(
                captured_at=backup.finished_at.isoformat(),
                header=backup.to_manifest(),
                counts={},
                source={"kind": "sqlserver"},
                tool={},
            )
    return store


def test_mssql_retention_keeps_the_chains_it_promises_and_nothing_else(history, store):
    policy = Policy(keep_daily_days=7, keep_weekly_days=21, pitr_window_days=7)
    plan = plan_retention(store, policy, TODAY, is_verified=lambda _artifact: True)
    kept = {a.ref for a in plan.kept}
    by_ref = {ref_for(b): b for b in history.sets}
    kept_sets = [by_ref[ref] for ref in kept if ref in by_ref]

    # Independently: the anchor is the newest kept full/diff finished before the window.
    window_start = datetime.combine(TODAY - timedelta(days=7), time(), tzinfo=UTC)
    anchors = [
        b for b in kept_sets if b.kind in (Kind.FULL, Kind.DIFF) and b.finished_at <= window_start
    ]
    anchor = max(anchors, key=lambda b: b.last_lsn)
    logs = [b for b in history.sets if b.kind is Kind.LOG]
    expected_logs = {ref_for(b) for b in logs if b.last_lsn > anchor.last_lsn}
    kept_logs = {ref for ref in kept if ref.asset == ASSETS[Kind.LOG]}
    assert kept_logs == expected_logs
    assert len(kept_logs) < len(logs)  # older logs do go

    # Every kept differential has its base full.
    fulls = {b.checkpoint_lsn for b in kept_sets if b.kind is Kind.FULL}
    assert all(b.database_backup_lsn in fulls for b in kept_sets if b.kind is Kind.DIFF)

    # Every instant of the window restores from what is kept, hour by hour.
    newest = max(b.finished_at for b in kept_sets)
    moment = window_start + timedelta(minutes=1)
    while moment <= newest:
        plan_restore(kept_sets, moment)
        moment += timedelta(hours=1)

    # The plan says why, per artifact.
    reasons = {a.ref: a.why for a in plan.artifacts}
    some_log = next(iter(kept_logs))
    assert "point-in-time window" in reasons[some_log]
    gone = next(ref for ref in by_ref if ref.asset == ASSETS[Kind.LOG] and ref not in kept)
    assert "own rule" in reasons[gone]


def test_mssql_retention_keeps_the_base_full_of_a_kept_differential(history, store):
    # Weekly keeps the newest differential of an old week; its base full (that day's) must
    # stay even where the daily window would let it go.
    policy = Policy(keep_daily_days=3, keep_weekly_days=28, pitr_window_days=3)
    plan = plan_retention(store, policy, TODAY, is_verified=lambda _artifact: True)
    by_ref = {ref_for(b): b for b in history.sets}
    kept = [by_ref[a.ref] for a in plan.kept if a.ref in by_ref]
    fulls = {b.checkpoint_lsn: b for b in kept if b.kind is Kind.FULL}
    old_diffs = [b for b in kept if b.kind is Kind.DIFF and (TODAY - b.finished_at.date()).days > 3]
    assert old_diffs
    assert all(d.database_backup_lsn in fulls for d in old_diffs)
    bases = [a for a in plan.kept if "base of kept differential" in a.why]
    assert bases
