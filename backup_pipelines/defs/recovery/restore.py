"""Restore jobs. The workspace restore is partitioned like the backups (date x workspace), so
an on-call engineer restores N workspaces to a date by launching a backfill in the UI; the dry
run is a job of its own, partitioned the same way, that writes nothing and reports the plan.

Per-backfill options come from run tags, because the UI's backfill dialog passes tags and
not config; config keeps safe defaults:
    restore/mode            merge (default: add what is missing, never overwrite) | replace
    restore/override_gate   a reason: restore despite a FAIL verdict (logged loudly)
    restore/skip_refused    true: entries an index refuses are skipped and reported by id
                            (default false: they fail the run, which says each store's state)
A gate refusal is a decision, not a crash: the run fails with the verdict and its evidence,
alerts once as `restore_refused`, and nothing is written.
"""

import contextlib
import functools
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import dagster as dg

from backup_pipelines.defs.artifacts import run_owner
from backup_pipelines.defs.monitoring.run_alerts import ALERT_SENT_TAG
from backup_pipelines.defs.partitions import daily, daily_by_workspace, date_and_workspace
from backup_pipelines.defs.resources import WorkspaceRegistryResource, index_clients
from backup_pipelines.lib.engines import Mode, index_engines
from backup_pipelines.lib.errors import BackupError, ConfigError, PartialRestore
from backup_pipelines.lib.monitoring.alerts import Alert, configured_channels, deliver, ui_url
from backup_pipelines.lib.recovery import catalog, full_restore, restore_plan
from backup_pipelines.lib.recovery import workspace_restore as restore
from backup_pipelines.lib.recovery.consistency import Outcome
from backup_pipelines.lib.store import lease_name
from backup_pipelines.lib.store.copy import lease_store

MODE_TAG = "restore/mode"
DRY_RUN_TAG = "restore/dry_run"
OVERRIDE_TAG = "restore/override_gate"
RESTORE_JOB = "workspace_restore_job"
DRY_RUN_JOB = "workspace_restore_dry_run_job"
SKIP_REFUSED_TAG = "restore/skip_refused"
FLAG_VALUES = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
OTHER_DATES_SHOWN = 5


class RestoreOptions(dg.Config):
    mode: str = "merge"
    override_gate: str = ""
    skip_refused: bool = False


def options_of(context: dg.OpExecutionContext, config: RestoreOptions) -> RestoreOptions:
    """Run tags (set per backfill in the UI) win over config; both default to the safe choice."""
    tags = context.run.tags
    mode = tags.get(MODE_TAG, config.mode)
    if mode not in {m.value for m in Mode}:
        raise dg.Failure(f"run tag {MODE_TAG}={mode!r} is not one of merge, replace")
    return RestoreOptions(
        mode=mode,
        override_gate=tags.get(OVERRIDE_TAG, config.override_gate),
        skip_refused=_flag(tags, SKIP_REFUSED_TAG, config.skip_refused),
    )


def _flag(tags: dict, tag: str, default: bool) -> bool:
    value = FLAG_VALUES.get(tags.get(tag, str(default)).strip().lower())
    if value is None:
        raise dg.Failure(
            f"run tag {tag}={tags[tag]!r} is not true or false (1/0, yes/no); nothing was written",
            allow_retries=False,
        )
    return value


def refuse_dry_run_tag(context: dg.OpExecutionContext) -> None:
    """The dry run is its own job: a run of the restore job restores, so that a partition of it
    is "completed" only when it was really restored. Strict: a typo in the tag must not run a
    real restore either."""
    if _flag(context.run.tags, DRY_RUN_TAG, False):
        raise dg.Failure(
            description=f"run tag {DRY_RUN_TAG}=true on {RESTORE_JOB}: nothing done. A dry run "
            f"is its own job now: launch {DRY_RUN_JOB} for the same partitions (it writes "
            f"nothing and reports the plan); {RESTORE_JOB} always restores.",
            allow_retries=False,
        )


