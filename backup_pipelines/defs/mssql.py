"""SQL Server: the full (daily), differential (4-hourly) and log (15-minute) backups of the
platform's database as assets, each with a blocking check that re-reads the stored copy
(sha256) and has SQL Server verify it (RESTORE VERIFYONLY ... WITH CHECKSUM)."""

import dagster as dg

from backup_pipelines.defs.artifacts import (
    artifact_metadata,
    backup_freshness,
    copy_to_second_store,
    verify_artifact_check,
)
from backup_pipelines.defs.partitions import daily, date_and_window, every_4_hours, every_15_minutes
from backup_pipelines.defs.resources import BackupStoreResource, MssqlResource
from backup_pipelines.lib.mssql import backup
from backup_pipelines.lib.mssql.backupset import Kind
from backup_pipelines.lib.mssql.restore import ASSETS, read_catalog
from backup_pipelines.lib.store import ArtifactRef

PARTITIONS = {Kind.FULL: daily, Kind.DIFF: every_4_hours, Kind.LOG: every_15_minutes}
DESCRIPTIONS = {
    Kind.FULL: "The platform's SQL Server database, BACKUP DATABASE WITH COMPRESSION, CHECKSUM, daily.",
    Kind.DIFF: "Differential backup every 4 hours (a full instead when its base is missing from the store).",
    Kind.LOG: "Log backup every 15 minutes (skipped in SIMPLE recovery or before the first full).",
}


def ref_of(kind: Kind, partition_key: str) -> ArtifactRef:
    if kind is Kind.FULL:
        return ArtifactRef(ASSETS[kind], partition_key)
    date, window = date_and_window(partition_key)
    return ArtifactRef(ASSETS[kind], date, None, window)


def held_fulls(store) -> set[int]:
    """Checkpoint LSNs of the fulls the store holds: differentials build only on those."""
    catalog = read_catalog(store)
    return {b.checkpoint_lsn for b in catalog.backups if b.kind is Kind.FULL and not b.is_copy_only}


def build_backup_asset(kind: Kind) -> dg.AssetsDefinition:
    @dg.asset(
        key=dg.AssetKey(ASSETS[kind].split("/")),
        partitions_def=PARTITIONS[kind],
        group_name="mssql",
        kinds={"mssql"},
        freshness_policy=backup_freshness(ASSETS[kind]),
        output_required=False,
        description=DESCRIPTIONS[kind],
    )
    def mssql_backup(
        context: dg.AssetExecutionContext, mssql: MssqlResource, backup_store: BackupStoreResource
    ):
        import time

        store = backup_store.get_store()
        ref = ref_of(kind, context.partition_key)
        started = time.monotonic()
        with store.begin(ref) as writer:
            fields = backup.take_backup(
                mssql.connection_string, mssql.database(), kind, mssql.folders(), writer,
                held_fulls(store), log=context.log.info,
            )  # fmt: skip
            if fields is None:
                context.log.warning(f"{ref}: no backup taken (see the reason above)")
                return
            manifest = writer.commit(**fields)
        metadata = artifact_metadata(store, ref, manifest, time.monotonic() - started)
        metadata.update(copy_to_second_store(context, store, ref))
        header = manifest["header"]
        metadata.update(
            {
                "backup_type": dg.MetadataValue.text(header["type"]),
                "requested_type": dg.MetadataValue.text(manifest["tool"]["requested"]),
                "type_changed_because": dg.MetadataValue.text(manifest["tool"]["reason"] or "-"),
                "first_lsn": dg.MetadataValue.text(header["first_lsn"]),
                "last_lsn": dg.MetadataValue.text(header["last_lsn"]),
            }
        )
        yield dg.MaterializeResult(metadata=metadata)

    return mssql_backup


def build_verify_check(kind: Kind) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=dg.AssetKey(ASSETS[kind].split("/")),
        name="artifact_verifies",
        blocking=True,
        partitions_def=PARTITIONS[kind],
        description="The stored copy's sha256, then RESTORE VERIFYONLY ... WITH CHECKSUM of it.",
    )
    def artifact_verifies(
        context: dg.AssetCheckExecutionContext,
        mssql: MssqlResource,
        backup_store: BackupStoreResource,
    ):
        store = backup_store.get_store()
        ref = ref_of(kind, context.partition_key)
        result = verify_artifact_check(store, ref)
        if not result.passed:
            return result
        try:
            messages = backup.verify_stored_backup(
                mssql.connection_string, store, ref, store.require_manifest(ref), mssql.folders()
            )
        except Exception as exc:  # the server's refusal is the check's finding
            return dg.AssetCheckResult(
                passed=False, severity=dg.AssetCheckSeverity.ERROR, description=str(exc)[:2000],
                metadata=result.metadata,
            )  # fmt: skip
        return dg.AssetCheckResult(
            passed=True,
            metadata={
                **result.metadata,
                "verifyonly": dg.MetadataValue.text(" ".join(messages)[-500:]),
            },
        )

    return artifact_verifies


def build_mssql_defs(rpo_checked: bool = True) -> dg.Definitions:
    """The three backup assets, their checks, one job and one schedule each. The RPO sensor
    records the `rpo_met` checks (when `rpo_checked`), so a backup run leaves them out."""
    assets = [build_backup_asset(kind) for kind in Kind]
    checks = [build_verify_check(kind) for kind in Kind]
    jobs, schedules = [], []
    timing = {Kind.FULL: {"hour_of_day": 0, "minute_of_hour": 30}, Kind.DIFF: {}, Kind.LOG: {}}
    for kind in Kind:
        key = dg.AssetKey(ASSETS[kind].split("/"))
        selection = dg.AssetSelection.assets(key)
        if rpo_checked:
            selection -= dg.AssetSelection.checks(dg.AssetCheckKey(key, "rpo_met"))
        job = dg.define_asset_job(
            f"mssql_{kind}_backup_job",
            selection=selection,
            partitions_def=PARTITIONS[kind],
            description=f"SQL Server {kind} backup of one window.",
        )
        jobs.append(job)
        schedules.append(
            dg.build_schedule_from_partitioned_job(
                job,
                name=f"mssql_{kind}_backup",
                default_status=dg.DefaultScheduleStatus.RUNNING,
                **timing[kind],
            )
        )
    return dg.Definitions(assets=assets, asset_checks=checks, jobs=jobs, schedules=schedules)
