"""Recovery point objective, per asset x workspace: how old is the newest committed artifact?

The store is the truth (only what it holds can be restored): listed on every evaluation, one
listing per asset and date for all workspaces, with the age taken from each newest manifest's
`captured_at` (remembered in the captured-at catalog, catalog.py, so each manifest is read
once). Dagster's run history is the witness. Both are read for the recent window, and where
they disagree — a materialization the store does not hold, or an artifact Dagster never
recorded — the evaluation says so. A workspace that was never backed up is late.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from backup_pipelines.lib.monitoring import catalog
from backup_pipelines.lib.monitoring.alerts import Alert
from backup_pipelines.lib.monitoring.catalog import Manifest, committed_in, parse_time
from backup_pipelines.lib.policy import Policy
from backup_pipelines.lib.store import ArtifactRef, BackupStore, ManifestInvalid, listing

Log = Callable[[str], object]
STORE_READERS = 16  # parallel requests where one per artifact is unavoidable
LISTING_THREADS = 4  # assets whose date folders are listed at once
LIST_PAGE_KEYS = 1000  # keys per page of an S3 listing
DEEP_SEARCH_DAYS = 7  # past this, only the date folders the store holds are searched
PROBE_AT_MOST = 100  # more workspaces than this: one listing of the date's folder instead
# A sensor tick reads the manifests the captured-at catalog lacks until this long after it
# started (its listings included), so that it answers within seconds whatever the store holds:
# a first tick on 10,000 workspaces has 30,000 manifests to read. What is left unread gets a
# lower-bound age, and the RPO sensor asks for a run of the health report, which reads every
# one without a limit and saves the catalog for the next tick.
MANIFEST_READ_SECONDS = 5.0
# ...but at least this long after the listings, so that a store whose listings alone take the
# budget still gets some manifests read by every tick.
MIN_READ_SECONDS = 1.0
PROGRESS_SECONDS = 10.0  # an unbounded read (a run) logs its progress this often
# More breaches than this in one tick (an outage, a first deployment) make one summary message.
MAX_ALERTS_PER_TICK = 20


@dataclass(frozen=True)
class Newest:
    """The newest committed artifact of one asset x workspace in the store."""

    date: str
    captured_at: datetime
    # The manifest was not read in time: captured_at is its write time, which is never earlier
    # than the captured moment, so the age is at least this (a late verdict is certain).
    lower_bound: bool = False


@dataclass
class Freshness:
    asset: str
    workspace: str | None
    target_hours: float
    grace_minutes: float
    newest_date: str | None = None
    captured_at: datetime | None = None
    age_hours: float | None = None
    history_date: str | None = None  # newest materialization in Dagster's run history
    disagreement: str = ""
    searched_days: int = 0
    age_is_lower_bound: bool = False

    @property
    def key(self) -> str:
        return f"{self.asset}|{self.workspace or ''}"

    @property
    def late(self) -> bool:
        if self.age_hours is None:
            return True  # never backed up (or nothing left in the store)
        return self.age_hours > self.target_hours + self.grace_minutes / 60

    def describe_age(self) -> str:
        if self.age_hours is None:
            return f"no backup in the last {self.searched_days} days"
        if self.age_is_lower_bound:
            return f"at least {self.age_hours:.1f} h (manifest not read yet)"
        return f"{self.age_hours:.1f} h"

    def to_row(self) -> dict:
        return {
            "asset": self.asset,
            "workspace": self.workspace,
            "newest_date": self.newest_date,
            "age_hours": None if self.age_hours is None else round(self.age_hours, 2),
            "target_hours": self.target_hours,
            "late": self.late,
            "age_is_lower_bound": self.age_is_lower_bound,
            "history_date": self.history_date,
            "disagreement": self.disagreement,
        }


# --------------------------------------------------------------------------------------------
# The store's side: listings, not one read per manifest


def _dates_back(today: date, days: int) -> list[str]:
    return [(today - timedelta(days=n)).isoformat() for n in range(days + 1)]


def _newest_of(committed: dict[ArtifactRef, Manifest]) -> dict[str | None, Manifest]:
    """The committed artifact of each workspace, the newest time window's for sub-daily
    assets."""
    found: dict[str | None, Manifest] = {}
    for ref, manifest in committed.items():
        known = found.get(ref.workspace)
        if known is None or (ref.window or "") > (known.ref.window or ""):
            found[ref.workspace] = manifest
    return found


def _committed_on(store: BackupStore, asset: str, day: str) -> tuple[dict, int]:
    """Committed artifacts of `asset` for `day` by workspace, from one listing of the date's
    folder, and how many keys that listing returned (what listing a day costs)."""
    objects = list(listing.iter_manifests(store, f"{asset}/date={day}/"))
    return _newest_of(committed_in(objects)), len(objects)


def _committed_of(
    store: BackupStore, asset: str, day: str, workspaces: set[str]
) -> dict[str | None, Manifest]:
    """The same for a few workspaces: one small listing of each one's folder, in parallel."""

    def probe(workspace: str) -> dict[str | None, Manifest]:
        objects = listing.iter_manifests(store, f"{asset}/date={day}/workspace={workspace}/")
        return _newest_of(committed_in(objects))

    found: dict[str | None, Manifest] = {}
    with ThreadPoolExecutor(STORE_READERS) as pool:
        for one in pool.map(probe, sorted(workspaces)):
            found.update(one)
    return found


