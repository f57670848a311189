"""The code location: one Definitions built from defs/, with only the stores this deployment
configures (a store whose variables are unset is not part of it: no assets, no alerts)."""

import dagster as dg

from backup_pipelines.defs import monitoring, postgres, qdrant, typesense
from backup_pipelines.defs.resources import build_resources, configured_stores


def build_definitions() -> dg.Definitions:
    stores = configured_stores()
    parts = []
    if "postgres" in stores:
        parts += [postgres.defs, monitoring.defs]
    if "typesense" in stores:
        parts.append(typesense.defs)
    if "qdrant" in stores:
        parts.append(qdrant.defs)
    return dg.Definitions.merge(*parts, dg.Definitions(resources=build_resources()))


defs = build_definitions()
