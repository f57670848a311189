"""Reading an artifact file back: every byte is hashed on the way and checked at its end."""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from backup_pipelines.lib.errors import ChecksumMismatch
from backup_pipelines.lib.store.refs import ArtifactRef

CHUNK = 1 << 20


class VerifyingReader(io.RawIOBase):
    """Reads one artifact file and raises ChecksumMismatch at its end if bytes or sha256 differ."""

    def __init__(self, raw: BinaryIO, entry: dict, where: str) -> None:
        self._raw = raw
        self._entry = entry
        self._where = where
        self._digest = hashlib.sha256()
        self._bytes = 0
        self._checked = False

    @property
    def description(self) -> str:
        return f"{self._where}: file {self._entry['name']!r}"

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:

        data = self._raw.read(len(buffer))
        if not data:
            self._check()
            return 0
        self._digest.update(data)
        self._bytes += len(data)
        buffer[: len(data)] = data
        return len(data)

    def _check(self) -> None:
        if self._checked:
            return
        self._checked = True
        expected_bytes, expected_sha = self._entry["bytes"], self._entry["sha256"]
        actual_sha = self._digest.hexdigest()
        if self._bytes != expected_bytes or actual_sha != expected_sha:
            raise ChecksumMismatch(
                f"{self._where}: file {self._entry['name']!r} does not match its manifest "
                f"(expected {expected_bytes} bytes sha256 {expected_sha[:16]}..., read "
                f"{self._bytes} bytes sha256 {actual_sha[:16]}...); the artifact is corrupt — "
                "do not restore from it, use another date"
            )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._raw.close()
        super().close()


def iter_chunks(stream: BinaryIO, size: int = CHUNK) -> Iterator[bytes]:
    while chunk := stream.read(size):
        yield chunk


@dataclass
class VerifyResult:
    ref: ArtifactRef
    ok: bool
    files: int
    bytes: int
    problems: list[str]
    seconds: float
