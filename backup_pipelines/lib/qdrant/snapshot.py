"""Qdrant backup of one workspace: a snapshot per collection, downloaded once and teed into the
store and into a local scratch file; the scratch copy is checked against the server's sha256 and its
point ids are listed (for the consistency gate) from its segments' id-tracker files, with flat
memory (segment_ids.py; Qdrant's own engine reads the layouts that reader does not parse). The
server-side snapshot is always deleted afterwards.

Names are taken the way the server takes them: a configured name that is an alias is
snapshotted through its collection (recorded as `alias_of`), and the aliases pointing at each
collection are recorded, so a restore onto a fresh server can put them back.

Clusters: a collection snapshot holds only the shards of the node that takes it. A backup
through a node of a multi-node cluster that lacks an active replica of some shard is refused
with the shards and peers named, rather than committed with part of the points.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from backup_pipelines.lib.errors import BackupError
from backup_pipelines.lib.http import IndexStoreError, public_host
from backup_pipelines.lib.scratch import ScratchFolder
from backup_pipelines.lib.store import ArtifactWriter, utc_now_iso
from backup_pipelines.lib.streams import Log, Progress, iter_decompressed, zstd_compressing

QDRANT_COLLECTIONS_FILE = "collections.json"


def snapshot_file(collection: str) -> str:
    return f"{collection}.snapshot.zst"


def point_ids_file(collection: str) -> str:
    return f"{collection}.point_ids.txt.zst"


def snapshot_qdrant_collections(
    client, base_url: str, collections: list[str], writer: ArtifactWriter, log: Log | None = None
) -> dict:
    """Snapshot every collection of a workspace into `writer`; returns the manifest fields."""
    described = {}
    aliases = client.list_aliases()
    resolved = {name: aliases.get(name, name) for name in collections}
    present = {name: real for name, real in resolved.items() if client.collection_exists(real)}
    missing = [name for name in collections if name not in present]
    check_whole_collections_here(client, base_url, sorted(set(present.values())))
    for collection, real in present.items():
        with ScratchFolder("qdrant-snapshot", log=log) as scratch:
            described[collection] = _snapshot_one(
                client, collection, real, aliases, writer, scratch, log
            )
    writer.write_bytes(
        QDRANT_COLLECTIONS_FILE, json.dumps(described, indent=2, sort_keys=True).encode()
    )
    created = [
        d["snapshot"]["creation_time"]
        for d in described.values()
        if d["snapshot"].get("creation_time")
    ]
    return {
        # The newest snapshot of the workspace: the conservative side for the skew check.
        "captured_at": _as_utc_iso(max(created)) if created else utc_now_iso(),
        "collections": described,
        "collections_missing": missing,
        "counts": {
            "points": sum(d["points"] for d in described.values()),
            "points_per_collection": {c: d["points"] for c, d in described.items()},
        },
        "source": {
            "kind": "qdrant",
            "server": public_host(base_url),
            "server_version": client.server_version(),
            "collections": collections,
        },
        "tool": {
            "name": "qdrant collection snapshot",
            "compression": "zstd level 1",
            # Point ids: the segments' id-tracker files, or qdrant-edge for layouts not parsed
            # (each collection's `point_ids_read_from` says which).
            "offline_reader": "id-tracker files / qdrant-edge",
        },
    }


def _as_utc_iso(value: str) -> str:
    """Qdrant's creation_time has no zone and is UTC: make that explicit."""
    return value if value.endswith("Z") or "+" in value[10:] else value + "Z"


def check_whole_collections_here(client, base_url: str, collections: list[str]) -> None:
    """Refuse when the node behind `base_url` is one peer of a cluster and lacks an active
    replica of some shard of these collections: its snapshots would miss those points."""
    try:
        mode = client.cluster_status().get("status")
    except IndexStoreError:
        # A collection-scoped key may not read /cluster (403): look at each collection.
        mode = "unknown"
    if mode == "disabled":
        return  # a single node holds every shard of every collection
    for collection in collections:
        info = client.collection_cluster_info(collection)
        active_here = {s["shard_id"] for s in info["local_shards"] if s["state"] == "Active"}
        elsewhere: dict[int, set] = {}
        for shard in info["remote_shards"]:
            if shard["shard_id"] not in active_here:
                elsewhere.setdefault(shard["shard_id"], set()).add(shard["peer_id"])
        if not elsewhere:
            continue
        placement = "; ".join(
            f"shard {shard} on peer(s) {', '.join(map(str, sorted(peers)))}"
            for shard, peers in sorted(elsewhere.items())
        )
        raise BackupError(
            f"Qdrant at {public_host(base_url)} is peer {info['peer_id']} of a cluster and holds "
            f"no active replica of {len(elsewhere)} of the {info['shard_count']} shards of "
            f"collection {collection} ({placement}): a snapshot taken through it would miss "
            "their points, so nothing was backed up. Point QDRANT_URL at a peer that holds an "
            "active replica of every shard (set the collection's replication_factor to the "
            "number of peers, or move the shards there), then run the backup again."
        )