def committed_workspaces(
    store: BackupStore, asset: str, day: str, workspaces: Iterable[str]
) -> set[str]:
    """Which of `workspaces` hold a committed `asset` artifact (a manifest) for `day`: each
    one's own folder listed when they are few, else one listing of the date's folder."""
    wanted = set(workspaces)
    if not wanted:
        return set()
    if len(wanted) <= PROBE_AT_MOST:
        found = _committed_of(store, asset, day, wanted)
    else:
        found, _keys = _committed_on(store, asset, day)
    return {w for w in found if w in wanted}


def newest_dates(
    store: BackupStore,
    asset: str,
    workspaces: Iterable[str | None],
    today: date,
    horizon_days: int,
) -> dict[str | None, Manifest]:
    """Newest committed artifact per workspace, scanning date folders from today backwards
    only until every workspace is found. A day is read with one listing of its folder while
    many workspaces are still missing (1,000 workspaces cost a handful of listings); once
    fewer are missing than that listing has pages, each missing workspace's own folder is
    listed instead. Past a week, only dates the store holds are looked at."""
    wanted = set(workspaces)
    newest: dict[str | None, Manifest] = {}
    days = _dates_back(today, horizon_days)
    if horizon_days > DEEP_SEARCH_DAYS:
        held = set(listing.list_folders(store, f"{asset}/"))
        days = days[: DEEP_SEARCH_DAYS + 1] + [
            d for d in days[DEEP_SEARCH_DAYS + 1 :] if f"date={d}" in held
        ]
    pages_a_day = 1.0
    for day in days:
        if not wanted:
            break
        if None in wanted or len(wanted) >= pages_a_day:
            found, keys = _committed_on(store, asset, day)
            pages_a_day = max(pages_a_day, keys / LIST_PAGE_KEYS)
        else:
            found = _committed_of(store, asset, day, wanted)  # type: ignore[arg-type]
        for workspace, manifest in found.items():
            if workspace in wanted:
                newest[workspace] = manifest
                wanted.discard(workspace)
    return newest


