"""Retention: which artifacts to keep (grandfather-father-son), what to delete, and the debris
of crashed runs. Plain Python, no Dagster; the clock is always passed in.

The unit of retention is one *artifact* (asset, date, workspace), judged within its *series*:
one asset x workspace (a whole-database asset such as `postgres/full_dump`: the asset alone).
Each series keeps its own newest verified artifact, whatever the other assets of that date
hold: a workspace whose newest backup has only its SQL dump keeps its older Typesense and
Qdrant artifacts, and a corrupt Qdrant snapshot does not cost that date's verified SQL and
Typesense artifacts. An index artifact deleted because its SQL partner failed could not
shorten any restore; one kept lets a restore skip the rebuild (the consistency gate judges
the pair a restore combines).

Rules, per series, relative to `today`:

- daily: keep every artifact with `age_days < keep_daily_days`, where
  `age_days = (today - date).days`. With the default 30 and today 2026-03-31, 2026-03-02
  (29 days old) is kept as daily and 2026-03-01 (30 days old) is not. Artifacts dated after
  today (a skewed clock) count as young and are kept.
- weekly: among the artifacts with `age_days < keep_weekly_days`, keep the newest of each
  ISO week (Monday..Sunday) in the series, so a missed Sunday does not lose the week.
- kept: a keep marker (`mark_kept`, e.g. before a migration) holds every artifact of its
  partition (date x workspace, or the date's whole-database artifacts), until `release`.
- newest verified: the newest artifact of the series that passes verification is never
  deleted. The verifier is called newest first and only as long as something at or below
  the current artifact would be deleted, so a daily run re-reads about one artifact per
  series, not the store. When no artifact of a series verifies, nothing of that series is
  deleted ("held: no verified backup"): a flaky store or a broken verifier must not turn
  into deleted history. With the store's own verifier, a verification younger than the
  policy's `reverify_after_days` whose artifact is still exactly the objects it was is
  trusted instead of re-read (verified.py); `full_reverify` re-reads every one.
- asset rules (RULE_MODULES, and ASSET_RULES at run time: the extension point): rules for
  one asset that run after the rules above and may keep more, seeing every series of the
  plan — e.g. SQL Server's "a log is kept while a kept full or differential needs it".

Leftovers of crashed runs (scan.py) are cleaned by the same plan; keep markers: markers.py.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import resource
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import cached_property
from typing import Any, Protocol

from backup_pipelines.lib.errors import BackupError, ConfigError, StoreError
from backup_pipelines.lib.lifecycle.deletion import (
    BATCH_ARTIFACTS,
    BATCH_ONE_BY_ONE,
    SQL_ASSETS,
    artifact_order,
    clean_leftover,
    delete_one_by_one,
    delete_together,
    deletes_together,
)
from backup_pipelines.lib.lifecycle.markers import (
    DATE_PATTERN,
    KEEP_PREFIX,
    KeepMarker,
    Partition,
    list_kept,
    marker_key,
)
from backup_pipelines.lib.lifecycle.scan import (
    Folder,
    Leftover,
    find_leftovers,
    list_deferred,
    scan_store,
)
from backup_pipelines.lib.lifecycle.verified import VerificationRecord
from backup_pipelines.lib.policy import Policy
from backup_pipelines.lib.store import (
    LEASE_PREFIX,
    ArtifactRef,
    BackupStore,
    S3Store,
    lease_name,
    listing,
)
from backup_pipelines.lib.store.lease import lease_key
from backup_pipelines.lib.store.listing import LOCAL_COLD_LISTING_THREADS, WalkReport
from backup_pipelines.lib.store.s3 import ObjectLocked

# Series whose newest artifacts are re-read at once (the S3 client keeps 8 connections).
VERIFIERS = 8
LOG_LINES = 1000  # lines of the plan's per-series log joined into one message

DAILY = "daily"
WEEKLY = "weekly"
NEWEST_VERIFIED = "newest verified"
HELD_UNVERIFIED = "held: no verified backup"
KEPT_PREFIX = "kept: "
KEEP, DELETE = "keep", "delete"

Log = Callable[[str], Any]


def _quiet(_message: str) -> None:
    pass


@dataclass(frozen=True)
class Windows:
    """The retention numbers of a policy, checked once."""

    daily_days: int
    weekly_days: int
    incomplete_max_age_hours: float
    reverify_after_days: float = 0.0  # 0: every verification is done again

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
        days = policy.reverify_after_days
        if isinstance(days, bool) or not isinstance(days, int | float) or not days >= 0:
            raise ConfigError(
                f"policy reverify_after_days: expected a number of days >= 0, got {days!r}"
            )
        return cls(policy.keep_daily_days, policy.keep_weekly_days, float(hours), float(days))


def _check_today(today: object) -> date:
    # datetime is a date subclass: refuse it rather than guess which time zone was meant.
    if isinstance(today, datetime) or not isinstance(today, date):
        raise TypeError(f"today must be a datetime.date (the UTC date), got {today!r}")
    return today


# --------------------------------------------------------------------------------------------
# The plan

SeriesKey = tuple[str, str | None]  # (asset, workspace or None)


@dataclass
class Artifact:
    """One committed artifact and the plan's decision on it."""

    folder: Folder
    reasons: list[str] = field(default_factory=list)  # why it is kept; empty: deleted
    deletion_reason: str = ""  # why it goes, when it goes
    # folder.ref, read ~11 times an artifact (a million reads at 10,000 workspaces)
    ref: ArtifactRef = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.ref = self.folder.ref

    @property
    def asset(self) -> str:
        return self.ref.asset

    @cached_property  # asked ~3 times an artifact: 265,000 validations at 10,000 workspaces
    def partition(self) -> Partition:
        """What a keep marker holds: the date x workspace (every window of the date)."""
        return _partition(self.ref.date, self.ref.workspace)

    @property
    def where(self) -> str:
        """`date|workspace`, and the window of a sub-daily artifact: `date|workspace HHMM`."""
        return f"{self.partition} {self.ref.window}" if self.ref.window else str(self.partition)

    @property
    def series(self) -> SeriesKey:
        return self.ref.asset, self.ref.workspace

    @property
    def keep(self) -> bool:
        return bool(self.reasons)

    @property
    def decision(self) -> str:
        return KEEP if self.keep else DELETE

    @property
    def why(self) -> str:
        return ", ".join(self.reasons) if self.keep else self.deletion_reason

    @property
    def bytes(self) -> int:
        return self.folder.bytes

    def keep_for(self, reason: str) -> None:
        if reason not in self.reasons:
            self.reasons.append(reason)

    def __str__(self) -> str:
        return label(self.ref)


