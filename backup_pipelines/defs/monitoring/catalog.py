"""The restore catalog: which dates each workspace can be restored to, at a glance.

`monitoring/restore_catalog` is materialized by `restore_catalog_job`, which the discovery
sensor requests when backups were committed or retention ran since the last refresh (and on
its first tick), or by "Materialize" in the UI. Its metadata: one summary table (a row per
workspace: in SQL or gone, newest and oldest restorable date, how many), the whole-database
dumps, and a table per workspace of its dates and what each holds. Read from listings of the
store (lib/recovery/catalog.py); `backup-pipelines list --restorable` prints the same.
"""

import dagster as dg

from backup_pipelines.defs.partitions import BACKUPS_START_DATE, workspaces
from backup_pipelines.defs.resources import BackupStoreResource, WorkspaceRegistryResource
from backup_pipelines.lib.errors import BackupError
from backup_pipelines.lib.recovery import catalog as catalog_lib

RESTORE_CATALOG = dg.AssetKey(["monitoring", "restore_catalog"])
CATALOG_JOB = "restore_catalog_job"
# Per-workspace tables shown; the summary table has every workspace (and the CLI every date).
MAX_WORKSPACE_TABLES = 50
MAX_SUMMARY_ROWS = 2000


def _column(name: str, kind: str = "string", description: str | None = None) -> dg.TableColumn:
    return dg.TableColumn(name, kind, description=description)


SUMMARY_COLUMNS = [
    _column("workspace"),
    _column(
        "in_sql",
        description="yes; gone: no longer in the SQL registry, backups kept; never: a "
        "partition never registered and never backed up (a typo: `workspaces remove`)",
    ),
    _column("newest_restorable", description="empty: none"),
    _column("oldest_restorable"),
    _column("restorable_dates", "int"),
    _column("partial_dates", "int", description="dates missing an artifact a restore needs"),
    _column("kept_dates", "int", description="held by a keep marker"),
]


def _in_sql_state(workspace: str, in_sql: set[str] | None, has_backups: bool) -> str | None:
    """yes; gone (SQL no longer lists it, the store holds its backups); never (a partition
    added by hand, no backup: `backup-pipelines workspaces remove`); empty without a registry."""
    if in_sql is None:
        return None
    if workspace in in_sql:
        return "yes"
    return "gone" if has_backups else "never"


def summary_rows(catalog: catalog_lib.Catalog, known: set[str], in_sql: set[str] | None) -> list:
    rows = []
    for workspace in sorted(set(catalog.workspaces()) | known):
        points = catalog.dates(workspace)
        restorable = catalog.restorable_dates(workspace)
        rows.append(
            {
                "workspace": workspace,
                "in_sql": _in_sql_state(workspace, in_sql, bool(points)),
                "newest_restorable": restorable[0] if restorable else None,
                "oldest_restorable": restorable[-1] if restorable else None,
                "restorable_dates": len(restorable),
                "partial_dates": len(points) - len(restorable),
                "kept_dates": sum(p.kept for p in points),
            }
        )
    return rows


def workspace_table(catalog: catalog_lib.Catalog, workspace: str) -> dg.MetadataValue:
    """Date, whether a restore can use it, which artifacts it holds."""
    columns = [_column("date"), _column("restore")]
    columns += [_column(asset) for asset in catalog.required]
    columns += [_column("kept")]
    records = []
    for point in catalog.dates(workspace):
        missing = point.missing(catalog.required)
        how = "UI or CLI" if point.date >= BACKUPS_START_DATE else "CLI only"
        record = {
            "date": point.date,
            # Before partitions_start the date has no partition: the command line restores it.
            "restore": f"partial: missing {', '.join(missing)}" if missing else how,
            "kept": "kept" if point.kept else None,
        }
        record.update({a: "yes" if a in point.assets else None for a in catalog.required})
        records.append(dg.TableRecord(record))
    return dg.MetadataValue.table(records=records, schema=dg.TableSchema(columns=columns))


def whole_database_table(catalog: catalog_lib.Catalog, assets: list[str]) -> dg.MetadataValue:
    columns = [_column("date"), *(_column(a) for a in assets), _column("kept")]
    records = [
        dg.TableRecord(
            {
                "date": p.date,
                **{a: "yes" if a in p.assets else None for a in assets},
                "kept": "kept" if p.kept else None,
            }
        )
        for p in catalog.dates(catalog_lib.WHOLE_DATABASE)
    ]
    return dg.MetadataValue.table(records=records, schema=dg.TableSchema(columns=columns))


def catalog_metadata(
    catalog: catalog_lib.Catalog,
    known: set[str],
    in_sql: set[str] | None,
    whole_database_assets: list[str],
) -> dict:
    rows = summary_rows(catalog, known, in_sql)
    metadata: dict = {
        "workspaces": dg.MetadataValue.int(len(rows)),
        "workspaces_restorable": dg.MetadataValue.int(
            sum(bool(r["restorable_dates"]) for r in rows)
        ),
        "workspaces_gone_from_sql": dg.MetadataValue.int(sum(r["in_sql"] == "gone" for r in rows)),
        "partitions_start": dg.MetadataValue.text(BACKUPS_START_DATE),
        "restorable": dg.MetadataValue.table(
            records=[dg.TableRecord(r) for r in rows[:MAX_SUMMARY_ROWS]],
            schema=dg.TableSchema(columns=SUMMARY_COLUMNS),
        ),
    }
    if whole_database_assets:
        metadata["whole_database"] = whole_database_table(catalog, whole_database_assets)
    for row in rows[:MAX_WORKSPACE_TABLES]:
        metadata[f"dates of {row['workspace']}"] = workspace_table(catalog, row["workspace"])
    if len(rows) > MAX_WORKSPACE_TABLES:
        metadata["more"] = dg.MetadataValue.text(
            f"{len(rows) - MAX_WORKSPACE_TABLES} more workspaces: "
            "backup-pipelines list --restorable --workspace W"
        )
    return metadata


def build_catalog_defs(
    workspace_assets: list[str], whole_database_assets: list[str]
) -> dg.Definitions:
    @dg.asset(
        key=RESTORE_CATALOG,
        group_name="monitoring",
        description="Restorable points at a glance: per workspace, the dates the store can "
        "restore it to and what each date holds (refreshed by the discovery sensor after "
        "backups and retention).",
    )
    def restore_catalog(
        context: dg.AssetExecutionContext,
        backup_store: BackupStoreResource,
        workspace_registry: WorkspaceRegistryResource,
    ) -> dg.MaterializeResult:
        found = catalog_lib.build_catalog(
            backup_store.get_store(), workspace_assets, whole_database_assets
        )
        known = set(context.instance.get_dynamic_partitions(workspaces.name))
        try:
            in_sql = workspace_registry.workspaces() if workspace_registry.source else None
        except BackupError as exc:  # the catalog is the store's; SQL only adds a column
            context.log.warning(f"workspace registry unreadable, in_sql left empty: {exc}")
            in_sql = None
        metadata = catalog_metadata(found, known, in_sql, whole_database_assets)
        context.log.info(
            f"{metadata['workspaces'].value} workspaces, "
            f"{metadata['workspaces_restorable'].value} restorable"
        )
        return dg.MaterializeResult(metadata=metadata)

    job = dg.define_asset_job(
        CATALOG_JOB,
        selection=[RESTORE_CATALOG],
        description="Refresh the restore catalog from the store.",
    )
    return dg.Definitions(assets=[restore_catalog], jobs=[job])
