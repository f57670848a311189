"""Reading an artifact file back: every byte is hashed on the way and checked at its end, and
no more than the manifest's declared size (+1, to notice a longer file) is ever read."""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from backup_pipelines.lib.errors import BackupError, ChecksumMismatch, StoreError
from backup_pipelines.lib.store.cipher import KEY_ID, SCHEME, DecryptingReader
from backup_pipelines.lib.store.manifest import ManifestInvalid
from backup_pipelines.lib.store.refs import ArtifactRef

CHUNK = 1 << 20


class VerifyingReader(io.RawIOBase):
    """Reads one artifact file and raises ChecksumMismatch at its end if bytes or sha256 differ.

    Reads are bounded by the declared size: a file longer than its manifest says (or an
    endless stream) fails after `bytes + 1` bytes instead of being read to its end. A failure
    of the store while reading (a dropped connection, an I/O error) is a StoreError naming
    the file."""

    def __init__(self, raw: BinaryIO, entry: dict, where: str) -> None:
        self._raw = raw
        self._entry = entry
        self._where = where
        self._digest = hashlib.sha256()
        self._bytes = 0
        self._checked = False
        self._failure: ChecksumMismatch | None = None

    @property
    def description(self) -> str:
        return f"{self._where}: file {self._entry['name']!r}"

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._failure is not None:
            raise self._failure
        # One byte past the declared size is enough to know the file is longer.
        allowed = self._entry["bytes"] + 1 - self._bytes
        data = self._read_raw(min(len(buffer), allowed))
        if not data:
            self._check()
            return 0
        self._bytes += len(data)
        if self._bytes > self._entry["bytes"]:
            self._check()  # raises: longer than declared; the extra byte is never handed out
        self._digest.update(data)
        buffer[: len(data)] = data
        return len(data)

    def _read_raw(self, size: int) -> bytes:
        try:
            return self._raw.read(size)
        except BackupError:
            raise
        except Exception as exc:  # OSError locally; botocore/urllib3 errors from S3 bodies
            raise StoreError(
                f"{self.description}: reading it from the store failed after {self._bytes:,} "
                f"bytes ({type(exc).__name__}: {str(exc)[:300]}); the store may be unreachable "
                "or failing — retry when it answers"
            ) from exc

    def _check(self) -> None:
        if self._failure is not None:
            raise self._failure  # every later read fails too, never a quiet end of file
        if self._checked:
            return
        self._checked = True
        self._failure = self._mismatch()
        if self._failure is not None:
            raise self._failure

    def _mismatch(self) -> ChecksumMismatch | None:
        expected_bytes, expected_sha = self._entry["bytes"], self._entry["sha256"]
        if self._bytes > expected_bytes:
            return ChecksumMismatch(
                f"{self._where}: file {self._entry['name']!r} is longer than the {expected_bytes} "
                "bytes its manifest declares (reading stopped there); the artifact is corrupt — "
                "do not restore from it, use another date"
            )
        actual_sha = self._digest.hexdigest()
        if self._bytes != expected_bytes or actual_sha != expected_sha:
            return ChecksumMismatch(
                f"{self._where}: file {self._entry['name']!r} does not match its manifest "
                f"(expected {expected_bytes} bytes sha256 {expected_sha[:16]}..., read "
                f"{self._bytes} bytes sha256 {actual_sha[:16]}...); the artifact is corrupt — "
                "do not restore from it, use another date"
            )
        return None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._raw.close()
        super().close()


class DecryptedFile(DecryptingReader):
    """The plaintext of an encrypted artifact file, read through its VerifyingReader: the
    stored bytes are still checked against the manifest's size and sha256 at their end, and
    each chunk is authenticated (AES-GCM tag) before any of its plaintext is handed out."""

    def __init__(self, stored: VerifyingReader, keyring, where: str, key_id: str) -> None:
        self.description = stored.description  # what stream errors name (lib/streams.py)
        super().__init__(stored, keyring, where, expected_key_id=key_id)


def file_encryption(entry: dict, where: str) -> dict | None:
    """A file entry's encryption record, checked again (a manifest dict may not come from
    read_manifest): None for a file stored as written, else one known scheme and a key id."""
    encryption = entry.get("encryption")
    if encryption is None:
        return None
    if (
        not isinstance(encryption, dict)
        or set(encryption) != {"scheme", "key_id"}
        or encryption["scheme"] != SCHEME
        or not isinstance(encryption["key_id"], str)
        or not KEY_ID.fullmatch(encryption["key_id"])
    ):
        raise ManifestInvalid(
            f"{where}: files[{entry.get('name')!r}].encryption is not "
            f"{{'scheme': {SCHEME!r}, 'key_id': <key id>}}; refused"
        )
    return encryption


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
