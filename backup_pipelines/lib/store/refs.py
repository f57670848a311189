"""Which artifact: an asset key path and a partition, and the folder that holds it.

<root>/<asset key path>/date=<YYYY-MM-DD>[/workspace=<id>][/window=<HHMM>]/manifest.json
<root>/<asset key path>/date=<YYYY-MM-DD>[/workspace=<id>][/window=<HHMM>]/<generation>/<file>

`window` is the start (UTC, hours and minutes) of a sub-daily time window: the SQL Server
differential (4-hourly) and log (15-minute) backups.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

from backup_pipelines.lib.workspaces import validate_workspace_id

WINDOW = re.compile(r"^([01][0-9]|2[0-3])[0-5][0-9]$")


@lru_cache(maxsize=4096)
def _check_date(value: str) -> None:
    """Refuses anything but a real YYYY-MM-DD date (cached: a store of 10,000 workspaces
    names a few dates hundreds of thousands of times, and strptime costs ~20 us a call)."""
    datetime.strptime(value, "%Y-%m-%d")


@dataclass(frozen=True, order=True)
class ArtifactRef:
    """Which artifact: an asset key path and a partition (workspace is None for whole-database)."""

    asset: str  # "postgres/workspace_dump"
    date: str  # "YYYY-MM-DD"
    workspace: str | None = None
    window: str | None = None  # "HHMM": start of a sub-daily window

    def __post_init__(self) -> None:
        if not isinstance(self.date, str):
            raise ValueError(f"invalid date {self.date!r}: expected YYYY-MM-DD")
        _check_date(self.date)  # refuses anything but a real date
        if self.workspace is not None:
            validate_workspace_id(self.workspace)
        if self.window is not None and not WINDOW.fullmatch(self.window):
            raise ValueError(f"invalid time window {self.window!r}: expected HHMM")
        if not all(part and part.replace("_", "").isalnum() for part in self.asset.split("/")):
            raise ValueError(f"invalid asset key path {self.asset!r}")

    @property
    def folder(self) -> str:
        folder = f"{self.asset}/date={self.date}"
        if self.workspace is not None:
            folder += f"/workspace={self.workspace}"
        if self.window is not None:
            folder += f"/window={self.window}"
        return folder

    @property
    def partition(self) -> dict:
        partition = {"date": self.date, "workspace": self.workspace}
        if self.window is not None:
            partition["window"] = self.window
        return partition

    def __str__(self) -> str:
        return self.folder


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_artifact_folder(folder: str) -> ArtifactRef | None:
    parts = folder.split("/")
    workspace = window = None
    if parts and parts[-1].startswith("window="):
        window = parts.pop()[len("window=") :]
    if parts and parts[-1].startswith("workspace="):
        workspace = parts.pop()[len("workspace=") :]
    if not parts or not parts[-1].startswith("date="):
        return None
    date = parts.pop()[len("date=") :]
    try:
        return ArtifactRef("/".join(parts), date, workspace, window)
    except ValueError:
        return None
