"""Restorable points: for each workspace, the dates the store can restore it to and what each
date holds (the SQL dump, each index artifact, a keep marker).

A workspace restore needs the partition's SQL dump and an artifact of every index engine of
the deployment (`workspace_restore.locate_and_verify`): a date with all of them is
*restorable*; a date with only some is listed as partial, with what is missing. Whole-database
assets (the full dump) are listed as their own series.

Everything here comes from listings of the store, never a manifest read per artifact, so the
whole catalog of 10,000 workspaces costs one listing per asset. A committed artifact is one
whose manifest exists (DESIGN: the manifest is the commit point); the checksums are not read
here (`backup-pipelines verify`, and every restore, do that).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta

from backup_pipelines.lib.lifecycle.markers import list_kept
from backup_pipelines.lib.store import (
    MANIFEST_NAME,
    ArtifactRef,
    BackupStore,
    parse_artifact_folder,
)
from backup_pipelines.lib.store.listing import iter_keys
from backup_pipelines.lib.workspaces import validate_workspace_id

SQL_ASSET = "postgres/workspace_dump"
WHOLE_DATABASE = None


@dataclass
class Point:
    """One date of one workspace (or of the whole database): which assets hold it."""

    date: str
    assets: set[str] = field(default_factory=set)
    kept: bool = False

    def missing(self, required: Iterable[str]) -> list[str]:
        return [asset for asset in required if asset not in self.assets]

    def restorable(self, required: Iterable[str]) -> bool:
        return not self.missing(required)


@dataclass
class Catalog:
    """Every restorable point of the store: workspace (None: whole database) -> date -> Point."""

    required: list[str]  # what a workspace restore needs: the SQL dump and every index artifact
    points: dict[str | None, dict[str, Point]] = field(default_factory=dict)

    def add(self, ref: ArtifactRef) -> None:
        series = self.points.setdefault(ref.workspace, {})
        series.setdefault(ref.date, Point(ref.date)).assets.add(ref.asset)

    def workspaces(self) -> list[str]:
        return sorted(w for w in self.points if w is not None)

    def dates(self, workspace: str | None) -> list[Point]:
        """Newest first."""
        return sorted(self.points.get(workspace, {}).values(), key=lambda p: p.date, reverse=True)

    def restorable_dates(self, workspace: str) -> list[str]:
        return [p.date for p in self.dates(workspace) if p.restorable(self.required)]

    def newest_restorable(self, workspace: str) -> str | None:
        dates = self.restorable_dates(workspace)
        return dates[0] if dates else None


def _committed(store: BackupStore, asset: str) -> Iterable[ArtifactRef]:
    """Artifacts of `asset` with a manifest, from one listing (sub-daily windows fold into
    their date)."""
    for key, _size, _mtime in iter_keys(store, f"{asset}/"):
        if key.endswith("/" + MANIFEST_NAME):
            ref = parse_artifact_folder(key[: -len(MANIFEST_NAME) - 1])
            if ref is not None and ref.asset == asset:
                yield ref


def build_catalog(
    store: BackupStore, workspace_assets: list[str], whole_database_assets: list[str] = ()
) -> Catalog:
    """The whole catalog: one listing per asset, plus the keep markers."""
    catalog = Catalog(required=list(workspace_assets))
    for asset in [*workspace_assets, *whole_database_assets]:
        for ref in _committed(store, asset):
            catalog.add(ref)
    for marker in list_kept(store):
        point = catalog.points.get(marker.partition.workspace, {}).get(marker.partition.date)
        if point is not None:
            point.kept = True
    return catalog


def dates_back(today: date, days: int) -> list[str]:
    return [(today - timedelta(days=n)).isoformat() for n in range(days + 1)]


def points_of(
    store: BackupStore,
    workspace: str,
    assets: list[str],
    today: date,
    days: int,
    stop_at_first_restorable: bool = False,
) -> list[Point]:
    """One workspace's points over the last `days` days, newest first, by probing each date's
    folder (a listing per asset and date: cheap for one workspace, and independent of how many
    other workspaces the store holds)."""
    workspace = validate_workspace_id(workspace)
    found = []
    for day in dates_back(today, days):
        point = Point(day)
        for asset in assets:
            ref = ArtifactRef(asset, day, workspace)
            manifest_key = f"{ref.folder}/{MANIFEST_NAME}"
            if any(key == manifest_key for key, _s, _m in iter_keys(store, f"{ref.folder}/")):
                point.assets.add(asset)
        if point.assets:
            found.append(point)
            if stop_at_first_restorable and point.restorable(assets):
                break
    return found


def newest_restorable_point(
    store: BackupStore, workspace: str, assets: list[str], today: date, days: int
) -> Point | None:
    """The newest date within `days` that holds every one of `assets` for the workspace."""
    for point in points_of(store, workspace, assets, today, days, stop_at_first_restorable=True):
        if point.restorable(assets):
            return point
    return None


def describe_point(point: Point, required: list[str]) -> str:
    """`2026-11-21: restorable (postgres/workspace_dump, typesense/collection_export)` or what
    is missing."""
    held = ", ".join(sorted(point.assets))
    missing = point.missing(required)
    state = "restorable" if not missing else f"partial, missing {', '.join(missing)}"
    return f"{point.date}: {state} ({held})" + (", kept" if point.kept else "")
