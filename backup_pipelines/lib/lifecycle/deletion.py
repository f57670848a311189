"""Deleting what retention decided: the artifacts a plan dooms, and the debris of crashed runs.

An artifact goes manifest first, so a half-deleted one is never taken for complete. Within a
partition the SQL dump's manifest goes after every index artifact's: a run interrupted
mid-way still holds the SQL dump, which restores on its own (the indexes can be rebuilt from
it), while index artifacts alone restore nothing. For the same reason an SQL dump stays when
an index artifact of its partition could not be deleted.

On a local folder that is one artifact at a time: its manifest, then each generation folder
the plan listed it with. On S3 many artifacts go together, 1,000 keys a DeleteObjects
request: the index manifests, then the SQL manifests, then every file (an artifact at a time
took ~4 requests and ~24 ms an artifact against a local S3 stand-in, each request a round
trip to a real S3). Without Object Lock the keys deleted are those the plan listed. With it,
the bucket is versioned and a key's delete only hides it behind a delete marker: the
artifacts' versions are listed (ListObjectVersions, a run of neighbouring artifact folders at
a time, not a listing per folder) and deleted by version id. S3 itself refuses every version
still under retention; an artifact whose manifest it refuses is kept whole and reported with
its retain-until (one HEAD), instead of reading every object's retention before deleting
(a listing and a HEAD per object: ~10 requests an artifact).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from backup_pipelines.lib.errors import StoreError
from backup_pipelines.lib.lifecycle.scan import Folder, Leftover
from backup_pipelines.lib.store import MANIFEST_NAME, ArtifactRef, BackupStore, S3Store
from backup_pipelines.lib.store.listing import ObjectVersion, iter_versions

SQL_ASSETS = ("postgres/workspace_dump", "postgres/full_dump")
HELD = "kept for now: an index artifact of its partition could not be deleted"
# Artifacts checked (keep markers, restores reading), then deleted, then logged together: on
# S3 ~2 requests for the manifests and one per 1,000 files (with Object Lock, listings of
# versions besides); an artifact at a time (a local folder), fewer, so the log shows progress.
BATCH_ARTIFACTS = 1000
BATCH_ONE_BY_ONE = 100
VERSION_LISTINGS = 8  # runs of artifact folders whose versions are listed at once
RUN_GAP = 4  # folders not being deleted that a run of doomed folders may span


@dataclass
class Outcome:
    """What became of the artifacts given to a delete: every one not named here is gone."""

    failed: dict[ArtifactRef, str] = field(default_factory=dict)  # why not (wholly) deleted
    held: dict[ArtifactRef, str] = field(default_factory=dict)  # SQL dumps kept (HELD)
    locked: dict[ArtifactRef, str] = field(default_factory=dict)  # kept whole: retain-until


def deletes_together(store: BackupStore) -> bool:
    """Whether `store` deletes many artifacts at once (delete_together)."""
    return isinstance(store, S3Store)


def delete_artifact(store: BackupStore, folder: Folder) -> None:
    """The manifest first, so the artifact never reads as complete once it is going; then
    the files the listing saw. Files written since the listing (a run in flight for the same
    partition) are left alone."""
    store._delete_prefix(f"{folder.ref.folder}/{MANIFEST_NAME}")
    for name in folder.generations:
        store._delete_prefix(f"{folder.ref.folder}/{name}/")
    for key, _size, _mtime in folder.loose:
        store._delete_prefix(key)
    store._remove_empty_folders(folder.ref.folder)


def delete_one_by_one(
    store: BackupStore, folders: Sequence[Folder], _neighbours: Sequence[str] = ()
) -> Outcome:
    """As delete_together, an artifact at a time (any store)."""
    outcome = Outcome()
    broken: set[tuple[str, str | None]] = set()
    for folder in folders:
        if folder.ref.asset in SQL_ASSETS and _partition_of(folder.ref) in broken:
            outcome.held[folder.ref] = HELD
            continue
        try:
            delete_artifact(store, folder)
        except StoreError as exc:
            outcome.failed[folder.ref] = str(exc)
            broken.add(_partition_of(folder.ref))
    return outcome


def delete_together(
    store: S3Store, folders: Sequence[Folder], neighbours: Sequence[str] = ()
) -> Outcome:
    """Delete these artifacts (in _deletion_order: a partition's SQL dump after its index
    artifacts) with as few requests as S3 allows: manifests of the index artifacts, then
    those of the SQL dumps (except where an index artifact of the partition was not
    deleted), then every file of the artifacts whose manifest went. `neighbours`: every
    artifact folder of the plan, sorted (artifact_order), so that in a versioned bucket the
    versions of neighbouring doomed folders are listed together."""
    if store.object_lock is None:
        return _staged(folders, lambda some: _delete_manifests(store, some),
                       lambda going: _delete_files(store, going))  # fmt: skip
    versions, unlisted = _versions_of(store, folders, neighbours)
    return _staged(folders, lambda some: _delete_manifest_versions(store, some, versions),
                   lambda going: _delete_file_versions(store, going, versions),
                   failed=unlisted)  # fmt: skip


def artifact_order(folder: str) -> str:
    """Sorting artifact folders by this puts them in the order S3 lists their keys."""
    return folder + "/"


def _staged(
    folders: Sequence[Folder], manifests, files, failed: dict[ArtifactRef, str] | None = None
) -> Outcome:
    """The three phases of delete_together; `manifests` returns, for the folders given, those
    not deleted with why, and those kept whole because of Object Lock; `files` the failures.
    `failed`: artifacts not to be tried at all (why)."""
    outcome = Outcome(failed=dict(failed or {}))
    indexes = [
        folder
        for folder in folders
        if folder.ref.asset not in SQL_ASSETS and folder.ref not in outcome.failed
    ]
    _record(outcome, *manifests(indexes))
    broken = {_partition_of(ref) for ref in (*outcome.failed, *outcome.locked)}
    outcome.held = {
        folder.ref: HELD
        for folder in folders
        if folder.ref.asset in SQL_ASSETS
        and _partition_of(folder.ref) in broken
        and folder.ref not in outcome.failed
    }
    stopped = {*outcome.failed, *outcome.held}
    sql = [f for f in folders if f.ref.asset in SQL_ASSETS and f.ref not in stopped]
    _record(outcome, *manifests(sql))
    stopped = {*outcome.failed, *outcome.held, *outcome.locked}
    outcome.failed.update(files([folder for folder in folders if folder.ref not in stopped]))
    return outcome


def _record(
    outcome: Outcome, failed: dict[ArtifactRef, str], locked: dict[ArtifactRef, str] | None = None
) -> None:
    outcome.failed.update(failed)
    outcome.locked.update(locked or {})


def _partition_of(ref: ArtifactRef) -> tuple[str, str | None]:
    return ref.date, ref.workspace


def _delete_manifests(
    store: S3Store, folders: Sequence[Folder]
) -> tuple[dict[ArtifactRef, str], dict[ArtifactRef, str]]:
    keys = {_manifest_key(folder): folder.ref for folder in folders}
    refused = store.delete_keys(list(keys)) if keys else {}
    return {keys[key]: f"its manifest: {why}" for key, why in refused.items() if key in keys}, {}


def _manifest_key(folder: Folder) -> str:
    return f"{folder.ref.folder}/{MANIFEST_NAME}"


def _delete_files(store: S3Store, folders: Sequence[Folder]) -> dict[ArtifactRef, str]:
    """Every file the plan listed in each folder (an S3 listing lists every object), the
    manifests being gone by now. A file written since the listing stays, a generation
    folder no manifest names: a later run cleans it as debris once old."""
    owner: dict[str, ArtifactRef] = {}
    for folder in folders:
        inside = f"{folder.ref.folder}/"
        manifest = inside + MANIFEST_NAME  # gone; one committed since by a re-run stays
        for key, _size, _tag in folder.objects:
            if key.startswith(inside) and key != manifest:
                owner[key] = folder.ref
    return _files_left(store.delete_keys(list(owner)), owner)


def _files_left(refused: dict[str, str], owner: dict[str, ArtifactRef]) -> dict[ArtifactRef, str]:
    """The artifacts (by the keys S3 refused, with why) whose manifest went and not all files."""
    failed: dict[ArtifactRef, str] = {}
    for key, why in refused.items():
        if key in owner:
            failed.setdefault(
                owner[key],
                f"its manifest is deleted, {key!r} and maybe more of its files are not ({why}); "
                "a later run cleans them as debris",
            )
    return failed


# -- versioned buckets (Object Lock) ---------------------------------------------------------


def _versions_of(
    store: S3Store, folders: Sequence[Folder], neighbours: Sequence[str]
) -> tuple[dict[str, list[ObjectVersion]], dict[ArtifactRef, str]]:
    """Every version under each folder (by folder name), listed a run at a time (_runs: one
    ListObjectVersions paging from a run's first folder on). Also the artifacts of runs whose
    listing failed, with why (nothing of them is deleted)."""
    found: dict[str, list[ObjectVersion]] = {folder.ref.folder: [] for folder in folders}
    runs = _runs(sorted(found, key=artifact_order), sorted(neighbours))
    unlisted: dict[str, str] = {}

    def list_run(run: list[str]) -> dict[str, list[ObjectVersion]]:
        try:
            return _list_run(store, run)
        except StoreError as exc:
            unlisted.update(dict.fromkeys(run, f"its versions could not be listed: {exc}"))
            return {}

    with ThreadPoolExecutor(max(1, min(VERSION_LISTINGS, len(runs)))) as pool:
        for listed in pool.map(list_run, runs):
            for name, versions in listed.items():
                found[name] += versions
    refs = {folder.ref.folder: folder.ref for folder in folders}
    return found, {refs[name]: why for name, why in unlisted.items()}


def _runs(doomed: list[str], neighbours: list[str]) -> list[list[str]]:
    """`doomed` (sorted by artifact_order) cut into runs: folders of one parent with at most
    RUN_GAP other folders of `neighbours` (sorted by artifact_order) between two of them,
    whose versions a run's listing pages through and leaves alone (~5 objects each, where a
    new run costs a request)."""
    runs: list[list[str]] = []
    position = None
    for name in doomed:
        index = bisect.bisect_left(neighbours, artifact_order(name))
        if not (index < len(neighbours) and neighbours[index] == artifact_order(name)):
            index = None  # not among the neighbours given: a run of its own
        near = index is not None and position is not None and index - position <= RUN_GAP + 1
        if runs and near and _parent(name) == _parent(runs[-1][-1]):
            runs[-1].append(name)
        else:
            runs.append([name])
        position = index
    return runs


def _parent(folder: str) -> str:
    return folder.rpartition("/")[0] + "/"


def _list_run(store: S3Store, run: list[str]) -> dict[str, list[ObjectVersion]]:
    """The versions under each folder of `run`: the first folder by its own prefix, then the
    rest by paging on from the first folder's last version under their parent, until past
    the last. A folder of which nothing was seen that way is listed on its own."""
    found: dict[str, list[ObjectVersion]] = defaultdict(list)
    first = run[0]
    found[first] = list(iter_versions(store, artifact_order(first)))
    rest = run[1:]
    if rest and found[first]:
        parent, wanted, end = _parent(first), set(rest), artifact_order(run[-1])
        last = found[first][-1]
        for version in iter_versions(store, parent, after=(last.key, last.version_id)):
            if version.key > end and not version.key.startswith(end):
                break
            name = parent + version.key[len(parent) :].partition("/")[0]
            if name in wanted:
                found[name].append(version)
    for name in rest:
        if not found[name]:
            found[name] = list(iter_versions(store, artifact_order(name)))
    return found


def _delete_manifest_versions(
    store: S3Store, folders: Sequence[Folder], versions: dict[str, list[ObjectVersion]]
) -> tuple[dict[ArtifactRef, str], dict[ArtifactRef, str]]:
    """Every version of each folder's manifest; those S3 refuses are kept whole and, when
    under retention, named with their retain-until (else failed)."""
    owner = {_manifest_key(folder): folder.ref for folder in folders}
    doomed = [  # a folder's versions are all under it: its manifest's are those of that key
        (version.key, version.version_id)
        for folder in folders
        for version in versions[folder.ref.folder]
        if version.key in owner
    ]
    refused = store.delete_versions(doomed) if doomed else {}
    keys = [key for key in refused if key in owner]
    failed: dict[ArtifactRef, str] = {}
    locked: dict[ArtifactRef, str] = {}
    if not keys:
        return failed, locked
    with ThreadPoolExecutor(min(VERSION_LISTINGS, len(keys))) as pool:
        untils = list(pool.map(lambda key: _locked_until(store, key), keys))
    for key, until in zip(keys, untils, strict=True):
        if until:
            locked[owner[key]] = until
        else:
            failed[owner[key]] = f"its manifest: {refused[key]}"
    return failed, locked


def _locked_until(store: S3Store, key: str) -> str:
    """The retain-until of `key` when it is still under retention, else "" (not locked, or
    its retention unreadable: the refusal is then reported as it came)."""
    try:
        until = store.retain_until_of(key)
    except StoreError:
        return ""
    return until.isoformat(timespec="seconds") if until and until > datetime.now(UTC) else ""


def _delete_file_versions(
    store: S3Store, folders: Sequence[Folder], versions: dict[str, list[ObjectVersion]]
) -> dict[ArtifactRef, str]:
    """Every version of the files each folder's listing showed, and the older versions of
    any other key under it; a key current now that the plan did not list (written since)
    stays. Delete markers go last, and only over keys none of whose versions S3 refused:
    removing one first would bring a refused version back as current."""
    owner: dict[str, ArtifactRef] = {}
    data: list[tuple[str, str]] = []
    markers: list[tuple[str, str]] = []
    for folder in folders:
        listed = {key for key, _size, _tag in folder.objects}
        manifest = _manifest_key(folder)  # its versions went in their phase
        for version in versions[folder.ref.folder]:
            written_since = version.is_latest and not version.delete_marker
            if version.key == manifest or (written_since and version.key not in listed):
                continue
            owner[version.key] = folder.ref
            (markers if version.delete_marker else data).append((version.key, version.version_id))
    refused = store.delete_versions(data) if data else {}
    markers = [(key, version) for key, version in markers if key not in refused]
    refused.update(store.delete_versions(markers) if markers else {})
    return _files_left(refused, owner)


def clean_leftover(store: BackupStore, leftover: Leftover) -> None:
    if leftover.upload_id is not None:
        assert isinstance(store, S3Store)
        store.abort_upload(leftover.key, leftover.upload_id)
        return
    store._delete_prefix(leftover.key)
    store._remove_empty_folders(leftover.key.rstrip("/").rpartition("/")[0])
