"""A second copy of every artifact in another store (BACKUP_COPY_STORE_URL): another bucket,
region or provider, or a folder.

An artifact is copied as it is stored — the raw bytes (ciphertext when encrypted; nothing is
decrypted) and the manifest's own bytes — under the same generation name, with the primary's
atomic contract: every file streamed into the copy's generation folder (never a whole file in
memory), read back there and checked against the manifest's size and sha256, and only then
the manifest written, last. A copy killed half-way leaves files no manifest names (never
read; the next copy of the partition overwrites them, retention cleans them up otherwise) and
the copy's previous artifact of the partition intact.

Idempotent: an artifact whose manifest in the copy already names the same generation and the
same files (name, bytes, sha256) is skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from backup_pipelines.lib.errors import ArtifactNotFound, ChecksumMismatch, StoreError
from backup_pipelines.lib.store.base import BackupStore
from backup_pipelines.lib.store.manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    ManifestInvalid,
    UnsafeObject,
    parse_manifest,
)
from backup_pipelines.lib.store.refs import ArtifactRef

COPY_STORE_VARIABLE = "BACKUP_COPY_STORE_URL"
COPIED, SKIPPED, FAILED = "copied", "skipped", "failed"
COPY_CHUNK = 4 << 20  # bytes per read: few system calls, little memory
FROM_ENV = object()  # "the copy store BACKUP_COPY_STORE_URL names", as a default argument

Log = Callable[[str], None]


def _quiet(_message: str) -> None:
    return None


def copy_store_from_env(env: Mapping[str, str] | None = None) -> BackupStore | None:
    """The second store BACKUP_COPY_STORE_URL names (same URL forms as BACKUP_STORE_URL),
    None when unset: no copy in this deployment."""
    from backup_pipelines.lib.store.url import store_from_url

    env = os.environ if env is None else env
    url = (env.get(COPY_STORE_VARIABLE) or "").strip()
    return store_from_url(url, COPY_STORE_VARIABLE) if url else None


def lease_store(primary: BackupStore, log: Log = _quiet) -> BackupStore:
    """Where a restore takes its lease: the primary; the copy store only when the primary
    cannot be reached at all (the disaster the copy exists for — no backup can run then
    either, since backups write to the primary) and a copy store is configured."""
    from backup_pipelines.lib.errors import StoreError
    from backup_pipelines.lib.store.lease import WHOLE_DATABASE_LEASE

    try:
        primary.read_lease(WHOLE_DATABASE_LEASE)  # one small read: is the primary there?
        return primary
    except StoreError as exc:
        copy = copy_store_from_env()
        if copy is None:
            raise
        log(
            f"the primary store is unreachable ({exc}); the restore's lease is taken in the "
            f"copy store {copy.describe()}"
        )
        return copy


def lease_store_for_live(url: str | None, log: Log = _quiet) -> BackupStore | None:
    """Where a restore over the live cluster takes the whole database's lease: the backup
    store of `url` (BACKUP_STORE_URL) as lease_store picks it; None, and said, without one (a
    deployment running point-in-time recovery alone), when nothing else can take it either."""
    if not url:
        log("BACKUP_STORE_URL is not set: no restore lease taken over live")
        return None
    from backup_pipelines.lib.store import store_from_url

    return lease_store(store_from_url(url), log)


@dataclass
class CopyResult:
    ref: ArtifactRef
    outcome: str  # copied, skipped (already there), failed
    bytes: int = 0
    files: int = 0
    detail: str = ""


@dataclass
class CopyReport:
    results: list[CopyResult] = field(default_factory=list)

    def count(self, outcome: str) -> int:
        return sum(r.outcome == outcome for r in self.results)

    @property
    def failed(self) -> list[CopyResult]:
        return [r for r in self.results if r.outcome == FAILED]

    def summary(self) -> str:
        copied_bytes = sum(r.bytes for r in self.results if r.outcome == COPIED)
        return (
            f"{self.count(COPIED)} copied ({copied_bytes:,} bytes), {self.count(SKIPPED)} "
            f"already in the copy, {self.count(FAILED)} failed"
        )


# --------------------------------------------------------------------------------------------
# One artifact


def _raw_manifest(store: BackupStore, ref: ArtifactRef) -> tuple[bytes, dict] | None:
    """The manifest's stored bytes and their validated model; None without a manifest."""
    try:
        body = store._get(f"{ref.folder}/{MANIFEST_NAME}", MAX_MANIFEST_BYTES)
    except UnsafeObject as exc:
        raise ManifestInvalid(f"{exc}; the artifact cannot be trusted") from exc
    if body is None:
        return None
    return body, parse_manifest(body, ref, f"{store.location(ref)}/{MANIFEST_NAME}")


