"""Recovery point objective, per asset x workspace: how old is the newest committed artifact?

The store's catalog is the truth (only what it holds can be restored); Dagster's run history
is the witness. Both are read for the recent window, and where they disagree — a
materialization the store does not hold, or an artifact Dagster never recorded — the
evaluation says so. A workspace that was never backed up is late.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from backup_pipelines.lib.monitoring.alerts import Alert
from backup_pipelines.lib.policy import Policy
from backup_pipelines.lib.store import (
    MANIFEST_NAME,
    ArtifactRef,
    BackupStore,
    parse_artifact_folder,
)

MANIFEST_READERS = 16
# More breaches than this in one tick (an outage, a first deployment) make one summary message.
MAX_ALERTS_PER_TICK = 20


@dataclass(frozen=True)
class Newest:
    """The newest committed artifact of one asset x workspace in the store."""

    date: str
    captured_at: datetime


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
        return f"{self.age_hours:.1f} h"

    def to_row(self) -> dict:
        return {
            "asset": self.asset,
            "workspace": self.workspace,
            "newest_date": self.newest_date,
            "age_hours": None if self.age_hours is None else round(self.age_hours, 2),
            "target_hours": self.target_hours,
            "late": self.late,
            "history_date": self.history_date,
            "disagreement": self.disagreement,
        }


# --------------------------------------------------------------------------------------------
# The store's side


def _dates_back(today: date, days: int) -> list[str]:
    return [(today - timedelta(days=n)).isoformat() for n in range(days + 1)]


def _committed_workspaces(
    store: BackupStore, asset: str, day: str
) -> dict[str | None, tuple[ArtifactRef, float]]:
    """Workspaces with a manifest (= a committed artifact) of `asset` for `day` — the newest
    time window's for sub-daily assets — and the manifest's modification time (a re-run of the
    partition changes it)."""
    found: dict[str | None, tuple[ArtifactRef, float]] = {}
    for key, _size, mtime in store._list(f"{asset}/date={day}/"):
        if key.endswith("/" + MANIFEST_NAME):
            ref = parse_artifact_folder(key[: -len(MANIFEST_NAME) - 1])
            if ref is None:
                continue
            known = found.get(ref.workspace)
            if known is None or (ref.window or "") > (known[0].window or ""):
                found[ref.workspace] = (ref, mtime)
    return found


def newest_dates(
    store: BackupStore,
    asset: str,
    workspaces: Iterable[str | None],
    today: date,
    horizon_days: int,
) -> dict[str | None, tuple[ArtifactRef, float]]:
    """Newest committed artifact per workspace (with its manifest's mtime), scanning date
    folders from today backwards only until every workspace is found: one listing per day,
    not per workspace, so 1,000 workspaces cost a handful of listings."""
    wanted = set(workspaces)
    newest: dict[str | None, tuple[ArtifactRef, float]] = {}
    for day in _dates_back(today, horizon_days):
        for workspace, found in _committed_workspaces(store, asset, day).items():
            if workspace in wanted:
                newest[workspace] = found
        wanted -= set(newest)
        if not wanted:
            break
    return newest


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# captured_at of manifests already read, by (store, asset, workspace, date, manifest mtime): a
# sensor's code server lives across ticks, so a steady-state tick reads only the manifests
# committed since the last one (on S3 each read is a round trip).
_CAPTURED: dict[tuple, datetime] = {}
_CAPTURED_MAX = 200_000


def captured_times(
    store: BackupStore, asset: str, found: dict[str | None, tuple[ArtifactRef, float]]
) -> dict[str | None, Newest]:
    """The moment each newest artifact represents (its manifest's captured_at), read in
    parallel where not known yet."""
    where = store.describe()

    def read(
        item: tuple[str | None, tuple[ArtifactRef, float]],
    ) -> tuple[str | None, Newest | None]:
        workspace, (ref, mtime) = item
        day = ref.date
        key = (where, ref.folder, mtime)
        if key in _CAPTURED:
            return workspace, Newest(day, _CAPTURED[key])
        manifest = store.read_manifest(ref)
        if manifest is None:  # deleted between the listing and now
            return workspace, None
        moment = _parse_time(manifest.get("captured_at")) or _parse_time(manifest.get("created_at"))
        if moment is None:
            return workspace, None
        _CAPTURED[key] = moment
        return workspace, Newest(day, moment)

    if len(_CAPTURED) > _CAPTURED_MAX:
        _CAPTURED.clear()
    with ThreadPoolExecutor(MANIFEST_READERS) as pool:
        return {w: n for w, n in pool.map(read, found.items()) if n is not None}


# --------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class Evaluation:
    """Every asset x workspace of one tick."""

    now: datetime
    items: list[Freshness] = field(default_factory=list)

    def late(self) -> list[Freshness]:
        return [item for item in self.items if item.late]

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
) -> Evaluation:
    """Freshness of every (asset, workspace) in `subjects` (asset -> workspaces; None for a
    whole-database asset). `history` is Dagster's newest materialized date per asset and
    workspace within the recent window. The store is searched `horizon_days` back (default:
    just past the RPO window, which is all a late/on-time verdict needs and keeps a sensor
    tick cheap; the health report searches as far as retention keeps anything)."""
    today = now.astimezone(UTC).date()
    window_days = rpo_window_days(policy)
    horizon = horizon_days if horizon_days is not None else window_days + 1
    evaluation = Evaluation(now)
    for asset, workspaces in subjects.items():
        dates = newest_dates(store, asset, workspaces, today, horizon)
        newest = captured_times(store, asset, dates)
        window_start = (today - timedelta(days=window_days)).isoformat()
        for workspace in workspaces:
            item = Freshness(asset, workspace, *policy.rpo_for(asset))
            item.searched_days = horizon
            found = newest.get(workspace)
            if found is not None:
                item.newest_date, item.captured_at = found.date, found.captured_at
                item.age_hours = max(0.0, (now - found.captured_at).total_seconds() / 3600)
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
