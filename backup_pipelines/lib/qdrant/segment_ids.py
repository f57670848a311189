"""The point ids of a Qdrant collection snapshot, read from its segments' id-tracker files.

Why not the engine: opened with Qdrant's engine (offline.py), a shard holds every segment's id
tracker in memory, ~105 bytes a point (230 MB added at 2M points, issue 16). Here only the
id-tracker files are copied out of the snapshot, parsed as Qdrant reads them, and the ids are
sorted externally (sorted runs spilled to disk, then merged), so memory stays flat whatever the
number of points; the snapshot is not unpacked.

Formats, as Qdrant 1.19 writes and reads them (lib/segment/src/id_tracker/ in qdrant/qdrant),
little endian; a UUID is stored as its 16 bytes in canonical order:

- mutable tracker (appendable segments): ``mutable_id_tracker.mappings`` is an append-only log
  of changes, replayed in order: 1 = insert number (u64 id, u32 internal id; 13 bytes),
  2 = insert UUID (16 bytes, u32; 21), 3 = delete number (u64; 9), 4 = delete UUID (16; 17).
  A log that ends inside an entry is read up to that entry, as Qdrant does after a crash.
  ``mutable_id_tracker.versions``: one u64 per internal id.
- immutable tracker (optimized segments): ``id_tracker.mappings`` = u64 entry count, then the
  entries in internal-id order: 0 = number (u64 id, u32 internal; 13), 1 = UUID (16, u32; 21).
  ``id_tracker.deleted``: one bit per entry (u64 words, least significant bit first);
  ``id_tracker.versions``: one u64 per internal id.
- In both, a point whose internal id has no version is dropped when the segment is loaded
  (``Segment::check_consistency_and_repair``), so it is not listed here either.

A point held by several segments (an older copy left beside a newer one) is listed once: the
engine counts and scrolls the distinct ids of all segments; which copy's version is newer
decides what is read for it, not whether it is listed. A deleted point is in no mapping.

Not parsed (read with the engine instead, with the reason logged): the disk-resident tracker
(``id_tracker.i2e``/``e2i``, serverless builds only), RocksDB-era segments (Qdrant before the
mutable tracker; 1.19 refuses them too), segments stored as folders or in the pre-``snapshot/``
layout, and a mutable log that assigns an internal id twice (Qdrant never does; replaying such
a log takes the engine's own rules).

Plain Python and numpy: no Dagster import.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np

from backup_pipelines.lib.qdrant.offline import (
    VERSION_INFO_MAX,
    SnapshotError,
    check_end_of_archive,
    is_safe_member,
    read_config_member,
    read_snapshot_offline,
    split_shard_member,
    verify_checksum,
    write_point_ids,
)
from backup_pipelines.lib.scratch import ScratchFolder

log = logging.getLogger(__name__)

MUTABLE_MAPPINGS = "mutable_id_tracker.mappings"
MUTABLE_VERSIONS = "mutable_id_tracker.versions"
IMMUTABLE_MAPPINGS = "id_tracker.mappings"
IMMUTABLE_VERSIONS = "id_tracker.versions"
IMMUTABLE_DELETED = "id_tracker.deleted"
SEGMENT_VERSION = "version.info"
COPIED_FILES = {
    MUTABLE_MAPPINGS,
    MUTABLE_VERSIONS,
    IMMUTABLE_MAPPINGS,
    IMMUTABLE_VERSIONS,
    IMMUTABLE_DELETED,
}
DISK_TRACKER_FILES = {"id_tracker.i2e", "id_tracker.e2i"}
# A segment tar as the engine restores it: "<segment id>.tar", the id without dots.
SEGMENT_TAR = re.compile(r"^segments/([^./][^./]*)\.tar$")
VERSION_BYTES = 8
COUNT_HEADER_BYTES = 8

# ---------------------------------------------------------------------------------------------
# Entry layouts (packed numpy records, read straight from the file's bytes)
# ---------------------------------------------------------------------------------------------

NUM_INSERT = np.dtype([("type", "u1"), ("id", "<u8"), ("internal", "<u4")])
UUID_INSERT = np.dtype([("type", "u1"), ("hi", ">u8"), ("lo", ">u8"), ("internal", "<u4")])
NUM_DELETE = np.dtype([("type", "u1"), ("id", "<u8")])
UUID_DELETE = np.dtype([("type", "u1"), ("hi", ">u8"), ("lo", ">u8")])


class Layout(NamedTuple):
    dtype: np.dtype
    uuid: bool
    insert: bool


MUTABLE_LAYOUTS = {
    1: Layout(NUM_INSERT, False, True),
    2: Layout(UUID_INSERT, True, True),
    3: Layout(NUM_DELETE, False, False),
    4: Layout(UUID_DELETE, True, False),
}
IMMUTABLE_LAYOUTS = {0: Layout(NUM_INSERT, False, True), 1: Layout(UUID_INSERT, True, True)}

# ---------------------------------------------------------------------------------------------
# Sort records: one per id event, compared as 26 raw bytes (big endian fields, so byte order is
# numeric order): id kind (0 number, 1 UUID), id (hi, lo), order (segment << 40 | position in
# the segment's file), live (1 if the event leaves the id in the segment).
# ---------------------------------------------------------------------------------------------

KEY = np.dtype([("kind", "u1"), ("hi", ">u8"), ("lo", ">u8"), ("order", ">u8"), ("live", "u1")])
RAW = np.dtype(f"S{KEY.itemsize}")
SEGMENT_SHIFT = 40  # positions below 2**40 (a file of at most ~9 TB), segments below 2**23
MAX_SEGMENTS = 1 << 23
READ_BLOCK = 1024 * 1024
RUN_RECORDS = 1 << 18  # 6.8 MB a run buffer, sorted in place
MERGE_RECORDS = 1 << 16  # records held across all runs while merging (1.7 MB)
LINES_AT_ONCE = 1 << 14  # ids formatted as text at a time (Python strings cost ~100 B an id)
MERGE_FAN_IN = 32
MIN_MERGE_BLOCK = 4096
PROBE_START = 64


class UnreadableLayout(Exception):
    """A layout this reader does not parse: the engine reads the snapshot instead."""


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass
class SnapshotIds:
    """What listing a snapshot's ids found: ``points`` ids were written, ``config`` and
    ``storage_version`` as in OfflineSnapshot; ``reader`` is "id-tracker files" or "engine",
    ``fallback_reason`` why the engine was used (None otherwise)."""

    points: int
    config: dict
    storage_version: str | None
    reader: str
    fallback_reason: str | None = None


def write_snapshot_point_ids(
    snapshot: Path,
    sink_write: Callable[[bytes], None],
    work_dir: Path | None = None,
    *,
    checksum: str | None = None,
    log_line: Callable[[str], None] | None = None,
) -> SnapshotIds:
    """Write every point id of a collection snapshot to `sink_write`, one a line, in Qdrant's
    order (integer ids ascending, then UUIDs ascending, as canonical lowercase text).

    Reads the segments' id-tracker files with flat memory; a layout it does not parse is read
    with Qdrant's engine instead, with the reason logged (nothing was written before that
    decision). Raises SnapshotError, naming the snapshot and the file, when the snapshot or an
    id-tracker file in it is damaged."""
    snapshot = Path(snapshot)
    if not snapshot.is_file():
        raise SnapshotError("no such snapshot file", snapshot)
    verify_checksum_named(snapshot, checksum)
    try:
        with ScratchFolder("qdrant-ids", parent=work_dir) as scratch:
            return _write_from_files(snapshot, sink_write, scratch)
    except UnreadableLayout as unreadable:
        reason = str(unreadable)
    message = f"{snapshot.name}: point ids read with Qdrant's engine (memory grows with the points): {reason}"
    log.warning(message)
    if log_line is not None:
        log_line(message)
    return _write_with_engine(snapshot, sink_write, work_dir, reason)


def verify_checksum_named(snapshot: Path, checksum: str | None) -> None:
    try:
        verify_checksum(snapshot, checksum)
    except SnapshotError as error:
        raise SnapshotError(error.reason, snapshot) from error


def _write_with_engine(
    snapshot: Path, sink_write: Callable[[bytes], None], work_dir: Path | None, reason: str
) -> SnapshotIds:
    with read_snapshot_offline(snapshot, work_dir) as offline:
        written = write_point_ids(offline, sink_write)
        if written != offline.points:
            raise SnapshotError(
                f"the engine counted {offline.points} points but listed {written} ids", snapshot
            )
        return SnapshotIds(written, offline.config, offline.storage_version, "engine", reason)


def _write_from_files(
    snapshot: Path, sink_write: Callable[[bytes], None], scratch: Path
) -> SnapshotIds:
    try:
        found = copy_id_tracker_files(snapshot, scratch / "segments")
        runs = RunWriter(scratch / "runs")
        for number, segment in enumerate(found.segments):
            read_segment_events(segment, number, runs)
        run_paths = runs.finish()
    except SnapshotError as error:
        raise SnapshotError(error.reason, snapshot) from error.__cause__
    written = 0
    for kinds, his, los in distinct_live_ids(merge_runs(run_paths, scratch / "runs")):
        for start in range(0, len(kinds), LINES_AT_ONCE):
            stop = start + LINES_AT_ONCE
            sink_write(id_lines(kinds[start:stop], his[start:stop], los[start:stop]))
        written += len(kinds)
    return SnapshotIds(written, found.config, found.storage_version, "id-tracker files")


# ---------------------------------------------------------------------------------------------
# The snapshot archive: config, version and each segment's id-tracker files
# ---------------------------------------------------------------------------------------------


@dataclass
class SegmentFiles:
    name: str  # "0/segments/<id>.tar": how errors name the segment
    folder: Path  # where its id-tracker files were copied
    present: set[str]


@dataclass
class FoundFiles:
    config: dict
    storage_version: str | None
    segments: list[SegmentFiles]


def copy_id_tracker_files(snapshot: Path, target: Path) -> FoundFiles:
    """One pass over the snapshot: its config.json and version.info, and for each segment tar
    the id-tracker files (copied under `target`, one folder a segment)."""
    config: dict | None = None
    storage_version: str | None = None
    segments: list[SegmentFiles] = []
    has_shard = False
    try:
        with tarfile.open(snapshot, "r:") as archive:
            for member in archive:
                name = member.name.removeprefix("./")
                if member.isfile() and name == "config.json":
                    config = read_config_member(archive, member)
                elif member.isfile() and name == "version.info":
                    text = archive.extractfile(member).read(VERSION_INFO_MAX)  # type: ignore[union-attr]
                    storage_version = text.decode("utf-8", errors="replace").strip()
                elif split_shard_member(member.name) is not None:
                    has_shard = True
                    segment = shard_segment(archive, member, target, len(segments))
                    if segment is not None:
                        segments.append(segment)
            check_end_of_archive(archive)
    except tarfile.TarError as error:
        raise SnapshotError(f"the snapshot is not a readable tar archive: {error}") from error
    except OSError as error:  # tarfile reports data cut short as OSError
        raise SnapshotError(f"the snapshot cannot be read: {error}") from error
    if config is None:
        raise SnapshotError("the snapshot has no config.json: it is not a collection snapshot")
    if not has_shard:
        raise SnapshotError("the snapshot holds no shard folder (0/, 1/, ...)")
    return FoundFiles(config, storage_version, segments)


def shard_segment(
    archive: tarfile.TarFile, member: tarfile.TarInfo, target: Path, number: int
) -> SegmentFiles | None:
    """The segment a shard member holds (None for other members), its files copied out."""
    located = split_shard_member(member.name)
    assert located is not None
    if located[1].startswith("wal"):
        return None
    if not is_safe_member(member):
        raise SnapshotError(
            f"unsafe member path {member.name!r} in the snapshot: only plain files and "
            "folders with relative paths are allowed"
        )
    shard_id, inner = located
    if inner.rstrip("/") == "segments" or not inner.startswith("segments/"):
        return None  # the folder itself, shard_config.json, replica_state.json, ...
    if not member.isfile() or not SEGMENT_TAR.match(inner):
        raise UnreadableLayout(
            f"shard {shard_id} holds {inner!r}: segments stored other than as "
            "<segment id>.tar files"
        )
    if number >= MAX_SEGMENTS:
        raise SnapshotError(f"the snapshot holds more than {MAX_SEGMENTS} segments")
    name = f"{shard_id}/{inner}"
    folder = target / f"{number:07d}"
    folder.mkdir(parents=True)
    source = archive.extractfile(member)
    assert source is not None  # a regular file
    present = copy_segment_files(source, name, folder)
    return SegmentFiles(name, folder, present)


def copy_segment_files(source: BinaryIO, name: str, folder: Path) -> set[str]:
    """Copy the id-tracker files of one segment tar (``snapshot/files/<file>``, or
    ``snapshot/<file>`` where the files/ level is absent) into `folder`; returns the names of
    the segment's top-level files."""
    present: set[str] = set()
    try:
        with tarfile.open(fileobj=source, mode="r:") as segment:
            for member in segment:
                inner = member.name.removeprefix("./")
                if inner.startswith("snapshot/files/"):
                    file_name = inner.removeprefix("snapshot/files/")
                elif inner.startswith("snapshot/"):
                    file_name = inner.removeprefix("snapshot/")
                elif inner.rstrip("/") == "snapshot":
                    continue
                else:
                    raise UnreadableLayout(
                        f"segment {name} holds {inner!r} outside snapshot/: the layout of "
                        "segment snapshots from before Qdrant 1.x's streamable format"
                    )
                if "/" in file_name or not member.isfile():
                    continue
                present.add(file_name)
                if file_name in COPIED_FILES:
                    copy_member(segment, member, folder / file_name, name)
            check_inner_end(segment, source, name)
    except tarfile.TarError as error:
        raise SnapshotError(f"segment {name} is not a readable tar archive: {error}") from error
    return present