def _snapshot_one(
    client,
    collection: str,
    real: str,
    aliases: dict[str, str],
    writer: ArtifactWriter,
    scratch: Path,
    log: Log | None,
) -> dict:
    """`collection` as configured, snapshotted through `real` (itself, or the collection the
    alias `collection` points at)."""
    from backup_pipelines.lib.qdrant.segment_ids import write_snapshot_point_ids

    snapshot = client.create_snapshot(real)
    local_copy = scratch / "download.snapshot"  # never a name the server chose
    try:
        raw_sha = _download_tee(client, collection, real, snapshot["name"], writer, local_copy, log)
    finally:
        with contextlib.suppress(Exception):  # a leftover server snapshot only costs disk
            client.delete_snapshot(real, snapshot["name"])
    if snapshot.get("checksum") and raw_sha != snapshot["checksum"]:
        raise BackupError(
            f"Qdrant snapshot {snapshot['name']} of {collection}: downloaded sha256 {raw_sha[:16]}... "
            f"differs from the server's {snapshot['checksum'][:16]}... (download damaged); not committed"
        )
    with (
        writer.open_file(point_ids_file(collection)) as out,
        zstd_compressing(out) as compressed,
    ):
        listed = write_snapshot_point_ids(local_copy, compressed.write, scratch, log_line=log)
    points, config, storage_version = listed.points, listed.config, listed.storage_version
    described = {
        "snapshot": snapshot,
        "sha256_uncompressed": raw_sha,
        "points": points,
        # Snapshots leave aliases out: the ones pointing at the collection, to put back.
        "aliases": sorted(alias for alias, target in aliases.items() if target == real),
        # What a recovery into an existing collection is checked against, and by which
        # server version the snapshot can be read.
        "config": {key: value for key, value in config.items() if key != "uuid"},
        "storage_version": storage_version,
        "point_ids_read_from": listed.reader
        + (f" ({listed.fallback_reason})" if listed.fallback_reason else ""),
    }
    if real != collection:
        described["alias_of"] = real
    return described


def _download_tee(
    client,
    collection: str,
    real: str,
    name: str,
    writer: ArtifactWriter,
    local_copy: Path,
    log: Log | None,
) -> str:
    """Stream the snapshot into the store (zstd) and a local file at once; returns its sha256."""
    digest = hashlib.sha256()
    progress = Progress(f"qdrant snapshot {collection}", log)
    with open(local_copy, "wb") as local, writer.open_file(snapshot_file(collection)) as out:
        with zstd_compressing(out) as compressed:
            for chunk in client.stream_snapshot(real, name):
                digest.update(chunk)
                local.write(chunk)
                compressed.write(chunk)
                progress.add(bytes_in=len(chunk))
        progress.add(bytes_out=out.bytes_written)
    if log:
        log(progress.line())
    return digest.hexdigest()


@dataclass
class OfflineCheck:
    ok: bool
    points: dict[str, int]
    problems: list[str]


def restore_snapshot_file(store, ref, manifest: dict, collection: str, target: Path) -> str:
    """Decompress a collection's snapshot from the store to `target`; returns its sha256.

    The store reader verifies the stored file's sha256 as it streams; the returned digest of
    the uncompressed bytes is checked against the server's checksum by the callers.
    """
    digest = hashlib.sha256()
    with (
        store.open_file(ref, manifest, snapshot_file(collection)) as reader,
        open(target, "wb") as out,
    ):
        for chunk in iter_decompressed(reader):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def verify_snapshots_offline(store, ref) -> OfflineCheck:
    """Open every snapshot of a Qdrant artifact with Qdrant's engine and count its points."""
    from backup_pipelines.lib.qdrant.offline import read_snapshot_offline

    manifest = store.require_manifest(ref)
    points: dict[str, int] = {}
    problems: list[str] = []
    for collection, described in manifest.get("collections", {}).items():
        with ScratchFolder("qdrant-check") as scratch:
            local = scratch / "collection.snapshot"
            try:
                sha = restore_snapshot_file(store, ref, manifest, collection, local)
                if sha != described["sha256_uncompressed"]:
                    problems.append(
                        f"{collection}: snapshot sha256 differs from the one downloaded"
                    )
                    continue
                with read_snapshot_offline(local, scratch) as offline:
                    points[collection] = offline.points
            except BackupError as exc:
                problems.append(f"{collection}: {exc}")
                continue
        if points[collection] != described["points"]:
            problems.append(
                f"{collection}: {points[collection]} points offline, manifest says {described['points']}"
            )
    return OfflineCheck(not problems, points, problems)
