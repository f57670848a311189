"""The backup store: a local folder or an S3 bucket behind one interface.

Layout (DESIGN "Artifact layout"): one folder per materialized partition,

    <root>/<asset key path>/date=<YYYY-MM-DD>[/workspace=<id>]/manifest.json
    <root>/<asset key path>/date=<YYYY-MM-DD>[/workspace=<id>]/<generation>/<file>

An artifact exists only when its manifest exists. Every write stages its files under a fresh
generation folder and commits by writing manifest.json last, atomically (local: fsync +
rename; S3: a single PUT after every multipart upload completed). A crashed run therefore
leaves files that no manifest names: never read, and replaced cleanly by the next run of
the same partition. Keeping the files in a generation folder (rather than overwriting the
previous artifact's files in place) means the previous complete artifact stays readable
until the very moment the new manifest replaces it.
"""

from __future__ import annotations

import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import BinaryIO

from backup_pipelines.lib.errors import ArtifactNotFound, ChecksumMismatch, StoreError
from backup_pipelines.lib.store.cipher import Keyring, encryption_required
from backup_pipelines.lib.store.lease import LeaseStore
from backup_pipelines.lib.store.manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    ManifestInvalid,
    UnsafeObject,
    is_generation,
    is_plain_name,
    parse_manifest,
)
from backup_pipelines.lib.store.reader import (
    DecryptedFile,
    VerifyingReader,
    VerifyResult,
    file_encryption,
    iter_chunks,
)
from backup_pipelines.lib.store.refs import ArtifactRef, parse_artifact_folder
from backup_pipelines.lib.store.writer import ArtifactWriter, Sink

# What `_get` reads at most unless told otherwise: manifests, keep markers, leases are small.
SMALL_OBJECT_BYTES = MAX_MANIFEST_BYTES