@functools.cache  # emptied after each plan (plan_retention)
def _partition(day: str, workspace: str | None) -> Partition:
    """One Partition (validated once) for the artifacts of every asset of a date x workspace."""
    return Partition(day, workspace)


@functools.lru_cache(maxsize=4096)
def _age_and_week(today: date, day: str) -> tuple[int, tuple[int, int]]:
    """(age in days on `today`, ISO year and week) of a YYYY-MM-DD date: the same few dates
    for every series."""
    parsed = date.fromisoformat(day)
    return (today - parsed).days, tuple(parsed.isocalendar())[:2]


def label(ref: ArtifactRef) -> str:
    """`asset date|workspace` (or `asset date` for a whole-database artifact), and ` window
    HHMM` for an artifact of a sub-daily window."""
    text = f"{ref.asset} {Partition(ref.date, ref.workspace)}"
    return f"{text} window {ref.window}" if ref.window else text


def _when(ref: ArtifactRef) -> tuple[str, str]:
    """Order within a series: date, then the window of a sub-daily artifact."""
    return ref.date, ref.window or ""


@dataclass
class Series:
    """The artifacts of one asset x workspace, newest first."""

    asset: str
    workspace: str | None
    artifacts: list[Artifact]

    @property
    def key(self) -> SeriesKey:
        return self.asset, self.workspace

    @property
    def name(self) -> str:
        return f"{self.asset} of " + (
            f"workspace {self.workspace}" if self.workspace else "the whole database"
        )


@dataclass(frozen=True)
class RuleContext:
    """What an asset rule may look at: the day, the windows, every series of the plan (to
    keep one asset's artifacts for another's sake), the store (to read manifests)."""

    today: date
    windows: Windows
    series: Mapping[SeriesKey, Series]
    store: BackupStore
    log: Log
    policy: Policy | None = None


class AssetRule(Protocol):
    """Runs on each series of its asset after the generic rules; keeps more artifacts with
    `artifact.keep_for(reason)` (never fewer: only the generic rules decide what may go)."""

    def __call__(self, series: Series, context: RuleContext) -> None: ...


# asset key -> its extra rules, as "module:function" so this concern never imports an engine
# package: an engine registers its rules here (SQL Server: its chain rules).
RULE_MODULES: dict[str, list[str]] = {
    "mssql/full_backup": ["backup_pipelines.lib.mssql.retention:keep_base_fulls"],
    "mssql/log_backup": ["backup_pipelines.lib.mssql.retention:keep_log_chain"],
}
# Assets whose rules replace the daily/weekly windows (their own rule says what to keep;
# markers and the newest verified artifact still hold): SQL Server logs follow the
# point-in-time window.
OWN_AGE_RULES = {"mssql/log_backup"}


def _load_rules() -> dict[str, list[AssetRule]]:
    import importlib

    rules: dict[str, list[AssetRule]] = {}
    for asset, names in RULE_MODULES.items():
        for name in names:
            module, _, function = name.partition(":")
            rules.setdefault(asset, []).append(getattr(importlib.import_module(module), function))
    return rules


ASSET_RULES: dict[str, list[AssetRule]] = {}  # rules added at run time (tests, plug-ins)


