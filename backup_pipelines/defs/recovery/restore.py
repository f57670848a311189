"""Restore jobs. The workspace restore is partitioned like the backups (date x workspace), so
an on-call engineer restores N workspaces to a date by launching a backfill in the UI.

Per-backfill options come from run tags, because the UI's backfill dialog passes tags and
not config; config keeps safe defaults:
    restore/mode            merge (default: add what is missing, never overwrite) | replace
    restore/dry_run         true: locate, verify, gate and stage the SQL, then roll back
    restore/override_gate   a reason: restore despite a FAIL verdict (logged loudly)
    restore/skip_refused    true: entries an index refuses are skipped and reported by id
                            (default false: they fail the run, which says each store's state)
"""

import contextlib
import time
from collections.abc import Iterator

import dagster as dg

from backup_pipelines.defs.artifacts import run_owner
from backup_pipelines.defs.partitions import daily, daily_by_workspace, date_and_workspace
from backup_pipelines.defs.resources import index_clients
from backup_pipelines.lib.engines import Mode, index_engines
from backup_pipelines.lib.errors import ConfigError, PartialRestore
from backup_pipelines.lib.recovery import full_restore
from backup_pipelines.lib.recovery import workspace_restore as restore
from backup_pipelines.lib.recovery.consistency import Outcome
from backup_pipelines.lib.store import lease_name

MODE_TAG = "restore/mode"
DRY_RUN_TAG = "restore/dry_run"
OVERRIDE_TAG = "restore/override_gate"
SKIP_REFUSED_TAG = "restore/skip_refused"
FLAG_VALUES = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


class RestoreOptions(dg.Config):
    mode: str = "merge"
    dry_run: bool = False
    override_gate: str = ""
    skip_refused: bool = False


def options_of(context: dg.OpExecutionContext, config: RestoreOptions) -> RestoreOptions:
    """Run tags (set per backfill in the UI) win over config; both default to the safe choice."""
    tags = context.run.tags
    mode = tags.get(MODE_TAG, config.mode)
    if mode not in {m.value for m in Mode}:
        raise dg.Failure(f"run tag {MODE_TAG}={mode!r} is not one of merge, replace")
    # Strict: a typo in `restore/dry_run` must not run a real restore.
    dry_run = _flag(tags, DRY_RUN_TAG, config.dry_run)
    skip_refused = _flag(tags, SKIP_REFUSED_TAG, config.skip_refused)
    return RestoreOptions(
        mode=mode,
        dry_run=dry_run,
        override_gate=tags.get(OVERRIDE_TAG, config.override_gate),
        skip_refused=skip_refused,
    )


def _flag(tags: dict, tag: str, default: bool) -> bool:
    value = FLAG_VALUES.get(tags.get(tag, str(default)).strip().lower())
    if value is None:
        raise dg.Failure(
            f"run tag {tag}={tags[tag]!r} is not true or false (1/0, yes/no); nothing was written",
            allow_retries=False,
        )
    return value


@contextlib.contextmanager
def still_held(
    context: dg.OpExecutionContext, store, located: restore.Located, last_step: bool = False
) -> Iterator[None]:
    """Run a later step of the workspace restore under the lease the first step took (taken
    again if it ended, e.g. on a retry from this step), on exactly the artifacts it gated on."""
    with store.continue_lease(
        located.workspace, "restore", run_owner(context), log=context.log.info, keep=not last_step
    ):
        restore.check_pinned(store, located)
        yield


@dg.failure_hook(required_resource_keys={"backup_store"})
def release_restore_lease(context: dg.HookContext) -> None:
    """A failed step ends the run: give back the workspace's lease this run holds, at once
    rather than when it expires."""
    run = context.instance.get_run_by_id(context.run_id)
    partition = run.tags.get("dagster/partition") if run else None
    if not partition:
        return
    _date, workspace = date_and_workspace(partition)
    store = context.resources.backup_store.get_store()
    lease = store.read_lease(lease_name(workspace))
    if (
        lease is not None
        and lease.record is not None
        and lease.record.owner.who == run_owner(context)
    ):
        store.break_lease(lease.name, lease.version)
        context.log.info(f"released lease {lease.name} after the failed step")