def other_dates(store, workspace: str, assets: list[str], policy, before: str = "") -> list[str]:
    """Dates with every artifact a restore of `workspace` needs, newest first (within what
    retention keeps), for messages that say what else could be restored."""
    today = datetime.now(UTC).date()
    points = catalog.points_of(store, workspace, assets, today, policy.keep_weekly_days)
    return [p.date for p in points if p.restorable(assets) and p.date != before]


@functools.cache  # one op definition per set of index assets: both restore jobs share it
def build_locate_op(index_assets: tuple[str, ...]) -> dg.OpDefinition:
    """The first step of both workspace restore jobs. In the restore job the
    workspace's lease is taken here and handed from op to op until verify_restored (or the
    failure hook) releases it, so no backup replaces what the run gated on; the dry run writes
    nothing and blocks no backup."""

    @dg.op(
        name="locate_and_verify_artifacts",
        required_resource_keys={"backup_store", "postgres_db", "policy"},
        description="Find the partition's artifacts (SQL dump and every index) and re-check "
        "every file's sha256; a workspace with nothing to restore fails here, writing nothing.",
    )
    def locate_and_verify_artifacts(context: dg.OpExecutionContext) -> restore.Located:
        date, workspace = date_and_workspace(context.partition_key)
        hold_lease = context.job_name == RESTORE_JOB
        if hold_lease:
            refuse_dry_run_tag(context)
        store = context.resources.backup_store.get_store()
        policy = context.resources.policy.load()
        registry = WorkspaceRegistryResource(
            source="postgres",
            database_url=context.resources.postgres_db.database_url,
            policy_file=context.resources.policy.policy_file,
        )
        registered = workspace in registry.workspaces()
        with restore_lease(context, store, workspace, hold_lease):
            try:
                located = restore.locate_and_verify(
                    store, date, workspace, index_assets, log=context.log.warning
                )
            except BackupError as exc:  # missing or failing artifacts: say what else there is
                failure = nothing_to_restore(
                    store, policy, date, workspace, registered, registry, exc
                )
                raise failure from None  # a decision with its reason, not a crash to debug
        if not registered:
            context.log.warning(
                f"workspace {workspace} is not in {registry.describe()} (deleted?): restoring "
                "it brings its registry row back with its rows, and discovery picks it up again"
            )
        source = restore.artifact_source(store, located)
        context.add_output_metadata(
            {
                "artifacts": dg.MetadataValue.json(
                    {a: source.location(r) for a, r in located.refs.items()}
                ),
                "read_from": dg.MetadataValue.text(located.fallback or "the primary store"),
                "bytes_verified": dg.MetadataValue.int(located.verified_bytes),
                "in_registry": dg.MetadataValue.bool(registered),
            }
        )
        return located

    def nothing_to_restore(store, policy, date, workspace, registered, registry, exc):
        dates = other_dates(store, workspace, [restore.SQL_ASSET, *index_assets], policy, date)
        if not registered and not dates:
            text = (
                f"workspace {workspace} is not in {registry.describe()} and the store holds no "
                "backup of it: nothing to restore, nothing written (a partition added by hand? "
                f"`backup-pipelines workspaces remove {workspace}`)"
            )
        else:
            shown = ", ".join(dates[:OTHER_DATES_SHOWN]) or "none"
            text = f"nothing written: {exc}. Dates of {workspace} with a complete backup: {shown}"
        return dg.Failure(description=text, allow_retries=False)

    return locate_and_verify_artifacts


def refusal_text(located: restore.Located, verdict, dates: list[str]) -> str:
    """The gate's refusal as a decision: what was decided, on what evidence, what to do."""
    shown = ", ".join(dates[:OTHER_DATES_SHOWN]) or "none within retention"
    return (
        f"Restore refused: the consistency gate's verdict for {located.date}|{located.workspace} "
        f"is FAIL ({'; '.join(verdict.reasons) or verdict.summary()}). Nothing was written. "
        f"Other dates with a complete backup: {shown} (a dry run, {DRY_RUN_JOB}, shows a date's "
        f"verdict); to restore this one anyway, set the run tag {OVERRIDE_TAG}=<reason>."
    )


