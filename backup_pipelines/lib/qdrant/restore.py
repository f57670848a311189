"""Putting a Qdrant collection back: recovered from its snapshot (uploaded with
priority=snapshot and the checksum), merged through a scratch collection, or rebuilt from
SQL rows by the policy's mapping.

What a real server does, and what is done about it here:
- It reads snapshots of its own or the previous minor version only: the backup's version is
  compared with the server's before anything is sent (versions.py).
- It keeps every uploaded file in the target collection's snapshots folder, beyond the API's
  reach once that collection is deleted: each upload has a unique name and is deleted right
  after its recovery, before any scratch collection is dropped.
- Recovering into an EXISTING collection keeps that collection's configuration and needs the
  snapshot's vectors parameters and shard number: a difference in those is refused before
  the upload, and any other difference (HNSW, optimizers, quantization, ...) is reported as
  `config_kept` in the result.
- Snapshots hold no aliases: after a recovery into a collection that did not exist, the
  aliases recorded at backup time are created again (never moving an alias that points
  elsewhere). A name that is an alias on the server is recovered through its collection.

Every function takes explicit source (the backed-up name) and target collection names, so a
caller can put one collection back under another name.
"""

from __future__ import annotations

import json
import logging
import secrets
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from backup_pipelines.lib.engines import Mode
from backup_pipelines.lib.errors import BackupError, EntriesRefused, Refusals
from backup_pipelines.lib.http import IndexStoreError
from backup_pipelines.lib.mapping import Row, batched
from backup_pipelines.lib.policy import IndexMapping
from backup_pipelines.lib.qdrant.client import unique_upload_name
from backup_pipelines.lib.qdrant.offline import SnapshotError, read_snapshot_config
from backup_pipelines.lib.qdrant.points import to_qdrant_point
from backup_pipelines.lib.qdrant.snapshot import restore_snapshot_file
from backup_pipelines.lib.qdrant.versions import IncompatibleVersion, refusal
from backup_pipelines.lib.scratch import ScratchFolder
from backup_pipelines.lib.store import ArtifactRef, BackupStore

log = logging.getLogger(__name__)

LABEL = "Qdrant"
# Answers that refuse what was sent (a malformed point), as opposed to a failing server.
REFUSAL_STATUSES = frozenset({400, 422})
MAX_REFUSED_POINTS = 100


class IncompatibleCollection(BackupError):
    """The existing target collection cannot take the backup's points: nothing was written."""


def recover_qdrant_collection(
    client,
    store: BackupStore,
    ref: ArtifactRef,
    source_collection: str,
    target_collection: str | None = None,
    *,
    restore_aliases: bool | None = None,
) -> dict:
    """Recover `target_collection` (default: the backed-up name) from the artifact's snapshot
    of `source_collection`, with priority=snapshot and the checksum.

    Returns {"recovered": points the snapshot holds} plus, when they apply,
    "aliases_restored", "aliases_left" (alias -> the collection it points at, left alone),
    "config_kept" (settings of the existing collection that differ from the backup's) and
    "upload_left" (an uploaded file that could not be deleted from the server).
    `restore_aliases` (default: when restoring under the backed-up name) re-creates the
    recorded aliases after a recovery into a collection that did not exist."""
    manifest = store.require_manifest(ref)
    described = described_collection(manifest, ref, source_collection)
    check_server_version(client, manifest, described, ref, source_collection)
    in_place = target_collection in (None, source_collection)
    target = recovery_target(client, described, target_collection or source_collection, in_place)
    existed = client.collection_exists(target)
    live_config = client.collection_info(target)["config"] if existed else None
    result: dict[str, Any] = {"recovered": described["points"]}
    with ScratchFolder("qdrant-recover") as scratch:
        local = scratch / "restore.snapshot"  # never a name taken from the manifest
        sha = restore_snapshot_file(store, ref, manifest, source_collection, local)
        if sha != described["sha256_uncompressed"]:
            raise BackupError(
                f"{ref}: snapshot of {source_collection} does not match the checksum taken at backup"
            )
        if live_config is not None:
            backup_config = described.get("config") or config_of_snapshot(local)
            result["config_kept"] = check_recoverable_into(
                live_config, backup_config, target, source_collection
            )
        result.update(upload_and_recover(client, target, local, sha, described["points"]))
    if not existed and (in_place if restore_aliases is None else restore_aliases):
        result.update(put_aliases_back(client, described.get("aliases", ()), target))
    return {key: value for key, value in result.items() if value or key == "recovered"}


