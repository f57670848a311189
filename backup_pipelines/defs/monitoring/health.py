"""The backup health report: per workspace, the age of its last backup against the RPO and its
last restore drill against the RTO, as one table an operator reads in the UI.

The RPO sensor materializes it at every tick from the evaluation it just made (no run, no
second look at the store), so it exists from the first tick and is never older than five
minutes; "Materialize" in the UI computes it in a run, searching the store as far back as
retention keeps anything (real ages for long-late workspaces instead of "none in 3 days").
Whole-database backups (the full dump, SQL Server, the WAL archive) are a table of their own;
workspaces the SQL registry no longer lists are rows saying so. Empty cells mean "none".
"""

import dagster as dg

from backup_pipelines.defs import pitr as pitr_defs
from backup_pipelines.defs.monitoring import rpo as rpo_defs
from backup_pipelines.defs.resources import (
    BackupStoreResource,
    PolicyResource,
    WorkspaceRegistryResource,
)
from backup_pipelines.lib.monitoring import rpo, rpo_copy
from backup_pipelines.lib.policy import Policy
from backup_pipelines.lib.store.copy import copy_store_from_env

HEALTH_REPORT = dg.AssetKey(["monitoring", "backup_health_report"])
RESTORE_DRILL = dg.AssetKey(["monitoring", "restore_drill"])
# Weekly drills: a quarter of history finds the last drill of every sampled workspace.
DRILL_EVENTS_READ = 13
NOT_IN_SQL = "NOT IN SQL"
MAX_ROWS = 2000  # the table stays loadable; the counts cover every workspace

WORKSPACE_COLUMNS = [
    dg.TableColumn("workspace", "string"),
    dg.TableColumn(
        "rpo",
        "string",
        description="OK, LATE (past RPO + grace), NOT IN SQL (vanished, or a partition "
        "never registered: not watched; restore_catalog and `backup-pipelines workspaces list` "
        "tell which)",
    ),
    dg.TableColumn("age_hours", "float", description="its oldest-lagging backup; empty: none"),
    dg.TableColumn("newest_backup", "string", description="date of that backup"),
    dg.TableColumn("late", "string", description="the late assets"),
    dg.TableColumn("drill", "string", description="OK, FAILED, RTO MISSED or NEVER"),
    dg.TableColumn("drill_date", "string", description="date restored by the last drill"),
    dg.TableColumn("drill_seconds", "float", description="measured RTO"),
    dg.TableColumn("copy", "string", description="the copy store: OK, or LATE and how far behind"),
]
WHOLE_DATABASE_COLUMNS = [
    dg.TableColumn("backup", "string"),
    dg.TableColumn("rpo", "string", description="OK or LATE"),
    dg.TableColumn("age_hours", "float", description="empty: none"),
    dg.TableColumn("newest_backup", "string"),
    dg.TableColumn("copy", "string", description="the copy store: OK, or LATE and how far behind"),
]


def last_drills(instance: dg.DagsterInstance) -> dict[str, dict]:
    """The most recent drill result per workspace, from the drill asset's materializations
    and observations (a failed drill records an observation before failing its run)."""
    events = []
    for fetch in (instance.fetch_materializations, instance.fetch_observations):
        events += fetch(RESTORE_DRILL, limit=DRILL_EVENTS_READ).records
    latest: dict[str, dict] = {}
    for record in sorted(events, key=lambda r: r.timestamp):
        metadata = record.asset_event.metadata if record.asset_event else {}
        results = metadata.get("results")
        for result in (results.value if results is not None else None) or []:
            if isinstance(result, dict) and result.get("workspace"):
                latest[result["workspace"]] = result
    return latest


def drill_state(result: dict | None) -> str:
    if result is None:
        return "NEVER"
    if not result.get("passed"):
        return "FAILED"
    return "OK" if result.get("met_rto") else "RTO MISSED"


def _age(items: list[rpo.Freshness]) -> tuple[float | None, str | None]:
    """The oldest-lagging backup's age and date; (None, None) when one has none at all."""
    if any(i.age_hours is None for i in items):
        return None, None
    worst = max(items, key=lambda i: i.age_hours)
    return round(worst.age_hours, 2), worst.newest_date