def refusal_alert(context, located: restore.Located, verdict, text: str) -> Alert:
    return Alert(
        kind="restore_refused",
        title=f"Restore of {located.workspace} to {located.date} refused by the consistency gate "
        f"(FAIL): nothing written",
        workspace=located.workspace,
        asset=restore.SQL_ASSET,
        details={
            "partition": f"{located.date}|{located.workspace}",
            "verdict": str(verdict.outcome),
            "gate": verdict.summary(),
            "decision": text,
            "run_id": context.run_id,
            "evidence": verdict.to_dict(),
        },
        url=ui_url(f"/runs/{context.run_id}"),
    )


def send_own_alert(context, alert: Alert) -> None:
    """Deliver; when every channel took it, tag the run so the generic failed-run alert does
    not page a second time (if one failed, run_alert_sensor's alert is the fallback)."""
    channels = configured_channels(context.log.error)
    undelivered = deliver([alert], channels, log=context.log.warning)
    if channels and not undelivered:
        context.instance.add_run_tags(context.run_id, {ALERT_SENT_TAG: "true"})


@contextlib.contextmanager
def restore_lease(context, store, workspace: str, hold: bool) -> Iterator[None]:
    if not hold:
        yield
        return
    leases = lease_store(store, context.log.info)
    with leases.lease(workspace, "restore", run_owner(context), log=context.log.info, keep=True):
        leases.refuse_overlapping_restores(workspace)
        yield


def thread_safe(log):
    """`log` callable from the restore's threads (one per store), one message at a time."""
    lock = threading.Lock()

    def locked(message: str) -> None:
        with lock:
            log(message)

    return locked


