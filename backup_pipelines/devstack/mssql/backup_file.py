"""The stand-in's backup file format, written and read as a stream (never whole in memory).

A backup file (a media family) holds one or more backup sets, appended one after the other
(Position 1, 2, ...; WITH INIT/FORMAT starts the file over). Each set is::

    PREFIX   32 bytes: b"MSSQLSTANDIN/BAK", format version (u16), flags (u16: 1 compressed,
             2 checksum), 12 zero bytes
    FRAMES   [u32 length][bytes] ... [u32 0]: the payload, zstd-compressed when COMPRESSION
             (full/differential: the database file as of the checkpoint; log: one JSON line per
             log record of the set's LSN range)
    HEADER   JSON: every RESTORE HEADERONLY field, the file list (FILELISTONLY), payload sizes
    FOOTER   64 bytes: set start (u64), header offset in the set (u64), header length (u32),
             header CRC-32 (u32), SHA-256 of every byte of the set before the digest (32 bytes),
             b"BAKEND\\x00\\x01"

All integers are little-endian and 64-bit where they are offsets, so files beyond 4 GiB work.
RESTORE HEADERONLY reads only footers and headers (from the end of the file backwards);
VERIFYONLY and RESTORE stream the whole set and compare the digest, so a byte changed
anywhere is detected (the header also carries its own CRC for HEADERONLY).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import zstandard

MAGIC = b"MSSQLSTANDIN/BAK"
END_MAGIC = b"BAKEND\x00\x01"
VERSION = 1
PREFIX_LEN = 32
FOOTER_LEN = 64
FLAG_COMPRESSED, FLAG_CHECKSUM = 1, 2
CHUNK = 1 << 20


class BackupFormatError(Exception):
    """Not a stand-in backup, or its structure is broken (SQL Server's 3241)."""


class BackupDamaged(Exception):
    """The payload does not match its digest (SQL Server's 3183/3189)."""

    def __init__(self, offset: int) -> None:
        super().__init__(f"damaged at byte {offset}")
        self.offset = offset


class BackupWriter:
    """Append one backup set to `path` (or start the file over when `init`)."""

    def __init__(self, path: Path, init: bool, compressed: bool, checksum: bool) -> None:
        self.path = path
        exists = path.exists() and path.stat().st_size > 0
        self.start = 0 if init or not exists else path.stat().st_size
        self._created = not exists
        self._file = open(path, "r+b" if exists and not init else "wb")  # noqa: SIM115
        if exists and not init:
            self._file.seek(self.start)
            self._file.truncate()
        self._digest = hashlib.sha256()
        self._compressor = zstandard.ZstdCompressor(level=3).compressobj() if compressed else None
        self.raw_bytes = 0
        self.stored_bytes = 0
        flags = (FLAG_COMPRESSED if compressed else 0) | (FLAG_CHECKSUM if checksum else 0)
        self._put(MAGIC + struct.pack("<HH", VERSION, flags) + bytes(12))

    def _put(self, data: bytes) -> None:
        self._digest.update(data)
        self._file.write(data)

    def _frame(self, data: bytes) -> None:
        if data:
            self._put(struct.pack("<I", len(data)) + data)
            self.stored_bytes += len(data)

    def write(self, data: bytes) -> None:
        self.raw_bytes += len(data)
        self._frame(self._compressor.compress(data) if self._compressor else data)

    def finish(self, header: dict) -> int:
        """Write the header and footer, fsync; returns the set's size in bytes."""
        if self._compressor:
            self._frame(self._compressor.flush())
        self._put(struct.pack("<I", 0))
        header_offset = self._file.tell() - self.start
        header_bytes = json.dumps(header, separators=(",", ":")).encode()
        self._put(header_bytes)
        meta = struct.pack(
            "<QQII", self.start, header_offset, len(header_bytes), zlib.crc32(header_bytes)
        )
        self._put(meta)
        self._file.write(self._digest.digest() + END_MAGIC)
        self._file.flush()
        os.fsync(self._file.fileno())
        size = self._file.tell() - self.start
        self._file.close()
        return size

    def abort(self) -> None:
        self._file.close()
        if self._created or self.start == 0:
            self.path.unlink(missing_ok=True)
        else:
            with open(self.path, "r+b") as f:
                f.truncate(self.start)


def read_sets(path: Path, end: int | None = None) -> list[dict]:
    """Headers of every backup set in the file (before byte `end`), Position 1 first, each with
    its offsets."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise FileNotFoundError(str(path)) from exc
    sets = []
    end = size if end is None else end
    with open(path, "rb") as f:
        while end > 0:
            if end < PREFIX_LEN + FOOTER_LEN:
                raise BackupFormatError("too short")
            f.seek(end - FOOTER_LEN)
            footer = f.read(FOOTER_LEN)
            if footer[-8:] != END_MAGIC:
                raise BackupFormatError("no footer")
            start, header_offset, header_len, crc = struct.unpack("<QQII", footer[:24])
            if start >= end or start + header_offset + header_len + FOOTER_LEN - 40 > end:
                raise BackupFormatError("bad offsets")
            f.seek(start)
            prefix = f.read(PREFIX_LEN)
            if prefix[:16] != MAGIC:
                raise BackupFormatError("no prefix")
            f.seek(start + header_offset)
            raw = f.read(header_len)
            if zlib.crc32(raw) != crc:
                raise BackupFormatError("header checksum")
            try:
                header = json.loads(raw)
            except ValueError as exc:
                raise BackupFormatError("header") from exc
            flags = struct.unpack("<H", prefix[18:20])[0]
            header["_start"], header["_end"], header["_flags"] = start, end, flags
            sets.append(header)
            end = start
    sets.reverse()
    for position, header in enumerate(sets, 1):
        header["Position"] = position
    return sets


def read_payload(path: Path, header: dict) -> Iterator[bytes]:
    """The set's payload, decompressed, chunk by chunk; raises BackupDamaged at the end (or as
    soon as the framing breaks) when the bytes do not match the digest. Consumers must not commit
    anything they built from the chunks before the iterator is exhausted."""
    start, end = header["_start"], header["_end"]
    digest = hashlib.sha256()
    decompressor = (
        zstandard.ZstdDecompressor().decompressobj() if header["_flags"] & FLAG_COMPRESSED else None
    )
    with open(path, "rb") as f:
        f.seek(start)
        head = f.read(PREFIX_LEN)
        digest.update(head)
        pos = start + PREFIX_LEN
        while True:
            raw_len = f.read(4)
            digest.update(raw_len)
            if len(raw_len) < 4:
                raise BackupDamaged(pos)
            (length,) = struct.unpack("<I", raw_len)
            pos += 4
            if length == 0:
                break
            if pos + length > end - FOOTER_LEN:
                raise BackupDamaged(pos)
            remaining = length
            while remaining:
                data = f.read(min(remaining, CHUNK))
                if not data:
                    raise BackupDamaged(pos)
                digest.update(data)
                remaining -= len(data)
                pos += len(data)
                if decompressor is not None:
                    try:
                        out = decompressor.decompress(data)
                    except zstandard.ZstdError as exc:
                        raise BackupDamaged(pos) from exc
                else:
                    out = data
                if out:
                    yield out
        rest = end - FOOTER_LEN + 24 - pos
        while rest > 0:
            data = f.read(min(rest, CHUNK))
            if not data:
                raise BackupDamaged(pos)
            digest.update(data)
            rest -= len(data)
            pos += len(data)
        stored = f.read(32)
        if stored != digest.digest():
            raise BackupDamaged(pos)


def verify(path: Path, header: dict) -> int:
    """Stream the whole set and check its digest; returns the payload's (uncompressed) size."""
    return sum(len(chunk) for chunk in read_payload(path, header))