def copy_member(archive: tarfile.TarFile, member: tarfile.TarInfo, target: Path, name: str):
    data = archive.extractfile(member)
    assert data is not None
    with target.open("wb") as out:
        shutil.copyfileobj(data, out, 1024 * 1024)
    if target.stat().st_size != member.size:
        raise SnapshotError(
            f"segment {name}: {member.name} holds {target.stat().st_size} bytes, its header "
            f"says {member.size}"
        )


def check_inner_end(segment: tarfile.TarFile, source: BinaryIO, name: str) -> None:
    """Python's tarfile ends a listing quietly at a damaged header after the first member, so
    what follows the last member read must be nothing or zero blocks. Nothing is what Qdrant
    writes: its segment tars have no end-of-archive marker (the inner tar builder is dropped
    unfinished in Segment::take_snapshot), so a tar cut at a member boundary cannot be told
    from a whole one here; the snapshot's sha256 covers that."""
    source.seek(segment.offset)
    while chunk := source.read(1024 * 1024):
        if any(chunk):
            raise SnapshotError(
                f"segment {name} is damaged: unreadable tar header at byte {segment.offset}"
            )


# ---------------------------------------------------------------------------------------------
# One segment's events
# ---------------------------------------------------------------------------------------------


def read_segment_events(segment: SegmentFiles, number: int, runs: RunWriter) -> None:
    present = segment.present
    if SEGMENT_VERSION not in present:
        return  # the engine skips (deletes) a segment without version.info: never saved
    if present & DISK_TRACKER_FILES:
        raise UnreadableLayout(
            f"segment {segment.name} uses the disk-resident id tracker (id_tracker.i2e)"
        )
    mutable, immutable = MUTABLE_MAPPINGS in present, IMMUTABLE_MAPPINGS in present
    if mutable and immutable:
        raise UnreadableLayout(
            f"segment {segment.name} holds both {MUTABLE_MAPPINGS} and {IMMUTABLE_MAPPINGS}"
        )
    if not mutable and not immutable and looks_like_rocksdb(present):
        raise UnreadableLayout(f"segment {segment.name} keeps its ids in RocksDB")
    base = number << SEGMENT_SHIFT
    if mutable:
        read_mutable_tracker(segment, base, runs)
    elif immutable:
        read_immutable_tracker(segment, base, runs)
    # Neither: a segment that never held a point (the engine opens it as an empty tracker).


