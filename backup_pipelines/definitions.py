"""The code location: one Definitions built from defs/, with only the stores this deployment
configures (a store whose variables are unset is not part of it: no assets, no alerts)."""

import dagster as dg

from backup_pipelines.defs import (
    automation,
    consistency,
    drill,
    health,
    monitoring,
    postgres,
    qdrant,
    restore,
    retention,
    rpo,
    run_alerts,
    typesense,
)
from backup_pipelines.defs.resources import build_resources, configured_stores

INDEX_ASSETS = {"typesense": "typesense/collection_export", "qdrant": "qdrant/collection_snapshot"}


def build_definitions() -> dg.Definitions:
    stores = configured_stores()
    parts = [
        dg.Definitions(resources=build_resources(), executor=automation.run_executor()),
        retention.defs,
    ]
    if "typesense" in stores:
        parts.append(typesense.defs)
    if "qdrant" in stores:
        parts.append(qdrant.defs)
    if "postgres" in stores:
        # SQL is the truth the indexes are checked against and restored with.
        index_stores = stores & set(INDEX_ASSETS)
        backup_assets = ["postgres/full_dump", "postgres/workspace_dump"]
        backup_assets += [INDEX_ASSETS[s] for s in sorted(index_stores)]
        parts += [
            postgres.defs,
            monitoring.build_monitoring_defs(backup_assets),
            consistency.build_defs([INDEX_ASSETS[s] for s in sorted(index_stores)]),
            dg.Definitions(
                jobs=[
                    restore.build_restore_job(index_stores),
                    restore.build_full_restore_job(index_stores),
                ]
            ),
        ]
        parts += [
            rpo.build_rpo_defs(backup_assets),
            health.build_health_defs(backup_assets),
            drill.build_drill_defs(index_stores),
        ]
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


defs = build_definitions()
