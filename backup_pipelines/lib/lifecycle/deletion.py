"""Deleting what retention decided: the artifacts a plan dooms, and the debris of crashed runs.

An artifact goes manifest first, so a half-deleted one is never taken for complete. Within a
partition the SQL dump's manifest goes after every index artifact's: a run interrupted
mid-way still holds the SQL dump, which restores on its own (the indexes can be rebuilt from
it), while index artifacts alone restore nothing. For the same reason an SQL dump stays when
an index artifact of its partition could not be deleted.

On most stores that is one artifact at a time: its manifest, then each generation folder
the plan listed it with (on S3, a listing and a delete each: ~4 requests and ~24 ms an
artifact against a local S3 stand-in, each request a round trip to a real S3). On S3
without Object Lock, many artifacts go together by DeleteObjects of the very keys the plan
listed, 1,000 keys a request: the index manifests, then the SQL manifests, then every file.
"""

from __future__ import annotations

from collections.abc import Sequence

from backup_pipelines.lib.errors import StoreError
from backup_pipelines.lib.lifecycle.scan import Folder, Leftover
from backup_pipelines.lib.store import MANIFEST_NAME, ArtifactRef, BackupStore, S3Store

SQL_ASSETS = ("postgres/workspace_dump", "postgres/full_dump")
HELD = "kept for now: an index artifact of its partition could not be deleted"
# Artifacts checked (keep markers, restores reading, Object Lock), then deleted, then logged
# together: on S3 ~2 requests for the manifests and one per 1,000 files; an artifact at a
# time (up to ~0.1 s each on S3 with Object Lock), fewer, so the log shows progress.
BATCH_ARTIFACTS = 1000
BATCH_ONE_BY_ONE = 100


def deletes_together(store: BackupStore) -> bool:
    """Whether `store` deletes many artifacts at once (delete_together)."""
    return isinstance(store, S3Store) and store.object_lock is None


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
    store: BackupStore, folders: Sequence[Folder]
) -> tuple[dict[ArtifactRef, str], dict[ArtifactRef, str]]:
    """As delete_together, an artifact at a time (any store)."""
    failed: dict[ArtifactRef, str] = {}
    held: dict[ArtifactRef, str] = {}
    broken: set[tuple[str, str | None]] = set()
    for folder in folders:
        if folder.ref.asset in SQL_ASSETS and _partition_of(folder.ref) in broken:
            held[folder.ref] = HELD
            continue
        try:
            delete_artifact(store, folder)
        except StoreError as exc:
            failed[folder.ref] = str(exc)
            broken.add(_partition_of(folder.ref))
    return failed, held


def delete_together(
    store: S3Store, folders: Sequence[Folder]
) -> tuple[dict[ArtifactRef, str], dict[ArtifactRef, str]]:
    """Delete these artifacts (in _deletion_order: a partition's SQL dump after its index
    artifacts) with as few requests as S3 allows. Returns (failed, held): why each artifact
    that failed is not, or not wholly, deleted; and the SQL dumps left in place because an
    index artifact of their partition failed. Every other artifact is gone."""
    failed: dict[ArtifactRef, str] = {}
    indexes = [folder for folder in folders if folder.ref.asset not in SQL_ASSETS]
    failed.update(_delete_manifests(store, indexes))
    broken = {_partition_of(ref) for ref in failed}
    held = {
        folder.ref: HELD
        for folder in folders
        if folder.ref.asset in SQL_ASSETS and _partition_of(folder.ref) in broken
    }
    sql = [f for f in folders if f.ref.asset in SQL_ASSETS and f.ref not in held]
    failed.update(_delete_manifests(store, sql))
    going = [folder for folder in folders if folder.ref not in failed and folder.ref not in held]
    failed.update(_delete_files(store, going))
    return failed, held


def _partition_of(ref: ArtifactRef) -> tuple[str, str | None]:
    return ref.date, ref.workspace


def _delete_manifests(store: S3Store, folders: Sequence[Folder]) -> dict[ArtifactRef, str]:
    keys = {f"{folder.ref.folder}/{MANIFEST_NAME}": folder.ref for folder in folders}
    refused = store.delete_keys(list(keys)) if keys else {}
    return {keys[key]: f"its manifest: {why}" for key, why in refused.items() if key in keys}


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
    failed: dict[ArtifactRef, str] = {}
    for key, why in store.delete_keys(list(owner)).items():
        if key in owner:
            failed.setdefault(
                owner[key],
                f"its manifest is deleted, {key!r} and maybe more of its files are not ({why}); "
                "a later run cleans them as debris",
            )
    return failed


def clean_leftover(store: BackupStore, leftover: Leftover) -> None:
    if leftover.upload_id is not None:
        assert isinstance(store, S3Store)
        store.abort_upload(leftover.key, leftover.upload_id)
        return
    store._delete_prefix(leftover.key)
    store._remove_empty_folders(leftover.key.rstrip("/").rpartition("/")[0])