def looks_like_rocksdb(present: set[str]) -> bool:
    return any(
        name == "CURRENT" or name.endswith(".sst") or name.startswith("MANIFEST-")
        for name in present
    )


def file_error(segment: SegmentFiles, file_name: str, problem: str) -> SnapshotError:
    return SnapshotError(f"segment {segment.name}: {file_name} {problem}")


def version_count(segment: SegmentFiles, file_name: str, *, exact: bool) -> int:
    """How many internal ids have a version. The mutable tracker ignores a partial trailing
    entry (a flush cut short); the immutable one is written whole."""
    path = segment.folder / file_name
    if not path.exists():
        return 0
    size = path.stat().st_size
    if exact and size % VERSION_BYTES:
        raise file_error(segment, file_name, f"has {size} bytes, not a multiple of 8")
    return size // VERSION_BYTES


def read_mutable_tracker(segment: SegmentFiles, base: int, runs: RunWriter) -> None:
    """Replay the change log: per id, its last change decides; an insert whose internal id has
    no version does not count (dropped at load)."""
    versions = version_count(segment, MUTABLE_VERSIONS, exact=False)
    path = segment.folder / MUTABLE_MAPPINGS
    last_internal = -1
    position = 0
    for layout, entries in entry_runs(path, 0, MUTABLE_LAYOUTS, segment, partial_end_ok=True):
        count = len(entries)
        order = np.arange(base + position, base + position + count, dtype=np.uint64)
        if layout.insert:
            internal = entries["internal"].astype(np.int64)
            if internal[0] <= last_internal or np.any(internal[1:] <= internal[:-1]):
                raise UnreadableLayout(
                    f"segment {segment.name}: {MUTABLE_MAPPINGS} assigns internal ids out of "
                    "order (an id reused), which Qdrant resolves by replaying the whole log"
                )
            last_internal = int(internal[-1])
            live = (internal < versions).astype(np.uint8)
        else:
            live = np.zeros(count, np.uint8)
        runs.add(layout, entries, order, live)
        position += count


