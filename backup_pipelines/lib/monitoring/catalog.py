"""The captured-at catalog: what monitoring remembers of manifests it has read.

The RPO needs, for every asset x workspace, the moment the newest committed artifact
represents: its manifest's `captured_at` (not the upload time, which a listing gives: a dump
that took an hour was captured an hour before its manifest was written). Which artifacts exist
comes from listing the store on every evaluation (the truth: a deleted artifact is gone from
the next listing); `captured_at` needs the manifest, one request per artifact (30,000 for
10,000 workspaces x 3 assets). So each manifest read is remembered here, keyed by its folder
and validated by the tag the listing shows for the manifest (S3: its ETag, the MD5 of its
content; a local file: inode and modification time in ns): an entry counts only while the
manifest is the very object that was read. A re-run of the partition writes a new manifest
(new tag), so it is read again; a deleted one is not listed, so its entry is never consulted.

Kept in the process (a code server lives across sensor ticks) and in the store itself, one
object per asset, so that a restarted code server or a run of the health report starts from
it instead of re-reading every manifest:

    <store>/_catalog/captured_at/<asset key path>.json.zst

That object is written by monitoring after an evaluation that read manifests, read back as
untrusted input (bounded, every entry type-checked, unusable -> ignored whole), never consulted
for anything but the RPO's age of an artifact (restores read manifests only), and rebuilt by
reading manifests when it is missing. Two writers (the sensor, the health report) may
overwrite each other's object: entries are self-validating, so a lost update costs reads, never
a wrong age.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import zstandard

from backup_pipelines.lib.errors import StoreError
from backup_pipelines.lib.store import MANIFEST_NAME, ArtifactRef, BackupStore
from backup_pipelines.lib.store.catalog_object import decode_catalog, encode_catalog
from backup_pipelines.lib.store.refs import parse_artifact_folder

CATALOG_PREFIX = "_catalog/captured_at/"
FORMAT = 1
MAX_OBJECT_BYTES = 256 << 20  # decompressed; 10,000 workspaces are ~1 MB
MAX_ENTRIES = 2_000_000
KEEP_DAYS = 400  # entries of older dates are dropped (retention keeps far less)


@dataclass(frozen=True)
class Manifest:
    """A committed artifact as a listing shows its manifest."""

    ref: ArtifactRef
    tag: str  # changes whenever the manifest is rewritten (listing.iter_objects)
    mtime: float  # when it was written: never earlier than the moment it captured


def committed_in(objects) -> dict[ArtifactRef, Manifest]:
    """The committed artifacts (folders with a manifest) among (key, size, mtime, tag)."""
    found: dict[ArtifactRef, Manifest] = {}
    for key, _size, mtime, tag in objects:
        folder, _, name = key.rpartition("/")
        if name != MANIFEST_NAME:
            continue
        ref = parse_artifact_folder(folder)
        if ref is not None:
            found[ref] = Manifest(ref, str(tag), float(mtime))
    return found


def parse_time(value: object) -> datetime | None:
    """An ISO 8601 timestamp (`Z` or an offset; naive means UTC), None when it is not one."""
    if not isinstance(value, str) or not value or len(value) > 64:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class CapturedCatalog:
    """captured_at by artifact folder, each with the tag of the manifest it was read from."""

    def __init__(self, asset: str) -> None:
        self.asset = asset
        self.entries: dict[str, tuple[str, datetime]] = {}
        self._lock = threading.Lock()  # reads still running record while a save iterates
        self.changed = False
        self.loaded_from_store = False
        # The last evaluation left manifests unread: the stored object is read again (merged)
        # by the next one, in case a run has read them since.
        self.incomplete = False

    def lookup(self, manifest: Manifest) -> datetime | None:
        entry = self.entries.get(manifest.ref.folder)
        if entry is None or not manifest.tag or entry[0] != manifest.tag:
            return None
        return entry[1]

    def record(self, manifest: Manifest, captured: datetime) -> None:
        with self._lock:
            self.entries[manifest.ref.folder] = (manifest.tag, captured)
            self.changed = True

    # -- persistence -------------------------------------------------------------------------
    @property
    def key(self) -> str:
        return f"{CATALOG_PREFIX}{self.asset}.json.zst"

    def to_bytes(self, today: date) -> bytes:
        oldest = (today - timedelta(days=KEEP_DAYS)).isoformat()
        with self._lock:
            entries = {
                folder: [tag, captured.isoformat()]
                for folder, (tag, captured) in self.entries.items()
                if folder.split("/date=", 1)[-1][:10] >= oldest
            }
            self.changed = False
        return encode_catalog(FORMAT, self.asset, entries)

    def merge_bytes(self, data: bytes) -> int:
        """Entries of a stored catalog object not known yet; raises ValueError when the
        object is not one this module writes."""
        stored = decode_catalog(
            data, format_version=FORMAT, asset=self.asset, what="captured-at catalog",
            max_bytes=MAX_OBJECT_BYTES, max_entries=MAX_ENTRIES,
        )  # fmt: skip
        added = 0
        with self._lock:
            for folder, entry in stored.items():
                parsed = _valid_entry(self.asset, folder, entry)
                if parsed is not None and folder not in self.entries:
                    self.entries[folder] = parsed
                    added += 1
        return added


def _valid_entry(asset: str, folder: object, entry: object) -> tuple[str, datetime] | None:
    if not isinstance(folder, str) or not isinstance(entry, list) or len(entry) != 2:
        return None
    tag, captured = entry
    if not isinstance(tag, str) or not tag or len(tag) > 200:
        return None
    ref = parse_artifact_folder(folder)
    if ref is None or ref.asset != asset or ref.folder != folder:
        return None
    moment = parse_time(captured)
    return None if moment is None else (tag, moment)


# Per process: a code server keeps its catalogs across ticks, by (store, asset).
_MEMORY: dict[tuple[str, str], CapturedCatalog] = {}
_LOCK = threading.Lock()


def catalog_for(store: BackupStore, asset: str, log=None) -> CapturedCatalog:
    """This process's catalog of `asset` in `store`; the stored object is read the first time."""
    with _LOCK:
        catalog = _MEMORY.get((store.describe(), asset))
        if catalog is None:
            catalog = _MEMORY[(store.describe(), asset)] = CapturedCatalog(asset)
    if not catalog.loaded_from_store or catalog.incomplete:
        catalog.loaded_from_store = True
        try:
            data = store._get(catalog.key)
            if data is not None:
                catalog.merge_bytes(data)
        except (StoreError, ValueError, RecursionError, zstandard.ZstdError) as exc:
            if log is not None:  # never fatal: the manifests are read instead
                log(f"ignoring {store.describe().rstrip('/')}/{catalog.key}: {exc}")
    return catalog


def save(store: BackupStore, catalog: CapturedCatalog, today: date, log=None) -> None:
    """Write the catalog back when this evaluation added to it; a store refusing the write
    costs reads next time, never the evaluation."""
    if not catalog.changed:
        return
    try:
        store._put_atomic(catalog.key, catalog.to_bytes(today))
    except StoreError as exc:
        catalog.changed = True
        if log is not None:
            log(f"could not save the captured-at catalog of {catalog.asset}: {exc}")


def forget() -> None:
    """Drop every catalog held by this process (a code server restart, in tests/benchmarks)."""
    with _LOCK:
        _MEMORY.clear()
