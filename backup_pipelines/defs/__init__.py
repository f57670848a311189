"""Thin Dagster wiring, one module per concern; the logic lives in backup_pipelines.lib."""

import warnings

import dagster as dg

# Partitioned asset checks (one verify result per date x workspace) are a preview feature in
# Dagster 1.13; they are what a per-partition artifact check needs, so we accept the preview.
warnings.filterwarnings("ignore", category=dg.PreviewWarning)
