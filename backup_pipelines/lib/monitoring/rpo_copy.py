"""The second copy's RPO (BACKUP_COPY_STORE_URL): the same evaluation as the primary's
(lib/monitoring/rpo.py), run against the copy store, with its own alert kinds
(`copy_rpo_breach`, `copy_rpo_recovered`) whose titles name the copy store and say how far
the copy is behind the primary ("primary fresh, copy 3 days behind")."""

from __future__ import annotations

from datetime import date as Date
from datetime import datetime

from backup_pipelines.lib.monitoring import rpo
from backup_pipelines.lib.monitoring.alerts import Alert
from backup_pipelines.lib.policy import Policy
from backup_pipelines.lib.store import BackupStore

BREACH, RECOVERED = "copy_rpo_breach", "copy_rpo_recovered"
# How far back past the RPO window the copy is searched, so "N days behind" can be said for a
# copy down for up to a week (a listing per day; the health report searches deeper).
BEHIND_DAYS_SEARCHED = 8


def evaluate_copy(
    copy_store: BackupStore,
    primary: rpo.Evaluation,
    policy: Policy,
    now: datetime,
    horizon_days: int | None = None,
    bounded: bool = True,
) -> rpo.Evaluation:
    """Freshness of the copy of every (asset, workspace) the primary evaluation covers. Run
    history records the primary's backups only, so the copy is judged by its store alone.
    `bounded`: see rpo.evaluate."""
    subjects: dict[str, list[str | None]] = {}
    for item in primary.items:
        subjects.setdefault(item.asset, []).append(item.workspace)
    if horizon_days is None:
        horizon_days = rpo.rpo_window_days(policy) + BEHIND_DAYS_SEARCHED
    evaluation = rpo.evaluate(copy_store, subjects, {}, policy, now, horizon_days, bounded=bounded)
    for item in evaluation.items:
        item.disagreement = ""
    return evaluation


def days_behind(primary: rpo.Freshness | None, copy: rpo.Freshness) -> int | None:
    """Whole days the copy's newest artifact is older than the primary's; None when the copy
    holds nothing (or the primary nothing to compare with)."""
    if copy.newest_date is None or primary is None or primary.newest_date is None:
        return None
    return max(
        0, (Date.fromisoformat(primary.newest_date) - Date.fromisoformat(copy.newest_date)).days
    )


def describe(primary: rpo.Freshness | None, copy: rpo.Freshness) -> str:
    """ "primary fresh, copy 3 days behind (newest 2026-11-28)" and the like."""
    state = "primary late" if primary is None or primary.late else "primary fresh"
    behind = days_behind(primary, copy)
    if copy.newest_date is None:
        return f"{state}, copy holds nothing in the last {copy.searched_days} days"
    if behind is None:
        return f"{state}, copy newest {copy.newest_date} ({copy.describe_age()})"
    return (
        f"{state}, copy {behind} day(s) behind (newest {copy.newest_date}, {copy.describe_age()})"
    )


def copy_alerts(
    items: list[rpo.Freshness],
    primary: rpo.Evaluation,
    kind: str,
    where: str,
    asset_url,
) -> list[Alert]:
    """One alert per workspace (its late copies together), naming the copy store."""
    by_key = {item.key: item for item in primary.items}
    by_workspace: dict[str | None, list[rpo.Freshness]] = {}
    for item in items:
        by_workspace.setdefault(item.workspace, []).append(item)
    if len(by_workspace) > rpo.MAX_ALERTS_PER_TICK:
        verb = "behind" if kind == BREACH else "caught up"
        return [
            Alert(
                kind=kind,
                title=f"copy store {where} {verb} for {len(by_workspace)} workspaces "
                f"({len(items)} backups)",
                details={"copy_store": where, "assets": [i.to_row() for i in items[:200]]},
            )
        ]
    alerts = []
    for workspace, group in by_workspace.items():
        who = f"workspace {workspace}" if workspace else "the whole database"
        described = "; ".join(f"{i.asset}: {describe(by_key.get(i.key), i)}" for i in group)
        verb = "missed the RPO" if kind == BREACH else "is within the RPO again"
        alerts.append(
            Alert(
                kind=kind,
                title=f"copy store {where} {verb} for {who}: {described} "
                f"(target {group[0].target_hours:g} h)",
                workspace=workspace,
                asset=", ".join(i.asset for i in group),
                details={
                    "copy_store": where,
                    "days_behind": max(
                        (days_behind(by_key.get(i.key), i) or 0 for i in group), default=0
                    ),
                    "assets": [i.to_row() for i in group],
                },
                url=asset_url(group[0].asset),
            )
        )
    return alerts
