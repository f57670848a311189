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

import json
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import BinaryIO

from backup_pipelines.lib.errors import ArtifactNotFound, ChecksumMismatch, StoreError
from backup_pipelines.lib.store.manifest import MANIFEST_FORMAT_VERSION, MANIFEST_NAME
from backup_pipelines.lib.store.reader import VerifyingReader, VerifyResult, iter_chunks
from backup_pipelines.lib.store.refs import ArtifactRef, parse_artifact_folder
from backup_pipelines.lib.store.writer import ArtifactWriter, Sink


class BackupStore(ABC):
    """Operations shared by both backends; the backends only move bytes by key."""

    # -- backend primitives ------------------------------------------------------------------
    @abstractmethod
    def describe(self) -> str:
        """Where the store is, with no secret in it."""

    @abstractmethod
    def _open_sink(self, key: str) -> Sink: ...

    @abstractmethod
    def _put_atomic(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def _get(self, key: str) -> bytes | None: ...

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
        body = self._get(f"{ref.folder}/{MANIFEST_NAME}")
        if body is None:
            return None
        try:
            manifest = json.loads(body)
        except ValueError as exc:
            raise StoreError(
                f"{self.location(ref)}: manifest.json is not valid JSON ({exc})"
            ) from exc
        if manifest.get("format_version") != MANIFEST_FORMAT_VERSION:
            raise StoreError(
                f"{self.location(ref)}: manifest format_version "
                f"{manifest.get('format_version')!r} is not supported (expected "
                f"{MANIFEST_FORMAT_VERSION})"
            )
        return manifest

    def require_manifest(self, ref: ArtifactRef) -> dict:
        manifest = self.read_manifest(ref)
        if manifest is None:
            raise ArtifactNotFound(f"no complete artifact at {self.location(ref)} (no manifest)")
        return manifest

    def open_file(self, ref: ArtifactRef, manifest: dict, name: str) -> VerifyingReader:
        entry = next((f for f in manifest["files"] if f["name"] == name), None)
        if entry is None:
            raise ArtifactNotFound(f"{self.location(ref)}: the manifest lists no file {name!r}")
        raw = self._open_read(f"{ref.folder}/{entry['path']}")
        return VerifyingReader(raw, entry, self.location(ref))

    def verify(self, ref: ArtifactRef) -> VerifyResult:
        """Re-read every file of the artifact and check size and sha256 against the manifest."""
        started = time.monotonic()
        problems: list[str] = []
        manifest = self.read_manifest(ref)
        if manifest is None:
            return VerifyResult(ref, False, 0, 0, [f"no manifest at {self.location(ref)}"], 0.0)
        total = 0
        for entry in manifest["files"]:
            try:
                with self.open_file(ref, manifest, entry["name"]) as reader:
                    for chunk in iter_chunks(reader):
                        total += len(chunk)
            except (ChecksumMismatch, StoreError) as exc:
                problems.append(str(exc))
            except (FileNotFoundError, KeyError) as exc:
                problems.append(f"{self.location(ref)}: file {entry['name']!r} is missing ({exc})")
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
