"""What retention remembers of its verifications: which artifacts re-read with matching sha256,
when, and exactly which objects they were then.

Retention keeps the newest verified artifact of every series, so each daily plan would re-read
and hash the newest artifact of all of them (30,000 series for 10,000 workspaces: every byte
of a night's backups, ~70 s on a local folder, far more on S3). A verification is remembered
here with a fingerprint of the artifact's objects as the store lists them — each key, size and
tag (S3: the ETag, an MD5 of the content; a local file: inode and mtime in ns), so rewriting,
adding or removing any file of the artifact changes it — and the moment it was verified.
The plan trusts a remembered verification while the fingerprint is unchanged and it is younger
than the policy's `reverify_after_days`; anything else is verified again (and a full re-verify
ignores the record). Bytes changed in place with the tag forged back (possible on a local
folder, not on S3) go unseen until the verification ages out: that is what the age bound is
for.

One object per asset, next to monitoring's captured-at catalog (never listed as an artifact,
never cleaned by retention):

    <store>/_catalog/verified/<asset key path>.json.zst

It is read as untrusted input (bounded, every entry type-checked; an unusable object is
ignored whole, costing re-reads, never a wrong keep), holds only artifacts the last plan saw,
and a failed verification removes the artifact's entry. It only ever answers "this artifact
verified recently": deletion decisions stay those of retention.py (an artifact is deleted only
when a newer one of its series verified, the keep markers and leases as they are).
"""

from __future__ import annotations

import hashlib
import threading
import zlib
from collections.abc import Iterable

import zstandard

from backup_pipelines.lib.errors import StoreError
from backup_pipelines.lib.lifecycle.scan import Folder
from backup_pipelines.lib.store import BackupStore
from backup_pipelines.lib.store.catalog_object import decode_catalog, encode_catalog
from backup_pipelines.lib.store.refs import parse_artifact_folder

VERIFIED_PREFIX = "_catalog/verified/"
FORMAT = 1
MAX_OBJECT_BYTES = 64 << 20  # decompressed; 10,000 workspaces' newest artifacts are ~3 MB
MAX_ENTRIES = 2_000_000
FINGERPRINT_HEX = 64


def fingerprint(folder: Folder) -> str:
    """sha256 of the artifact's listed objects (relative key, size, tag), in key order."""
    # One update of the whole text: the same digest as one per object, at a fraction of the
    # calls (30,000 artifacts fingerprinted by each plan at 10,000 workspaces).
    text = "".join([f"{key}\0{size}\0{tag}\n" for key, size, tag in sorted(folder.objects)])
    return hashlib.sha256(text.encode()).hexdigest()


class VerificationRecord:
    """Remembered verifications of one store, by artifact folder: (fingerprint, verified at
    in epoch seconds)."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, tuple[str, float]]] = {}  # asset -> folder -> entry
        self._lock = threading.Lock()
        self.changed: set[str] = set()
        self.problems: list[str] = []

    def trusted(self, folder: Folder, now: float, max_age_seconds: float) -> bool:
        """Verified recently (within half to all of `max_age_seconds` of `now`, depending on
        the series: 30,000 series verified on the same first day must not all come due on
        the same later day), and every object still as it was."""
        entry = self.entries.get(folder.ref.asset, {}).get(folder.ref.folder)
        if entry is None or max_age_seconds <= 0:
            return False
        if not 0 <= now - entry[1] < max_age_seconds * _spread(folder):
            return False  # too old, or "verified" in the future (a skewed or forged clock)
        return entry[0] == fingerprint(folder)

    def remember(self, folder: Folder, now: float, verified: bool) -> None:
        asset, where = folder.ref.asset, folder.ref.folder
        with self._lock:
            known = self.entries.setdefault(asset, {})
            if verified:
                known[where] = (fingerprint(folder), now)
            elif known.pop(where, None) is None:
                return
            self.changed.add(asset)

    # -- persistence -------------------------------------------------------------------------

    @staticmethod
    def key(asset: str) -> str:
        return f"{VERIFIED_PREFIX}{asset}.json.zst"

    @classmethod
    def load(cls, store: BackupStore, assets: Iterable[str]) -> VerificationRecord:
        """The stored record of each asset; one that is missing or unusable is empty (and
        named in `problems`)."""
        record = cls()
        for asset in sorted(set(assets)):
            try:
                data = store._get(cls.key(asset))
                if data is not None:
                    record.entries[asset] = _parse(asset, data)
            except (StoreError, ValueError, RecursionError, zstandard.ZstdError) as exc:
                record.problems.append(
                    f"ignoring {store.describe().rstrip('/')}/{cls.key(asset)} (every artifact "
                    f"of {asset} is verified again): {exc}"
                )
        return record

    def save(self, store: BackupStore, folders: Iterable[Folder]) -> list[str]:
        """Write back the assets that changed, keeping only artifacts still listed; returns
        the problems (a store refusing the write costs re-reads next time, never the plan)."""
        listed: dict[str, set[str]] = {}
        for folder in folders:
            listed.setdefault(folder.ref.asset, set()).add(folder.ref.folder)
        problems = []
        for asset in sorted(self.changed):
            with self._lock:
                entries = {
                    where: [print_, at]
                    for where, (print_, at) in self.entries.get(asset, {}).items()
                    if where in listed.get(asset, ())
                }
            try:
                store._put_atomic(self.key(asset), encode_catalog(FORMAT, asset, entries))
            except StoreError as exc:
                problems.append(f"could not save the verification record of {asset}: {exc}")
        self.changed.clear()
        return problems


def _spread(folder: Folder) -> float:
    """A stable fraction in [0.5, 1) per series (asset x workspace)."""
    series = f"{folder.ref.asset}|{folder.ref.workspace or ''}".encode()
    return 0.5 + (zlib.crc32(series) % 1000) / 2000


def _parse(asset: str, data: bytes) -> dict[str, tuple[str, float]]:
    """The entries of a stored record; raises ValueError when it is not one this module
    writes. Entries that are not well formed are dropped one by one."""
    stored = decode_catalog(
        data, format_version=FORMAT, asset=asset, what="verification record",
        max_bytes=MAX_OBJECT_BYTES, max_entries=MAX_ENTRIES,
    )  # fmt: skip
    entries = {}
    for where, entry in stored.items():
        parsed = _valid_entry(asset, where, entry)
        if parsed is not None:
            entries[where] = parsed
    return entries


def _valid_entry(asset: str, where: object, entry: object) -> tuple[str, float] | None:
    if not isinstance(where, str) or not isinstance(entry, list) or len(entry) != 2:
        return None
    print_, at = entry
    if not isinstance(print_, str) or len(print_) != FINGERPRINT_HEX:
        return None
    if isinstance(at, bool) or not isinstance(at, int | float) or not at > 0:
        return None
    ref = parse_artifact_folder(where)
    if ref is None or ref.asset != asset or ref.folder != where:
        return None
    return print_, float(at)
