"""Wiring shared by every backup asset: write to the store, commit, describe, verify."""

import logging
import time
from collections.abc import Callable

import dagster as dg

from backup_pipelines.defs.partitions import date_and_workspace
from backup_pipelines.defs.resources import BackupStoreResource
from backup_pipelines.lib.errors import ConfigError
from backup_pipelines.lib.store import ArtifactRef, ArtifactWriter, BackupStore
from backup_pipelines.lib.store.copy import FAILED, copy_one, copy_store_from_env
from backup_pipelines.lib.timeouts import lease_wait_seconds


def run_owner(context) -> str:
    """Who holds a lease taken by a Dagster run: what `backup-pipelines lease list` shows."""
    return f"dagster run {context.run_id}"


def artifact_metadata(store: BackupStore, ref: ArtifactRef, manifest: dict, seconds: float) -> dict:
    """What an operator reads in the UI: where, how big, how many, how long, how fast."""
    total_bytes = sum(f["bytes"] for f in manifest["files"])
    rows = manifest.get("counts", {}).get("rows", {})
    metadata: dict = {
        "location": dg.MetadataValue.text(store.location(ref)),
        "bytes": dg.MetadataValue.int(total_bytes),
        "size_mb": dg.MetadataValue.float(round(total_bytes / 1e6, 3)),
        "files": dg.MetadataValue.int(len(manifest["files"])),
        "sha256": dg.MetadataValue.json({f["name"]: f["sha256"] for f in manifest["files"]}),
        "captured_at": dg.MetadataValue.text(manifest["captured_at"]),
        "duration_seconds": dg.MetadataValue.float(round(seconds, 3)),
        "throughput_mb_per_s": dg.MetadataValue.float(
            round(total_bytes / 1e6 / max(seconds, 1e-6), 2)
        ),
        "source": dg.MetadataValue.json(manifest.get("source", {})),
        "tool": dg.MetadataValue.json(manifest.get("tool", {})),
    }
    key_ids = sorted({f["encryption"]["key_id"] for f in manifest["files"] if f.get("encryption")})
    metadata["encryption"] = dg.MetadataValue.text(  # the key id only, never a key
        f"aes-256-gcm, key {', '.join(key_ids)}" if key_ids else "off"
    )
    if isinstance(rows, dict) and rows:
        metadata["rows_per_table"] = dg.MetadataValue.json(rows)
        metadata["dagster/row_count"] = dg.MetadataValue.int(sum(rows.values()))
    for name, value in manifest.get("counts", {}).items():
        if isinstance(value, int) and name != "tables":
            metadata[name] = dg.MetadataValue.int(value)
    return metadata


def write_artifact(
    context: dg.AssetExecutionContext,
    store: BackupStore,
    ref: ArtifactRef,
    produce: Callable[[ArtifactWriter], dict],
) -> dg.MaterializeResult:
    """Run `produce` against a fresh writer and commit; anything raised leaves no manifest.
    The partition's lease (its workspace's; the whole database's for a full backup) is held
    throughout, so a restore reading this partition never sees it replaced underneath."""
    context.log.info(f"backing up {ref} into {store.describe()}")
    with store.lease(
        ref.workspace, "backup", run_owner(context), log=context.log.info, wait=lease_wait_seconds()
    ) as held:
        started = time.monotonic()
        with store.begin(ref) as writer:
            fields = produce(writer)
            held.ensure_held()  # never commit over a restore that took the partition from us
            manifest = writer.commit(**fields)
        seconds = time.monotonic() - started
        copied = copy_to_second_store(context, store, ref)  # still under the lease
    metadata = artifact_metadata(store, ref, manifest, seconds)
    metadata.update(copied)
    context.log.info(
        f"committed {ref}: {metadata['bytes'].value:,} bytes in {len(manifest['files'])} file(s), "
        f"{seconds:.1f} s"
    )
    return dg.MaterializeResult(metadata=metadata)


