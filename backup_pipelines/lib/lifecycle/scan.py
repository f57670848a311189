"""What the store holds, from one listing: every artifact folder (committed or not), and the
debris of crashed runs — generation folders no manifest refers to, stray local `.tmp` files,
and S3 multipart uploads never completed — once older than `incomplete_max_age_hours`
(younger ones may belong to a run in flight). A generation folder's age is that of its newest
file; an S3 upload's, the time since it started or since its newest part arrived, whichever
is later."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

from backup_pipelines.lib.errors import StoreError
from backup_pipelines.lib.lifecycle.markers import DATE_PATTERN, KEEP_PREFIX
from backup_pipelines.lib.store import (
    LEASE_PREFIX,
    MANIFEST_NAME,
    ArtifactRef,
    BackupStore,
    LocalStore,
    S3Store,
    is_generation,
    listing,
    parse_artifact_folder,
)

# Not artifacts: keep markers, the writability probe, leases, monitoring's captured-at catalog
# and retention's verification record (never listed, never cleaned).
RESERVED_PREFIXES = (KEEP_PREFIX, "_health/", LEASE_PREFIX, "_catalog/")


@dataclass
class Generation:
    bytes: int = 0
    newest_mtime: float = 0.0


@dataclass
class Folder:
    """An artifact folder as listed: manifest or not, generation folders, loose files. A local
    store's generation folders may be named but not yet listed (scan_store defers them): their
    files are listed the first time `generations`, `bytes` or `objects` is asked for, or for
    many folders at once by list_deferred."""

    ref: ArtifactRef
    has_manifest: bool = False
    _bytes: int = 0
    _generations: dict[str, Generation] = field(default_factory=dict)
    loose: list[tuple[str, int, float]] = field(default_factory=list)  # (key, size, mtime)
    _listed: list[tuple[str, int, str]] = field(default_factory=list, repr=False)
    # Batches of a folder's files as listed (a local folder's as lstat'ed): made into
    # `objects` only when asked (a fingerprint: the newest artifact of each series, a third
    # of the store or less).
    _stated: list[tuple[str, list[listing.LocalListed]]] = field(default_factory=list, repr=False)
    _tagged: list[list[listing.Tagged]] = field(default_factory=list, repr=False)
    # Generation folders named by the walk, not listed yet (relative to the store), and the
    # local store they are in.
    _deferred: list[str] = field(default_factory=list, repr=False)
    _store: LocalStore | None = field(default=None, repr=False)

    @property
    def generations(self) -> dict[str, Generation]:
        """Generation folders holding files: name -> their bytes and newest mtime."""
        self._list_deferred()
        return self._generations

    @property
    def generation_names(self) -> set[str]:
        """Every generation folder the walk saw, listed or not (one found empty when listed
        is not in `generations`)."""
        return set(self._generations) | {path.rpartition("/")[2] for path in self._deferred}

    @property
    def bytes(self) -> int:
        self._list_deferred()
        return self._bytes

    @property
    def objects(self) -> list[tuple[str, int, str]]:
        """Every object as listed: (key, size, tag), the tag changing whenever it is
        rewritten (verified.py: what a remembered verification is bound to)."""
        self._list_deferred()
        for folder, files in self._stated:
            self._tagged.append([listing.tagged(folder, name, stat) for name, stat in files])
        for objects in self._tagged:
            self._listed += [(key, size, tag) for key, size, _mtime, tag in objects]
        self._stated.clear()
        self._tagged.clear()
        return self._listed

    def defer(self, store: LocalStore, folder: str) -> None:
        """A generation folder (relative to the store) to list when it is needed."""
        self._store = store
        self._deferred.append(folder)

    def _list_deferred(self) -> None:
        if self._deferred:
            list_deferred([self])

    def add_listed_generation(self, folder: str, files: list[listing.LocalListed]) -> None:
        """A deferred generation folder's files, as listed (list_deferred)."""
        if folder in self._deferred:
            self._deferred.remove(folder)
        if files:
            self.add_stated(folder, files, folder.rpartition("/")[2])

    def add(self, key: str, size: int, mtime: float, generation: str | None, tag: str = "") -> None:
        self._listed.append((key, size, tag))
        if generation is not None:
            self._count_generation(generation, size, mtime)
        else:
            self._count_own([(key, size, mtime)])

    def add_stated(
        self, folder: str, files: list[listing.LocalListed], generation: str | None
    ) -> None:
        """The files directly in `folder` (a listing.local_stats batch), as `add` of each;
        a generation's files get no key string until `objects` is asked for."""
        self._stated.append((folder, files))
        if generation is not None:
            size = sum(stat.st_size for _name, stat in files)
            self._count_generation(generation, size, max(s.st_mtime for _n, s in files))
        else:
            self._count_own([(f"{folder}/{n}", s.st_size, s.st_mtime) for n, s in files])

    def add_listed(self, objects: list[listing.Tagged], generation: str | None) -> None:
        """Objects directly in one folder (key, size, mtime, tag), as `add` of each."""
        self._tagged.append(objects)
        if generation is not None:
            size = sum(listed[1] for listed in objects)
            self._count_generation(generation, size, max(listed[2] for listed in objects))
        else:
            self._count_own([(key, size, mtime) for key, size, mtime, _tag in objects])

    def _count_generation(self, generation: str, size: int, newest_mtime: float) -> None:
        self._bytes += size
        entry = self._generations.setdefault(generation, Generation())
        entry.bytes += size
        entry.newest_mtime = max(entry.newest_mtime, newest_mtime)

    def _count_own(self, files: list[tuple[str, int, float]]) -> None:
        """Files of the artifact folder itself: (key, size, mtime)."""
        for key, size, mtime in files:
            self._bytes += size
            if key.endswith("/" + MANIFEST_NAME):
                self.has_manifest = True
            else:
                self.loose.append((key, size, mtime))


