"""The code location: one Definitions built from defs/, with only the stores this deployment
configures (a store whose variables are unset is not part of it: no assets, no alerts)."""

import dagster as dg

from backup_pipelines.defs import lifecycle, postgres, qdrant, scrubbing, typesense
from backup_pipelines.defs.backups import build_backup_defs
from backup_pipelines.defs.monitoring import health, rpo, run_alerts
from backup_pipelines.defs.recovery import consistency, drill, restore
from backup_pipelines.defs.resources import build_resources, configured_stores
from backup_pipelines.lib.engines import index_engines

# Each index engine's backup assets and checks (lib.engines names the engines).
INDEX_DEFS = {"typesense": typesense.defs, "qdrant": qdrant.defs}


def build_definitions() -> dg.Definitions:
    # Before anything of ours runs in this process: secrets never reach Dagster's records.
    scrubbing.install()
    stores = configured_stores()
    engines = index_engines(stores)
    parts = [dg.Definitions(resources=build_resources()), lifecycle.defs]
    parts += [INDEX_DEFS[engine.name] for engine in engines]
    if "postgres" in stores:
        # SQL is the truth the indexes are checked against and restored with.
        index_stores = {engine.name for engine in engines}
        index_assets = [engine.asset for engine in engines]
        backup_assets = ["postgres/full_dump", "postgres/workspace_dump", *index_assets]
        parts += [
            postgres.defs,
            build_backup_defs(backup_assets),
            consistency.build_defs(index_assets),
            dg.Definitions(
                jobs=[
                    restore.build_restore_job(index_stores),
                    restore.build_full_restore_job(index_stores),
                ]
            ),
            rpo.build_rpo_defs(backup_assets),
            health.build_health_defs(backup_assets),
            drill.build_drill_defs(index_stores),
        ]
    merged = dg.Definitions.merge(*parts)
    # Every job of this code location alerts when it fails or gets stuck.
    job_names = sorted(job.name for job in merged.jobs or [])
    sensor = run_alerts.build_run_alert_sensor(job_names)
    return dg.Definitions.merge(merged, dg.Definitions(sensors=[sensor]))


defs = build_definitions()
