"""Streaming helpers shared by every backup: compression and progress reports."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO

import zstandard

from backup_pipelines.lib.errors import ChecksumMismatch

Log = Callable[[str], None]


def mib(n: float) -> str:
    return f"{n / (1 << 20):,.1f} MiB"


class Progress:
    """Counts bytes and rows of a long transfer and logs them every `every` seconds."""

    def __init__(self, what: str, log: Log | None, every: float = 5.0) -> None:
        self.what = what
        self._log = log
        self._every = every
        self.started = time.monotonic()
        self._last = self.started
        self.bytes_in = 0
        self.bytes_out = 0
        self.rows = 0

    def add(self, bytes_in: int = 0, bytes_out: int = 0, rows: int = 0) -> None:
        self.bytes_in += bytes_in
        self.bytes_out += bytes_out
        self.rows += rows
        now = time.monotonic()
        if self._log and now - self._last >= self._every:
            self._last = now
            self._log(self.line())

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        parts = [f"{self.what}: {mib(self.bytes_in)} read"]
        if self.bytes_out:
            parts.append(f"{mib(self.bytes_out)} written")
        if self.rows:
            parts.append(f"{self.rows:,} rows")
        parts.append(f"{self.bytes_in / elapsed / 1e6:,.1f} MB/s after {elapsed:,.0f} s")
        return ", ".join(parts)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


@contextlib.contextmanager
def zstd_compressing(target: BinaryIO, level: int = 1) -> Iterator[BinaryIO]:
    """A writer that zstd-compresses into `target` on every core (zstandard drops the GIL)."""
    compressor = zstandard.ZstdCompressor(level=level, threads=-1, write_checksum=True)
    with compressor.stream_writer(target, closefd=False, write_size=1 << 20) as writer:
        yield writer


def zstd_decompressing(source: BinaryIO) -> BinaryIO:
    return zstandard.ZstdDecompressor().stream_reader(source, read_size=1 << 20, closefd=True)


def iter_decompressed(source: BinaryIO, size: int = 1 << 20) -> Iterator[bytes]:
    """Decompressed chunks; damage found by zstd's own frame checksum is a ChecksumMismatch."""
    try:
        with zstd_decompressing(source) as reader:
            while chunk := reader.read(size):
                yield chunk
    except zstandard.ZstdError as exc:
        where = getattr(source, "description", "a compressed file")
        raise ChecksumMismatch(
            f"{where} does not match its manifest (zstd: {exc}); the artifact is corrupt — "
            "do not restore from it, use another date"
        ) from exc
