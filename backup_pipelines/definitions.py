"""The code location: one Definitions built from defs/, with only the stores this deployment
configures (a store whose variables are unset is not part of it: no assets, no alerts)."""

import dagster as dg

from backup_pipelines.defs import automation, lifecycle, postgres, qdrant, scrubbing, typesense
from backup_pipelines.defs.backups import build_backup_defs
from backup_pipelines.defs.monitoring import health, rpo, run_alerts
from backup_pipelines.defs.mssql import build_mssql_defs
from backup_pipelines.defs.recovery import consistency, drill, mssql_restore, restore
from backup_pipelines.defs.resources import build_resources, configured_stores
from backup_pipelines.lib.engines import index_engines

# Each index engine's backup assets and checks (lib.engines names the engines).
INDEX_DEFS = {"typesense": typesense.defs, "qdrant": qdrant.defs}


def build_definitions() -> dg.Definitions:
    # Before anything of ours runs in this process: secrets never reach Dagster's records.
    scrubbing.install()
    stores = configured_stores()
    engines = index_engines(stores)
    parts = [
        dg.Definitions(resources=build_resources(), executor=automation.run_executor()),
        lifecycle.defs,
    ]
    for engine in engines:
        index_defs = INDEX_DEFS[engine.name]
        if "postgres" not in stores:  # nothing to follow: no SQL dump of the same partition
            index_defs = index_defs.map_asset_specs(
                func=lambda spec: spec.replace_attributes(deps=[])
            )
        parts.append(index_defs)
    index_stores = {engine.name for engine in engines}
    monitored: list[str] = []
    if "mssql" in stores:
        mssql_assets = ["mssql/full_backup", "mssql/diff_backup", "mssql/log_backup"]
        monitored += mssql_assets
        parts += [
            build_mssql_defs(),
            dg.Definitions(jobs=mssql_restore.build_mssql_restore_jobs(index_stores)),
        ]
        if "postgres" not in stores and engines:
            # The agents' vectors: per agent (workspace) and day, agents found in SQL Server.
            agent_assets = [engine.asset for engine in engines]
            monitored += agent_assets
            parts.append(build_backup_defs(agent_assets, source="mssql"))
    if "postgres" in stores:
        # SQL is the truth the indexes are checked against and restored with.
        index_assets = [engine.asset for engine in engines]
        backup_assets = ["postgres/full_dump", "postgres/workspace_dump", *index_assets]
        monitored = backup_assets + monitored
        parts += [
            postgres.defs,
            build_backup_defs(backup_assets),
            consistency.build_defs(index_assets),
            dg.Definitions(
                jobs=[
                    restore.build_restore_job(index_stores),
                    restore.build_dry_run_job(index_stores),
                    restore.build_full_restore_job(index_stores),
                ]
            ),
        ]
    if monitored:
        # Workspaces come from SQL (the workspace_registry resource): only those the registry
        # lists are held to the RPO; each RPO tick records the health report too.
        parts += [
            rpo.build_rpo_defs(monitored, health_report=True),
            health.build_health_defs(monitored),
        ]
    sql_stores = stores & {"postgres", "mssql"}
    if sql_stores:
        parts.append(drill.build_drill_defs(index_stores, sql_stores))
    parts += optional_tiers()
    merged = dg.Definitions.merge(*parts)
    # Every job of this code location alerts when it fails or gets stuck, and so does a run of
    # its assets launched as `__ASSET_JOB` ("Materialize" in the UI, `dagster asset materialize`).
    job_names = sorted(job.name for job in merged.jobs or [])
    sensor = run_alerts.build_run_alert_sensor(job_names, asset_keys=asset_keys_of(merged))
    # BACKUP_AUTOMATION_OFF / BACKUP_AUTOMATION_ON (defs/automation.py): staged roll-outs, tests.
    return automation.apply_automation_switch(
        dg.Definitions.merge(merged, dg.Definitions(sensors=[sensor]))
    )


def asset_keys_of(defs: dg.Definitions) -> set[dg.AssetKey]:
    return {key for assets_def in defs.assets or [] for key in assets_def.keys}


def optional_tiers() -> list[dg.Definitions]:
    """Point-in-time tiers, each only when its variables are set: pgBackRest (DATABASE_URL +
    PGBACKREST_CONFIG or PGBACKREST_REPO_URL) and DigitalOcean (DIGITALOCEAN_TOKEN +
    DIGITALOCEAN_DATABASE_ID)."""
    import os

    from backup_pipelines.lib.postgres import digitalocean as do_lib
    from backup_pipelines.lib.postgres import pitr as pitr_lib

    tiers = []
    if pitr_lib.configured():
        from backup_pipelines.defs.pitr import build_pitr_defs
        from backup_pipelines.defs.recovery.instant import build_instant_defs

        tiers.append(build_pitr_defs())
        tiers.append(build_instant_defs(configured_stores()))  # one instant across stores
    if do_lib.configured():
        from backup_pipelines.defs.managed import build_managed_defs

        tiers.append(build_managed_defs(dict(os.environ)))
    return tiers


defs = build_definitions()
