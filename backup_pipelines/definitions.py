"""The code location: one Definitions built from defs/, with only the stores this deployment
configures (a store whose variables are unset is not part of it: no assets, no alerts)."""

import dagster as dg

from backup_pipelines.defs import consistency, monitoring, postgres, qdrant, restore, typesense
from backup_pipelines.defs.resources import build_resources, configured_stores

INDEX_ASSETS = {"typesense": "typesense/collection_export", "qdrant": "qdrant/collection_snapshot"}


def build_definitions() -> dg.Definitions:
    stores = configured_stores()
    parts = [dg.Definitions(resources=build_resources())]
    if "typesense" in stores:
        parts.append(typesense.defs)
    if "qdrant" in stores:
        parts.append(qdrant.defs)
    if "postgres" in stores:
        # SQL is the truth the indexes are checked against and restored with.
        index_stores = stores & set(INDEX_ASSETS)
        parts += [
            postgres.defs,
            monitoring.defs,
            consistency.build_defs([INDEX_ASSETS[s] for s in sorted(index_stores)]),
            dg.Definitions(
                jobs=[
                    restore.build_restore_job(index_stores),
                    restore.build_full_restore_job(index_stores),
                ]
            ),
        ]
    return dg.Definitions.merge(*parts)


defs = build_definitions()