def list_deferred(folders: Iterable[Folder], report: listing.WalkReport | None = None) -> int:
    """The deferred generation folders of many artifact folders listed at once (in threads
    once the metadata comes from disk, as the walk): what a plan is about to need, instead of
    one folder at a time as each is asked for. Returns how many were listed."""
    owners: dict[str, Folder] = {}
    by_store: dict[int, tuple[LocalStore, list[str]]] = {}  # one store, but for a caller's mix
    for folder in folders:
        if folder._deferred and folder._store is not None:
            owners.update(dict.fromkeys(folder._deferred, folder))
            by_store.setdefault(id(folder._store), (folder._store, []))[1].extend(folder._deferred)
    for store, paths in by_store.values():
        for path, files in listing.list_own_files(store, paths, report):
            owners[path].add_listed_generation(path, files)
    return len(owners)


def scan_store(
    store: BackupStore,
    report: listing.WalkReport | None = None,
    defer: bool | Callable[[list[str]], Collection[str]] = True,
) -> dict[ArtifactRef, Folder]:
    """Every artifact folder, committed or not, from a single listing of the store (the fast
    listing: 10,000 workspaces' artifacts are millions of keys); how the walk went into
    `report`. A local store's generation folders are named, not listed (Folder lists them
    when asked): in every date folder, or in those `defer` picks of every date folder (a
    plan's guess at where it will not look; listing those it will look at in the walk costs
    less than listing them afterwards)."""
    folders: dict[ArtifactRef, Folder] = {}
    # Each artifact folder is met again as the parent of its generation folders: parsed (and
    # its ref validated) once.
    artifact_folders: dict[str, ArtifactRef | None] = {}
    # Date folders listed several at a time (listing.iter_store_folders); the order of the
    # objects does not matter here (a fingerprint sorts them). A plan lists the generation
    # folders it needs (the newest of each series, what it deletes), not those of the month
    # of backups it keeps.
    batches = listing.iter_store_folders(store, stats=True, report=report, defer_generations=defer)
    for parent_of_all, batch in batches:
        if parent_of_all is not None:  # a local folder's files (name, lstat): parsed once
            if not (found := _folder_of(folders, parent_of_all, artifact_folders)):
                continue
            if batch is None:  # a generation folder, not listed yet
                if found[1] is not None and isinstance(store, LocalStore):
                    found[0].defer(store, parent_of_all)
                continue
            found[0].add_stated(parent_of_all, batch, found[1])
            continue
        # A listing is in key order: the objects of one folder come in a run (or a few),
        # each run's folder parsed and its Folder found once.
        for parent, run in itertools.groupby(batch, _parent):
            if found := _folder_of(folders, parent, artifact_folders):
                found[0].add_listed(list(run), found[1])
    return folders


def _parent(listed: listing.Tagged) -> str:
    return listed[0].rpartition("/")[0]


def _folder_of(
    folders: dict[ArtifactRef, Folder], parent: str, known: dict[str, ArtifactRef | None]
) -> tuple[Folder, str | None] | None:
    """The artifact folder a listed folder `parent` belongs to (made on first sight) and the
    generation it is in; None outside any artifact, or under a reserved prefix."""
    if f"{parent}/".startswith(RESERVED_PREFIXES):
        return None  # as key.startswith(RESERVED_PREFIXES) for every key of this folder
    where = _artifact_of(parent, known)
    if where is None:
        return None
    ref, generation = where
    folder = folders.get(ref)
    if folder is None:
        folder = folders[ref] = Folder(ref)
    return folder, generation