def read_immutable_tracker(segment: SegmentFiles, base: int, runs: RunWriter) -> None:
    """Entries in internal-id order; listed unless deleted or without a version."""
    path = segment.folder / IMMUTABLE_MAPPINGS
    size = path.stat().st_size
    if size < COUNT_HEADER_BYTES:
        raise file_error(segment, IMMUTABLE_MAPPINGS, f"has {size} bytes, less than its header")
    with path.open("rb") as source:
        declared = int.from_bytes(source.read(COUNT_HEADER_BYTES), "little")
    most = (size - COUNT_HEADER_BYTES) // NUM_INSERT.itemsize
    if declared > most:
        raise file_error(
            segment,
            IMMUTABLE_MAPPINGS,
            f"declares {declared} entries but its {size} bytes hold at most {most}",
        )
    for needed in (IMMUTABLE_DELETED, IMMUTABLE_VERSIONS):
        if needed not in segment.present:
            raise file_error(segment, needed, f"is missing (the segment has {IMMUTABLE_MAPPINGS})")
    deleted_path = segment.folder / IMMUTABLE_DELETED
    if deleted_path.stat().st_size * 8 < declared:
        raise file_error(
            segment,
            IMMUTABLE_DELETED,
            f"has {deleted_path.stat().st_size} bytes, too few for {declared} entries",
        )
    versions = version_count(segment, IMMUTABLE_VERSIONS, exact=True)
    read = 0
    with deleted_path.open("rb") as deleted:
        for layout, entries in entry_runs(
            path, COUNT_HEADER_BYTES, IMMUTABLE_LAYOUTS, segment, limit=declared
        ):
            count = len(entries)
            expected = np.arange(read, read + count, dtype=np.int64)
            internal = entries["internal"].astype(np.int64)
            if not np.array_equal(internal, expected):
                at = int(np.argmax(internal != expected))
                raise file_error(
                    segment,
                    IMMUTABLE_MAPPINGS,
                    f"entry {read + at} maps internal id {int(internal[at])}: entries are "
                    "written in internal-id order",
                )
            keep = ~deleted_bits(deleted, read, count) & (internal < versions)
            order = np.arange(base + read, base + read + count, dtype=np.uint64)
            runs.add(layout, entries[keep], order[keep], np.ones(int(keep.sum()), np.uint8))
            read += count
    if read != declared:
        raise file_error(
            segment, IMMUTABLE_MAPPINGS, f"ends after {read} of its {declared} entries"
        )