def _fingerprint(manifest: dict) -> tuple:
    files = sorted((f["name"], f["bytes"], f["sha256"]) for f in manifest["files"])
    return manifest.get("generation"), tuple(files)


def already_copied(target: BackupStore, ref: ArtifactRef, manifest: dict) -> bool:
    """The copy's manifest names the same generation and files (name, bytes, sha256)."""
    try:
        found = target.read_manifest(ref)
    except ManifestInvalid:
        return False  # a damaged copy is replaced
    return found is not None and _fingerprint(found) == _fingerprint(manifest)


class _Hasher:
    """sha256 on a worker thread, one chunk behind the caller (hashlib releases the GIL on
    large buffers), so hashing overlaps reading and writing the next chunk."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="copy-sha256")
        self._last = None

    def update(self, chunk: bytes) -> None:
        if self._last is not None:
            self._last.result()
        self._last = self._pool.submit(self.digest.update, chunk)

    def hexdigest(self) -> str:
        if self._last is not None:
            self._last.result()
        self._pool.shutdown()
        return self.digest.hexdigest()


def _checked_chunks(store: BackupStore, key: str, entry: dict, where: str) -> Iterator[bytes]:
    """The stored bytes of one file (deliberately raw, not through `open_file`, which may
    decrypt: the copy carries the stored bytes), read at most one byte past the declared size;
    ChecksumMismatch after the last chunk when size or sha256 differ from the manifest."""
    expected, hasher, size = entry["bytes"], _Hasher(), 0
    handle = store._open_read(key)
    try:
        while size <= expected:
            try:
                chunk = handle.read(min(COPY_CHUNK, expected + 1 - size))
            except Exception as exc:  # OSError locally; botocore/urllib3 errors from S3
                raise StoreError(
                    f"{where}: file {entry['name']!r}: reading it failed after {size:,} bytes "
                    f"({type(exc).__name__}: {str(exc)[:300]}); retry when the store answers"
                ) from exc
            if not chunk:
                break
            size += len(chunk)
            if size > expected:
                break  # the extra byte is never handed out
            hasher.update(chunk)
            yield chunk
    finally:
        with contextlib.suppress(Exception):
            handle.close()
    actual = hasher.hexdigest()
    if size != expected or actual != entry["sha256"]:
        raise ChecksumMismatch(
            f"{where}: file {entry['name']!r} does not match its manifest (expected {expected} "
            f"bytes sha256 {entry['sha256'][:16]}..., read {size}{'+' if size > expected else ''} "
            f"bytes sha256 {actual[:16]}...); the artifact is corrupt there"
        )


def _copy_file(
    source: BackupStore, target: BackupStore, ref: ArtifactRef, manifest: dict, name: str
) -> int:
    """Stream one file into the copy, then read it back there against its sha256."""
    entry = source.file_entry(ref, manifest, name)
    key = target.file_key(ref, manifest, name)
    source_key = source.file_key(ref, manifest, name)
    sink = target._open_sink(key)
    copied = 0
    try:
        for chunk in _checked_chunks(source, source_key, entry, source.location(ref)):
            sink.write(chunk)
            copied += len(chunk)
        sink.close()
    except BaseException:
        with contextlib.suppress(Exception):
            sink.abort()
        raise
    for _chunk in _checked_chunks(target, key, entry, target.location(ref)):
        pass  # on arrival: ChecksumMismatch at the end when what is stored differs
    return copied


def copy_artifact(
    source: BackupStore, target: BackupStore, ref: ArtifactRef, log: Log = _quiet
) -> CopyResult:
    """Copy one committed artifact from `source` to `target` (see the module doc). Raises
    StoreError (ChecksumMismatch, ManifestInvalid, ArtifactNotFound, unreachable store)
    naming the store and file; nothing is committed in the copy then."""
    found = _raw_manifest(source, ref)
    if found is None:
        raise ArtifactNotFound(f"no complete artifact at {source.location(ref)} (no manifest)")
    body, manifest = found
    if already_copied(target, ref, manifest):
        return CopyResult(ref, SKIPPED, detail=f"generation {manifest['generation']} already there")
    previous = _previous_generation(target, ref)
    if previous == manifest["generation"]:
        # Same generation, other files (a damaged copy): uncommit before rewriting its files.
        target._delete_prefix(f"{ref.folder}/{MANIFEST_NAME}")
    total = 0
    try:
        for entry in manifest["files"]:
            total += _copy_file(source, target, ref, manifest, entry["name"])
    except BaseException:
        if previous != manifest["generation"]:
            with contextlib.suppress(Exception):
                target._delete_prefix(target.generation_prefix(ref, manifest["generation"]))
        raise
    target._put_atomic(f"{ref.folder}/{MANIFEST_NAME}", body)  # the commit point, last
    if previous and previous != manifest["generation"]:
        # Committed already: a failed clean-up (or a locked generation) leaves an orphan.
        with contextlib.suppress(StoreError):
            target._delete_prefix(target.generation_prefix(ref, previous))
    log(
        f"copied {ref} to {target.location(ref)}: {total:,} bytes in {len(manifest['files'])} file(s)"
    )
    return CopyResult(ref, COPIED, total, len(manifest["files"]))


def _previous_generation(target: BackupStore, ref: ArtifactRef) -> str | None:
    try:
        found = target.read_manifest(ref)
    except ManifestInvalid:
        return None  # its files stay as an orphan generation for retention's clean-up
    return None if found is None else found.get("generation")


def copy_one(
    source: BackupStore, target: BackupStore, ref: ArtifactRef, log: Log = _quiet
) -> CopyResult:
    """copy_artifact, with a failure returned (and logged) instead of raised."""
    try:
        return copy_artifact(source, target, ref, log)
    except StoreError as exc:
        log(f"copy of {ref} to {target.describe()} FAILED: {exc}")
        return CopyResult(ref, FAILED, detail=str(exc))


# --------------------------------------------------------------------------------------------
# Catching up


def select_artifacts(
    store: BackupStore,
    asset: str | None = None,
    date: str | None = None,
    workspace: str | None = None,
) -> list[ArtifactRef]:
    return [
        ref
        for ref in sorted(store.list_artifacts(asset))
        if (date is None or ref.date == date) and (workspace is None or ref.workspace == workspace)
    ]


def copy_missing(
    source: BackupStore,
    target: BackupStore,
    refs: Iterable[ArtifactRef],
    log: Log = _quiet,
) -> CopyReport:
    """Copy every artifact of `refs` the copy lacks (or holds another generation of); those
    already there are skipped, a failure is reported and the rest go on."""
    report = CopyReport()
    for ref in refs:
        report.results.append(copy_one(source, target, ref, log))
    return report


# --------------------------------------------------------------------------------------------
# Restoring: the copy when the primary cannot serve an artifact


def readable_source(
    primary: BackupStore,
    ref: ArtifactRef,
    copy_store: BackupStore | object | None = FROM_ENV,
    log: Log = _quiet,
) -> tuple[BackupStore, str]:
    """The store to restore `ref` from, and "" or why it is not the primary: the primary when
    its artifact is there and verifies; else the copy store (BACKUP_COPY_STORE_URL) when its
    artifact verifies. Raises StoreError naming both stores' problems otherwise."""
    problem = _verify_problem(primary, ref)
    if not problem:
        return primary, ""
    copy = copy_store_from_env() if copy_store is FROM_ENV else copy_store
    if copy is None:
        raise StoreError(f"cannot restore {ref}: {problem}")
    copy_problem = _verify_problem(copy, ref)
    if copy_problem:
        raise StoreError(
            f"cannot restore {ref}: {problem}; the copy store {copy.describe()} cannot serve "
            f"it either: {copy_problem}"
        )
    note = (
        f"the primary store {primary.describe()} failed ({problem}); restoring {ref} from the "
        f"copy store {copy.describe()}, verified there"
    )
    log(note)
    return copy, note


def _verify_problem(store: BackupStore, ref: ArtifactRef) -> str:
    """ "" when the artifact is complete and every file matches its sha256, else what is wrong."""
    try:
        result = store.verify(ref)
    except StoreError as exc:  # unreachable, a manifest that cannot be trusted
        return str(exc)
    return "" if result.ok else "; ".join(result.problems)