def _kept_by_age(today: date, windows: Windows, date_folders: list[str]) -> set[str]:
    """The date folders whose artifacts the age rules keep, but for each asset's newest: the
    plan will not look at their files (scan_store defers their generation folders). A guess
    that only decides when a folder's files are listed, never what the plan decides."""
    by_asset: dict[str, list[tuple[str, str, int, tuple[int, int]]]] = defaultdict(list)
    for prefix in date_folders:
        asset, _, name = prefix.rstrip("/").rpartition("/")
        day = name.removeprefix("date=")
        if name.startswith("date=") and asset not in OWN_AGE_RULES and DATE_PATTERN.match(day):
            with contextlib.suppress(ValueError):  # 2026-02-30: not a date, never an artifact
                by_asset[asset].append((day, prefix, *_age_and_week(today, day)))
    kept: set[str] = set()
    for days in by_asset.values():
        weeks_seen: set[tuple[int, int]] = set()
        for position, (_day, prefix, age_days, week) in enumerate(sorted(days, reverse=True)):
            newest_of_week = week not in weeks_seen
            weeks_seen.add(week)
            if position and (
                age_days < windows.daily_days or (age_days < windows.weekly_days and newest_of_week)
            ):
                kept.add(prefix)
    return kept


@dataclass
class StoreListing:
    """How the plan's one listing of the store went: what an operator needs to tell a slow
    store from a slow plan (a local store whose metadata had to be read from disk)."""

    artifact_folders: int
    seconds: float
    # Read from disk by this process meanwhile (a local store's metadata); None: unknown here,
    # or an S3 store (its listing reads nothing from this machine's disk)
    disk_bytes: int | None
    walk: WalkReport
    # A local store's generation folders the plan needed, listed after the walk (scan.Folder)
    generation_folders: int = 0
    generation_seconds: float = 0.0
    generation_walk: WalkReport = field(default_factory=WalkReport)

    @property
    def total_seconds(self) -> float:
        return self.seconds + self.generation_seconds

    def describe(self) -> str:
        read = "" if self.disk_bytes is None else f"; {human_bytes(self.disk_bytes)} read from disk"
        then = ""
        if self.generation_folders:
            then = (
                f"; then the {self.generation_folders} generation folders the plan needed in "
                f"{self.generation_seconds:.1f} s"
            )
            if (switched := self.generation_walk.switched_after) is not None:
                then += f", {LOCAL_COLD_LISTING_THREADS} at a time after the first {switched}"
        return (
            f"store listed in {self.seconds:.1f} s: {self.artifact_folders} artifact folders "
            f"in {self.walk.describe()}{then}{read}"
        )

    def add_generations(self, store: BackupStore, folders: Iterable[Folder]) -> None:
        """List the deferred generation folders of `folders` at once, counted here."""
        started, read_before = time.monotonic(), _disk_bytes_read(store)
        self.generation_folders += list_deferred(folders, self.generation_walk)
        self.generation_seconds += time.monotonic() - started
        read_after = _disk_bytes_read(store)
        if self.disk_bytes is not None and read_before is not None and read_after is not None:
            self.disk_bytes += read_after - read_before


def _disk_bytes_read(store: BackupStore) -> int | None:
    """Bytes this process has read from disk (Linux's getrusage, in 512-byte blocks), where
    that says something about listing `store`: None for an S3 store (its listing reads
    nothing from this machine's disk) and off Linux, where the count means something else."""
    if isinstance(store, S3Store) or not sys.platform.startswith("linux"):
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_inblock * 512


def _listed(
    store: BackupStore, today: date, windows: Windows
) -> tuple[dict[ArtifactRef, Folder], StoreListing]:
    walk = WalkReport()
    started, read_before = time.monotonic(), _disk_bytes_read(store)
    folders = scan_store(store, walk, functools.partial(_kept_by_age, today, windows))
    seconds, read_after = time.monotonic() - started, _disk_bytes_read(store)
    read = None if read_before is None or read_after is None else read_after - read_before
    return folders, StoreListing(len(folders), seconds, read, walk)


