"""Retention that never breaks a SQL Server chain (rules the lifecycle's retention plan runs
for the SQL Server assets; see backup_pipelines.lib.lifecycle.retention, ASSET_RULES).

- A kept differential keeps its base full: a differential restores nothing without it.
- Logs follow the point-in-time window (policy `pitr_window_days`, 7 by default, the runbook's
  "7 days of PITR"), not the daily/weekly windows: every log from the newest kept full or
  differential finished before the window's start onward is kept — so any instant of the
  window can be restored, from that anchor through an unbroken chain — and older logs go.

The rules only ever keep more; they read the backups' recorded headers (the manifests).
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from backup_pipelines.lib.errors import BackupError, StoreError
from backup_pipelines.lib.mssql.backupset import BackupSet

FULL, DIFF, LOG = "mssql/full_backup", "mssql/diff_backup", "mssql/log_backup"
DEFAULT_PITR_DAYS = 7


def _header(context, artifact) -> BackupSet | None:
    try:
        manifest = context.store.require_manifest(artifact.ref)
        return BackupSet.from_manifest(manifest.get("header"), artifact.ref)
    except (BackupError, StoreError) as exc:  # unreadable: the generic rules hold it or not
        context.log(f"{artifact}: header unreadable ({exc}); no chain rule applies to it")
        return None


def _kept_with_headers(context, asset: str) -> list[tuple[object, BackupSet]]:
    found = []
    for (series_asset, _workspace), series in context.series.items():
        if series_asset != asset:
            continue
        for artifact in series.artifacts:
            if artifact.keep and (header := _header(context, artifact)) is not None:
                found.append((artifact, header))
    return found


def keep_base_fulls(series, context) -> None:
    """Rule of mssql/full_backup: keep the full every kept differential is based on."""
    needed = {
        header.database_backup_lsn: diff for diff, header in _kept_with_headers(context, DIFF)
    }
    if not needed:
        return
    for artifact in series.artifacts:
        header = _header(context, artifact)
        if header is not None and header.checkpoint_lsn in needed:
            artifact.keep_for(f"base of kept differential {needed[header.checkpoint_lsn].ref.date}")


def keep_log_chain(series, context) -> None:
    """Rule of mssql/log_backup (its own age rule): the logs of the point-in-time window."""
    days = getattr(context.policy, "pitr_window_days", DEFAULT_PITR_DAYS)
    window_start = datetime.combine(context.today - timedelta(days=days), time(), tzinfo=UTC)
    anchors = [
        header
        for asset in (FULL, DIFF)
        for _artifact, header in _kept_with_headers(context, asset)
        if header.finished_at <= window_start
    ]
    anchor = max(anchors, key=lambda h: h.last_lsn, default=None)
    for artifact in series.artifacts:
        header = _header(context, artifact)
        if header is None:
            continue
        if anchor is None:
            # No kept backup before the window: every log of the window's chain is needed, from
            # the oldest kept full on (the window may start before the first backup).
            if header.finished_at >= window_start:
                artifact.keep_for(f"point-in-time window ({days} d)")
            continue
        if header.database == anchor.database and header.last_lsn > anchor.last_lsn:
            artifact.keep_for(
                f"point-in-time window ({days} d): chain from the backup finished "
                f"{anchor.finished_at:%Y-%m-%d %H:%M}"
            )