@contextlib.contextmanager
def still_held(
    context: dg.OpExecutionContext, store, located: restore.Located, last_step: bool = False
) -> Iterator[None]:
    """Run a later step of the workspace restore under the lease the first step took (taken
    again if it ended, e.g. on a retry from this step), on exactly the artifacts it gated on."""
    with lease_store(store, context.log.info).continue_lease(
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
    store = lease_store(store, context.log.info)
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
    locate_and_verify_artifacts = build_locate_op(tuple(index_assets))

    @dg.op(
        required_resource_keys={"backup_store", "policy"},
        description="The consistency gate: SQL and index artifacts of the partition must agree. "
        "FAIL refuses the restore before anything is written (unless overridden by a tag).",
    )
    def consistency_gate(
        context: dg.OpExecutionContext, config: RestoreOptions, located: restore.Located
    ) -> str:
        options = options_of(context, config)
        store = context.resources.backup_store.get_store()
        policy = context.resources.policy.load()
        with still_held(context, store, located):
            verdict = restore.consistency_gate(store, located, policy)
        evidence = {
            "verdict": dg.MetadataValue.text(str(verdict.outcome)),
            "gate": dg.MetadataValue.text(verdict.summary()),
            "evidence": dg.MetadataValue.json(verdict.to_dict()),
        }
        if verdict.outcome == Outcome.FAIL:
            if not options.override_gate:
                assets = list(located.refs)
                dates = other_dates(store, located.workspace, assets, policy, located.date)
                text = refusal_text(located, verdict, dates)
                context.log.error(text)
                send_own_alert(context, refusal_alert(context, located, verdict, text))
                raise dg.Failure(description=text, metadata=evidence, allow_retries=False)
            context.log.warning(
                f"GATE OVERRIDDEN ({options.override_gate!r}) despite: {verdict.summary()}"
            )
            evidence["gate_overridden"] = dg.MetadataValue.text(options.override_gate)
        context.add_output_metadata(evidence)
        return str(verdict.outcome)

    @dg.op(
        required_resource_keys={"backup_store", "postgres_db", "policy", *index_keys},
        description="The SQL rows the live tables lack inserted, parents first, in one "
        "transaction (never overwrites, never touches another workspace) and every constraint "
        "checked before any index is written; then, at the same time as the SQL commit, each "
        "index back from its artifact (merge: only what is missing); when the gate says "
        "REBUILD_INDEX the indexes are rebuilt from the restored SQL rows, after the SQL commit.",
    )
    def restore_sql_and_indexes(
        context: dg.OpExecutionContext,
        config: RestoreOptions,
        located: restore.Located,
        verdict: str,
    ) -> dict:
        # One op, the stores on threads inside it: the default in-process executor runs a
        # job's ops one after another, and a process per op (multiprocess) costs a Dagster
        # start-up each; the library's code (the command line's) does the concurrency.
        options = options_of(context, config)
        started = time.monotonic()
        database_url = context.resources.postgres_db.database_url
        policy = context.resources.policy.load()
        try:  # the index mapping must fit the database before any row is written
            restore.check_before_writing(database_url, policy, index_keys)
        except ConfigError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from exc
        store = context.resources.backup_store.get_store()
        rebuild = verdict == Outcome.REBUILD_INDEX
        seconds: dict[str, float] = {}
        with (
            still_held(context, store, located),
            index_clients(context.resources, index_keys) as clients,
        ):
            try:
                job = restore.IndexRestore(
                    clients, store, located, policy, Mode(options.mode), database_url,
                    log=thread_safe(context.log.info), skip_refused=options.skip_refused,
                )  # fmt: skip
                sql_report, done = restore.restore_sql_and_indexes(
                    job, rebuild, lambda name, taken: seconds.update({name: round(taken, 3)})
                )
            except PartialRestore as exc:
                raise dg.Failure(
                    description=str(exc),
                    metadata={"stores": dg.MetadataValue.json(exc.states)},
                    allow_retries=False,  # a rerun of the partition (same tags) finishes it
                ) from exc
            except BackupError as exc:  # the live schema refused a row: rolled back, no index
                raise dg.Failure(
                    description=str(exc),
                    metadata={"stores_written": dg.MetadataValue.text("none")},
                    allow_retries=False,  # the same rows would be refused again
                ) from exc
        context.add_output_metadata(
            {
                "tables": sql_table(sql_report),
                "rows_inserted": dg.MetadataValue.int(
                    sum(t["inserted"] for t in sql_report.values())
                ),
                "rows_already_present": dg.MetadataValue.int(
                    sum(t["already_present"] for t in sql_report.values())
                ),
                **{name: dg.MetadataValue.json(report) for name, report in done.items()},
                "stores_written": dg.MetadataValue.text(
                    "SQL first, then the indexes rebuilt from its rows (REBUILD_INDEX)"
                    if rebuild
                    else "SQL rows in and checked first, then the SQL commit and every index "
                    "at the same time"
                ),
                "seconds_per_store": dg.MetadataValue.json(seconds),
                "seconds": dg.MetadataValue.float(round(time.monotonic() - started, 3)),
            }
        )
        return {"sql": sql_report, "indexes": done}

    @dg.op(
        required_resource_keys={"backup_store", "postgres_db", "policy", *index_keys},
        description="Every backed-up row present again, and a search in each index finds a "
        "restored memory; gives the workspace's lease back.",
    )
    def verify_restored(
        context: dg.OpExecutionContext, located: restore.Located, restored: dict
    ) -> None:
        store = context.resources.backup_store.get_store()
        with still_held(context, store, located, last_step=True):
            policy = context.resources.policy.load()
            with index_clients(context.resources, index_keys) as clients:
                result = restore.verify_restore(
                    context.resources.postgres_db.database_url,
                    located,
                    policy,
                    clients,
                    skipped=restore.skipped_of(restored["indexes"]),
                )
        context.add_output_metadata({"verification": dg.MetadataValue.json(result)})
        if result["problems"]:
            raise dg.Failure(
                description="; ".join(result["problems"]),
                metadata={"verification": dg.MetadataValue.json(result)},
            )

    @dg.job(
        name=RESTORE_JOB,
        partitions_def=daily_by_workspace,
        description="Restore one workspace (SQL rows, Typesense, Qdrant) to a date; refuses "
        f"when SQL and index disagree. A plan without writing: {DRY_RUN_JOB}.",
        tags={"restore": "workspace"},
        hooks={release_restore_lease},
    )
    def workspace_restore_job():
        located = locate_and_verify_artifacts()
        verdict = consistency_gate(located)
        verify_restored(located, restore_sql_and_indexes(located, verdict))

    return workspace_restore_job


def sql_table(report: dict) -> dg.MetadataValue:
    columns = [
        dg.TableColumn("table", "string"),
        dg.TableColumn("in_backup", "int"),
        dg.TableColumn("inserted", "int", description="rows the live table lacked"),
        dg.TableColumn("already_present", "int"),
    ]
    records = [
        dg.TableRecord(
            {
                "table": name,
                "in_backup": row["in_backup"],
                "inserted": row["inserted"],
                "already_present": row["already_present"],
            }
        )
        for name, row in report.items()
    ]
    return dg.MetadataValue.table(records=records, schema=dg.TableSchema(columns=columns))


def index_table(plans: dict[str, dict]) -> dg.MetadataValue:
    columns = [
        dg.TableColumn("index", "string"),
        dg.TableColumn("collection", "string"),
        dg.TableColumn("action", "string"),
        dg.TableColumn("entries_from_backup", "int"),
        dg.TableColumn("entries_live_now", "int", description="empty: the collection is missing"),
        dg.TableColumn("effect", "string"),
    ]
    records = [dg.TableRecord({"index": name, **plan}) for name, plan in plans.items()]
    return dg.MetadataValue.table(records=records, schema=dg.TableSchema(columns=columns))


def build_dry_run_job(index_stores: set[str]) -> dg.JobDefinition:
    """The dry run: the restore's plan for a partition, with nothing written. Its own job, so a
    partition of the restore job is "completed" only when really restored."""
    engines = index_engines(index_stores)
    index_keys = {engine.name for engine in engines}
    locate_and_verify_artifacts = build_locate_op(tuple(engine.asset for engine in engines))

    @dg.op(
        required_resource_keys={"backup_store", "postgres_db", "policy", *index_keys},
        description="The gate's verdict, the rows each table would gain (staged, then rolled "
        "back), and per index whether it would be restored or rebuilt and how many entries.",
    )
    def plan_workspace_restore(
        context: dg.OpExecutionContext, config: RestoreOptions, located: restore.Located
    ) -> dict:
        options = options_of(context, config)
        store = context.resources.backup_store.get_store()
        policy = context.resources.policy.load()
        verdict = restore.consistency_gate(store, located, policy)
        with index_clients(context.resources, index_keys) as clients:
            plan = restore_plan.plan_restore(
                store,
                located,
                verdict,
                context.resources.postgres_db.database_url,
                policy,
                clients,
                Mode(options.mode),
                options.override_gate,
                log=context.log.info,
            )
        context.log.info(f"dry run of {plan['partition']}: {plan['decision']}")
        context.add_output_metadata(
            {
                "decision": dg.MetadataValue.text(plan["decision"]),
                "verdict": dg.MetadataValue.text(plan["verdict"]),
                "gate": dg.MetadataValue.text(plan["gate"]),
                "rows_to_insert": dg.MetadataValue.int(plan["rows_to_insert"]),
                "sql_rows": sql_table(plan["sql"]),
                "indexes": index_table(plan["indexes"]),
                "artifacts": dg.MetadataValue.json(plan["artifacts"]),
                "evidence": dg.MetadataValue.json(verdict.to_dict()),
                "mode": dg.MetadataValue.text(plan["mode"]),
            }
        )
        return plan

    @dg.job(
        name=DRY_RUN_JOB,
        partitions_def=daily_by_workspace,
        description="What workspace_restore_job would do for a date x workspace, writing "
        "nothing: artifacts verified, the gate's verdict, rows per table, index entries.",
        tags={"restore": "dry_run"},
    )
    def workspace_restore_dry_run_job():
        plan_workspace_restore(locate_and_verify_artifacts())

    return workspace_restore_dry_run_job


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
            health = full_restore.health_check(database_url, clients, result["database"])
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
