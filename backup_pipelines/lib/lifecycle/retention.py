"""Retention: which backups to keep (grandfather-father-son), what to delete, and the debris of
crashed runs. Plain Python, no Dagster; the clock is always passed in.

A *backup* is one partition (date, workspace) — workspace None for the whole-database series
(`postgres/full_dump`). It is the unit of retention: every artifact of the partition (the SQL
dump and the Typesense/Qdrant artifacts beside it, or any other asset with the same date and
workspace) is kept or deleted together, because a restore needs them together.

Rules, per workspace and separately for the whole-database series, relative to `today`:

- daily: keep every backup with `age_days < keep_daily_days`, where
  `age_days = (today - date).days`. With the default 30 and today 2026-03-31, 2026-03-02
  (29 days old) is kept as daily and 2026-03-01 (30 days old) is not. Backups dated after
  today (a skewed clock) count as young and are kept.
- weekly: among the backups with `age_days < keep_weekly_days`, keep the newest backup of
  each ISO week (Monday..Sunday), so a missed Sunday does not lose the week.
- kept: a keep marker (`mark_kept`, e.g. before a migration) holds its partition whatever
  its age, until `release`.
- newest verified: the newest backup of the series that passes verification is never
  deleted. The verifier is called newest first and only as long as something at or below
  the current backup would be deleted, so a daily run re-reads about one partition per
  series, not the store. When no backup of a series verifies, nothing of that series is
  deleted ("held: no verified backup"): a flaky store or a broken verifier must not turn
  into deleted history.

Leftovers of crashed runs (scan.py) are cleaned by the same plan; keep markers: markers.py.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from backup_pipelines.lib.errors import ConfigError, StoreError
from backup_pipelines.lib.lifecycle.markers import KeepMarker, Partition, list_kept, marker_key
from backup_pipelines.lib.lifecycle.scan import Folder, Leftover, find_leftovers, scan_store
from backup_pipelines.lib.policy import Policy
from backup_pipelines.lib.store import MANIFEST_NAME, ArtifactRef, BackupStore, S3Store

# Delete these last: a partition interrupted mid-delete then still holds its SQL dump, which
# restores on its own (indexes can be rebuilt from it); index artifacts alone restore nothing.
SQL_ASSETS = ("postgres/workspace_dump", "postgres/full_dump")

DAILY = "daily"
WEEKLY = "weekly"
NEWEST_VERIFIED = "newest verified"
HELD_UNVERIFIED = "held: no verified backup"
KEPT_PREFIX = "kept: "

Log = Callable[[str], Any]


def _quiet(_message: str) -> None:
    pass


@dataclass(frozen=True)
class Windows:
    """The retention numbers of a policy, checked once."""

    daily_days: int
    weekly_days: int
    incomplete_max_age_hours: float

    @classmethod
    def from_policy(cls, policy: Policy) -> Windows:
        for name in ("keep_daily_days", "keep_weekly_days"):
            value = getattr(policy, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(
                    f"policy {name}: expected a whole number of days >= 0, got {value!r}"
                )
        hours = policy.incomplete_max_age_hours
        if isinstance(hours, bool) or not isinstance(hours, int | float) or not hours > 0:
            raise ConfigError(
                f"policy incomplete_max_age_hours: expected a number of hours > 0, got {hours!r} "
                "(younger uploads may belong to a run in flight)"
            )
        return cls(policy.keep_daily_days, policy.keep_weekly_days, float(hours))


def _check_today(today: object) -> date:
    # datetime is a date subclass: refuse it rather than guess which time zone was meant.
    if isinstance(today, datetime) or not isinstance(today, date):
        raise TypeError(f"today must be a datetime.date (the UTC date), got {today!r}")
    return today


# --------------------------------------------------------------------------------------------
# The plan


@dataclass
class Backup:
    partition: Partition
    folders: list[Folder]
    reasons: list[str] = field(default_factory=list)

    @property
    def keep(self) -> bool:
        return bool(self.reasons)

    @property
    def refs(self) -> list[ArtifactRef]:
        return [f.ref for f in self.folders]

    @property
    def assets(self) -> list[str]:
        return sorted(f.ref.asset for f in self.folders)

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.folders)


@dataclass
class RetentionPlan:
    today: date
    windows: Windows
    backups: list[Backup]
    leftovers: list[Leftover]
    markers: list[KeepMarker]
    failed_verification: list[Partition]
    verifications: int  # how many partitions were verified to make this plan

    @property
    def kept(self) -> list[Backup]:
        return [b for b in self.backups if b.keep]

    @property
    def to_delete(self) -> list[Backup]:
        return [b for b in self.backups if not b.keep]

    @property
    def bytes_to_free(self) -> int:
        return sum(b.bytes for b in self.to_delete) + sum(x.bytes for x in self.leftovers)

    def reason_counts(self) -> dict[str, int]:
        """Kept backups per reason (a backup kept for several reasons counts under each);
        every `kept: <why>` counts as `kept`."""
        counts: Counter[str] = Counter()
        for backup in self.kept:
            for reason in backup.reasons:
                counts["kept" if reason.startswith(KEPT_PREFIX) else reason] += 1
        return dict(counts)

    def summary(self) -> str:
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(self.reason_counts().items()))
        return (
            f"retention for {self.today}: keep {len(self.kept)} backups ({reasons or 'none'}), "
            f"delete {len(self.to_delete)}, clean {len(self.leftovers)} leftovers of crashed "
            f"runs, {human_bytes(self.bytes_to_free)} to free; {self.verifications} partitions "
            f"verified, {len(self.failed_verification)} failed verification"
        )


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def verify_with_store(store: BackupStore, log: Log = _quiet) -> Callable[[Backup], bool]:
    """The default verifier: every artifact of the partition re-reads with matching sha256."""

    def is_verified(backup: Backup) -> bool:
        for ref in backup.refs:
            try:
                result = store.verify(ref)
            except StoreError as exc:  # e.g. an unreadable manifest
                log(f"verify {ref}: {exc}")
                return False
            if not result.ok:
                log(f"verify {ref}: " + "; ".join(result.problems))
                return False
        return True

    return is_verified


def plan_retention(
    store: BackupStore,
    policy: Policy,
    today: date,
    *,
    now: float | None = None,
    is_verified: Callable[[Backup], bool] | None = None,
    log: Log = _quiet,
) -> RetentionPlan:
    """What to keep and delete on `today` (a UTC date). `now` (epoch seconds, default the
    clock) ages the leftovers of crashed runs; `is_verified` defaults to `verify_with_store`.
    Reads one listing of the store, the keep markers, and the few partitions verified."""
    windows = Windows.from_policy(policy)
    today = _check_today(today)
    now = time.time() if now is None else now
    folders = scan_store(store)
    markers = list_kept(store)
    held = {m.partition: m for m in markers}
    verifier = _CountingVerifier(is_verified or verify_with_store(store, log))
    backups = _backups_of(folders)
    failed: list[Partition] = []
    for series in _series(backups):
        _apply_age_rules(series, today, windows)
        _apply_markers(series, held)
        failed += _protect_newest_verified(series, verifier, log)
    doomed = {f.ref for b in backups if not b.keep for f in b.folders}
    leftovers = find_leftovers(store, folders, doomed, now, windows.incomplete_max_age_hours)
    return RetentionPlan(today, windows, backups, leftovers, markers, failed, verifier.calls)


class _CountingVerifier:
    """Counts verifications, so the plan shows how much of the store was re-read."""

    def __init__(self, verify: Callable[[Backup], bool]) -> None:
        self._verify = verify
        self.calls = 0

    def __call__(self, backup: Backup) -> bool:
        self.calls += 1
        return self._verify(backup)


def _backups_of(folders: dict[ArtifactRef, Folder]) -> list[Backup]:
    """Committed artifacts grouped by partition; folders without a manifest are not backups."""
    by_partition: dict[Partition, list[Folder]] = defaultdict(list)
    for ref, folder in folders.items():
        if folder.has_manifest:
            by_partition[Partition(ref.date, ref.workspace)].append(folder)
    return [
        Backup(p, sorted(fs, key=lambda f: f.ref.asset))
        for p, fs in sorted(by_partition.items(), key=lambda item: item[0].sort_key)
    ]


def _series(backups: Iterable[Backup]) -> list[list[Backup]]:
    """Backups per workspace (None: whole database), each list newest first."""
    by_workspace: dict[str | None, list[Backup]] = defaultdict(list)
    for backup in backups:
        by_workspace[backup.partition.workspace].append(backup)
    return [
        sorted(series, key=lambda b: b.partition.date, reverse=True)
        for series in by_workspace.values()
    ]


def _apply_age_rules(newest_first: list[Backup], today: date, windows: Windows) -> None:
    weeks_seen: set[tuple[int, int]] = set()
    for backup in newest_first:
        day = backup.partition.day
        age_days = (today - day).days
        if age_days < windows.daily_days:
            backup.reasons.append(DAILY)
        if age_days < windows.weekly_days:
            week = tuple(day.isocalendar())[:2]
            if week not in weeks_seen:  # newest first: the first one seen is the week's newest
                weeks_seen.add(week)
                backup.reasons.append(WEEKLY)


def _apply_markers(series: list[Backup], held: dict[Partition, KeepMarker]) -> None:
    for backup in series:
        if (marker := held.get(backup.partition)) is not None:
            backup.reasons.append(KEPT_PREFIX + marker.reason)


def _protect_newest_verified(
    newest_first: list[Backup], is_verified: Callable[[Backup], bool], log: Log
) -> list[Partition]:
    """Keep the newest backup that verifies; returns the partitions that failed on the way."""
    failed: list[Partition] = []
    doomed_positions = [i for i, b in enumerate(newest_first) if not b.keep]
    # Past the oldest doomed backup nothing is at risk, so nothing more needs to be read.
    for backup in newest_first[: doomed_positions[-1] + 1 if doomed_positions else 0]:
        if is_verified(backup):
            backup.reasons.append(NEWEST_VERIFIED)
            log(f"newest verified backup of {_series_name(backup)}: {backup.partition}")
            return failed
        log(f"{backup.partition} failed verification; trying the next older backup")
        failed.append(backup.partition)
    for backup in newest_first:
        if not backup.keep:
            backup.reasons.append(HELD_UNVERIFIED)
    return failed


def _series_name(backup: Backup) -> str:
    workspace = backup.partition.workspace
    return f"workspace {workspace}" if workspace else "the whole database"


# --------------------------------------------------------------------------------------------
# Applying a plan


@dataclass
class ApplyResult:
    deleted: list[Partition] = field(default_factory=list)
    skipped: list[tuple[Partition, str]] = field(default_factory=list)
    leftovers_cleaned: int = 0
    bytes_freed: int = 0
    errors: list[str] = field(default_factory=list)


def apply_plan(store: BackupStore, plan: RetentionPlan, log: Log = print) -> ApplyResult:
    """Delete each doomed partition as a whole, then clean the leftovers. Errors are
    collected (one bad partition does not stop the rest) and returned; a rerun finishes what
    an interrupted one left, since the rules give the same answer for the same partitions."""
    result = ApplyResult()
    doomed = plan.to_delete
    for number, backup in enumerate(doomed, 1):
        if store._get(marker_key(backup.partition)) is not None:
            # Marked after the plan was made: the marker wins.
            result.skipped.append((backup.partition, "keep marker placed since planning"))
            log(f"[{number}/{len(doomed)}] {backup.partition}: kept, marked since planning")
            continue
        try:
            delete_backup(store, backup)
        except StoreError as exc:
            result.errors.append(f"{backup.partition}: {exc}")
            log(f"[{number}/{len(doomed)}] {backup.partition}: FAILED {exc}")
            continue
        result.deleted.append(backup.partition)
        result.bytes_freed += backup.bytes
        log(
            f"[{number}/{len(doomed)}] deleted {backup.partition} "
            f"({', '.join(backup.assets)}; {human_bytes(backup.bytes)})"
        )
    for leftover in plan.leftovers:
        try:
            clean_leftover(store, leftover)
        except StoreError as exc:
            result.errors.append(f"{leftover.key}: {exc}")
            continue
        result.leftovers_cleaned += 1
        result.bytes_freed += leftover.bytes
        log(f"cleaned {leftover.kind} {leftover.key} ({leftover.age_hours:.0f} h old)")
    return result


def delete_backup(store: BackupStore, backup: Backup) -> None:
    """Every manifest of the partition first (SQL last), so no artifact of it reads as
    complete once any is going; then the files the listing saw. Files written since the
    listing (a run in flight for the same partition) are left alone."""
    folders = sorted(backup.folders, key=lambda f: f.ref.asset in SQL_ASSETS)
    for folder in folders:
        store._delete_prefix(f"{folder.ref.folder}/{MANIFEST_NAME}")
    for folder in folders:
        for name in folder.generations:
            store._delete_prefix(f"{folder.ref.folder}/{name}/")
        for key, _size, _mtime in folder.loose:
            store._delete_prefix(key)
        store._remove_empty_folders(folder.ref.folder)


def clean_leftover(store: BackupStore, leftover: Leftover) -> None:
    if leftover.upload_id is not None:
        assert isinstance(store, S3Store)
        store.abort_upload(leftover.key, leftover.upload_id)
        return
    store._delete_prefix(leftover.key)
    store._remove_empty_folders(leftover.key.rstrip("/").rpartition("/")[0])


def run_retention(
    store: BackupStore,
    policy: Policy,
    today: date,
    *,
    dry_run: bool = False,
    now: float | None = None,
    is_verified: Callable[[Backup], bool] | None = None,
    log: Log = print,
) -> tuple[RetentionPlan, ApplyResult | None]:
    """Plan, log the plan, and apply it unless `dry_run` (then the result is None)."""
    plan = plan_retention(store, policy, today, now=now, is_verified=is_verified, log=log)
    log(plan.summary())
    if not dry_run:
        return plan, apply_plan(store, plan, log)  # logs each deletion as it happens
    for backup in plan.to_delete:
        log(
            f"would delete {backup.partition} ({', '.join(backup.assets)}; {human_bytes(backup.bytes)})"
        )
    for leftover in plan.leftovers:
        log(f"would clean {leftover.kind} {leftover.key} ({leftover.age_hours:.0f} h old)")
    return plan, None