@dataclass
class RetentionPlan:
    today: date
    windows: Windows
    artifacts: list[Artifact]
    leftovers: list[Leftover]
    markers: list[KeepMarker]
    failed_verification: list[ArtifactRef]
    verifications: int  # how many artifacts were verified (re-read) to make this plan
    # ... and how many were trusted from an earlier verification instead (verified.py)
    trusted: int = 0
    listing: StoreListing | None = None

    @property
    def kept(self) -> list[Artifact]:
        return [a for a in self.artifacts if a.keep]

    @property
    def to_delete(self) -> list[Artifact]:
        return [a for a in self.artifacts if not a.keep]

    @property
    def bytes_to_free(self) -> int:
        return sum(a.bytes for a in self.to_delete) + sum(x.bytes for x in self.leftovers)

    def reason_counts(self) -> dict[str, int]:
        """Kept artifacts per reason (one kept for several reasons counts under each); every
        `kept: <why>` counts as `kept`."""
        counts: Counter[str] = Counter()
        for artifact in self.kept:
            for reason in artifact.reasons:
                counts[_reason_group(reason)] += 1
        return dict(counts)

    def by_asset(self) -> dict[str, dict[str, int]]:
        """asset -> {"keep": n, "delete": n, <reason>: n kept for it, ...}"""
        table: dict[str, Counter] = defaultdict(Counter)
        for artifact in self.artifacts:
            table[artifact.asset][artifact.decision] += 1
            for reason in artifact.reasons:
                table[artifact.asset][_reason_group(reason)] += 1
        return {asset: dict(sorted(c.items())) for asset, c in sorted(table.items())}

    def summary(self) -> str:
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(self.reason_counts().items()))
        return (
            f"retention for {self.today}: keep {len(self.kept)} artifacts ({reasons or 'none'}), "
            f"delete {len(self.to_delete)}, clean {len(self.leftovers)} leftovers of crashed "
            f"runs, {human_bytes(self.bytes_to_free)} to free; {self.verifications} artifacts "
            f"verified now, {self.trusted} trusted from an earlier verification, "
            f"{len(self.failed_verification)} failed verification"
        )

    def decisions(self) -> list[Artifact]:
        """Every artifact, in the order a person reads a plan: by asset, workspace, date."""
        return sorted(self.artifacts, key=lambda a: (a.asset, a.ref.workspace or "", _when(a.ref)))


def _reason_group(reason: str) -> str:
    return "kept" if reason.startswith(KEPT_PREFIX) else reason


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def verify_with_store(store: BackupStore, log: Log = _quiet) -> Callable[[Artifact], bool]:
    """The default verifier: every file of the artifact re-reads with matching sha256."""

    def is_verified(artifact: Artifact) -> bool:
        try:
            result = store.verify(artifact.ref)
        except (BackupError, OSError, KeyError, TypeError, ValueError) as exc:
            # An unreadable or malformed manifest: not verified, never a crash of the plan.
            log(f"verify {artifact.ref}: {exc}")
            return False
        if not result.ok:
            log(f"verify {artifact.ref}: " + "; ".join(result.problems))
        return result.ok

    return is_verified


def _one_pass(function):
    """`function` run with Python's cycle collector paused (as it was once it returns), and
    the plan's caches emptied after it. A plan makes ~1M small objects at 10,000 workspaces
    (an lstat or listing entry per file, an Artifact per artifact) and frees none before it
    ends; meanwhile the collector would run hundreds of times, each older-generation pass
    walking every object of the process (a Dagster run's too): measured at 1,000 workspaces,
    1.3 s a plan paused against 1.4-3.0 s and growing from one plan to the next. Reference
    counting still frees everything as usual; only cycles wait (a plan makes none that must
    go before it ends)."""

    @functools.wraps(function)
    def paused(*args, **kwargs):
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return function(*args, **kwargs)
        finally:
            _partition.cache_clear()
            if was_enabled:
                gc.enable()

    return paused


@_one_pass
def plan_retention(
    store: BackupStore,
    policy: Policy,
    today: date,
    *,
    now: float | None = None,
    is_verified: Callable[[Artifact], bool] | None = None,
    asset_rules: Mapping[str, list[AssetRule]] | None = None,
    log: Log = _quiet,
    control: BackupStore | None = None,
    full_reverify: bool = False,
    remember: bool = True,
) -> RetentionPlan:
    """What to keep and delete on `today` (a UTC date). `now` (epoch seconds, default the
    clock) ages the leftovers of crashed runs and dates verifications; `is_verified` defaults
    to `verify_with_store`, whose results are remembered in the store (verified.py) and
    trusted by the next plans for `reverify_after_days` unless `full_reverify` (and written
    back to the store unless not `remember`: a dry run writes nothing);
    `asset_rules` to the rules of RULE_MODULES plus ASSET_RULES. Reads one listing of the
    store, the keep markers, the verification record and the few artifacts verified."""
    windows = Windows.from_policy(policy)
    today = _check_today(today)
    now = time.time() if now is None else now
    folders, listed = _listed(store, today, windows)
    # The copy store is pruned by the primary's keep markers (`control`): an operator marks
    # a backup kept in the primary, and its copy must be kept as long.
    markers = list_kept(control or store)
    held = {m.partition: m for m in markers}
    record = None
    if is_verified is None:  # the store's own verifier: its results are worth remembering
        record = VerificationRecord.load(store, {ref.asset for ref in folders})
        for problem in record.problems:
            log(problem)
    trust_seconds = 0.0 if full_reverify else windows.reverify_after_days * 86400
    verifier = _RememberingVerifier(
        is_verified or verify_with_store(store, _in_series_order(log)), record, now, trust_seconds
    )
    series = _series_of(folders)
    for one in series.values():
        if one.asset not in OWN_AGE_RULES:
            _apply_age_rules(one, today, windows)
        _apply_markers(one, held)
    listed.add_generations(store, _needed_folders(series.values(), record))
    failed = _protect_every_series(list(series.values()), verifier, log)
    if record is not None and remember:
        for problem in record.save(store, folders.values()):
            log(problem)
    context = RuleContext(today, windows, series, store, log, policy)
    if asset_rules is None:
        asset_rules = _load_rules()
        for asset, extra in ASSET_RULES.items():
            asset_rules.setdefault(asset, []).extend(extra)
    for one in series.values():
        for rule in asset_rules.get(one.asset, []):
            rule(one, context)
    artifacts = [a for one in series.values() for a in one.artifacts]
    for one in series.values():
        _explain_deletions(one, today, windows)
    doomed = {a.ref for a in artifacts if not a.keep}
    leftovers = find_leftovers(store, folders, doomed, now, windows.incomplete_max_age_hours)
    artifacts.sort(key=lambda a: (a.ref.date, a.ref.workspace or "", a.asset, a.ref.window or ""))
    return RetentionPlan(
        today, windows, artifacts, leftovers, markers, failed, verifier.calls, verifier.trusted,
        listed,
    )  # fmt: skip


