"""Snapshot files under the snapshots folder, laid out like a real server's:
`<root>/<collection>/<snapshot>` with `<snapshot>.checksum` (sha256 hex) beside the ones the
server created.

Uploaded snapshots are kept too, the way the real server keeps them: the upload handler moves
the file to `<root>/<collection as named in the URL>/<uploaded file name>` and recovers from it
in place, and nothing deletes it afterwards. Only `DELETE /collections/{c}/snapshots/{name}`
removes it, and only while collection `c` exists: once it is deleted the file is beyond the
API's reach.
"""

from __future__ import annotations

import os
import shutil
import urllib.parse
import uuid
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from backup_pipelines.devstack.qdrant.archive import write_collection_snapshot
from backup_pipelines.devstack.qdrant.models import (
    CHECKSUM_SUFFIX,
    SNAPSHOT_SUFFIX,
    ApiError,
    bad_request,
    not_found,
)

if TYPE_CHECKING:
    from backup_pipelines.devstack.qdrant.storage import Collection


class SnapshotFiles:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def folder(self, collection: str) -> Path:
        folder = self.root / collection
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def path(self, collection: str, snapshot_name: str) -> Path:
        path = self.folder(collection) / snapshot_name
        if "/" in snapshot_name or snapshot_name.startswith(".") or not path.is_file():
            raise not_found(f"Snapshot {snapshot_name} not found")
        return path

    def create(self, collection: Collection, peer_id: int, work_dir: Path, version: str) -> dict:
        stamp = datetime.now(UTC).strftime("%Y-%m-%d-%H-%M-%S")
        snapshot_name = f"{collection.name}-{peer_id}-{stamp}{SNAPSHOT_SUFFIX}"
        folder = self.folder(collection.name)
        partial = folder / f".{snapshot_name}.partial"
        try:
            checksum = write_collection_snapshot(collection, partial, work_dir, peer_id, version)
            # The checksum lands first so a listed snapshot always has one (as on a real server).
            (folder / f"{snapshot_name}{CHECKSUM_SUFFIX}").write_text(checksum)
            os.replace(partial, folder / snapshot_name)
        finally:
            partial.unlink(missing_ok=True)
        return self.describe(folder / snapshot_name)

    def describe(self, path: Path) -> dict:
        status = path.stat()
        checksum_file = path.with_name(path.name + CHECKSUM_SUFFIX)
        return {
            "name": path.name,
            "creation_time": datetime.fromtimestamp(status.st_mtime, UTC).strftime(
                "%Y-%m-%dT%H:%M:%S"
            ),
            "size": status.st_size,
            "checksum": checksum_file.read_text().strip() if checksum_file.exists() else None,
        }

    def list(self, collection: str) -> list[dict]:
        """Like the server: the files whose extension is `.snapshot`."""
        folder = self.folder(collection)
        return [
            self.describe(path)
            for path in sorted(folder.iterdir())
            if path.is_file() and path.suffix == SNAPSHOT_SUFFIX and not path.name.startswith(".")
        ]

    def delete(self, collection: str, snapshot_name: str) -> None:
        path = self.path(collection, snapshot_name)
        path.unlink()
        path.with_name(path.name + CHECKSUM_SUFFIX).unlink(missing_ok=True)

    def keep_upload(self, collection: str, file_name: str | None, uploaded: Path) -> Path:
        """Move an uploaded file where the server keeps it: the top-level part of the name the
        client gave (a fresh UUID without one), in the folder of the collection named in the
        URL — an alias's own name included, as on the real server. An existing file of that
        name is replaced."""
        name = PurePosixPath((file_name or "").replace("\\", "/")).name
        if name in ("", ".", ".."):
            name = str(uuid.uuid4())
        target = self.folder(collection) / name
        shutil.move(uploaded, target)
        return target

    def local_location(self, location: str) -> Path:
        """A file:// location, accepted only inside the snapshots folder like a real server."""
        parsed = urllib.parse.urlsplit(location)
        if parsed.netloc not in ("", "localhost"):
            raise bad_request("Invalid snapshot URI, file path must be absolute or on localhost")
        path = Path(urllib.parse.unquote(parsed.path)).resolve()
        if not path.is_relative_to(self.root):
            raise ApiError(
                HTTPStatus.FORBIDDEN,
                f"Forbidden: Snapshot file {str(path)!r} is outside the snapshots directory",
            )
        if not path.is_file():
            raise bad_request(f"Snapshot file {str(path)!r} does not exist")
        return path