def copy_to_second_store(context, store: BackupStore, ref: ArtifactRef) -> dict:
    """The committed artifact copied to BACKUP_COPY_STORE_URL, when set. A failed copy does
    not fail the backup (the primary is committed and verified): it is logged and recorded,
    the copy RPO alert names the copy store when it stays behind, and `backup-pipelines copy
    --all-missing` (or the next backup) catches up."""
    try:
        target = copy_store_from_env()
    except ConfigError as exc:
        context.log.warning(f"{ref}: not copied: {exc}")
        return {"copy": dg.MetadataValue.text(f"failed: {exc}")}
    if target is None:
        return {}
    result = copy_one(store, target, ref, context.log.info)
    if result.outcome == FAILED:
        context.log.warning(f"{ref}: the copy to {target.describe()} failed: {result.detail}")
    return {
        "copy_store": dg.MetadataValue.text(target.location(ref)),
        "copy": dg.MetadataValue.text(
            result.outcome + (f": {result.detail[:500]}" if result.detail else "")
        ),
    }


def verify_artifact_check(store: BackupStore, ref: ArtifactRef) -> dg.AssetCheckResult:
    """Re-read every file of the committed artifact against its manifest."""
    result = store.verify(ref)
    return dg.AssetCheckResult(
        passed=result.ok,
        severity=dg.AssetCheckSeverity.ERROR,
        description=None if result.ok else "; ".join(result.problems)[:2000],
        metadata={
            "location": dg.MetadataValue.text(store.location(ref)),
            "files_verified": dg.MetadataValue.int(result.files),
            "bytes_verified": dg.MetadataValue.int(result.bytes),
            "seconds": dg.MetadataValue.float(round(result.seconds, 3)),
            "problems": dg.MetadataValue.json(result.problems),
        },
    )


def build_verify_check(
    asset_path: str, partitions_def: dg.PartitionsDefinition
) -> dg.AssetChecksDefinition:
    """The blocking `artifact_verifies` check of a backup asset: every file re-read against
    the manifest's sha256; a failure stops the run's downstream steps."""
    per_workspace = isinstance(partitions_def, dg.MultiPartitionsDefinition)

    @dg.asset_check(
        asset=dg.AssetKey(asset_path.split("/")),
        name="artifact_verifies",
        blocking=True,
        partitions_def=partitions_def,
        description="Every file of the committed artifact re-read against the manifest's sha256 "
        "(blocking: a failure stops the run's later steps).",
    )
    def artifact_verifies(
        context: dg.AssetCheckExecutionContext, backup_store: BackupStoreResource
    ):
        if per_workspace:
            ref = ArtifactRef(asset_path, *date_and_workspace(context.partition_key))
        else:
            ref = ArtifactRef(asset_path, context.partition_key)
        return verify_artifact_check(backup_store.get_store(), ref)

    return artifact_verifies


_REPORTED: set[str] = set()


def backup_freshness(asset: str = "") -> dg.FreshnessPolicy:
    """The UI's coarse freshness indicator (per asset, not per workspace: the RPO sensor is the
    per-workspace truth): warn past the asset's RPO, fail past RPO + grace."""
    from datetime import timedelta

    from backup_pipelines.lib.errors import ConfigError
    from backup_pipelines.lib.policy import Policy, load_policy

    try:
        policy = load_policy()
    except ConfigError as exc:
        # The code location still loads: every run and sensor that reads the policy fails
        # with this same error (and the run alert sensor alerts on those runs), so the
        # operator sees the problem named, not a location that will not load.
        if str(exc) not in _REPORTED:  # once, not once per asset
            _REPORTED.add(str(exc))
            logging.getLogger("backup_pipelines").error(f"{exc} — backups fail until it is fixed")
        policy = Policy()
    hours, grace_minutes = policy.rpo_for(asset)
    rpo = timedelta(hours=hours)
    return dg.FreshnessPolicy.time_window(
        fail_window=rpo + timedelta(minutes=grace_minutes), warn_window=rpo
    )