class _RememberingVerifier:
    """Counts verifications, so the plan shows how much of the store was re-read; with a
    record, answers from a recent verification of the very same objects, and records each
    new result (a failure drops the artifact's entry)."""

    def __init__(
        self,
        verify: Callable[[Artifact], bool],
        record: VerificationRecord | None,
        now: float,
        trust_seconds: float,
    ) -> None:
        self._verify = verify
        self._record = record
        self._now = now
        self._trust_seconds = trust_seconds
        self._lock = threading.Lock()
        self._trusted: dict[ArtifactRef, bool] = {}
        self.calls = 0
        self.trusted = 0

    def trusts(self, artifact: Artifact) -> bool:
        if self._record is None:
            return False
        answer = self._trusted.get(artifact.ref)  # asked up to 3 times a series: hash once
        if answer is None:
            answer = self._record.trusted(artifact.folder, self._now, self._trust_seconds)
            self._trusted[artifact.ref] = answer
        return answer

    def __call__(self, artifact: Artifact) -> bool:
        if self.trusts(artifact):
            with self._lock:
                self.trusted += 1
            return True
        with self._lock:
            self.calls += 1
        verified = self._verify(artifact)
        if self._record is not None:
            self._record.remember(artifact.folder, self._now, verified)
        return verified


_SERIES_LINES = threading.local()


def _in_series_order(log: Log) -> Log:
    """`log`, except while a series is being verified: then into that series' lines."""

    def write(line: str) -> None:
        lines = getattr(_SERIES_LINES, "lines", None)
        if lines is None:
            log(line)
        else:
            lines.append(line)

    return write


def _needed_folders(series: Iterable[Series], record: VerificationRecord | None) -> list[Folder]:
    """The artifacts whose files the plan is about to look at, listed at once: the newest of
    each series and the newest one with a remembered verification (fingerprinted to be
    trusted or verified), and every one not kept so far (its bytes, its deletion). Any other
    is listed if and when it is asked for (an asset's own rule, a dry run's sizes)."""
    needed: list[Folder] = []
    for one in series:
        remembered = record.entries.get(one.asset, {}) if record is not None else {}
        first_remembered = next((a for a in one.artifacts if a.ref.folder in remembered), None)
        for position, artifact in enumerate(one.artifacts):
            if position == 0 or artifact is first_remembered or not artifact.keep:
                needed.append(artifact.folder)
    return needed


def _protect_every_series(
    series: list[Series], is_verified: Callable[[Artifact], bool], log: Log
) -> list[ArtifactRef]:
    """_protect_newest_verified on every series, VERIFIERS series at a time: the series are
    independent and each keeps its own newest-first order, so the decisions are those of one
    series after the other; their log lines are written in series order afterwards. (10,000
    workspaces are 30,000 series, each re-reading its newest artifact: reads that wait on
    the store.)"""

    def protect(one: Series) -> tuple[list[ArtifactRef], list[str]]:
        lines: list[str] = []
        _SERIES_LINES.lines = lines  # the default verifier's lines join its series' lines
        try:
            return _protect_newest_verified(one, is_verified, lines.append), lines
        finally:
            _SERIES_LINES.lines = None

    at_risk = [one for one in series if any(not a.keep for a in one.artifacts)]
    # Series whose newest artifact is trusted from an earlier verification are answered at
    # once, here: a thread per 30,000 of them would cost more than the answers.
    trusts = getattr(is_verified, "trusts", None)
    answered = [one for one in at_risk if _trusted_candidate(one, trusts) is not None]
    outcomes = {id(one): protect(one) for one in answered}
    to_read = [one for one in at_risk if id(one) not in outcomes]
    if len(to_read) > 1:
        with ThreadPoolExecutor(VERIFIERS) as pool:
            outcomes.update(zip(map(id, to_read), pool.map(protect, to_read), strict=True))
    else:
        outcomes.update({id(one): protect(one) for one in to_read})
    failed: list[ArtifactRef] = []
    lines: list[str] = []
    for one in series:
        if id(one) in outcomes:
            one_failed, series_lines = outcomes[id(one)]
            lines += series_lines
            failed += one_failed
    # A line a series, LOG_LINES to a message: 30,000 series at 10,000 workspaces would
    # otherwise be 30,000 Dagster events in every daily run (~4 ms each here).
    for start in range(0, len(lines), LOG_LINES):
        log("\n".join(lines[start : start + LOG_LINES]))
    return failed