def restore_from_snapshot(
    client,
    store: BackupStore,
    ref: ArtifactRef,
    collection: str,
    target: str,
    mode: Mode,
    refused: Refusals | None = None,
) -> dict:
    """Replace (or fill a missing collection) by recovering the snapshot; merge recovers into a
    scratch collection and copies over only the points the live one lacks (a point the live
    collection refuses goes to `refused`; without it, EntriesRefused once the others are in)."""
    if mode is Mode.REPLACE or not client.collection_exists(target):
        return {
            "source": "snapshot",
            **recover_qdrant_collection(client, store, ref, collection, target),
        }
    return merge_from_snapshot(client, store, ref, collection, target, refused)


def merge_from_snapshot(
    client,
    store: BackupStore,
    ref: ArtifactRef,
    collection: str,
    target: str,
    refused: Refusals | None = None,
) -> dict:
    """The points of the backed-up `collection` that `target` lacks, added to it through a
    scratch collection recovered beside it (removed again, with its uploaded file, whatever
    happens)."""
    scratch = f"{target}__restore_{secrets.token_hex(4)}"
    collected = refused if refused is not None else Refusals(LABEL, target)
    try:
        recover_qdrant_collection(client, store, ref, collection, scratch, restore_aliases=False)
        check_same_vectors(client, scratch, target)
        points = client.scroll(scratch)
        added, kept = upsert_missing_points(client, target, points, False, refused=collected)
    finally:
        if client.collection_exists(scratch):
            client.delete_collection(scratch)
    raise_unless_collected(collected, refused)
    return {"source": "snapshot", "added": added, "already_present": kept}


def rebuild_from_rows(
    client,
    target: str,
    rows: Iterator[Row],
    mapping: IndexMapping,
    refused: Refusals | None = None,
) -> dict:
    """The rows' points `target` lacks, added (the collection created when missing, sized by
    the first point). A row that cannot become a point, or a point Qdrant refuses, goes to
    `refused`; without it, EntriesRefused once the others are in."""
    collected = refused if refused is not None else Refusals(LABEL, target)
    points = points_of(rows, mapping, collected)
    added, kept = upsert_missing_points(client, target, points, True, mapping.distance, collected)
    raise_unless_collected(collected, refused)
    return {"source": "sql", "added": added, "already_present": kept}


def points_of(rows: Iterator[Row], mapping: IndexMapping, refused: Refusals) -> Iterator[dict]:
    """The rows as points; a row without a usable id or vector is refused by id, not fatal."""
    for row in rows:
        try:
            yield to_qdrant_point(row, mapping)
        except BackupError as error:
            refused.add(row.get(mapping.id_column), f"cannot be a point: {error}")


def upsert_missing_points(
    client,
    collection: str,
    points: Iterable[dict],
    create: bool,
    distance: str = "Cosine",
    refused: Refusals | None = None,
) -> tuple[int, int]:
    """Upsert the points whose id the collection lacks (newer points win); (added, kept).
    Points Qdrant refuses go to `refused` (isolated by splitting the batch); without it, the
    first refused batch is an error."""
    added = kept = 0
    for group in batched(iter(points), 256):
        if create and added + kept == 0 and not client.collection_exists(collection):
            client.create_collection(collection, size=len(group[0]["vector"]), distance=distance)
        present = client.existing_ids(collection, [p["id"] for p in group])
        missing = [
            {k: p[k] for k in ("id", "vector", "payload")} for p in group if p["id"] not in present
        ]
        if missing:
            added += upsert_isolating_refused(client, collection, missing, refused)
        kept += len(group) - len(missing)
    return added, kept