def _late(items: list[rpo.Freshness]) -> str | None:
    late = [
        i.asset if i.age_hours is not None else f"{i.asset} (none in {i.searched_days} days)"
        for i in items
        if i.late
    ]
    return ", ".join(late) or None


def copy_states(primary: rpo.Evaluation, copy: rpo.Evaluation | None) -> dict[str, str]:
    """Per workspace (None: the whole-database assets, by asset): empty without a copy store,
    OK, or LATE naming how far each asset's copy is behind."""
    if copy is None:
        return {}
    by_key = {item.key: item for item in primary.items}
    states: dict[str, list[str]] = {}
    for item in copy.items:
        lines = states.setdefault(item.workspace or item.asset, [])
        if item.late:
            lines.append(f"{item.asset}: {rpo_copy.describe(by_key.get(item.key), item)}")
    return {w: ("LATE " + "; ".join(lines)) if lines else "OK" for w, lines in states.items()}


def workspace_rows(
    evaluation: rpo.Evaluation,
    drills: dict[str, dict],
    gone: list[str] = (),
    copies: dict[str, str] | None = None,
) -> list[dict]:
    """A row per workspace the RPO was evaluated for, then one per partition SQL does not list
    (told apart from its store only by the discovery sensor and the restore catalog: judging
    each here would cost listings every RPO tick)."""
    copies = copies or {}
    by_workspace: dict[str, list[rpo.Freshness]] = {}
    for item in evaluation.items:
        if item.workspace is not None:
            by_workspace.setdefault(item.workspace, []).append(item)
    rows = []
    for workspace, items in sorted(by_workspace.items()):
        age, newest = _age(items)
        drill = drills.get(workspace)
        late = _late(items)
        rows.append(
            {
                "workspace": workspace,
                "rpo": "LATE" if late else "OK",
                "age_hours": age,
                "newest_backup": newest,
                "late": late,
                "drill": drill_state(drill),
                "drill_date": (drill or {}).get("date") or None,
                "drill_seconds": (
                    round(float(drill["seconds"]), 2) if drill and "seconds" in drill else None
                ),
                "copy": copies.get(workspace),
            }
        )
    for workspace in sorted(gone):
        drill = drills.get(workspace)
        rows.append(
            {
                "workspace": workspace,
                "rpo": NOT_IN_SQL,
                "age_hours": None,
                "newest_backup": None,
                "late": None,
                "drill": drill_state(drill) if drill else None,
                "drill_date": (drill or {}).get("date") or None,
                "drill_seconds": None,
                "copy": copies.get(workspace),
            }
        )
    return rows


def whole_database_rows(
    evaluation: rpo.Evaluation, policy: Policy, copies: dict[str, str] | None = None
) -> list[dict]:
    """A row per whole-database backup asset, and the WAL archive's when PITR is configured."""
    copies = copies or {}
    rows = []
    for item in evaluation.items:
        if item.workspace is None:
            age, newest = _age([item])
            rows.append(
                {
                    "backup": item.asset,
                    "rpo": "LATE" if item.late else "OK",
                    "age_hours": age,
                    "newest_backup": newest,
                    "copy": copies.get(item.asset),
                }
            )
    for wal in pitr_defs.health_rows(policy):
        age = wal["oldest_backup_age_hours"]
        rows.append(
            {
                "backup": wal["workspace"],
                "rpo": wal["rpo"],
                "age_hours": age if age is not None and age >= 0 else None,
                "newest_backup": None,
                "copy": None,
            }
        )
    return sorted(rows, key=lambda r: r["backup"])


def _table(rows: list[dict], columns: list[dg.TableColumn]) -> dg.MetadataValue:
    return dg.MetadataValue.table(
        records=[dg.TableRecord(row) for row in rows[:MAX_ROWS]],
        schema=dg.TableSchema(columns=columns),
    )