def build_restore_job(index_stores: set[str]) -> dg.JobDefinition:
    """The workspace restore job over the index stores this deployment has."""
    engines = index_engines(index_stores)
    index_assets = [engine.asset for engine in engines]
    index_keys = {engine.name for engine in engines}

    @dg.op(required_resource_keys={"backup_store"})
    def locate_and_verify_artifacts(context: dg.OpExecutionContext) -> restore.Located:
        date, workspace = date_and_workspace(context.partition_key)
        store = context.resources.backup_store.get_store()
        # The workspace's lease is taken here and handed from op to op until verify_restored
        # (or the failure hook) releases it: no backup replaces what this run gated on.
        with store.lease(workspace, "restore", run_owner(context), log=context.log.info, keep=True):
            store.refuse_overlapping_restores(workspace)
            located = restore.locate_and_verify(store, date, workspace, index_assets)
        context.add_output_metadata(
            {
                "artifacts": dg.MetadataValue.json(
                    {a: store.location(r) for a, r in located.refs.items()}
                ),
                "bytes_verified": dg.MetadataValue.int(located.verified_bytes),
            }
        )
        return located

    @dg.op(required_resource_keys={"backup_store", "policy"})
    def consistency_gate(
        context: dg.OpExecutionContext, config: RestoreOptions, located: restore.Located
    ) -> str:
        options = options_of(context, config)
        store = context.resources.backup_store.get_store()
        with still_held(context, store, located):
            verdict = restore.consistency_gate(store, located, context.resources.policy.load())
        evidence = {
            "verdict": dg.MetadataValue.text(str(verdict.outcome)),
            "evidence": dg.MetadataValue.json(verdict.to_dict()),
        }
        if verdict.outcome == Outcome.FAIL:
            if not options.override_gate:
                raise dg.Failure(
                    description=f"restore refused, nothing written: {verdict.summary()}",
                    metadata=evidence,
                    allow_retries=False,
                )
            context.log.warning(
                f"GATE OVERRIDDEN ({options.override_gate!r}) despite: {verdict.summary()}"
            )
            evidence["gate_overridden"] = dg.MetadataValue.text(options.override_gate)
        context.add_output_metadata(evidence)
        return str(verdict.outcome)

    @dg.op(required_resource_keys={"backup_store", "postgres_db", "policy"})
    def restore_sql_rows(
        context: dg.OpExecutionContext,
        config: RestoreOptions,
        located: restore.Located,
        verdict: str,
    ) -> dict:
        options = options_of(context, config)
        started = time.monotonic()
        try:  # the index mapping must fit the database before any row is written
            restore.check_before_writing(
                context.resources.postgres_db.database_url,
                context.resources.policy.load(),
                index_keys,
            )
        except ConfigError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from exc
        store = context.resources.backup_store.get_store()
        with still_held(context, store, located):
            report = restore.merge_sql(
                context.resources.postgres_db.database_url,
                store,
                located,
                dry_run=options.dry_run,
                log=context.log.info,
            )
        inserted = sum(t["inserted"] for t in report.values())
        context.add_output_metadata(
            {
                "tables": dg.MetadataValue.json(report),
                "rows_inserted": dg.MetadataValue.int(inserted),
                "rows_already_present": dg.MetadataValue.int(
                    sum(t["already_present"] for t in report.values())
                ),
                "dry_run": dg.MetadataValue.bool(options.dry_run),
                "seconds": dg.MetadataValue.float(round(time.monotonic() - started, 3)),
            }
        )
        return report

    @dg.op(required_resource_keys={"backup_store", "postgres_db", "policy", *index_keys})
    def restore_indexes(
        context: dg.OpExecutionContext,
        config: RestoreOptions,
        located: restore.Located,
        verdict: str,
        sql_report: dict,
    ) -> dict:
        options = options_of(context, config)
        if options.dry_run:
            return {"dry_run": True}
        store = context.resources.backup_store.get_store()
        policy = context.resources.policy.load()
        database_url = context.resources.postgres_db.database_url
        rebuild = verdict == Outcome.REBUILD_INDEX
        mode = Mode(options.mode)
        with (
            still_held(context, store, located),
            index_clients(context.resources, index_keys) as clients,
        ):
            try:
                done = restore.restore_indexes(
                    clients, store, located, policy, mode, rebuild, database_url,
                    log=context.log.info, skip_refused=options.skip_refused,
                    sql_report=sql_report,
                )  # fmt: skip
            except PartialRestore as exc:
                raise dg.Failure(
                    description=str(exc),
                    metadata={"stores": dg.MetadataValue.json(exc.states)},
                    allow_retries=False,  # a rerun of the partition (same tags) finishes it
                ) from exc
        context.add_output_metadata(
            {name: dg.MetadataValue.json(report) for name, report in done.items()}
        )
        return done

    @dg.op(required_resource_keys={"backup_store", "postgres_db", "policy", *index_keys})
    def verify_restored(
        context: dg.OpExecutionContext, located: restore.Located, index_report: dict
    ) -> None:
        store = context.resources.backup_store.get_store()
        with still_held(context, store, located, last_step=True):
            if index_report.get("dry_run"):
                context.log.info("dry run: nothing was written, nothing to verify")
                return
            policy = context.resources.policy.load()
            with index_clients(context.resources, index_keys) as clients:
                result = restore.verify_restore(
                    context.resources.postgres_db.database_url,
                    located,
                    policy,
                    clients,
                    skipped=restore.skipped_of(index_report),
                )
        context.add_output_metadata({"verification": dg.MetadataValue.json(result)})
        if result["problems"]:
            raise dg.Failure(
                description="; ".join(result["problems"]),
                metadata={"verification": dg.MetadataValue.json(result)},
            )

    @dg.job(
        name="workspace_restore_job",
        partitions_def=daily_by_workspace,
        description="Restore one workspace (SQL rows, Typesense, Qdrant) to a date; refuses when SQL and index disagree.",
        tags={"restore": "workspace"},
        hooks={release_restore_lease},
    )
    def workspace_restore_job():
        located = locate_and_verify_artifacts()
        verdict = consistency_gate(located)
        sql_report = restore_sql_rows(located, verdict)
        verify_restored(located, restore_indexes(located, verdict, sql_report))

    return workspace_restore_job