def upsert_isolating_refused(
    client, collection: str, points: list[dict], refused: Refusals | None
) -> int:
    """Upsert `points`; returns how many went in. Qdrant refuses a whole batch for one bad
    point (a wrong vector dimension...), so a refused batch is split in halves until the
    refused points stand alone: about 2 x log2(batch) requests per refused point, and at most
    MAX_REFUSED_POINTS refused points per collection are isolated (more is a mapping or
    collection problem, not a few bad rows)."""
    try:
        client.upsert_points(collection, points)
        return len(points)
    except IndexStoreError as error:
        if refused is None or error.status not in REFUSAL_STATUSES:
            raise
        if len(points) == 1:
            refused.add(points[0]["id"], error.reason)
            if refused.count > MAX_REFUSED_POINTS:
                raise EntriesRefused(
                    refused,
                    f"more than {MAX_REFUSED_POINTS} points refused, so the restore stopped "
                    "isolating them: this is a mapping or collection problem (vector size, "
                    "distance), not a few bad rows",
                ) from error
            return 0
    half = len(points) // 2
    return upsert_isolating_refused(
        client, collection, points[:half], refused
    ) + upsert_isolating_refused(client, collection, points[half:], refused)


def raise_unless_collected(collected: Refusals, caller_collects: Refusals | None) -> None:
    """A caller that passed no collector of its own gets the refusals as an error."""
    if caller_collects is None and collected.count:
        raise EntriesRefused(collected)


# ---------------------------------------------------------------------------------------------
# The steps of a recovery


def described_collection(manifest: dict, ref: ArtifactRef, collection: str) -> dict:
    described = manifest.get("collections", {}).get(collection)
    if not isinstance(described, dict):
        raise BackupError(f"{ref}: no snapshot of collection {collection!r} in this artifact")
    return described


def check_server_version(
    client, manifest: dict, described: dict, ref: ArtifactRef, collection: str
) -> None:
    """Refuse before anything is sent when the server cannot read the snapshot's storage."""
    backup_version = described.get("storage_version") or manifest.get("source", {}).get(
        "server_version"
    )
    server_version = client.server_version()
    reason = refusal(backup_version, server_version)
    if reason:
        raise IncompatibleVersion(
            f"{ref}: cannot recover {collection} on this Qdrant server (version {server_version}): "
            f"{reason}. Nothing was sent to the server."
        )


def recovery_target(client, described: dict, wanted: str, in_place: bool) -> str:
    """The collection a recovery into `wanted` goes into, by its own name: the server would
    recover an alias's collection anyway, but it keeps the uploaded file in a folder named
    after the alias, where no delete can reach it. Onto a server that has neither the name
    nor its old alias, a name backed up as an alias comes back as its collection (and the
    alias is created again afterwards)."""
    aliases = client.list_aliases()
    if wanted in aliases:
        return aliases[wanted]
    original = described.get("alias_of")
    if in_place and isinstance(original, str) and not client.collection_exists(wanted):
        return original
    return wanted


def upload_and_recover(client, target: str, local: Path, sha: str, points: int) -> dict:
    """Upload under a unique name, recover, then delete the uploaded file while `target` still
    exists (the server keeps it otherwise); {"upload_left": name} when it could not be."""
    name = unique_upload_name()
    try:
        client.recover_from_upload(
            target,
            local,
            checksum=sha,
            priority="snapshot",
            upload_name=name,
            expected_points=points,
        )
    finally:
        left = remove_upload(client, target, name)
    return {"upload_left": left} if left else {}


def remove_upload(client, collection: str, name: str) -> str | None:
    """Delete an uploaded snapshot file; the name of what is left behind, if anything."""
    try:
        if client.collection_exists(collection):
            client.delete_snapshot(collection, name)
            return None
    except IndexStoreError as error:
        if error.status == 404:
            return None  # not kept (refused before it was stored), or already gone
        log.error("Qdrant upload %s of %s not deleted: %s", name, collection, error)
        return f"{collection}/{name}"
    log.error(
        "Qdrant upload %s may stay in the server's snapshots folder %s/ (the collection does not "
        "exist, so the API cannot delete it): look there and remove it by hand",
        name,
        collection,
    )
    return f"{collection}/{name}"