def captured_times(
    store: BackupStore,
    asset: str,
    found: dict[str | None, Manifest],
    today: date,
    log: Log | None = None,
    deadline: float | None = None,
    progress: Log | None = None,
) -> dict[str | None, Newest]:
    """The moment each newest artifact represents (its manifest's captured_at): from the
    captured-at catalog where the manifest is the one read before, else read (in parallel)
    and remembered. Reads still running at `deadline` (time.monotonic()) are left for the
    next evaluation: those artifacts get their manifest's write time, a lower bound of their
    age (a sensor tick must answer in seconds; see MANIFEST_READ_SECONDS). Without a deadline
    (a run) every manifest is read, with `progress` told how far it got."""
    known = catalog.catalog_for(store, asset, log)
    newest: dict[str | None, Newest] = {}
    unread: list[tuple[str | None, Manifest]] = []
    for workspace, manifest in found.items():
        moment = known.lookup(manifest)
        if moment is not None:
            newest[workspace] = Newest(manifest.ref.date, moment)
        else:
            unread.append((workspace, manifest))
    if not unread:
        known.incomplete = False
        return newest

    def read(item: tuple[str | None, Manifest]) -> tuple[str | None, Newest | None]:
        workspace, manifest = item
        try:
            body = store.read_manifest(manifest.ref)  # the validated model (manifest.py)
        except ManifestInvalid as exc:
            # Damaged or tampered with: not a backup anyone can restore, so not a recovery
            # point either (the workspace shows as late), and never remembered.
            if log is not None:
                log(f"not counted as a backup: {exc}")
            return workspace, None
        if body is None:  # deleted between the listing and now
            return workspace, None
        moment = parse_time(body.get("captured_at")) or parse_time(body.get("created_at"))
        if moment is None:
            return workspace, None
        known.record(manifest, moment)
        return workspace, Newest(manifest.ref.date, moment)

    late = _read_until(read, unread, newest, deadline, progress, asset)
    for workspace, manifest in late:
        written = datetime.fromtimestamp(manifest.mtime, UTC)
        newest[workspace] = Newest(manifest.ref.date, written, lower_bound=True)
    # A catalog left incomplete is read back from the store by the next evaluation of this
    # process: the health report's run may have saved what this one could not read.
    known.incomplete = bool(late)
    catalog.save(store, known, today, log)
    return newest


def _read_until(read, unread: list, newest: dict, deadline, progress, asset: str) -> list:
    """Run `read` over `unread` (STORE_READERS threads) until `deadline`; what it found goes
    into `newest`; returns the items not read by then. The readers take the items from one
    queue themselves: submitting 10,000 futures to a pool whose threads already hold the GIL
    took 8 s of a first tick's 5 s budget (measured at 10,000 workspaces)."""
    started = time.monotonic()
    if deadline is not None and deadline <= started:
        return list(unread)
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for index in range(len(unread)):
        todo.put(index)
    found: list[tuple[int, object]] = []  # (index, read's result); list.append is atomic
    failed: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                index = todo.get_nowait()
            except queue.Empty:
                return
            try:
                found.append((index, read(unread[index])))
            except BaseException as exc:  # raised in the caller's thread, below
                failed.append(exc)
                stop.set()

    threads = [
        threading.Thread(target=reader, name=f"manifest-reader-{n}", daemon=True)
        for n in range(min(STORE_READERS, len(unread)))
    ]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        step = PROGRESS_SECONDS
        if deadline is not None:
            step = min(step, deadline - time.monotonic())
            if step <= 0:
                break
        _join_all(threads, time.monotonic() + step)
        if deadline is None and progress is not None and any(t.is_alive() for t in threads):
            progress(
                f"{asset}: {len(found):,} of {len(unread):,} manifests read "
                f"in {time.monotonic() - started:.0f} s"
            )
    stop.set()  # reads in flight finish on their own (and are remembered); not waited for
    if failed:
        raise failed[0]
    done = list(found)
    read_indexes = set()
    for index, (workspace, one) in done:
        read_indexes.add(index)
        if one is not None:
            newest[workspace] = one
    return [item for index, item in enumerate(unread) if index not in read_indexes]


