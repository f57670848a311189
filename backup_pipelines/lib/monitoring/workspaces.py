"""Workspaces come from SQL: which known workspaces (Dagster's `workspaces` partitions) the SQL
registry no longer lists, and what that means.

A partition the registry does not list is one of two things:

* **vanished**: the store holds backups of it, so it was real — the runbook's "accidental
  workspace deletion". The discovery sensor alerts once (`workspace_vanished`) with the newest
  restorable date and the command that restores it; its backups are no longer scheduled and
  its RPO is no longer watched; retention keeps its backups under the usual policy.
* **unregistered**: no backup at all — a partition added by hand (the UI's "Add a partition"
  accepts a typo) or a workspace deleted before its first backup. Nothing to restore, nothing
  alerted; `backup-pipelines workspaces remove` removes the partition.

The decision is made from the store, not from what the sensor saw before, so it holds for a
fresh instance or a lost cursor too; the cursor keeps only the absent workspaces (few), never
the whole registry. A workspace the registry lists again is picked up again.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import date

from backup_pipelines.lib.errors import BackupError
from backup_pipelines.lib.monitoring.alerts import Alert
from backup_pipelines.lib.recovery.catalog import SQL_ASSET, newest_restorable_point, points_of
from backup_pipelines.lib.store import ArtifactRef, BackupStore

VANISHED = "vanished"
UNREGISTERED = "unregistered"
# More vanished workspaces than this in one tick (a truncated registry, a wrong DATABASE_URL)
# make one summary alert.
MAX_ALERTS_PER_TICK = 20


@dataclass
class Absent:
    """A known workspace the registry does not list."""

    kind: str  # VANISHED or UNREGISTERED
    since: str  # when the sensor first saw it absent (ISO, UTC)
    newest_date: str | None = None  # newest restorable date (vanished only)
    rows: int | None = None  # rows in that date's SQL dump


@dataclass
class DiscoveryState:
    """What the discovery sensor keeps between ticks (its cursor)."""

    absent: dict[str, Absent] = field(default_factory=dict)
    pending: list[dict] = field(default_factory=list)  # undelivered alerts
    catalog_mark: str = ""  # what the restore catalog was last refreshed for
    catalog_requested_at: float = 0.0
    first_full_dump: str = ""  # the date a new deployment's first full dump was asked for

    def to_cursor(self) -> str:
        return json.dumps(
            {
                "absent": {w: asdict(a) for w, a in sorted(self.absent.items())},
                "pending": self.pending,
                "catalog_mark": self.catalog_mark,
                "catalog_requested_at": self.catalog_requested_at,
                "first_full_dump": self.first_full_dump,
            },
            sort_keys=True,
        )

    @classmethod
    def from_cursor(cls, cursor: str | None) -> DiscoveryState:
        if not cursor:
            return cls()
        try:
            raw = json.loads(cursor)
            return cls(
                absent={w: Absent(**a) for w, a in dict(raw.get("absent", {})).items()},
                pending=list(raw.get("pending", [])),
                catalog_mark=str(raw.get("catalog_mark", "")),
                catalog_requested_at=float(raw.get("catalog_requested_at", 0.0)),
                first_full_dump=str(raw.get("first_full_dump", "")),
            )
        except (ValueError, TypeError, AttributeError):
            return cls()  # an unreadable cursor restarts the state (absent ones are re-judged)


@dataclass
class Changes:
    vanished: list[str] = field(default_factory=list)
    unregistered: list[str] = field(default_factory=list)
    returned: list[str] = field(default_factory=list)


def rows_in(store: BackupStore, workspace: str, day: str) -> int | None:
    """Rows in the workspace's SQL dump of `day` (its manifest's counts), if readable."""
    try:
        manifest = store.read_manifest(ArtifactRef(SQL_ASSET, day, workspace))
        rows = (manifest or {}).get("counts", {}).get("rows", {})
        return sum(int(v) for v in rows.values()) if isinstance(rows, dict) else None
    except (BackupError, ValueError, TypeError, AttributeError, OSError):
        return None  # a damaged manifest: the alert says "rows unknown", the restore will tell


def judge_absent(
    store: BackupStore, workspace: str, assets: list[str], today: date, days: int, now_iso: str
) -> Absent:
    """Vanished (the store holds a backup of it) or unregistered (it holds none)."""
    point = newest_restorable_point(store, workspace, assets, today, days)
    if point is None:
        # Not restorable as a whole, but any artifact at all says it was real.
        points = points_of(store, workspace, [SQL_ASSET], today, days, True)
        point = points[0] if points else None
    if point is None:
        return Absent(UNREGISTERED, now_iso)
    return Absent(VANISHED, now_iso, point.date, rows_in(store, workspace, point.date))


def track(
    state: DiscoveryState,
    known: set[str],
    in_sql: set[str],
    judge,
) -> Changes:
    """Update `state.absent` for this tick: newly absent workspaces judged (`judge(w)` ->
    Absent), returned ones dropped, removed partitions forgotten."""
    changes = Changes()
    for workspace in sorted(known - in_sql):
        if workspace in state.absent:
            continue
        verdict = judge(workspace)
        state.absent[workspace] = verdict
        (changes.vanished if verdict.kind == VANISHED else changes.unregistered).append(workspace)
    for workspace in sorted(state.absent):
        if workspace in in_sql:
            changes.returned.append(workspace)
            del state.absent[workspace]
        elif workspace not in known:  # the partition was removed: nothing to watch
            del state.absent[workspace]
    return changes


def restore_command(workspace: str, day: str) -> str:
    return f"backup-pipelines restore workspace --date {day} --workspace {workspace}"


def vanished_alerts(
    state: DiscoveryState, vanished: list[str], registry: str, restore_url: str | None
) -> list[Alert]:
    """One alert per vanished workspace, or one summary when many vanish at once."""
    if len(vanished) > MAX_ALERTS_PER_TICK:
        return [_summary(state, vanished, registry, restore_url)]
    return [_vanished_alert(w, state.absent[w], registry, restore_url) for w in vanished]


def _vanished_alert(
    workspace: str, absent: Absent, registry: str, restore_url: str | None
) -> Alert:
    day = absent.newest_date
    held = f"{absent.rows:,} rows" if absent.rows is not None else "rows unknown"
    partition = f"{day}|{workspace}"
    return Alert(
        kind="workspace_vanished",
        title=(
            f"Workspace {workspace} is gone from {registry}; its newest backup is {day} "
            f"({held}). Restore: {restore_command(workspace, day)}, or a backfill of "
            f"workspace_restore_job for partition {partition}"
        ),
        workspace=workspace,
        asset=SQL_ASSET,
        details={
            "newest_restorable_date": day,
            "rows_in_newest_backup": absent.rows,
            "restore_command": restore_command(workspace, day),
            "backfill": f"workspace_restore_job, partition {partition}",
            "noticed_at": absent.since,
        },
        url=restore_url,
    )


def _summary(
    state: DiscoveryState, vanished: list[str], registry: str, restore_url: str | None
) -> Alert:
    return Alert(
        kind="workspace_vanished",
        title=(
            f"{len(vanished)} workspaces are gone from {registry} at once (a truncated table, "
            "or DATABASE_URL pointing elsewhere?); their backups are kept"
        ),
        details={
            "workspaces": len(vanished),
            "newest_restorable": {w: state.absent[w].newest_date for w in vanished[:200]},
        },
        url=restore_url,
    )
