"""Read a Qdrant collection snapshot offline: its config, its exact point count and its point ids.

A collection snapshot is a tar in the server's layout::

    config.json  version.info  payload_index.json
    0/segments/<segment-uuid>.tar       (one tar per segment: snapshot/files/...)
    0/wal/...                           (the source server's WAL: not read here)
    0/shard_config.json  0/replica_state.json
    1/...                               (one folder per shard)

The shards' segments are unpacked with Qdrant's own storage engine (``qdrant_edge``) into one
Edge shard folder, which is then opened read-only in practice (nothing is written to it) and
scrolled page by page, so memory stays flat however large the collection is. Plain Python:
no Dagster import, usable by the product's checks and by the devstack Qdrant stand-in.

    with read_snapshot_offline(Path("c.snapshot")) as snapshot:
        snapshot.points                       # exact count
        for point_id in snapshot.iter_point_ids():
            ...
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import secrets
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import qdrant_edge as edge

from backup_pipelines.lib.errors import BackupError
from backup_pipelines.lib.scratch import ScratchFolder

READ_CHUNK = 1024 * 1024
# A real WAL segment starts with the magic "wal", format version 0 and a random CRC seed.
WAL_SEGMENT_MAGIC = b"wal\x00"
WAL_SEGMENT_BYTES = 64
# A tar ends with two zero blocks; a file that stops before them was cut short.
TAR_BLOCK = 512
TAR_END_OF_ARCHIVE = 2 * TAR_BLOCK
ID_PAGE = 1000
VERSION_INFO_MAX = 64


class SnapshotError(BackupError):
    """A file is not a readable Qdrant collection snapshot.

    ``reason`` says what is wrong; ``str()`` adds the snapshot file when it is known.
    """

    def __init__(self, reason: str, snapshot: Path | None = None):
        self.reason = reason
        self.snapshot = snapshot
        super().__init__(f"{snapshot}: {reason}" if snapshot is not None else reason)


# ---------------------------------------------------------------------------------------------
# Checksums
# ---------------------------------------------------------------------------------------------


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksum(snapshot: Path, expected: str | None) -> None:
    """Raise SnapshotError unless the file's sha256 is `expected` (hex, any case); None skips."""
    if expected is None:
        return
    actual = sha256_of_file(snapshot)
    if not hmac.compare_digest(actual, expected.strip().lower()):
        raise SnapshotError(f"Snapshot checksum mismatch: expected {expected}, got {actual}")


# ---------------------------------------------------------------------------------------------
# Edge shard folders
# ---------------------------------------------------------------------------------------------


def segment_dirs(shard_path: Path) -> list[Path]:
    """Complete segment folders of a shard (a segment without version.info is unfinished)."""
    segments = shard_path / "segments"
    if not segments.is_dir():
        return []
    return sorted(
        entry
        for entry in segments.iterdir()
        if entry.is_dir() and not entry.name.startswith(".") and (entry / "version.info").exists()
    )


def last_operation_number(shard_path: Path) -> int:
    """Highest operation number applied to any segment (segment.json `version`), or -1."""
    versions = [
        json.loads((segment / "segment.json").read_text()).get("version")
        for segment in segment_dirs(shard_path)
        if (segment / "segment.json").exists()  # written at the segment's first flush
    ]
    return max((version for version in versions if version is not None), default=-1)


# Storage types whose data files are the same, read into RAM at load or paged in on use.
VECTORS_ON_DISK = {"InRamChunkedMmap": "ChunkedMmap", "InRamMmap": "Mmap"}