def report_metadata(
    evaluation: rpo.Evaluation,
    drills: dict[str, dict],
    policy: Policy,
    gone: list[str] = (),
    horizon_days: int | None = None,
    copy: rpo.Evaluation | None = None,
) -> dict:
    copies = copy_states(evaluation, copy)
    rows = workspace_rows(evaluation, drills, gone, copies)
    whole = whole_database_rows(evaluation, policy, copies)
    watched = [r for r in rows if r["rpo"] != NOT_IN_SQL]
    return {
        "workspaces": dg.MetadataValue.int(len(watched)),
        "workspaces_late": dg.MetadataValue.int(sum(r["rpo"] == "LATE" for r in watched)),
        "workspaces_not_in_sql": dg.MetadataValue.int(len(rows) - len(watched)),
        "never_drilled": dg.MetadataValue.int(sum(r["drill"] == "NEVER" for r in watched)),
        "drill_problems": dg.MetadataValue.int(
            sum(r["drill"] in ("FAILED", "RTO MISSED") for r in watched)
        ),
        "whole_database_late": dg.MetadataValue.int(sum(r["rpo"] == "LATE" for r in whole)),
        "copies_late": dg.MetadataValue.int(
            sum((r["copy"] or "").startswith("LATE") for r in [*rows, *whole])
        ),
        "rto_target_seconds": dg.MetadataValue.float(float(policy.rto_minutes * 60)),
        "searched_days": dg.MetadataValue.int(
            horizon_days if horizon_days is not None else rpo.rpo_window_days(policy) + 1
        ),
        "report": _table(rows, WORKSPACE_COLUMNS),
        "whole_database": _table(whole, WHOLE_DATABASE_COLUMNS),
    }


def sensor_report(
    instance: dg.DagsterInstance,
    evaluation: rpo.Evaluation,
    policy: Policy,
    gone: list[str],
    copy: rpo.Evaluation | None = None,
) -> dg.AssetMaterialization:
    """The report from an RPO tick's evaluation: what the sensor records every tick."""
    return dg.AssetMaterialization(
        asset_key=HEALTH_REPORT,
        description="Recorded by rpo_sensor",
        metadata=report_metadata(evaluation, last_drills(instance), policy, gone, copy=copy),
    )


def build_health_defs(backup_assets: list[str]) -> dg.Definitions:
    """The report asset (the RPO sensor records it every tick; "Materialize" computes it with
    the full search depth) and its job."""

    @dg.asset(
        key=HEALTH_REPORT,
        group_name="monitoring",
        description="Per workspace: last backup age vs RPO, last restore drill vs RTO; "
        "whole-database backups apart. Recorded by rpo_sensor every tick.",
    )
    def backup_health_report(
        context: dg.AssetExecutionContext,
        backup_store: BackupStoreResource,
        policy: PolicyResource,
        workspace_registry: WorkspaceRegistryResource,
    ) -> dg.MaterializeResult:
        loaded = policy.load()
        in_sql, gone = rpo_defs.workspaces_in_sql(context.instance, workspace_registry, context.log)
        # Deeper than the sensor: the report gives real ages, as far back as retention keeps.
        evaluation = rpo_defs.evaluate_rpo(
            context.instance,
            backup_store.get_store(),
            loaded,
            backup_assets,
            rpo_defs.utc_now(),
            horizon_days=loaded.keep_weekly_days,
            in_sql=in_sql,
            log=context.log.warning,
            bounded=False,  # a run, not a tick: every age confirmed (and remembered)
            progress=context.log.info,
        )
        copy_store = copy_store_from_env()
        copy = None
        if copy_store is not None:
            copy = rpo_copy.evaluate_copy(
                copy_store,
                evaluation,
                loaded,
                evaluation.now,
                loaded.keep_weekly_days,
                bounded=False,
            )
        metadata = report_metadata(
            evaluation,
            last_drills(context.instance),
            loaded,
            gone,
            loaded.keep_weekly_days,
            copy=copy,
        )
        context.log.info(
            f"{metadata['workspaces'].value} workspaces, {metadata['workspaces_late'].value} "
            f"late, {metadata['drill_problems'].value} drill problems"
        )
        return dg.MaterializeResult(metadata=metadata)

    job = dg.define_asset_job(
        rpo_defs.HEALTH_REPORT_JOB,
        selection=[HEALTH_REPORT],
        description="The backup health report with the full search depth (rpo_sensor records "
        "the quick one every tick).",
    )
    return dg.Definitions(assets=[backup_health_report], jobs=[job])