def _series_of(folders: dict[ArtifactRef, Folder]) -> dict[SeriesKey, Series]:
    """Committed artifacts per asset x workspace, newest first; folders without a manifest
    are not artifacts (their debris is found by scan.find_leftovers)."""
    grouped: dict[SeriesKey, list[Artifact]] = defaultdict(list)
    for ref, folder in folders.items():
        if folder.has_manifest:
            grouped[(ref.asset, ref.workspace)].append(Artifact(folder))
    return {
        key: Series(key[0], key[1], sorted(items, key=lambda a: _when(a.ref), reverse=True))
        for key, items in sorted(grouped.items(), key=lambda item: (item[0][0], item[0][1] or ""))
    }


def _apply_age_rules(series: Series, today: date, windows: Windows) -> None:
    weeks_seen: set[tuple[int, int]] = set()
    for artifact in series.artifacts:
        age_days, week = _age_and_week(today, artifact.partition.date)
        if age_days < windows.daily_days:
            artifact.keep_for(DAILY)
        # newest first: the first one seen of a week is the week's newest
        if age_days < windows.weekly_days and week not in weeks_seen:
            weeks_seen.add(week)
            artifact.keep_for(WEEKLY)


def _apply_markers(series: Series, held: dict[Partition, KeepMarker]) -> None:
    for artifact in series.artifacts:
        if (marker := held.get(artifact.partition)) is not None:
            artifact.keep_for(KEPT_PREFIX + marker.reason)


def _protect_newest_verified(
    series: Series, is_verified: Callable[[Artifact], bool], log: Log
) -> list[ArtifactRef]:
    """Keep the newest artifact of the series that verifies; returns those that failed on
    the way."""
    failed: list[ArtifactRef] = []
    newest_first = series.artifacts
    doomed_positions = [i for i, a in enumerate(newest_first) if not a.keep]
    trusted = _trusted_candidate(series, getattr(is_verified, "trusts", None))
    if trusted is not None and is_verified(trusted):
        trusted.keep_for(NEWEST_VERIFIED)
        log(f"newest verified {series.name}: {trusted} (verified earlier, unchanged since)")
        return failed
    # Past the oldest doomed artifact nothing is at risk, so nothing more needs to be read.
    for artifact in newest_first[: doomed_positions[-1] + 1 if doomed_positions else 0]:
        if is_verified(artifact):
            artifact.keep_for(NEWEST_VERIFIED)
            log(f"newest verified {series.name}: {artifact}")
            return failed
        log(f"{artifact} failed verification; trying the next older one of {series.name}")
        failed.append(artifact.ref)
    for artifact in newest_first:
        if not artifact.keep:
            artifact.keep_for(HELD_UNVERIFIED)
    return failed


def _trusted_candidate(
    series: Series, trusts: Callable[[Artifact], bool] | None
) -> Artifact | None:
    """The newest artifact of the series whose earlier verification is trusted, if nothing
    at risk is newer than it: protecting it then keeps the rule (every deletion is of an
    artifact older than a verified one of its series) without re-reading the newer ones that
    the windows keep anyway — last night's backups would otherwise be re-read every day."""
    if trusts is None:
        return None
    for artifact in series.artifacts:
        if trusts(artifact):
            return artifact
        if not artifact.keep:
            return None  # at risk and not known to verify: verify newest first, as ever
    return None


def _explain_deletions(series: Series, today: date, windows: Windows) -> None:
    """Why each doomed artifact goes, in the plan's words."""
    newest = next((a for a in series.artifacts if NEWEST_VERIFIED in a.reasons), None)
    for artifact in series.artifacts:
        if artifact.keep:
            continue
        age_days = _age_and_week(today, artifact.partition.date)[0]
        if series.asset in OWN_AGE_RULES:
            artifact.deletion_reason = (
                f"age {age_days} d: not needed by its asset's own rule (see the kept ones' reasons)"
            )
            continue
        why = f"age {age_days} d: older than keep_daily_days ({windows.daily_days})"
        if age_days >= windows.weekly_days:
            why += f" and keep_weekly_days ({windows.weekly_days})"
        else:
            why += ", not the newest of its ISO week"
        kept_instead = " ".join(_when(newest.ref)).strip() if newest is not None else ""
        if newest is not None and _when(newest.ref) > _when(artifact.ref):
            why += f"; newer verified: {kept_instead}"
        elif newest is not None:
            why += f"; failed verification (kept instead: {kept_instead})"
        artifact.deletion_reason = why


# --------------------------------------------------------------------------------------------
# Applying a plan