class BackupStore(LeaseStore, ABC):
    """Operations shared by both backends; the backends only move bytes by key.

    Everything read back is untrusted: manifests go through the validated model
    (manifest.py), and `file_key` is the one place a name from a manifest becomes a key."""

    # -- backend primitives ------------------------------------------------------------------
    @abstractmethod
    def describe(self) -> str:
        """Where the store is, with no secret in it."""

    @abstractmethod
    def _open_sink(self, key: str) -> Sink: ...

    @abstractmethod
    def _put_atomic(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def _get(self, key: str, max_bytes: int = SMALL_OBJECT_BYTES) -> bytes | None:
        """The object's bytes, None when absent. At most `max_bytes` + 1 bytes are read, so a
        caller can tell an oversized object from one of exactly `max_bytes`."""

    @abstractmethod
    def _open_read(self, key: str) -> BinaryIO: ...

    @abstractmethod
    def _list(self, prefix: str) -> Iterator[tuple[str, int, float]]:
        """(key, size, modified epoch seconds) under prefix."""

    @abstractmethod
    def _delete_prefix(self, prefix: str) -> None: ...

    def check_writable(self) -> None:
        """Fail early, naming the store, when it refuses writes."""
        key = f"_health/probe-{secrets.token_hex(4)}"
        self._put_atomic(key, b"ok")
        self._delete_prefix(key)

    # -- artifacts -------------------------------------------------------------------------
    def begin(self, ref: ArtifactRef, on_progress=None) -> ArtifactWriter:
        return ArtifactWriter(self, ref, on_progress)

    def location(self, ref: ArtifactRef) -> str:
        return f"{self.describe().rstrip('/')}/{ref.folder}"

    def read_manifest(self, ref: ArtifactRef) -> dict | None:
        """The validated manifest (a plain dict), None when the artifact has none; raises
        ManifestInvalid naming the location and the offending key when it is not a manifest
        this project would write (see manifest.py)."""
        try:
            body = self._get(f"{ref.folder}/{MANIFEST_NAME}", MAX_MANIFEST_BYTES)
        except UnsafeObject as exc:  # a FIFO, device or symlink where the manifest should be
            raise ManifestInvalid(f"{exc}; the artifact cannot be trusted") from exc
        if body is None:
            return None
        return parse_manifest(body, ref, f"{self.location(ref)}/{MANIFEST_NAME}")

    def require_manifest(self, ref: ArtifactRef) -> dict:
        manifest = self.read_manifest(ref)
        if manifest is None:
            raise ArtifactNotFound(f"no complete artifact at {self.location(ref)} (no manifest)")
        return manifest

    def file_entry(self, ref: ArtifactRef, manifest: dict, name: str) -> dict:
        entry = next((f for f in manifest.get("files", ()) if f.get("name") == name), None)
        if entry is None:
            raise ArtifactNotFound(f"{self.location(ref)}: the manifest lists no file {name!r}")
        return entry

    def file_key(self, ref: ArtifactRef, manifest: dict, name: str) -> str:
        """The key of file `name` of an artifact: THE place where a name read from a manifest
        becomes a key or path. It is always `<artifact folder>/<generation>/<name>`, built
        from parts checked here again (a manifest dict may not come from read_manifest), so
        nothing outside the artifact's own folder can ever be named."""
        entry = self.file_entry(ref, manifest, name)
        generation = manifest.get("generation")
        if not is_generation(generation) or not is_plain_name(name):
            raise ManifestInvalid(
                f"{self.location(ref)}/{MANIFEST_NAME}: file {name!r} of generation "
                f"{generation!r} is not a plain name inside the artifact's folder; refused"
            )
        if entry.get("path") != f"{generation}/{name}":
            raise ManifestInvalid(
                f"{self.location(ref)}/{MANIFEST_NAME}: files[{name!r}].path "
                f"{entry.get('path')!r} is not {generation}/{name}; refused"
            )
        return f"{ref.folder}/{generation}/{name}"

    def generation_prefix(self, ref: ArtifactRef, generation: object) -> str:
        """The folder of one generation of an artifact (for clean-up), refusing anything
        that is not a generation name."""
        if not is_generation(generation):
            raise ManifestInvalid(
                f"{self.location(ref)}: {generation!r} is not a generation name; refused"
            )
        return f"{ref.folder}/{generation}/"

    def open_file(
        self, ref: ArtifactRef, manifest: dict, name: str, decrypt: bool = True
    ) -> VerifyingReader | DecryptedFile:
        """A file of the artifact, its stored bytes checked against the manifest's size and
        sha256 as they stream. An encrypted file is decrypted on the fly (its plaintext,
        each chunk authenticated before it is handed out) unless `decrypt=False`, which
        gives the stored ciphertext (verify, a copy to another store: no key needed)."""
        key = self.file_key(ref, manifest, name)
        entry = self.file_entry(ref, manifest, name)
        encryption = file_encryption(entry, f"{self.location(ref)}/{MANIFEST_NAME}")
        where = f"{self.location(ref)}: file {name!r}"
        keyring = None
        if decrypt and encryption is None and encryption_required():
            raise ChecksumMismatch(
                f"{where} is stored unencrypted, and BACKUP_ENCRYPTION_REQUIRED is set: refused "
                "(a manifest naming plaintext files may have been planted or downgraded; unset "
                "it only to read artifacts made before encryption was turned on)"
            )
        if decrypt and encryption is not None:
            # Before anything is opened: a missing key is named at once, the file untouched.
            keyring = Keyring.from_env(writing=False)
            keyring.key(encryption["key_id"], where)
        stored = VerifyingReader(self._open_read(key), entry, self.location(ref))
        if keyring is None:
            return stored
        try:
            return DecryptedFile(stored, keyring, where, encryption["key_id"])
        except BaseException:
            stored.close()
            raise

    def verify(self, ref: ArtifactRef) -> VerifyResult:
        """Re-read every file of the artifact and check size and sha256 against the manifest;
        raises ManifestInvalid when the manifest itself cannot be trusted."""
        started = time.monotonic()
        problems: list[str] = []
        manifest = self.read_manifest(ref)  # ManifestInvalid: the manifest itself is unusable
        if manifest is None:
            return VerifyResult(ref, False, 0, 0, [f"no manifest at {self.location(ref)}"], 0.0)
        total = 0
        for entry in manifest["files"]:
            try:
                # The stored bytes only: verify needs no key (the sha256 covers the ciphertext).
                with self.open_file(ref, manifest, entry["name"], decrypt=False) as reader:
                    for chunk in iter_chunks(reader):
                        total += len(chunk)
            except (ChecksumMismatch, StoreError) as exc:
                problems.append(str(exc))
        return VerifyResult(
            ref, not problems, len(manifest["files"]), total, problems, time.monotonic() - started
        )

    def list_artifacts(self, asset: str | None = None) -> Iterator[ArtifactRef]:
        """Every committed artifact (those with a manifest), optionally of one asset."""
        for key, _size, _mtime in self._list(f"{asset}/" if asset else ""):
            if not key.endswith("/" + MANIFEST_NAME):
                continue
            ref = parse_artifact_folder(key[: -len(MANIFEST_NAME) - 1])
            if ref is not None:
                yield ref

    def delete_artifact(self, ref: ArtifactRef) -> None:
        """Remove the manifest first, so a half-deleted artifact is never taken for complete."""
        self._delete_prefix(f"{ref.folder}/{MANIFEST_NAME}")
        self._delete_prefix(f"{ref.folder}/")

    def _remove_empty_folders(self, prefix: str) -> None:
        """Drop `prefix` and its parents while empty, after deletes. Object stores have no
        folders, so this does nothing there; the local store overrides it."""
        return None