def keep_vectors_on_disk(shard_path: Path) -> int:
    """Make the private unpacked copy's segments map their vectors rather than load them.

    Reading a snapshot offline needs the point count and ids, never a vector. Loaded as the
    server configured them ("InRam..."), a 1M-point 384-dim collection put 1.66 GB of vectors
    in the backup process's memory (issue 16); mapped from disk, pages never touched are
    never resident, so memory no longer grows with the vectors. The mapped types read the
    same files. Returns how many vector storages were switched."""
    switched = 0
    for segment in segment_dirs(shard_path):
        path = segment / "segment.json"
        if not path.exists():
            continue
        described = json.loads(path.read_text())
        vectors = ((described.get("config") or {}).get("vector_data")) or {}
        changed = False
        for vector in vectors.values() if isinstance(vectors, dict) else ():
            storage = vector.get("storage_type") if isinstance(vector, dict) else None
            if isinstance(storage, str) and storage in VECTORS_ON_DISK:
                vector["storage_type"] = VECTORS_ON_DISK[storage]
                changed = True
                switched += 1
        if changed:
            path.write_text(json.dumps(described))
    return switched


def empty_wal_segment() -> bytes:
    """A closed WAL segment without entries: header only, zero padded."""
    header = WAL_SEGMENT_MAGIC + secrets.token_bytes(4)
    return header + bytes(WAL_SEGMENT_BYTES - len(header))


# ---------------------------------------------------------------------------------------------
# Collection snapshot archives
# ---------------------------------------------------------------------------------------------


def is_safe_member(member: tarfile.TarInfo) -> bool:
    """A plain file or folder with a relative path that stays inside the extraction folder."""
    path = Path(member.name)
    return (member.isfile() or member.isdir()) and not path.is_absolute() and ".." not in path.parts


def split_shard_member(name: str) -> tuple[str, str] | None:
    """`0/segments/x.tar` -> ("0", "segments/x.tar"); None outside shard folders."""
    parts = Path(name).parts
    if parts and parts[0] == ".":
        parts = parts[1:]
    if len(parts) >= 2 and parts[0].isdigit():
        return parts[0], "/".join(parts[1:])
    return None


def read_config_member(archive: tarfile.TarFile, member: tarfile.TarInfo) -> dict:
    """The snapshot's config.json member, which must be a JSON object."""
    try:
        config = json.load(archive.extractfile(member))  # type: ignore[arg-type]
    except ValueError as error:
        raise SnapshotError(f"the snapshot's config.json is not JSON: {error}") from error
    if not isinstance(config, dict):
        raise SnapshotError("the snapshot's config.json is not a JSON object")
    return config


def read_snapshot_config(archive: tarfile.TarFile) -> dict:
    """The collection config (config.json at the top of the archive)."""
    for member in archive:
        if member.isfile() and member.name.lstrip("./") == "config.json":
            return read_config_member(archive, member)
    # tarfile ends the listing quietly at a damaged header: say so rather than "no config.json".
    check_end_of_archive(archive)
    raise SnapshotError("the snapshot has no config.json: it is not a collection snapshot")


def read_snapshot_version(snapshot: Path) -> str | None:
    """The storage version in the snapshot's version.info (the server's version when it wrote
    the snapshot, "1.19.0"), or None when the snapshot has none. Reads tar headers only."""
    try:
        with tarfile.open(snapshot, "r:") as archive:
            for member in archive:
                if member.isfile() and member.name.lstrip("./") == "version.info":
                    text = archive.extractfile(member).read(VERSION_INFO_MAX)  # type: ignore[union-attr]
                    return text.decode("utf-8", errors="replace").strip()
    except (tarfile.TarError, OSError) as error:
        raise SnapshotError(f"the snapshot is not a readable tar archive: {error}") from error
    return None


def split_shard_tars(archive: tarfile.TarFile, work: Path) -> dict[str, Path]:
    """Copy each shard folder of a collection snapshot into a tar of its own (streamed).

    The source WAL is left out (see unpack_collection_snapshot). A shard member that is not a
    plain file or folder with a relative path inside the archive is refused. Returns {} for
    an archive without shard folders.
    """
    shard_tars: dict[str, Path] = {}
    with contextlib.ExitStack() as open_writers:
        writers: dict[str, tarfile.TarFile] = {}
        for member in archive:
            located = split_shard_member(member.name)
            if located is None or located[1].startswith("wal"):
                continue
            if not is_safe_member(member):
                raise SnapshotError(
                    f"unsafe member path {member.name!r} in the snapshot: only plain files and "
                    "folders with relative paths are allowed"
                )
            shard_id, inner_name = located
            if shard_id not in writers:
                shard_tars[shard_id] = work / f"shard-{shard_id}.tar"
                writers[shard_id] = open_writers.enter_context(
                    tarfile.open(shard_tars[shard_id], "w")
                )
            copy = tarfile.TarInfo(inner_name)
            copy.size, copy.mtime, copy.mode, copy.type = (
                member.size,
                member.mtime,
                member.mode,
                member.type,
            )
            source = archive.extractfile(member) if member.isfile() else None
            writers[shard_id].addfile(copy, source)
    return shard_tars