@dataclass
class ApplyResult:
    deleted: list[ArtifactRef] = field(default_factory=list)
    skipped: list[tuple[ArtifactRef, str]] = field(default_factory=list)
    leftovers_cleaned: int = 0
    bytes_freed: int = 0
    errors: list[str] = field(default_factory=list)
    # Under S3 Object Lock retention: kept whole (S3 refused its manifest), with retain-until.
    locked: list[tuple[ArtifactRef, str]] = field(default_factory=list)


def apply_plan(
    store: BackupStore, plan: RetentionPlan, log: Log = print, control: BackupStore | None = None
) -> ApplyResult:
    """Delete each doomed artifact, then clean the leftovers. Within a partition the SQL dump
    goes last, and stays when an index artifact of its partition could not be deleted.
    Errors are collected (one bad artifact does not stop the rest) and returned; a rerun
    finishes what an interrupted one left, since the rules give the same answer for the same
    artifacts.

    Artifacts go in batches: the keep markers and leases are listed, each artifact of the
    batch checked, the batch deleted (on S3 without Object Lock together: delete_together),
    then its lines logged as one message. A Dagster run writes each message to its event
    log (~4 ms each here): a line an artifact would cost minutes at 10,000 workspaces."""
    result = ApplyResult()
    doomed = sorted(plan.to_delete, key=_deletion_order)
    together = deletes_together(store)
    checks = _DeletionChecks(store, control, lock_checked=not together)
    neighbours = (  # only a versioned bucket lists by runs of neighbouring folders
        sorted(artifact_order(artifact.ref.folder) for artifact in plan.artifacts)
        if together and getattr(store, "object_lock", None) is not None
        else []
    )
    numbered = list(enumerate(doomed, 1))
    for batch in _whole_partitions(numbered, BATCH_ARTIFACTS if together else BATCH_ONE_BY_ONE):
        said: dict[int, str] = {}  # artifact number -> its line
        try:
            _apply_batch(store, batch, len(doomed), together, checks, result, said, neighbours)
        finally:  # what was decided before an error is still logged
            if said:
                log("\n".join(said[number] for number in sorted(said)))
    lines = []
    for leftover in plan.leftovers:
        lines.append(_clean(store, leftover, result))
        if len(lines) == BATCH_ONE_BY_ONE:
            log("\n".join(lines))
            lines = []
    if lines:
        log("\n".join(lines))
    return result


def _apply_batch(
    store: BackupStore,
    batch: list[tuple[int, Artifact]],
    total: int,
    together: bool,
    checks: _DeletionChecks,
    result: ApplyResult,
    said: dict[int, str],
    neighbours: list[str],
) -> None:
    checks.list_ahead()
    cleared: list[tuple[int, Artifact]] = []
    for number, artifact in batch:
        if refusal := checks.refusal(artifact, result):
            said[number] = f"[{number}/{total}] {artifact}: {refusal}"
        else:
            cleared.append((number, artifact))
    folders = [artifact.folder for _number, artifact in cleared]
    done = (delete_together if together else delete_one_by_one)(store, folders, neighbours)
    for number, artifact in cleared:
        if artifact.ref in done.held:
            result.skipped.append((artifact.ref, done.held[artifact.ref]))
            outcome = done.held[artifact.ref]
        elif artifact.ref in done.locked:
            result.locked.append((artifact.ref, done.locked[artifact.ref]))
            outcome = _locked_line(done.locked[artifact.ref])
        elif artifact.ref in done.failed:
            result.errors.append(f"{artifact}: {done.failed[artifact.ref]}")
            outcome = f"FAILED {done.failed[artifact.ref]}"
        else:
            result.deleted.append(artifact.ref)
            result.bytes_freed += artifact.bytes
            outcome = f"deleted ({human_bytes(artifact.bytes)}; {artifact.deletion_reason})"
        said[number] = f"[{number}/{total}] {artifact}: {outcome}"


def _clean(store: BackupStore, leftover: Leftover, result: ApplyResult) -> str:
    try:
        clean_leftover(store, leftover)
    except ObjectLocked as exc:  # a crashed run's locked files: cleaned once unlocked
        return f"not cleaned {leftover.key}: {exc}"
    except StoreError as exc:
        result.errors.append(f"{leftover.key}: {exc}")
        return f"FAILED to clean {leftover.kind} {leftover.key}: {exc}"
    result.leftovers_cleaned += 1
    result.bytes_freed += leftover.bytes
    return f"cleaned {leftover.kind} {leftover.key} ({leftover.age_hours:.0f} h old)"


def _whole_partitions(numbered: list[tuple[int, Artifact]], limit: int):
    """`numbered` (in _deletion_order) in batches of up to `limit` artifacts, or one whole
    partition when it holds more: a partition's SQL dump is never split from its indexes."""
    batch: list[tuple[int, Artifact]] = []
    for entry in numbered:
        if len(batch) >= limit and entry[1].partition != batch[-1][1].partition:
            yield batch
            batch = []
        batch.append(entry)
    if batch:
        yield batch


def _locked_line(until: str) -> str:
    return f"NOT deleted, under Object Lock retention until {until}"


