"""Cross-store checks: each index artifact against the SQL dump of the same partition (clock
skew, counts, ids), with the verdict and its evidence in the UI."""

import dagster as dg

from backup_pipelines.defs.partitions import daily_by_workspace, date_and_workspace
from backup_pipelines.defs.resources import BackupStoreResource, PolicyResource
from backup_pipelines.lib.recovery.consistency import Outcome, evaluate_partition
from backup_pipelines.lib.store import ArtifactRef

SQL_ASSET = "postgres/workspace_dump"
SEVERITY = {
    Outcome.PASS: dg.AssetCheckSeverity.WARN,
    Outcome.REBUILD_INDEX: dg.AssetCheckSeverity.WARN,
}


def check_against_sql(store, policy, index_asset: str, partition_key: str) -> dg.AssetCheckResult:
    date, workspace = date_and_workspace(partition_key)
    refs = {asset: ArtifactRef(asset, date, workspace) for asset in (SQL_ASSET, index_asset)}
    manifests = {asset: store.read_manifest(ref) for asset, ref in refs.items()}
    absent = [asset for asset, manifest in manifests.items() if manifest is None]
    if absent:
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            description=f"no complete {', '.join(absent)} artifact for {date}|{workspace}: nothing to compare",
        )
    try:
        verdict = evaluate_partition(store, refs, manifests, policy)
    except ValueError as exc:  # the artifact lacks the table or id column the mapping names
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            description=f"cannot compare {index_asset} with {SQL_ASSET}: {exc}"[:2000],
        )
    return dg.AssetCheckResult(
        passed=verdict.outcome == Outcome.PASS,
        severity=SEVERITY.get(verdict.outcome, dg.AssetCheckSeverity.ERROR),
        description=verdict.summary()[:2000],
        metadata={
            "verdict": dg.MetadataValue.text(str(verdict.outcome)),
            "evidence": dg.MetadataValue.json(verdict.to_dict()),
        },
    )


def build_consistency_check(index_asset: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=dg.AssetKey(index_asset.split("/")),
        name="consistent_with_sql",
        partitions_def=daily_by_workspace,
        description=f"{index_asset} against {SQL_ASSET} of the same partition: PASS, REBUILD_INDEX or FAIL.",
    )
    def consistent_with_sql(
        context: dg.AssetCheckExecutionContext,
        backup_store: BackupStoreResource,
        policy: PolicyResource,
    ) -> dg.AssetCheckResult:
        return check_against_sql(
            backup_store.get_store(), policy.load(), index_asset, context.partition_key
        )

    return consistent_with_sql


def build_defs(index_assets: list[str]) -> dg.Definitions:
    return dg.Definitions(asset_checks=[build_consistency_check(asset) for asset in index_assets])
