"""Writing one artifact: files staged under a fresh generation folder, hashed as they stream,
committed by writing manifest.json last (see the package docstring)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import queue
import secrets
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from backup_pipelines.lib.errors import ConfigError, StoreError
from backup_pipelines.lib.store.cipher import SCHEME, Encryptor, Keyring, encryption_required
from backup_pipelines.lib.store.manifest import (
    GENERATION_PREFIX,
    MANIFEST_FORMAT_VERSION,
    MANIFEST_NAME,
    ManifestInvalid,
    require_plain_name,
    validate_manifest,
)
from backup_pipelines.lib.store.refs import ArtifactRef, utc_now_iso

if TYPE_CHECKING:
    from backup_pipelines.lib.store.base import BackupStore

# --------------------------------------------------------------------------------------------
# Hashing off the critical path: the writer hands chunks to a thread that hashes them while the
# caller produces the next chunk (hashlib releases the GIL on large buffers).


class _BackgroundHasher:
    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=16)
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self._digest.update(chunk)

    def update(self, chunk: bytes) -> None:
        self._queue.put(chunk)

    def hexdigest(self) -> str:
        self._queue.put(None)
        self._thread.join()
        return self._digest.hexdigest()


class FileWriter(io.RawIOBase):
    """A write-only stream into one file of an artifact; counts bytes and hashes them.

    With an `encryptor` (cipher.py) what reaches the store, and so `bytes`, `sha256` and the
    progress count, is the ciphertext: `verify` then checks the stored bytes without the key.
    `write` still answers with the plaintext length its caller handed in."""

    def __init__(
        self,
        name: str,
        sink: Sink,
        on_progress: Callable[[int], None] | None,
        encryptor: Encryptor | None = None,
    ) -> None:
        self.name_in_artifact = name
        self._sink = sink
        self._hasher = _BackgroundHasher()
        self._on_progress = on_progress
        self._encryptor = encryptor
        self.bytes_written = 0
        self.sha256: str | None = None

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        chunk = bytes(data)
        if not chunk:
            return 0
        self._store(self._encryptor.update(chunk) if self._encryptor else chunk)
        return len(chunk)

    def _store(self, chunk: bytes) -> None:
        if not chunk:  # the encryptor holds back up to one chunk
            return
        self._sink.write(chunk)
        self._hasher.update(chunk)
        self.bytes_written += len(chunk)
        if self._on_progress:
            self._on_progress(len(chunk))

    def finish(self) -> dict:
        if self._encryptor:
            self._store(self._encryptor.finalize())  # the last chunk, sealed as the last
        self._sink.close()
        self.sha256 = self._hasher.hexdigest()
        entry = {"name": self.name_in_artifact, "bytes": self.bytes_written, "sha256": self.sha256}
        if self._encryptor:
            entry["encryption"] = {"scheme": SCHEME, "key_id": self._encryptor.key_id}
        return entry

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._sink.abort()
        with contextlib.suppress(Exception):
            self._hasher.hexdigest()


class Sink(ABC):
    @abstractmethod
    def write(self, chunk: bytes) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def abort(self) -> None: ...


class ArtifactWriter:
    """Stage the files of one artifact, then commit by writing its manifest last.

    Use as a context manager: leaving it without commit() (an exception, a failed check)
    removes what was staged, so nothing half-written is ever taken for an artifact.
    """

    def __init__(self, store: BackupStore, ref: ArtifactRef, on_progress=None) -> None:
        self.store = store
        self.ref = ref
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        self.generation = f"{GENERATION_PREFIX}{stamp}-{secrets.token_hex(4)}"
        self._files: list[dict] = []
        self._open: FileWriter | None = None
        self._on_progress = on_progress
        # Read once per artifact, before anything is staged: a misconfigured key fails the
        # backup here, and every file of one artifact is sealed with the same key id.
        self._keyring = Keyring.from_env()
        if self._keyring.active is None and encryption_required():
            raise ConfigError(
                "BACKUP_ENCRYPTION_REQUIRED is set but BACKUP_ENCRYPTION_KEY_ID is not: set the "
                f"key id new backups use; nothing of {ref} was written"
            )
        self.committed: dict | None = None

    def _key(self, name: str) -> str:
        return f"{self.ref.folder}/{self.generation}/{name}"

    @contextlib.contextmanager
    def open_file(self, name: str) -> Iterator[FileWriter]:
        """A new file of the artifact, encrypted when a key id is configured."""
        with self._staged(name, self._keyring.encryptor(), None) as writer:
            yield writer

    @contextlib.contextmanager
    def open_stored_copy(self, name: str, source_entry: dict) -> Iterator[FileWriter]:
        """A file copied as stored from another artifact's `source_entry` (feed it the bytes
        of `store.open_file(..., decrypt=False)`): written unchanged, never re-encrypted, so
        a copy has the source's sha256 and the source's encryption record (no key needed)."""
        encryption = source_entry.get("encryption")
        with self._staged(name, None, dict(encryption) if encryption else None) as writer:
            yield writer

    @contextlib.contextmanager
    def _staged(
        self, name: str, encryptor: Encryptor | None, stored_encryption: dict | None
    ) -> Iterator[FileWriter]:
        require_plain_name(name, "artifact file name")  # what the reader would accept
        if name == MANIFEST_NAME:
            raise ValueError(f"invalid artifact file name {name!r}")
        if any(f["name"] == name for f in self._files):
            raise ValueError(f"file {name!r} written twice in {self.ref}")
        writer = FileWriter(
            name, self.store._open_sink(self._key(name)), self._on_progress, encryptor
        )
        self._open = writer
        try:
            yield writer
        except BaseException:
            writer.abort()
            raise
        finally:
            self._open = None
        entry = writer.finish()
        if stored_encryption:
            entry["encryption"] = stored_encryption
        entry["path"] = f"{self.generation}/{name}"
        self._files.append(entry)

    def write_bytes(self, name: str, data: bytes) -> dict:
        with self.open_file(name) as handle:
            handle.write(data)
        return self._files[-1]

    @property
    def files(self) -> list[dict]:
        return list(self._files)

    def commit(self, **fields) -> dict:
        """Write manifest.json (the commit point) and drop the previous artifact's files.

        The manifest is validated as a reader would, so nothing is committed that a restore
        would refuse. A previous manifest that is invalid (damaged, tampered with) is
        replaced, but nothing it names is deleted: its files stay as an orphan generation for
        retention's clean-up, which finds them by listing, not by trusting the manifest."""
        try:
            previous = self.store.read_manifest(self.ref)
        except ManifestInvalid:
            previous = None
        manifest = {
            "format_version": MANIFEST_FORMAT_VERSION,
            "asset": self.ref.asset,
            "partition": self.ref.partition,
            "created_at": utc_now_iso(),
            "generation": self.generation,
            "files": self._files,
            **fields,
        }
        for required in ("captured_at", "counts", "source", "tool"):
            if required not in manifest:
                raise ValueError(f"manifest of {self.ref} lacks {required!r}")
        where = f"{self.store.location(self.ref)}/{MANIFEST_NAME}"
        validate_manifest(json.loads(json.dumps(manifest)), self.ref, where, committing=True)
        body = json.dumps(manifest, indent=2, sort_keys=True).encode()
        self.store._put_atomic(f"{self.ref.folder}/{MANIFEST_NAME}", body)
        self.committed = manifest
        if previous and previous["generation"] != self.generation:
            # Committed already: a failed clean-up leaves an orphan for retention, no error.
            with contextlib.suppress(StoreError):
                self.store._delete_prefix(
                    self.store.generation_prefix(self.ref, previous["generation"])
                )
        return manifest

    def abort(self) -> None:
        if self._open is not None:
            self._open.abort()
        with contextlib.suppress(Exception):
            self.store._delete_prefix(self.store.generation_prefix(self.ref, self.generation))

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.committed is None:
            self.abort()