def check_end_of_archive(archive: tarfile.TarFile) -> None:
    """Raise SnapshotError unless the archive, listed to its end, ends with its two zero blocks.

    Python's tarfile ends the listing quietly at a cut or damaged header after the first member,
    so a snapshot cut at a member boundary would otherwise read as a smaller snapshot.
    """
    snapshot = Path(archive.name)  # type: ignore[arg-type]
    with snapshot.open("rb") as source:
        source.seek(archive.offset)
        tail = source.read(TAR_END_OF_ARCHIVE)
    if len(tail) < TAR_END_OF_ARCHIVE or any(tail):
        raise SnapshotError(
            f"the snapshot is truncated or damaged: no end-of-archive marker after byte "
            f"{archive.offset} (file has {snapshot.stat().st_size} bytes)"
        )


def unpack_collection_snapshot(snapshot: Path, work: Path) -> tuple[dict, Path]:
    """Unpack a collection snapshot into one Edge shard folder under `work`.

    Returns (collection config, shard folder). Shards of a multi-shard snapshot hold disjoint
    points, so their segments are gathered in one Edge shard. The source WAL is not kept (a
    server's WAL records are not Edge's); an empty WAL starting after the highest segment
    version keeps later updates applied. Raises SnapshotError for what is not a readable
    collection snapshot.
    """
    try:
        with tarfile.open(snapshot, "r:") as archive:
            config = read_snapshot_config(archive)
            shard_tars = split_shard_tars(archive, work)
            check_end_of_archive(archive)
    except tarfile.TarError as error:
        raise SnapshotError(f"the snapshot is not a readable tar archive: {error}") from error
    except OSError as error:  # tarfile reports data cut short as OSError
        raise SnapshotError(f"the snapshot cannot be read: {error}") from error
    if not shard_tars:
        raise SnapshotError("the snapshot holds no shard folder (0/, 1/, ...)")
    merged = work / "shard"
    (merged / "segments").mkdir(parents=True)
    for shard_id, shard_tar in shard_tars.items():
        unpacked = work / f"unpacked-{shard_id}"
        try:
            edge.EdgeShard.unpack_snapshot(str(shard_tar), str(unpacked))
        except Exception as error:  # Edge reports every failure as a plain exception
            raise SnapshotError(
                f"cannot unpack shard {shard_id} of the snapshot: {error}"
            ) from error
        shard_tar.unlink()
        for segment in segment_dirs(unpacked):
            segment.rename(merged / "segments" / segment.name)
    (merged / "wal").mkdir()
    try:
        next_operation = last_operation_number(merged) + 1
    except (ValueError, AttributeError, TypeError) as error:
        raise SnapshotError(f"a segment.json of the snapshot is damaged: {error}") from error
    (merged / "wal" / f"closed-{next_operation}").write_bytes(empty_wal_segment())
    return config, merged


# ---------------------------------------------------------------------------------------------
# Offline reading
# ---------------------------------------------------------------------------------------------


def point_id_text(point_id: Any) -> str:
    """Integer ids as decimal, UUIDs in their canonical hyphenated lowercase form."""
    return str(point_id)