def _join_all(threads: list[threading.Thread], until: float) -> None:
    for thread in threads:
        left = until - time.monotonic()
        if left <= 0:
            return
        thread.join(left)


# --------------------------------------------------------------------------------------------
# Evaluation


def unconfirmed(items: Iterable[Freshness]) -> int:
    """How many ages are lower bounds: their manifests were not read yet."""
    return sum(item.age_is_lower_bound for item in items)


@dataclass
class Evaluation:
    """Every asset x workspace of one tick."""

    now: datetime
    items: list[Freshness] = field(default_factory=list)

    def late(self) -> list[Freshness]:
        return [item for item in self.items if item.late]

    def unconfirmed(self) -> int:
        return unconfirmed(self.items)

    def by_asset(self) -> dict[str, list[Freshness]]:
        grouped: dict[str, list[Freshness]] = {}
        for item in self.items:
            grouped.setdefault(item.asset, []).append(item)
        return grouped


def evaluate(
    store: BackupStore,
    subjects: dict[str, list[str | None]],
    history: dict[str, dict[str | None, str]],
    policy: Policy,
    now: datetime,
    horizon_days: int | None = None,
    log: Log | None = None,
    bounded: bool = True,
    progress: Log | None = None,
) -> Evaluation:
    """Freshness of every (asset, workspace) in `subjects` (asset -> workspaces; None for a
    whole-database asset). `history` is Dagster's newest materialized date per asset and
    workspace within the recent window. The store is searched `horizon_days` back (default:
    just past the RPO window, which is all a late/on-time verdict needs and keeps a sensor
    tick cheap; the health report searches as far as retention keeps anything). `bounded`:
    manifests are read for MANIFEST_READ_SECONDS (a sensor tick); else all of them (a run)."""
    today = now.astimezone(UTC).date()
    window_days = rpo_window_days(policy)
    horizon = horizon_days if horizon_days is not None else window_days + 1
    started = time.monotonic()
    evaluation = Evaluation(now)
    # The assets' listings run at once: on S3 a listing is a chain of page requests, each
    # waiting on the server (on moto, on this machine's other core).
    with ThreadPoolExecutor(max(1, min(LISTING_THREADS, len(subjects)))) as pool:
        listed = {
            asset: pool.submit(newest_dates, store, asset, workspaces, today, horizon)
            for asset, workspaces in subjects.items()
        }
    deadline = None
    if bounded:
        deadline = max(started + MANIFEST_READ_SECONDS, time.monotonic() + MIN_READ_SECONDS)
    for asset, workspaces in subjects.items():
        dates = listed[asset].result()
        newest = captured_times(store, asset, dates, today, log, deadline, progress)
        window_start = (today - timedelta(days=window_days)).isoformat()
        for workspace in workspaces:
            item = Freshness(asset, workspace, *policy.rpo_for(asset))
            item.searched_days = horizon
            found = newest.get(workspace)
            if found is not None:
                item.newest_date, item.captured_at = found.date, found.captured_at
                item.age_hours = max(0.0, (now - found.captured_at).total_seconds() / 3600)
                item.age_is_lower_bound = found.lower_bound
            item.history_date = history.get(asset, {}).get(workspace)
            item.disagreement = _disagreement(item, window_start)
            evaluation.items.append(item)
    return evaluation


