"""The backup health report: per workspace, the age of its last backup against the RPO and its
last restore drill against the RTO, as one table an operator reads in the UI."""

import dagster as dg

from backup_pipelines.defs import pitr as pitr_defs
from backup_pipelines.defs.monitoring import rpo as rpo_defs
from backup_pipelines.defs.resources import BackupStoreResource, PolicyResource
from backup_pipelines.lib.monitoring import rpo, rpo_copy
from backup_pipelines.lib.policy import Policy
from backup_pipelines.lib.store.copy import copy_store_from_env

HEALTH_REPORT = dg.AssetKey(["monitoring", "backup_health_report"])
RESTORE_DRILL = dg.AssetKey(["monitoring", "restore_drill"])
# Weekly drills: a quarter of history finds the last drill of every sampled workspace.
DRILL_EVENTS_READ = 13
WHOLE_DATABASE = "(whole database)"

COLUMNS = [
    dg.TableColumn("workspace", "string"),
    dg.TableColumn("rpo", "string", description="OK, or LATE past RPO + grace"),
    dg.TableColumn("oldest_backup_age_hours", "float", description="worst asset; -1 if none"),
    dg.TableColumn("late_assets", "string"),
    dg.TableColumn("last_drill", "string", description="date restored by the last drill"),
    dg.TableColumn("drill_seconds", "float", description="measured RTO; -1 if never drilled"),
    dg.TableColumn("rto_target_seconds", "float"),
    dg.TableColumn("drill", "string", description="OK, FAILED, RTO MISSED or NEVER"),
    dg.TableColumn(
        "copy", "string", description="the copy store's RPO: OK, or LATE and how far behind"
    ),
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


def copy_states(primary: rpo.Evaluation, copy: rpo.Evaluation | None) -> dict[str, str]:
    """Per workspace: "" without a copy store, OK, or LATE naming how far each asset's copy
    is behind ("postgres/workspace_dump: primary fresh, copy 3 day(s) behind ...")."""
    if copy is None:
        return {}
    by_key = {item.key: item for item in primary.items}
    states: dict[str, list[str]] = {}
    for item in copy.items:
        lines = states.setdefault(item.workspace or WHOLE_DATABASE, [])
        if item.late:
            lines.append(f"{item.asset}: {rpo_copy.describe(by_key.get(item.key), item)}")
    return {w: ("LATE " + "; ".join(lines)) if lines else "OK" for w, lines in states.items()}


def health_rows(
    evaluation: rpo.Evaluation,
    drills: dict[str, dict],
    policy: Policy,
    copy: rpo.Evaluation | None = None,
) -> list:
    copies = copy_states(evaluation, copy)
    by_workspace: dict[str, list[rpo.Freshness]] = {}
    for item in evaluation.items:
        by_workspace.setdefault(item.workspace or WHOLE_DATABASE, []).append(item)
    rows = []
    for workspace, items in sorted(by_workspace.items()):
        late = [i.asset for i in items if i.late]
        ages = [i.age_hours for i in items]
        drill = drills.get(workspace)
        rows.append(
            {
                "workspace": workspace,
                "rpo": "LATE" if late else "OK",
                "oldest_backup_age_hours": -1.0
                if any(a is None for a in ages)
                else round(max(ages), 2),
                "late_assets": ", ".join(late),
                "last_drill": (drill or {}).get("date") or "",
                "drill_seconds": round(float((drill or {}).get("seconds", -1.0)), 2),
                "rto_target_seconds": policy.rto_minutes * 60,
                "drill": drill_state(drill) if workspace != WHOLE_DATABASE else "",
                "copy": copies.get(workspace, ""),
            }
        )
    return rows


def build_health_defs(backup_assets: list[str]) -> dg.Definitions:
    @dg.asset(
        key=HEALTH_REPORT,
        group_name="monitoring",
        description="Per workspace: last backup age vs RPO, last restore drill vs RTO.",
    )
    def backup_health_report(
        context: dg.AssetExecutionContext,
        backup_store: BackupStoreResource,
        policy: PolicyResource,
    ) -> dg.MaterializeResult:
        loaded = policy.load()
        # Deeper than the sensor: the report gives real ages, as far back as retention keeps.
        evaluation = rpo_defs.evaluate_rpo(
            context.instance,
            backup_store.get_store(),
            loaded,
            backup_assets,
            rpo_defs.utc_now(),
            horizon_days=loaded.keep_weekly_days,
            log=context.log.warning,
        )
        copy_store = copy_store_from_env()
        copy = None
        if copy_store is not None:
            copy = rpo_copy.evaluate_copy(
                copy_store, evaluation, loaded, evaluation.now, loaded.keep_weekly_days
            )
        rows = health_rows(evaluation, last_drills(context.instance), loaded, copy)
        rows += pitr_defs.health_rows(loaded)  # the WAL archive's RPO, when PITR is configured
        late = [r for r in rows if r["rpo"] == "LATE"]
        drill_problems = [r for r in rows if r["drill"] in ("FAILED", "RTO MISSED")]
        context.log.info(
            f"{len(rows)} workspaces, {len(late)} late, {len(drill_problems)} drill problems"
        )
        return dg.MaterializeResult(
            metadata={
                "workspaces": dg.MetadataValue.int(len(rows)),
                "workspaces_late": dg.MetadataValue.int(len(late)),
                "never_drilled": dg.MetadataValue.int(sum(r["drill"] == "NEVER" for r in rows)),
                "drill_problems": dg.MetadataValue.int(len(drill_problems)),
                "copies_late": dg.MetadataValue.int(
                    sum(r.get("copy", "").startswith("LATE") for r in rows)
                ),
                "report": dg.MetadataValue.table(
                    records=[dg.TableRecord(row) for row in rows],
                    schema=dg.TableSchema(columns=COLUMNS),
                ),
            }
        )

    job = dg.define_asset_job("backup_health_report_job", selection=[HEALTH_REPORT])
    schedule = dg.ScheduleDefinition(
        name="backup_health_report_hourly",
        job=job,
        cron_schedule="5 * * * *",
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
    return dg.Definitions(assets=[backup_health_report], jobs=[job], schedules=[schedule])