class _DeletionChecks:
    """What may still stop a planned deletion, asked just before its batch: a keep marker
    placed since planning, a restore reading the partition, and (`lock_checked`: an artifact
    at a time) Object Lock, read before trying; deleting together, S3's refusal says it."""

    def __init__(
        self, store: BackupStore, control: BackupStore | None, lock_checked: bool = True
    ) -> None:
        self.store, self.control = store, control or store
        self.lock_checked = lock_checked
        self.existing: set[str] = set()  # the keys of the markers and leases, as last listed
        self.readers: dict[str, str] = {}  # lease name -> the restore reading it ("" when none)

    def list_ahead(self) -> None:
        """Before each batch: which keep markers and leases exist, by one listing each
        instead of a read per partition and per workspace (20,000 and 10,000 requests a
        day on S3 at 10,000 workspaces). Only the leases that exist are then read."""
        self.existing = {
            key
            for prefix in (KEEP_PREFIX, LEASE_PREFIX)
            for key, _size, _mtime in listing.iter_keys(self.control, prefix)
        }
        self.readers.clear()

    def refusal(self, artifact: Artifact, result: ApplyResult) -> str | None:
        """Why `artifact` is not to be deleted now (recorded in `result`), None when it is."""
        if marker_key(artifact.partition) in self.existing:
            # Marked after the plan was made (or unreadable): the marker wins.
            result.skipped.append((artifact.ref, "keep marker placed since planning"))
            return "kept, marked since planning"
        name = lease_name(artifact.ref.workspace)
        if lease_key(name) not in self.existing:
            self.readers[name] = ""
        reader = _restore_reading(self.control, artifact.ref, self.readers)
        if reader:
            result.skipped.append((artifact.ref, reader))
            return f"kept for now, {reader}"
        until = locked_until(self.store, artifact.ref) if self.lock_checked else ""
        if until:
            result.locked.append((artifact.ref, until))
            return _locked_line(until)
        return None


def locked_until(store: BackupStore, ref: ArtifactRef) -> str:
    """The latest Object Lock retain-until among the artifact's objects ("" when none is
    locked): retention never tries to delete a locked object; the next run after that moment
    deletes it."""
    if not isinstance(store, S3Store) or store.object_lock is None:
        return ""
    until = store.retained_until(f"{ref.folder}/")
    return max(until.values()).isoformat(timespec="seconds") if until else ""


def _restore_reading(store: BackupStore, ref: ArtifactRef, seen: dict[str, str]) -> str:
    """Who is restoring (or drilling) from this artifact's partition now, "" when nobody: a
    restore holds the partition's lease while it reads, and its artifacts stay until it ends
    (the next retention run deletes them)."""
    if ref.workspace is None and ref.asset.startswith("mssql/"):
        return ""  # SQL Server restores read their chain under no PostgreSQL lease
    name = lease_name(ref.workspace)
    if name not in seen:
        lease = store.read_lease(name)
        busy = (
            lease is not None
            and lease.record is not None
            and lease.record.owner.purpose in ("restore", "drill")
            and not lease.expired()
        )
        seen[name] = f"being read by a restore: {lease.describe()}" if busy else ""
    return seen[name]


def _deletion_order(artifact: Artifact) -> tuple:
    ref = artifact.ref
    return ref.date, ref.workspace or "", ref.asset in SQL_ASSETS, ref.asset, ref.window or ""


def run_retention(
    store: BackupStore,
    policy: Policy,
    today: date,
    *,
    dry_run: bool = False,
    now: float | None = None,
    is_verified: Callable[[Artifact], bool] | None = None,
    log: Log = print,
    control: BackupStore | None = None,
    full_reverify: bool = False,
) -> tuple[RetentionPlan, ApplyResult | None]:
    """Plan, log the plan, and apply it unless `dry_run` (then the result is None). A dry
    run logs every decision (asset, partition, keep or delete, and why). `control`: the
    store whose keep markers and leases rule (the primary, when `store` is the copy store)."""
    plan = plan_retention(
        store, policy, today, now=now, is_verified=is_verified, log=log, control=control,
        full_reverify=full_reverify, remember=not dry_run,
    )  # fmt: skip
    log(plan.summary())
    if plan.listing is not None:
        log(plan.listing.describe())
    if not dry_run:
        return plan, apply_plan(store, plan, log, control)  # logs each deletion as it happens
    for line in plan_lines(plan):
        log(line)
    for leftover in plan.leftovers:
        log(f"would clean {leftover.kind} {leftover.key} ({leftover.age_hours:.0f} h old)")
    return plan, None


def plan_lines(plan: RetentionPlan) -> list[str]:
    """One line per artifact: decision, asset, partition, size and why."""
    width = max((len(a.asset) for a in plan.artifacts), default=0)
    return [
        f"{'would delete' if not a.keep else 'keep':<12} {a.asset:<{width}} {a.where:<32} "
        f"{human_bytes(a.bytes):>10}  {a.why}"
        for a in plan.decisions()
    ]
