"""Ids read out of artifacts, streamed into numpy arrays: the data every index engine hands to
the consistency gate ("which ids does this artifact hold, and when was it taken").

Memory: ids are parsed block by block (about 1 MiB of lines at a time) straight from the
decompressed stream into numpy arrays (int64: 8 MB per million ids), never into one Python
object per id for the whole artifact. Ids that are not all canonical decimal integers (UUID
strings, an id beyond int64) take fixed-width bytes arrays (numpy "S" dtype: one buffer, 36 MB
per million UUIDs), so no Python set is ever built. Caveat of "S": trailing NUL bytes of an id
are not significant.

Speed: reading + sha256, zstd decompression and the caller's parsing run as three overlapping
stages (the first two in threads; hashlib and zstandard release the GIL).
"""

from __future__ import annotations

import queue
import re
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import zstandard

from backup_pipelines.lib.store import ArtifactRef, BackupStore

READ_SIZE = 2 << 20  # bytes read and decompressed at a time
BLOCK = 1 << 20  # bytes of lines parsed at a time


@dataclass(frozen=True)
class Side:
    """One artifact as the gate sees it: its ids (any order) and when it was taken."""

    name: str  # "postgres:public.memory_entries", "typesense:memory_ws_acme", ...
    captured_at: str | datetime
    ids: np.ndarray  # int64, or fixed-width bytes ("S") for non-integer ids
    declared_count: int | None = None  # what the artifact's manifest says it holds
    started_at: str | datetime | None = None  # for an export that spans a window


# --------------------------------------------------------------------------------------------
# Reading ids out of artifacts


def _raw_chunks(store: BackupStore, ref: ArtifactRef, manifest: dict, name: str):
    """The stored bytes of one artifact file; its size and sha256 are checked at its end."""
    with store.open_file(ref, manifest, name) as raw:
        while chunk := raw.read(READ_SIZE):
            yield chunk


class _ChunkSource:
    """A read()-able view of an iterator of chunks, for zstandard's stream_reader."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks

    def read(self, _size: int = -1) -> bytes:
        return next(self._chunks, b"")


def _decompress(compressed: Generator[bytes]) -> Iterator[bytes]:
    decompressor = zstandard.ZstdDecompressor()
    try:
        with decompressor.stream_reader(
            _ChunkSource(compressed), read_size=READ_SIZE, read_across_frames=True, closefd=False
        ) as reader:
            while chunk := reader.read(READ_SIZE):
                yield chunk
        for _ in compressed:  # read to the end, where the sha256 is checked
            pass
    finally:
        compressed.close()


def decompressed(store: BackupStore, ref: ArtifactRef, manifest: dict, name: str):
    """The decompressed bytes of one artifact file, in chunks, verified against its manifest.

    Three stages overlap on separate cores: reading + sha256, zstd, and the caller's parsing
    (hashlib and zstandard release the GIL while they work).
    """
    stored = _prefetched(_raw_chunks(store, ref, manifest, name))
    return _prefetched(_decompress(stored))


_END = object()


def _prefetched(chunks: Iterator[bytes], depth: int = 4) -> Iterator[bytes]:
    """Run the iterator in a thread, `depth` items ahead; its exceptions reach the consumer."""
    pending: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                pending.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for chunk in chunks:
                if not put(chunk):
                    return
            put(_END)
        except BaseException as exc:
            put(exc)
        finally:
            if stop.is_set() and hasattr(chunks, "close"):
                chunks.close()

    worker = threading.Thread(target=produce, name="consistency-read", daemon=True)
    worker.start()
    try:
        while (item := pending.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


def line_blocks(chunks: Iterable[bytes]) -> Iterator[tuple[bytes, int, int]]:
    """(buffer, start, stop) where buffer[start:stop] is whole lines, each ending in a newline.

    The big chunks are passed through without copying, as ranges of at most about BLOCK bytes
    (which bounds the per-block lists of ids); only a line cut by a chunk boundary is joined
    into a small buffer of its own. A last line without a newline gets one.
    """
    carry: list[bytes] = []
    for chunk in chunks:
        first = chunk.find(b"\n")
        if first < 0:
            carry.append(chunk)
            continue
        start = 0
        if carry:
            carry.append(chunk[: first + 1])
            head = b"".join(carry)
            carry = []
            yield head, 0, len(head)
            start = first + 1
        stop = chunk.rfind(b"\n") + 1
        while start < stop:
            cut = chunk.rfind(b"\n", start, min(start + BLOCK, stop)) + 1 or (
                chunk.find(b"\n", start + BLOCK, stop) + 1  # one line longer than BLOCK
            )
            yield chunk, start, cut
            start = cut
        if stop < len(chunk):
            carry.append(chunk[stop:])
    if carry:
        tail = b"".join(carry) + b"\n"
        yield tail, 0, len(tail)


_CANONICAL_INTS = re.compile(rb"(?:(?:0|-?[1-9][0-9]{0,18})\n)*")


def _as_int64(values: list[bytes]) -> np.ndarray | None:
    """int64 ids when every value is a canonical decimal integer ("7", never "007" or "+7")."""
    if _CANONICAL_INTS.fullmatch(b"\n".join(values) + b"\n") is None:
        return None
    try:
        return np.fromiter(map(int, values), np.int64, len(values))
    except OverflowError:
        return None


class IdCollector:
    """Ids added chunk by chunk into numpy arrays: int64 while they are integers, else bytes."""

    def __init__(self) -> None:
        self._parts: list[np.ndarray] = []
        self._integers = True

    def add(self, values: list[bytes], decode: Callable[[bytes], bytes] | None = None) -> None:
        """Add raw values; `decode` turns a raw value into the id when it is not an integer."""
        if not values:
            return
        if self._integers:
            ints = _as_int64(values)
            if ints is not None:
                self._parts.append(ints)
                return
            self._integers = False
            self._parts = [part.astype("S20") for part in self._parts]  # canonical decimals
        if decode is not None:
            values = [decode(v) for v in values]
        self._parts.append(np.array(values, dtype=np.bytes_))

    def add_ints(self, ints: np.ndarray) -> None:
        """Add integer ids already decoded (int64), as canonical decimals once ids are bytes."""
        if len(ints) == 0:
            return
        self._parts.append(ints if self._integers else ints.astype("S20"))

    def array(self) -> np.ndarray:
        if not self._parts:
            return np.empty(0, np.int64)
        ids = np.concatenate(self._parts) if len(self._parts) > 1 else self._parts[0]
        self._parts = []
        return ids


def declared_count(manifest: dict, key: str) -> int | None:
    value = (manifest.get("counts") or {}).get(key)
    return int(value) if isinstance(value, int) else None


def index_name(kind: str, ref: ArtifactRef, manifest: dict, name: str | None) -> str:
    if name:
        return name
    source = manifest.get("source") or {}
    return f"{kind}:{source.get('collection') or ref.folder}"
