"""Restore to one instant across stores (lib/recovery/instant.py) as Dagster jobs; part of the
deployment with the pgBackRest tier (defs/pitr.py provides the `pitr_stanza` resource).

`instant_restore_job` is partitioned by workspace: pick the workspaces in the UI's backfill
dialog and set the instant as a run tag (the dialog passes tags, not config; config works too):

    pitr/to              the instant, ISO 8601 with a zone, e.g. 2026-12-01T13:05:00+00:00
    restore/dry_run      true: the plan only (which backup, WAL, artifacts, how many entries)

`platform_instant_restore_job` restores the whole cluster (a new data directory and port, or
over live with the run tag `pitr/overwrite_live=true` / config `overwrite_live`) and every
workspace's indexes to the same instant.
"""

import dagster as dg

from backup_pipelines.defs.partitions import workspaces
from backup_pipelines.defs.pitr import parse_target
from backup_pipelines.defs.resources import index_clients
from backup_pipelines.lib.engines import index_engines
from backup_pipelines.lib.errors import BackupError, ConfigError
from backup_pipelines.lib.recovery import instant
from backup_pipelines.lib.workspaces import validate_workspace_id

TO_TAG = "pitr/to"
DRY_RUN_TAG = "restore/dry_run"
OVERWRITE_TAG = "pitr/overwrite_live"
TRUE = {"1", "true", "yes"}


class InstantOptions(dg.Config):
    to: str = ""  # else the run tag pitr/to
    dry_run: bool = False


class PlatformInstantOptions(InstantOptions):
    target_dir: str = ""
    port: int = 0
    listen: str = "127.0.0.1"
    overwrite_live: bool = False


def _target_and_dry_run(context: dg.OpExecutionContext, config: InstantOptions):
    tags = context.run.tags
    text = config.to or tags.get(TO_TAG, "")
    if not text:
        raise dg.Failure(
            description=f"{context.job_name} needs the run tag {TO_TAG} (or op config `to`): "
            "the instant, e.g. 2026-12-01T13:05:00+00:00",
            allow_retries=False,
        )
    try:
        target = parse_target(text)
    except ConfigError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    dry_run = tags.get(DRY_RUN_TAG, str(config.dry_run)).lower() in TRUE
    return target, dry_run


def _lease_owner(context: dg.OpExecutionContext) -> str:
    """Who holds the store lease while this run restores (`backup-pipelines lease list`)."""
    return f"dagster run {context.run_id}"


def _metadata(result: instant.InstantResult) -> dict:
    summary = result.to_dict()
    metadata = {
        "target": dg.MetadataValue.text(summary["plan"]["target"]),
        "dry_run": dg.MetadataValue.bool(result.dry_run),
        "plan": dg.MetadataValue.json(summary["plan"]),
        "results": dg.MetadataValue.json(summary["results"]),
        "plan_text": dg.MetadataValue.md("```\n" + "\n".join(result.plan.lines()) + "\n```"),
    }
    gates = {r.workspace: r.gate.outcome.value for r in result.results if r.gate}
    if gates:
        metadata["gate_after"] = dg.MetadataValue.json(gates)
    if summary["cluster"]:
        metadata["cluster"] = dg.MetadataValue.json(summary["cluster"])
    return metadata


def _finish(context: dg.OpExecutionContext, result: instant.InstantResult) -> None:
    metadata = _metadata(result)
    if result.failed:
        raise dg.Failure(
            description="; ".join(f"{r.workspace}: {r.error}" for r in result.failed),
            metadata=metadata,
            allow_retries=False,
        )
    context.add_output_metadata(metadata)


def build_instant_defs(index_stores: set[str]) -> dg.Definitions:
    index_keys = {engine.name for engine in index_engines(index_stores)}
    needed = {"backup_store", "postgres_db", "policy", "pitr_stanza", *index_keys}

    @dg.op(required_resource_keys=needed)
    def restore_workspace_to_instant(context: dg.OpExecutionContext, config: InstantOptions):
        workspace = validate_workspace_id(context.partition_key)
        target, dry_run = _target_and_dry_run(context, config)
        policy = context.resources.policy.load()
        try:
            with index_clients(context.resources, index_keys) as clients:
                result = instant.restore_workspaces_to(
                    context.resources.pitr_stanza.config(policy),
                    context.resources.backup_store.get_store(),
                    target,
                    [workspace],
                    context.resources.postgres_db.database_url,
                    policy,
                    clients,
                    dry_run=dry_run,
                    log=context.log.info,
                    lease_owner=_lease_owner(context),
                )
        except BackupError as exc:  # refused (outside the window, a mapping): nothing written
            raise dg.Failure(description=str(exc), allow_retries=False) from exc
        _finish(context, result)

    @dg.op(required_resource_keys=needed - {"postgres_db"})
    def restore_platform_to_instant(context: dg.OpExecutionContext, config: PlatformInstantOptions):
        target, dry_run = _target_and_dry_run(context, config)
        policy = context.resources.policy.load()
        overwrite = config.overwrite_live or context.run.tags.get(OVERWRITE_TAG, "") in TRUE
        try:
            with index_clients(context.resources, index_keys) as clients:
                result = instant.restore_platform_to(
                    context.resources.pitr_stanza.config(policy),
                    context.resources.backup_store.get_store(),
                    target,
                    policy,
                    clients,
                    target_dir=config.target_dir or None,
                    port=config.port or None,
                    listen=config.listen,
                    overwrite_live=overwrite,
                    dry_run=dry_run,
                    log=context.log.info,
                    lease_owner=_lease_owner(context),
                )
        except BackupError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from exc
        _finish(context, result)

    @dg.job(
        name="instant_restore_job",
        partitions_def=workspaces,
        description="One workspace's SQL (pgBackRest PITR, merged into live) and indexes "
        "(artifact + catch-up) to one instant: run tag pitr/to; restore/dry_run=true for the "
        "plan only.",
        tags={"restore": "instant"},
    )
    def instant_restore_job():
        restore_workspace_to_instant()

    @dg.job(
        name="platform_instant_restore_job",
        description="The whole cluster (pgBackRest PITR into a new data directory, or over live "
        "with pitr/overwrite_live=true) and every workspace's indexes to one instant: run tag "
        "pitr/to.",
        tags={"restore": "instant_platform"},
    )
    def platform_instant_restore_job():
        restore_platform_to_instant()

    return dg.Definitions(jobs=[instant_restore_job, platform_instant_restore_job])