class OfflineSnapshot:
    """A collection snapshot unpacked in a private temporary folder and opened with Edge.

    ``config`` is the collection config, ``points`` the exact point count, ``storage_version``
    the content of its version.info (None when absent). Close it (or use it as a context
    manager) to release the shard and remove the temporary folder.
    """

    def __init__(
        self,
        snapshot: Path,
        config: dict,
        shard: Any,
        scratch: ScratchFolder,
        storage_version: str | None = None,
    ):
        self.snapshot = snapshot
        self.config = config
        self.storage_version = storage_version
        self._shard = shard
        self._scratch = scratch
        try:
            self.points: int = shard.count(edge.CountRequest(exact=True))
        except Exception as error:  # Edge reports every failure as a plain exception
            raise SnapshotError(f"cannot count the points: {error}", snapshot) from error

    @property
    def closed(self) -> bool:
        return self._shard is None

    def iter_point_id_pages(self, page_size: int = ID_PAGE) -> Iterator[list[int | str]]:
        """The point ids in pages of at most `page_size`, in the order of iter_point_ids."""
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        offset = None
        while True:
            if self._shard is None:
                raise SnapshotError("the offline snapshot is closed", self.snapshot)
            request = edge.ScrollRequest(
                offset=offset, limit=page_size, with_payload=False, with_vector=False
            )
            try:
                records, offset = self._shard.scroll(request)
            except Exception as error:  # Edge reports every failure as a plain exception
                raise SnapshotError(f"cannot read point ids: {error}", self.snapshot) from error
            page = [
                record.id if isinstance(record.id, int) else point_id_text(record.id)
                for record in records
            ]
            if page:
                yield page
            if offset is None:
                return

    def iter_point_ids(self, page_size: int = ID_PAGE) -> Iterator[int | str]:
        """Every point id once, in Qdrant's id order: integer ids ascending (as int), then UUID
        ids ascending (as canonical hyphenated lowercase str). Scrolls `page_size` ids at a
        time without payloads or vectors, so memory does not grow with the collection."""
        for page in self.iter_point_id_pages(page_size):
            yield from page

    def close(self) -> None:
        shard, self._shard = self._shard, None
        try:
            if shard is not None:
                shard.close()
        finally:
            self._scratch.close()

    def __enter__(self) -> OfflineSnapshot:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_snapshot_offline(
    snapshot: Path, work_dir: Path | None = None, *, checksum: str | None = None
) -> OfflineSnapshot:
    """Unpack `snapshot` in a new temporary folder (under `work_dir` if given) and open it.

    The unpacked copy takes about the snapshot's size on disk until close(). Raises
    SnapshotError, naming the file, when it is not a readable collection snapshot, or when
    `checksum` (sha256 hex) is given and does not match.

    Give the checksum whenever one is known: segment files carry no checksums of their own, so
    a flipped byte in a segment (its id tracker, say) can read back as a different point id
    without any error from the storage engine.
    """
    snapshot = Path(snapshot)
    if not snapshot.is_file():
        raise SnapshotError("no such snapshot file", snapshot)
    scratch = ScratchFolder("qdrant-offline", parent=work_dir)
    shard = None
    try:
        verify_checksum(snapshot, checksum)
        config, shard_folder = unpack_collection_snapshot(snapshot, scratch.path)
        try:
            keep_vectors_on_disk(shard_folder)  # a private copy, only read
        except (ValueError, AttributeError, TypeError) as error:
            raise SnapshotError(f"a segment.json of the snapshot is damaged: {error}") from error
        try:
            shard = edge.EdgeShard.load(str(shard_folder))
        except Exception as error:
            raise SnapshotError(f"the storage engine cannot open the snapshot: {error}") from error
        return OfflineSnapshot(snapshot, config, shard, scratch, read_snapshot_version(snapshot))
    except SnapshotError as error:
        if shard is not None:
            shard.close()
        scratch.close()
        if error.snapshot is None:
            raise SnapshotError(error.reason, snapshot) from error.__cause__
        raise
    except BaseException:
        if shard is not None:
            shard.close()
        scratch.close()
        raise


def write_point_ids(snapshot_offline: OfflineSnapshot, sink_write: Callable[[bytes], None]) -> int:
    """Write every point id, one per line (b"42\\n", in iter_point_ids order), to `sink_write`;
    returns how many were written."""
    written = 0
    for page in snapshot_offline.iter_point_id_pages():
        sink_write("".join(f"{point_id_text(point_id)}\n" for point_id in page).encode())
        written += len(page)
    return written