def deleted_bits(source: BinaryIO, start: int, count: int) -> np.ndarray:
    """Bits start..start+count of a bit file (u64 words, least significant bit first)."""
    first_byte = start // 8
    source.seek(first_byte)
    data = source.read((start + count + 7) // 8 - first_byte)
    bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
    skip = start - first_byte * 8
    return bits[skip : skip + count].astype(bool)


def entry_runs(
    path: Path,
    offset: int,
    layouts: dict[int, Layout],
    segment: SegmentFiles,
    *,
    limit: int | None = None,
    partial_end_ok: bool = False,
) -> Iterator[tuple[Layout, np.ndarray]]:
    """The file's entries from `offset`, in runs of one entry type: (layout, records).

    Reads READ_BLOCK bytes at a time. Stops after `limit` entries (then the rest of the file
    must be empty). A file ending inside an entry is an error unless `partial_end_ok`."""
    read = 0
    with path.open("rb") as source:
        source.seek(offset)
        carry = b""
        file_offset = offset
        while True:
            block = source.read(READ_BLOCK)
            data = carry + block if carry else block
            if not data:
                return
            if not block:  # the file ends inside an entry
                if partial_end_ok:
                    log.warning(
                        "segment %s: %s ends inside an entry (%d bytes): read up to it, as Qdrant does",
                        segment.name,
                        path.name,
                        len(data),
                    )
                    return
                raise file_error(segment, path.name, f"ends inside an entry at byte {file_offset}")
            consumed = 0
            for layout, entries, used in split_runs(data, layouts, file_offset, segment, path):
                if limit is not None and read + len(entries) > limit:
                    entries = entries[: limit - read]
                    used = len(entries) * layout.dtype.itemsize
                consumed += used
                read += len(entries)
                if len(entries):
                    yield layout, entries
                if limit is not None and read == limit:
                    rest = len(data) - consumed + (path.stat().st_size - source.tell())
                    if rest:
                        raise file_error(
                            segment,
                            path.name,
                            f"has {rest} bytes after its {limit} declared entries",
                        )
                    return
            carry = data[consumed:]
            file_offset += consumed


def split_runs(
    data: bytes, layouts: dict[int, Layout], file_offset: int, segment: SegmentFiles, path: Path
) -> Iterator[tuple[Layout, np.ndarray, int]]:
    """Whole entries at the start of `data`, grouped in runs of one type: (layout, records,
    bytes used). The run length is probed with a window that doubles while runs are long, so
    a file of alternating types costs no more than linear time."""
    types = np.frombuffer(data, np.uint8)
    position, probe = 0, PROBE_START
    while position < len(data):
        entry_type = int(types[position])
        layout = layouts.get(entry_type)
        if layout is None:
            raise file_error(
                segment,
                path.name,
                f"has an unknown entry type {entry_type:#04x} at byte {file_offset + position}",
            )
        size = layout.dtype.itemsize
        fits = (len(data) - position) // size
        if fits == 0:
            return  # a partial entry: the caller reads on
        window = min(fits, probe)
        same = types[position : position + window * size : size] == entry_type
        count = window if same.all() else int(np.argmin(same))
        probe = probe * 2 if count == window else PROBE_START
        yield layout, np.frombuffer(data, layout.dtype, count=count, offset=position), count * size
        position += count * size


# ---------------------------------------------------------------------------------------------
# External sort
# ---------------------------------------------------------------------------------------------


class RunWriter:
    """Collects sort records, spilling each full buffer to disk as a sorted run."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.buffer = np.empty(RUN_RECORDS, KEY)
        self.filled = 0
        self.runs: list[Path] = []

    def add(self, layout: Layout, entries: np.ndarray, order: np.ndarray, live: np.ndarray):
        start = 0
        while start < len(entries):
            room = len(self.buffer) - self.filled
            take = min(room, len(entries) - start)
            window = self.buffer[self.filled : self.filled + take]
            part = entries[start : start + take]
            window["kind"] = 1 if layout.uuid else 0
            window["hi"] = part["hi"] if layout.uuid else 0
            window["lo"] = part["lo"] if layout.uuid else part["id"]
            window["order"] = order[start : start + take]
            window["live"] = live[start : start + take]
            self.filled += take
            start += take
            if self.filled == len(self.buffer):
                self.spill()

    def spill(self) -> None:
        if not self.filled:
            return
        records = self.buffer[: self.filled].view(RAW)
        records.sort()
        path = self.folder / f"run-{len(self.runs):06d}"
        records.tofile(path)
        self.runs.append(path)
        self.filled = 0

    def finish(self) -> list[Path]:
        self.spill()
        self.buffer = np.empty(0, KEY)
        return self.runs


def merge_runs(runs: list[Path], folder: Path) -> Iterator[np.ndarray]:
    """The records of all runs in sorted order, in chunks. More than MERGE_FAN_IN runs are
    first merged in groups into longer runs, so the blocks held stay within MERGE_RECORDS."""
    generation = 0
    while len(runs) > MERGE_FAN_IN:
        merged: list[Path] = []
        for start in range(0, len(runs), MERGE_FAN_IN):
            group = runs[start : start + MERGE_FAN_IN]
            path = folder / f"merged-{generation}-{len(merged):06d}"
            with path.open("wb") as out:
                for chunk in merge_sorted(group):
                    chunk.tofile(out)
            for used in group:
                used.unlink()
            merged.append(path)
        runs, generation = merged, generation + 1
    yield from merge_sorted(runs)


def merge_sorted(runs: list[Path]) -> Iterator[np.ndarray]:
    """k-way merge of sorted run files, a block of each at a time: every record not above the
    smallest of the blocks' last records can go out, sorted, before any block is refilled."""
    if not runs:
        return
    block = max(MIN_MERGE_BLOCK, MERGE_RECORDS // len(runs))
    with contextlib.ExitStack() as files:
        sources = [files.enter_context(path.open("rb")) for path in runs]
        heads = [np.fromfile(source, RAW, count=block) for source in sources]
        while True:
            live = [i for i, head in enumerate(heads) if len(head)]
            if not live:
                return
            bound = min(heads[i][-1] for i in live)
            pieces = []
            for i in live:
                cut = int(np.searchsorted(heads[i], bound, side="right"))
                pieces.append(heads[i][:cut])
                heads[i] = heads[i][cut:]
                if not len(heads[i]):
                    heads[i] = np.fromfile(sources[i], RAW, count=block)
            yield np.sort(np.concatenate(pieces), kind="stable")


def distinct_live_ids(chunks: Iterator[np.ndarray]) -> Iterator[tuple[np.ndarray, ...]]:
    """(kinds, his, los) of the ids that are live in at least one segment, in sorted order.

    Within one segment an id's last event decides (records of one id and segment are in file
    order). An id whose records may continue in the next chunk is carried over, reduced to its
    last record per segment, so what is carried is bounded by the number of segments."""
    carry = np.empty(0, KEY)
    for chunk in chunks:
        records = reduce_to_last_per_segment(np.concatenate([carry, chunk.view(KEY)]))
        if not len(records):
            continue
        starts = id_starts(records)
        last_start = starts[-1]
        carry = records[last_start:].copy()
        done = records[:last_start]
        if len(done):
            yield ids_with_a_live_segment(done, starts[:-1])
    if len(carry):
        yield ids_with_a_live_segment(carry, id_starts(carry))


def same_id_as_next(records: np.ndarray) -> np.ndarray:
    return (
        (records["kind"][1:] == records["kind"][:-1])
        & (records["hi"][1:] == records["hi"][:-1])
        & (records["lo"][1:] == records["lo"][:-1])
    )


def reduce_to_last_per_segment(records: np.ndarray) -> np.ndarray:
    if len(records) < 2:
        return records
    segment = records["order"] >> np.uint64(SEGMENT_SHIFT)
    continues = same_id_as_next(records) & (segment[1:] == segment[:-1])
    return records[np.append(~continues, True)]


def id_starts(records: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.insert(~same_id_as_next(records), 0, True))


def ids_with_a_live_segment(records: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, ...]:
    live = np.maximum.reduceat(records["live"], starts).astype(bool)
    firsts = records[starts][live]
    return firsts["kind"], firsts["hi"], firsts["lo"]


def id_lines(kinds: np.ndarray, his: np.ndarray, los: np.ndarray) -> bytes:
    """Integer ids in decimal, UUIDs in canonical hyphenated lowercase form, one a line."""
    numbers = los[kinds == 0].tolist()
    uuids = [
        uuid_text(hi, lo)
        for hi, lo in zip(his[kinds == 1].tolist(), los[kinds == 1].tolist(), strict=True)
    ]
    text = "\n".join([*map(str, numbers), *uuids])
    return (text + "\n").encode() if text else b""


def uuid_text(hi: int, lo: int) -> str:
    digits = f"{hi:016x}{lo:016x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"