def rpo_window_days(policy: Policy) -> int:
    """Whole days covering RPO + grace: the recent window where history and store must agree."""
    return int((policy.rpo_hours + policy.rpo_grace_minutes / 60) // 24) + 1


def _disagreement(item: Freshness, window_start: str) -> str:
    """Run history and store must agree on the recent window."""
    stored = item.newest_date if item.newest_date and item.newest_date >= window_start else None
    recorded = item.history_date
    if recorded and (stored is None or recorded > stored):
        return (
            f"run history shows {recorded} materialized but the store's newest is "
            f"{item.newest_date or 'nothing'} (artifact deleted, or another BACKUP_STORE_URL?)"
        )
    if stored and (recorded is None or stored > recorded):
        return (
            f"the store holds {stored} but run history does not record it (written outside "
            "this Dagster instance, or the instance was rebuilt)"
        )
    return ""


# --------------------------------------------------------------------------------------------
# Breach and recovery: alert on the change, never on every tick


@dataclass
class BreachState:
    """Which asset x workspace were late at the last tick (kept in the sensor cursor), and
    alerts not yet delivered."""

    late_since: dict[str, str] = field(default_factory=dict)
    pending: list[dict] = field(default_factory=list)

    def to_cursor(self) -> str:
        return json.dumps({"late": self.late_since, "pending": self.pending}, sort_keys=True)

    @classmethod
    def from_cursor(cls, cursor: str | None) -> BreachState:
        if not cursor:
            return cls()
        try:
            raw = json.loads(cursor)
            return cls(dict(raw.get("late", {})), list(raw.get("pending", [])))
        except (ValueError, AttributeError):
            return cls()  # an unreadable cursor restarts the state; it must not stop alerting


def transitions(
    state: BreachState, evaluation: Evaluation
) -> tuple[list[Freshness], list[Freshness], BreachState]:
    """(newly late, newly recovered, next state)."""
    late_now = {item.key: item for item in evaluation.late()}
    on_time = {item.key: item for item in evaluation.items if not item.late}
    breached = [item for key, item in late_now.items() if key not in state.late_since]
    recovered = [on_time[key] for key in state.late_since if key in on_time]
    stamp = evaluation.now.astimezone(UTC).isoformat(timespec="seconds")
    # Subjects no longer evaluated (a workspace removed, a store unconfigured) are forgotten.
    still = {key: since for key, since in state.late_since.items() if key in late_now}
    still.update({item.key: stamp for item in breached})
    return breached, recovered, BreachState(still, state.pending)


def alerts_for(items: list[Freshness], kind: str, asset_url) -> list[Alert]:
    """One message per workspace (its late assets together), or one summary when many."""
    by_workspace: dict[str | None, list[Freshness]] = {}
    for item in items:
        by_workspace.setdefault(item.workspace, []).append(item)
    if len(by_workspace) > MAX_ALERTS_PER_TICK:
        return [_summary_alert(items, kind, by_workspace)]
    return [_workspace_alert(group, kind, asset_url) for group in by_workspace.values()]


def _workspace_alert(group: list[Freshness], kind: str, asset_url) -> Alert:
    first = group[0]
    ages = [item.age_hours for item in group]
    who = f"workspace {first.workspace}" if first.workspace else "the whole database"
    assets = ", ".join(item.asset for item in group)
    described = "; ".join(f"{item.asset} {item.describe_age()}" for item in group)
    verb = "missed" if kind == "rpo_breach" else "recovered"
    title = f"RPO {verb} for {who}: {described} (target {first.target_hours:g} h)"
    return Alert(
        kind=kind,
        title=title,
        workspace=first.workspace,
        asset=assets,
        details={
            "age_hours": None if None in ages else max(ages),  # None: some never backed up
            "target_hours": first.target_hours,
            "grace_minutes": first.grace_minutes,
            "newest_date": min((i.newest_date or "") for i in group) or None,
            "assets": [item.to_row() for item in group],
        },
        url=asset_url(first.asset),
    )


def _summary_alert(items: list[Freshness], kind: str, by_workspace: dict) -> Alert:
    verb = "missed" if kind == "rpo_breach" else "recovered"
    return Alert(
        kind=kind,
        title=f"RPO {verb} for {len(by_workspace)} workspaces ({len(items)} backups)",
        details={
            "workspaces": len(by_workspace),
            "target_hours": items[0].target_hours,
            "assets": [item.to_row() for item in items[:200]],
        },
    )