def put_aliases_back(client, aliases: Iterable[str], collection: str) -> dict:
    """Create the recorded aliases of a collection recovered where it was missing; an alias
    that points at another collection (or a collection of that name) is left alone, so live
    traffic is never moved."""
    current = client.list_aliases()
    restored, left = [], {}
    for alias in aliases:
        if current.get(alias) == collection:
            continue
        if alias in current:
            left[alias] = current[alias]
        elif client.collection_exists(alias):
            left[alias] = alias
        else:
            client.upsert_alias(alias, collection)
            restored.append(alias)
    return {"aliases_restored": restored, "aliases_left": left}


# ---------------------------------------------------------------------------------------------
# Configurations


def config_of_snapshot(snapshot: Path) -> dict:
    """config.json of a snapshot file (for artifacts that did not record it)."""
    try:
        with tarfile.open(snapshot, "r:") as archive:
            return read_snapshot_config(archive)
    except (tarfile.TarError, OSError, SnapshotError) as error:
        raise BackupError(f"cannot read the configuration of {snapshot}: {error}") from error


def check_recoverable_into(live: dict, backup: dict, target: str, source: str) -> dict:
    """What a server keeps of an existing collection it recovers into: refuse unequal vectors
    or shard numbers (the server would); return the other settings that differ."""
    live_params, backup_params = live.get("params") or {}, backup.get("params") or {}
    for key, default in (("vectors", None), ("shard_number", 1)):
        ours = without_nulls(_or_default(live_params.get(key), default))
        theirs = without_nulls(_or_default(backup_params.get(key), default))
        if ours != theirs:
            raise IncompatibleCollection(
                f"collection {target} has {key} {json.dumps(ours, sort_keys=True)} but the "
                f"backup of {source} has {json.dumps(theirs, sort_keys=True)}: Qdrant recovers a "
                "snapshot only into a collection with the same vectors parameters and shard "
                f"number, so nothing was written. Delete {target} first, or restore into a "
                "collection of another name."
            )
    return differences(without_nulls(live), without_nulls(backup), skip={"params.vectors"})


def check_same_vectors(client, source: str, target: str) -> None:
    """Points of `source` can only go into `target` when their vectors are alike."""
    ours = without_nulls(client.collection_info(target)["config"]["params"].get("vectors"))
    theirs = without_nulls(client.collection_info(source)["config"]["params"].get("vectors"))
    if ours != theirs:
        raise IncompatibleCollection(
            f"collection {target} has vectors {json.dumps(ours, sort_keys=True)} but the "
            f"backup's have {json.dumps(theirs, sort_keys=True)}: its points cannot be merged "
            f"into {target}, so nothing was written. Restore in `replace` mode after deleting "
            f"{target}, or into a collection of another name."
        )


def _or_default(value: Any, default: Any) -> Any:
    return default if value is None else value


def without_nulls(value: Any) -> Any:
    """The same JSON value without null members: the server's two serialisations (config.json,
    and the REST answer) differ in which unset settings they spell out."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


CONFIG_SECTIONS = ("params", "hnsw_config", "optimizer_config", "quantization_config")


def differences(live: dict, backup: dict, skip: set[str]) -> dict:
    """{"hnsw_config.m": {"kept": 32, "backup": 16}} for settings both sides state."""
    found: dict = {}

    def walk(ours: Any, theirs: Any, path: str) -> None:
        if path in skip:
            return
        if isinstance(ours, dict) and isinstance(theirs, dict):
            for key in ours.keys() & theirs.keys():
                walk(ours[key], theirs[key], f"{path}.{key}" if path else key)
        elif ours != theirs:
            found[path] = {"kept": ours, "backup": theirs}

    for section in CONFIG_SECTIONS:
        if section in live and section in backup:
            walk(live[section], backup[section], section)
    return found
