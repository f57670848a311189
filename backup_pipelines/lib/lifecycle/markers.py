"""Keep markers: a partition held whatever its age, until released (`backup-pipelines keep`).

They live in the store itself, so they survive the loss of Dagster:
    _keep/date=<D>/workspace=<W>.json     holds every artifact of partition D|W
    _keep/date=<D>/_database.json         holds the whole-database artifacts of D
(`_database` cannot be a workspace id: ids start with a letter or digit.)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import date

from backup_pipelines.lib.errors import ArtifactNotFound
from backup_pipelines.lib.store import BackupStore, utc_now_iso
from backup_pipelines.lib.workspaces import validate_workspace_id

DATE_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}$")
KEEP_PREFIX = "_keep/"
WHOLE_DATABASE_MARKER = "_database.json"


@dataclass(frozen=True)
class Partition:
    """One backup: a date and a workspace (None: the whole-database series)."""

    date: str
    workspace: str | None = None

    def __post_init__(self) -> None:
        # Strict: strptime would take 2026-3-1, which names no folder in the store.
        try:
            if not DATE_PATTERN.fullmatch(self.date):
                raise ValueError
            date.fromisoformat(self.date)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"invalid date {self.date!r}: expected YYYY-MM-DD") from exc
        if self.workspace is not None:
            validate_workspace_id(self.workspace)

    @property
    def day(self) -> date:
        return date.fromisoformat(self.date)

    @property
    def sort_key(self) -> tuple[str, str]:
        return self.date, self.workspace or ""

    def __str__(self) -> str:
        """The Dagster partition key: `date|workspace`, or `date` for the whole database."""
        return f"{self.date}|{self.workspace}" if self.workspace else self.date


@dataclass(frozen=True)
class KeepMarker:
    partition: Partition
    reason: str
    created_at: str | None = None
    created_by: str | None = None


def marker_key(partition: Partition) -> str:
    name = f"workspace={partition.workspace}.json" if partition.workspace else WHOLE_DATABASE_MARKER
    return f"{KEEP_PREFIX}date={partition.date}/{name}"


def _partition_of_marker(key: str) -> Partition | None:
    folder, _, name = key[len(KEEP_PREFIX) :].rpartition("/")
    if not folder.startswith("date="):
        return None
    day = folder[len("date=") :]
    try:
        if name == WHOLE_DATABASE_MARKER:
            return Partition(day)
        if name.startswith("workspace=") and name.endswith(".json"):
            return Partition(day, name[len("workspace=") : -len(".json")])
    except ValueError:
        return None
    return None


def _assets_of(store: BackupStore, partition: Partition) -> list[str]:
    """The assets holding a committed artifact of `partition`. Compares the strings: the
    store may hold folders this project did not write (date=2026-3-1), which are not the
    operator's typo and must not be reported as one."""
    return sorted(
        ref.asset
        for ref in store.list_artifacts()
        if ref.date == partition.date and ref.workspace == partition.workspace
    )


def _not_found_hint(store: BackupStore, partition: Partition) -> str:
    """What the store does hold for that date, so a wrong --workspace is obvious."""
    workspaces = sorted(
        {
            ref.workspace or "(whole database)"
            for ref in store.list_artifacts()
            if ref.date == partition.date
        }
    )
    if workspaces:
        return f"that date holds backups of: {', '.join(workspaces)}"
    return "the store holds no backup of that date"


def mark_kept(
    store: BackupStore,
    day: str,
    workspace: str | None,
    reason: str,
    created_by: str | None = None,
) -> KeepMarker:
    """Hold every artifact of the partition until `release`, whatever its age."""
    partition = Partition(day, workspace)
    if not reason or not reason.strip():
        raise ValueError("a keep marker needs a reason (e.g. 'before migration 42')")
    if not _assets_of(store, partition):
        raise ArtifactNotFound(
            f"no backup of {partition} in {store.describe()}: nothing to keep "
            f"({_not_found_hint(store, partition)}; see `backup-pipelines list`)"
        )
    marker = KeepMarker(partition, reason.strip(), utc_now_iso(), created_by)
    body = {"reason": marker.reason, "created_at": marker.created_at, "created_by": created_by}
    store._put_atomic(marker_key(partition), json.dumps(body, indent=2).encode())
    return marker


def release(store: BackupStore, day: str, workspace: str | None) -> KeepMarker:
    """Remove the keep marker; the partition falls back under the normal rules."""
    partition = Partition(day, workspace)
    marker = _read_marker(store, marker_key(partition), partition)
    if marker is None:
        raise ArtifactNotFound(f"no keep marker on {partition} in {store.describe()}")
    store._delete_prefix(marker_key(partition))
    store._remove_empty_folders(marker_key(partition).rpartition("/")[0])
    return marker


def _read_marker(store: BackupStore, key: str, partition: Partition) -> KeepMarker | None:
    body = store._get(key)
    if body is None:
        return None
    try:
        fields = json.loads(body)
        return KeepMarker(
            partition, str(fields["reason"]), fields.get("created_at"), fields.get("created_by")
        )
    except (ValueError, KeyError, TypeError):
        # A marker that cannot be read still holds its partition: keeping too much is the
        # recoverable mistake.
        return KeepMarker(partition, f"unreadable marker {key}")


def list_kept(store: BackupStore) -> list[KeepMarker]:
    markers = []
    for key, _size, _mtime in store._list(KEEP_PREFIX):
        partition = _partition_of_marker(key)
        if partition is not None and (marker := _read_marker(store, key, partition)):
            markers.append(marker)
    return sorted(markers, key=lambda m: m.partition.sort_key)
