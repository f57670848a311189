"""Which Qdrant server can recover a snapshot taken by which.

A server reads the storage of its own minor version and of the previous one (1.19 reads 1.18
and 1.19), never newer data: a segment newer than the server is refused while the recovery
runs, after the collection was already created. So a restore compares the version recorded
at backup time with the target server's first, and refuses before anything is sent.
"""

from __future__ import annotations

import re

from backup_pipelines.lib.errors import BackupError

VERSION = re.compile(r"^\s*v?(\d+)\.(\d+)\.(\d+)")


class IncompatibleVersion(BackupError):
    """The target server cannot read the backup's snapshot: nothing was sent to it."""


def parse_version(text: object) -> tuple[int, int, int] | None:
    """(major, minor, patch) of "1.19.0", "1.19.0-standin", "v1.19.2"; None when not one."""
    matched = VERSION.match(text) if isinstance(text, str) else None
    return tuple(int(part) for part in matched.groups()) if matched else None  # type: ignore[return-value]


def refusal(backup_version: object, server_version: object) -> str | None:
    """Why a server of `server_version` cannot recover a snapshot of `backup_version`, or None
    when it can (or when either version is unknown: the server then decides)."""
    backup, server = parse_version(backup_version), parse_version(server_version)
    if backup is None or server is None:
        return None
    backup_text, server_text = ".".join(map(str, backup)), ".".join(map(str, server))
    if backup > server:
        return (
            f"the backup was taken on Qdrant {backup_text}, newer than the target server's "
            f"{server_text}, and a server never reads newer storage: upgrade the target server "
            f"to {backup_text} or later (or restore onto a server of that version)"
        )
    if backup[0] != server[0] or server[1] - backup[1] > 1:
        major, minor = backup[0], backup[1]
        return (
            f"the backup was taken on Qdrant {backup_text} and the target server runs "
            f"{server_text}, which reads storage of {server[0]}.{server[1]} and "
            f"{server[0]}.{max(server[1] - 1, 0)} only: restore it onto a Qdrant {major}.{minor} "
            f"or {major}.{minor + 1} server and upgrade that server one minor version at a time "
            "up to the target's, or rebuild the collection from the SQL rows"
        )
    return None