class FullRestoreOptions(dg.Config):
    target_database: str = ""  # default: <live>_restored_<date>, a new database
    overwrite_live: bool = False  # a verified swap into the live database's name: explicit only
    resume: bool = False  # continue into a database a killed or failed run of this job left
    jobs: int = 2  # parallel pg_restore jobs
    commands_before: list[str] = []  # e.g. stop the agent gateway (over live: just before the swap)
    commands_after: list[str] = []  # e.g. run migrations, restart the gateway
    restore_indexes: bool = True


def build_full_restore_job(index_stores: set[str]) -> dg.JobDefinition:
    """The whole database from `postgres/full_dump` (a new database, or over live by a verified
    swap), every missing index collection of that date from its artifacts, the runbooks'
    before/after steps and a final health check."""
    index_keys = {engine.name for engine in index_engines(index_stores)}

    @dg.op(required_resource_keys={"backup_store", "postgres_db", "policy", *index_keys})
    def restore_full(context: dg.OpExecutionContext, config: FullRestoreOptions) -> dict:
        request = full_restore.FullRestoreRequest(
            date=context.partition_key,
            target_database=config.target_database or None,
            overwrite_live=config.overwrite_live,
            jobs=config.jobs,
            resume=config.resume,
            commands_before=config.commands_before,
            commands_after=config.commands_after,
        )
        try:
            request.check()
        except ConfigError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from exc
        database_url = context.resources.postgres_db.database_url
        with index_clients(context.resources, index_keys) as clients:
            result = full_restore.restore_full(
                context.resources.backup_store.get_store(),
                request,
                database_url,
                policy=context.resources.policy.load(),
                indexes=clients if config.restore_indexes else None,
                log=context.log.info,
                lease_owner=run_owner(context),
            )
            health = full_restore.health_check(database_url, clients)
        context.add_output_metadata(_full_restore_metadata(result, health))
        return result

    @dg.job(
        name="full_restore_job",
        partitions_def=daily,
        description="The whole database into a new database (default) or over the live one "
        "(overwrite_live: a verified swap, the previous live database kept), then every "
        "missing index; health check at the end.",
        tags={"restore": "full"},
    )
    def full_restore_job():
        restore_full()

    return full_restore_job


def _full_restore_metadata(result: dict, health: dict) -> dict:
    metadata = {
        "database": dg.MetadataValue.text(result["database"]),
        "rows": dg.MetadataValue.json(result["rows"]),
        "objects_verified": dg.MetadataValue.json(result["objects"]),
        "restore_seconds": dg.MetadataValue.float(result["seconds"]),
        "indexes_restored": dg.MetadataValue.json(result.get("indexes", {})),
        "health": dg.MetadataValue.json(health),
    }
    if result.get("previous_database"):
        metadata["previous_database"] = dg.MetadataValue.text(result["previous_database"])
        metadata["release_with"] = dg.MetadataValue.text(
            f"backup-pipelines release-database {result['previous_database']}"
        )
        metadata["live_tables_not_in_backup"] = dg.MetadataValue.json(
            result["live_tables_not_in_backup"]
        )
    return metadata