def _artifact_folder(folder: str, known: dict[str, ArtifactRef | None]) -> ArtifactRef | None:
    if folder not in known:
        known[folder] = parse_artifact_folder(folder)
    return known[folder]


def _artifact_of(
    parent: str, known: dict[str, ArtifactRef | None]
) -> tuple[ArtifactRef, str | None] | None:
    """The artifact a key in folder `parent` belongs to, and its generation (None: a file of
    the artifact folder itself); None when it belongs to none."""
    grandparent, _, generation = parent.rpartition("/")
    if is_generation(generation):  # <artifact folder>/<generation>/<file>
        ref = _artifact_folder(grandparent, known)
        if ref is None:
            return None
    else:
        ref, generation = _artifact_folder(parent, known), None
        if ref is None:
            return None
    if not DATE_PATTERN.fullmatch(ref.date):
        return None  # e.g. date=2026-3-1: not written by this project, never touched
    return ref, generation


@dataclass(frozen=True)
class Leftover:
    """Debris of a crashed run: never part of a committed artifact."""

    kind: str  # "orphan generation" | "temp file" | "multipart upload"
    key: str  # relative to the store; a generation folder ends with "/"
    bytes: int
    age_hours: float
    upload_id: str | None = None


def find_leftovers(
    store: BackupStore,
    folders: dict[ArtifactRef, Folder],
    doomed: set[ArtifactRef],
    now: float,
    max_age_hours: float,
) -> list[Leftover]:
    found: list[Leftover] = []
    for ref, folder in sorted(folders.items(), key=lambda item: item[0].folder):
        if ref in doomed:
            continue  # goes with its partition
        found += _orphan_generations(store, folder, now, max_age_hours)
        found += _stray_temp_files(folder, now, max_age_hours)
    if isinstance(store, S3Store):
        found += _stale_uploads(store, now, max_age_hours)
    return found


def _age_hours(now: float, mtime: float) -> float:
    return (now - mtime) / 3600


def _orphan_generations(
    store: BackupStore, folder: Folder, now: float, max_age_hours: float
) -> list[Leftover]:
    if folder.has_manifest and len(folder.generation_names) <= 1:
        return []  # its one generation is the manifest's (_current_generation): none to list
    old = {
        name: gen
        for name, gen in folder.generations.items()
        if _age_hours(now, gen.newest_mtime) > max_age_hours
    }
    if not old:
        return []
    try:
        current = _current_generation(store, folder)
    except StoreError:
        return []  # an unreadable manifest: which generation it names is unknown, keep all
    return [
        Leftover(
            "orphan generation",
            f"{folder.ref.folder}/{name}/",
            gen.bytes,
            _age_hours(now, gen.newest_mtime),
        )
        for name, gen in sorted(old.items())
        if name != current
    ]


def _current_generation(store: BackupStore, folder: Folder) -> str | None:
    """The generation the manifest refers to. A committed folder with a single generation
    folder is taken to be that manifest's (a commit writes files, then the manifest, then
    drops the previous generation; a crash leaves a second one), so manifests are read only
    where two or more generations meet — if the guess is ever wrong, an orphan survives,
    never an artifact's data."""
    if not folder.has_manifest:
        return None
    if len(folder.generations) == 1:
        return next(iter(folder.generations))
    manifest = store.read_manifest(folder.ref)
    return None if manifest is None else manifest.get("generation")


def _stray_temp_files(folder: Folder, now: float, max_age_hours: float) -> list[Leftover]:
    # The local store stages a manifest as `.manifest.json.<hex>.tmp` before its rename.
    return [
        Leftover("temp file", key, size, _age_hours(now, mtime))
        for key, size, mtime in folder.loose
        if key.rpartition("/")[2].startswith(".")
        and key.endswith(".tmp")
        and _age_hours(now, mtime) > max_age_hours
    ]


def _stale_uploads(store: S3Store, now: float, max_age_hours: float) -> list[Leftover]:
    """Unfinished multipart uploads idle for longer than the limit: started that long ago
    and no part since (a long upload still receiving parts belongs to a run in flight)."""
    base = store._full("")
    stale = []
    for full_key, upload_id, started in store.incomplete_uploads():
        if _age_hours(now, started) <= max_age_hours:
            continue
        key = full_key[len(base) :]
        last_part = store.upload_last_part_time(key, upload_id)
        idle_hours = _age_hours(now, max(started, last_part or started))
        if idle_hours > max_age_hours:
            stale.append(Leftover("multipart upload", key, 0, idle_hours, upload_id))
    return stale
