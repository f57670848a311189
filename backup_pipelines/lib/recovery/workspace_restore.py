"""Workspace restore, step by step, each step gating the next (DESIGN "Restores"):

1. locate the partition's artifacts and verify every checksum;
2. the consistency gate: SQL and index artifacts of the same point in time must agree;
3. SQL: the backed-up rows merged into the live tables (postgres.merge: one transaction,
   insert-missing-only, parents first);
4. indexes: each engine restores its collection from its artifact, or rebuilds it from the SQL
   rows when the verdict is REBUILD_INDEX — in `merge` mode only what is missing is added, so
   newer data is never overwritten; `replace` puts the backup's state back as it was;
5. verify: every backed-up row is present, each index holds at least the backed-up entries,
   and (where the policy's mapping names a probe column) a search finds a restored memory.

Before anything is written the policy's index mapping is checked against the database
(recovery.mappings): a schema it does not fit is refused with the table, column and key.

The steps overlap where the gate allows it (issue 16). In-process (`restore_workspace`, the
command line's path) the SQL rows are loaded (staged, or copied straight into a live table
holding none of the workspace's rows; uncommitted either way: no other session sees them)
and inserted, every constraint checked, while the gate reads; once it passed, the SQL commit
and every index restored from its artifact run at the same time. The Dagster job gates in one
op; the next (`restore_sql_and_indexes`) loads and checks the SQL rows the same way, then
commits them while it restores the indexes. Either way a row the live schema refuses stops
the restore before any index is written. A rebuild from SQL rows still waits for the SQL
commit. `parallel=False` runs them one after another.

Plain Python reading only the store and the live systems, so the Dagster job and the command
line (`backup-pipelines restore workspace`) run the very same code. Index engines are reached
through backup_pipelines.lib.engines only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql

from backup_pipelines.lib.engines import IndexEngine, Mode, index_engines
from backup_pipelines.lib.errors import BackupError, Refusals
from backup_pipelines.lib.policy import Policy
from backup_pipelines.lib.postgres.connection import connect
from backup_pipelines.lib.postgres.memory_rows import iter_index_rows, probe_row
from backup_pipelines.lib.postgres.merge import merge_sql_rows
from backup_pipelines.lib.recovery import consistency, partial
from backup_pipelines.lib.recovery.mappings import check_mappings
from backup_pipelines.lib.recovery.rebuild_command import run_rebuild_command
from backup_pipelines.lib.store import ArtifactRef, BackupStore, store_from_url
from backup_pipelines.lib.store.copy import (
    COPY_STORE_VARIABLE,
    FROM_ENV,
    copy_store_from_env,
    lease_store,
)
from backup_pipelines.lib.streams import Log
from backup_pipelines.lib.workspaces import validate_workspace_id

SQL_ASSET = "postgres/workspace_dump"


class GateRefused(BackupError):
    """The consistency gate said FAIL: nothing was written."""

    def __init__(self, verdict) -> None:
        self.verdict = verdict
        super().__init__(
            "restore refused by the consistency gate: "
            + verdict.summary()
            + " — nothing was written; pick another date, or override the gate explicitly"
        )


@dataclass
class Located:
    """The artifacts of one partition, verified."""

    date: str
    workspace: str
    refs: dict[str, ArtifactRef]
    manifests: dict[str, dict]
    verified_bytes: int
    # Where the artifacts are read from when not the primary store: the copy store's URL
    # (restore fell back to it), and why.
    source: str = ""
    fallback: str = ""

    @property
    def sql(self) -> tuple[ArtifactRef, dict]:
        return self.refs[SQL_ASSET], self.manifests[SQL_ASSET]


@dataclass
class RestoreReport:
    workspace: str
    date: str
    mode: str
    verdict: str
    source: str = ""  # the copy store restored from, when the primary failed
    sql: dict = field(default_factory=dict)
    indexes: dict[str, dict] = field(default_factory=dict)  # engine name -> what it did
    verification: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def index_assets(indexes: Mapping[str, Any]) -> list[str]:
    """The index artifacts a restore with these clients (engine name -> client) reads besides
    the SQL dump."""
    return [engine.asset for engine in index_engines(indexes)]


def locate_and_verify(
    store: BackupStore,
    date: str,
    workspace: str,
    index_assets: list[str],
    copy_store: BackupStore | object | None = FROM_ENV,
    log: Log | None = None,
) -> Located:
    """Every artifact of the partition, each file checked against its manifest's sha256.
    When the primary store fails (unreachable, an artifact missing or failing verification)
    and a copy store is configured (BACKUP_COPY_STORE_URL, or `copy_store`), the partition is
    located and verified there instead, and the restore reads from the copy — saying so."""
    workspace = validate_workspace_id(workspace)
    try:
        return _locate_in(store, date, workspace, index_assets)
    except BackupError as exc:
        copy = copy_store_from_env() if copy_store is FROM_ENV else copy_store
        if copy is None:
            raise
        primary_failure = exc
    try:
        located = _locate_in(copy, date, workspace, index_assets)
    except BackupError as copy_failure:
        raise BackupError(
            f"{primary_failure}; the copy store {copy.describe()} cannot serve it either: "
            f"{copy_failure}"
        ) from primary_failure
    located.source = copy.describe()
    located.fallback = (
        f"the primary store {store.describe()} failed ({primary_failure}); restoring "
        f"{date}|{workspace} from the copy store {copy.describe()}, verified there"
    )
    (log or (lambda _m: None))(located.fallback)
    return located


def _locate_in(store: BackupStore, date: str, workspace: str, index_assets: list[str]) -> Located:
    refs, manifests, problems, verified = {}, {}, [], 0
    for asset in [SQL_ASSET, *index_assets]:
        ref = ArtifactRef(asset, date, workspace)
        manifest = store.read_manifest(ref)
        if manifest is None:
            problems.append(f"no complete {asset} artifact at {store.location(ref)}")
            continue
        refs[asset], manifests[asset] = ref, manifest
    # Each artifact verified on its own thread: reading and sha256 release the GIL, so the SQL
    # dump and the Qdrant snapshot (gigabytes each at a million memories) are hashed at once.
    with ThreadPoolExecutor(max(1, len(refs)), thread_name_prefix="verify") as pool:
        for result in pool.map(store.verify, refs.values()):
            problems.extend(result.problems)
            verified += result.bytes
    if problems:
        raise BackupError(f"cannot restore {date}|{workspace}: " + "; ".join(problems))
    return Located(date, workspace, refs, manifests, verified)


def artifact_source(store: BackupStore, located: Located) -> BackupStore:
    """The store the located artifacts are read from: the primary, or the copy store
    locate_and_verify fell back to. Leases stay in the primary."""
    if not located.source:
        return store
    if located.source == store.describe():
        return store
    return store_from_url(located.source, COPY_STORE_VARIABLE)


def check_pinned(store: BackupStore, located: Located) -> None:
    """The artifacts are still the generations that were verified and gated. Within one held
    lease nothing can replace them; this catches a run whose lease ended between its steps
    (a retry from a failed step) while a backup committed a newer generation."""
    changed = []
    store = artifact_source(store, located)
    for asset, ref in located.refs.items():
        now = store.read_manifest(ref)
        pinned = located.manifests[asset].get("generation")
        current = None if now is None else now.get("generation")
        if current != pinned:
            changed.append(f"{asset}: verified generation {pinned}, now {current or 'none'}")
    if changed:
        raise BackupError(
            f"the artifacts of {located.date}|{located.workspace} changed since this restore "
            "verified and gated them (a backup committed in between): "
            + "; ".join(changed)
            + " — start the restore again, so the gate judges what is restored"
        )


def consistency_gate(store: BackupStore, located: Located, policy: Policy):
    """The verdict of the partition's SQL artifact against each of its index artifacts."""
    source = artifact_source(store, located)
    return consistency.evaluate_partition(source, located.refs, located.manifests, policy)


def merge_sql(
    database_url: str,
    store: BackupStore,
    located: Located,
    dry_run: bool = False,
    log: Log | None = None,
) -> dict:
    ref, manifest = located.sql
    source = artifact_source(store, located)
    return merge_sql_rows(database_url, source, ref, manifest, dry_run=dry_run, log=log)


@dataclass(frozen=True)
class IndexRestore:
    """What every index step of one restore works with: the clients (engine name -> client),
    the located artifacts and their store, the policy, the mode, the database a rebuild reads,
    the collections to restore into (engine name -> collection; default: the policy's), and
    whether refused entries are skipped."""

    indexes: Mapping[str, Any]
    store: BackupStore
    located: Located
    policy: Policy
    mode: Mode
    database_url: str
    targets: Mapping[str, str] = field(default_factory=dict)
    log: Log | None = None
    skip_refused: bool = False

    def target(self, engine: IndexEngine) -> str:
        return self.targets.get(engine.name) or engine.memory_collection(
            self.policy, self.located.workspace
        )


def restore_index(
    engine: IndexEngine,
    client,
    job: IndexRestore,
    rebuild: bool,
    target: str | None = None,
    refused: Refusals | None = None,
) -> dict:
    """One engine's collection of the workspace back, into `target` (default: its own name):
    from the artifact, or rebuilt from the SQL rows when the gate says the index is stale or
    the artifact does not hold the collection. Entries the index refuses go to `refused`
    (without it: EntriesRefused once every other entry is in)."""
    located, policy = job.located, job.policy
    collection = engine.memory_collection(policy, located.workspace)
    target = target or collection
    manifest = located.manifests.get(engine.asset)
    if rebuild or manifest is None or not engine.holds(manifest, collection):
        return rebuild_index(engine, client, located.workspace, policy, job.mode,
                             job.database_url, target, target != collection, job.log,
                             refused)  # fmt: skip
    ref = located.refs[engine.asset]
    source = artifact_source(job.store, located)
    return engine.restore(client, source, ref, manifest, collection, target, job.mode, refused)


def rebuild_index(
    engine: IndexEngine,
    client,
    workspace: str,
    policy: Policy,
    mode: Mode,
    database_url: str,
    target: str,
    scratch: bool = False,
    log: Log | None = None,
    refused: Refusals | None = None,
) -> dict:
    """`target` built from the workspace's SQL rows in `database_url`: by the platform's own
    reindexer when the policy names one, else by the built-in mapping."""
    mapping = policy.index_mapping(engine.name)
    if mapping.rebuild_command:
        if scratch and not any("{collection}" in part for part in mapping.rebuild_command):
            raise BackupError(
                f"{mapping.described('rebuild_command')} takes no {{collection}}: it would "
                f"rebuild the live {engine.label} index, not the scratch collection {target}; "
                "add {collection} to the command so it can build into another collection"
            )
        return run_rebuild_command(
            mapping.rebuild_command,
            workspace,
            target,
            database_url,
            mapping.rebuild_timeout_seconds,
            log or (lambda _m: None),
        )
    with connect(database_url) as conn:
        rows = iter_index_rows(conn, workspace, mapping, policy.schema)
        return engine.rebuild(client, target, rows, mode, mapping, refused)


def restore_indexes(
    job: IndexRestore,
    rebuild: bool,
    lap=None,
    sql_report: Mapping[str, dict] | None = None,
    sql_branch=None,
) -> dict[str, dict]:
    """Every engine's collection of the workspace back (engine name -> what it did). One
    engine failing, or refusing entries (skipped only with `job.skip_refused`), does not stop
    the others; then PartialRestore says what each store holds (`sql_report`: the SQL step's)
    and how to finish (recovery.partial).

    With `sql_branch` (a callable merging the SQL rows, returning its report) the SQL merge and
    the index steps all run at once (run_beside_sql); the SQL report is then
    `progress.sql_report`, reached through the returned results' caller (restore_workspace)."""
    located = job.located
    progress = partial.IndexProgress(
        f"{located.date}|{located.workspace}", job.mode, job.skip_refused, sql_report, job.log
    )
    for engine in index_engines(job.indexes):
        progress.plan(
            engine, job.indexes[engine.name], job.target(engine),
            backed_up_rows(located, job.policy, engine),
        )  # fmt: skip

    def run(step: partial.IndexStep) -> None:
        with progress.running(step):  # a failure is reported with every store's state
            step.result = restore_index(
                step.engine, step.client, job, rebuild, step.collection, step.refused
            )

    if sql_branch is None:
        for step in progress.steps:
            logged(step.engine.name, lambda step=step: run(step), job.log)
            if lap is not None:
                lap(step.engine.name)
        return progress.finish()
    run_beside_sql(progress, run, sql_branch, lap, job.log)
    return progress.finish()


def logged(name: str, work, log: Log | None) -> None:
    """Run one store's step between a "started" and a "finished"/"ended" line: the run log
    shows which stores are being written at any moment."""
    log = log or (lambda _m: None)
    started = time.monotonic()
    log(f"{name}: started")
    try:
        work()
    finally:
        log(f"{name}: ended after {time.monotonic() - started:.1f} s")


def run_beside_sql(progress: partial.IndexProgress, run, sql_branch, lap, log=None) -> None:
    """The SQL merge and every index step at once, each on its own thread (the work is in the
    servers). A failing branch does not stop the others; the SQL outcome goes into `progress`
    so PartialRestore states every store. `lap(name, seconds)` gets each branch's own time."""

    def timed(name: str, work) -> None:
        started = time.monotonic()
        try:
            logged(name, work, log)
        finally:
            if lap is not None:
                lap(name, time.monotonic() - started)

    def sql() -> None:
        progress.sql_running = True
        try:
            progress.sql_report = sql_branch()
        except Exception as error:
            progress.sql_failed(error)
        finally:
            progress.sql_running = False

    branches = {"sql": sql} | {s.engine.name: (lambda s=s: run(s)) for s in progress.steps}
    with ThreadPoolExecutor(len(branches), thread_name_prefix="restore") as pool:
        futures = [pool.submit(timed, name, work) for name, work in branches.items()]
        wait(futures)
    for future in futures:
        future.result()  # an interrupt inside a branch (BaseException) goes on up


def restore_sql_and_indexes(
    job: IndexRestore, rebuild: bool, branch_lap=None
) -> tuple[dict, dict[str, dict]]:
    """Once the gate passed: the SQL rows first, into the live tables but uncommitted, every
    constraint checked (a row the live schema refuses stops the restore here, with nothing
    written anywhere); then the SQL commit and every index restore at the same time (each on
    its own thread), or, when the indexes are rebuilt from the SQL rows (`rebuild`), the SQL
    commit first. Returns (SQL report, engine name -> index result); PartialRestore names each
    store's state when one failed. `branch_lap(name, seconds)` gets each store's own time.
    The Dagster job's path (its restore_sql_and_indexes op)."""
    branch_lap = branch_lap or (lambda _name, _seconds: None)
    merged: dict = {}

    def sql_branch() -> dict:
        merged.update(merge_sql(job.database_url, job.store, job.located, log=job.log))
        return merged

    if job.indexes and not rebuild:
        background = BackgroundMerge(
            job.database_url, artifact_source(job.store, job.located), job.located, job.log
        )
        try:
            logged("sql_staging", background.wait_staged, job.log)
        except BaseException as error:  # rolled back; waited for unless interrupted
            background.abandon(wait=isinstance(error, Exception))
            raise
        branch_lap("sql_staging", background.staging_seconds)
        indexes = commit_beside_indexes(job, background, branch_lap)
        return background.report, indexes
    clock = [time.monotonic()]

    def step_lap(name: str) -> None:  # one step after another: each from the last's end
        now = time.monotonic()
        branch_lap(name, now - clock[0])
        clock[0] = now

    logged("sql", sql_branch, job.log)
    step_lap("sql")
    return merged, restore_indexes(job, rebuild, step_lap, sql_report=merged)


def commit_beside_indexes(job: IndexRestore, background: BackgroundMerge, branch_lap) -> dict:
    """The staged SQL merge's commit and every index restore at once. The commit starts with
    the index steps: when they cannot even begin, the SQL rows are rolled back."""

    def commit() -> dict:
        background.proceed()
        return background.finish()

    try:
        return restore_indexes(job, False, branch_lap, sql_branch=commit)
    except BaseException as error:  # a rollback unless the commit already ran
        background.abandon(wait=isinstance(error, Exception))
        raise


def backed_up_rows(located: Located, policy: Policy, engine: IndexEngine) -> int:
    """The backed-up rows of the table `engine`'s index is derived from."""
    table = f"{policy.schema}.{policy.index_mapping(engine.name).table}"
    _ref, manifest = located.sql
    return next((e["rows"] for e in manifest["tables"] if e["table"] == table), 0)


def skipped_of(index_results: Mapping[str, Any]) -> dict[str, dict]:
    """Engine name -> the refused entries a restore skipped (its results' refused_skipped)."""
    return {
        name: result["refused_skipped"]
        for name, result in index_results.items()
        if isinstance(result, dict) and result.get("refused_skipped")
    }


def verify_restore(
    database_url: str,
    located: Located,
    policy: Policy,
    indexes: Mapping[str, Any] | None = None,
    targets: Mapping[str, str] | None = None,
    skipped: Mapping[str, dict] | None = None,
) -> dict:
    """What is configured, checked: every table's live rows at least the backup's; each index
    (in `targets`' collections where given: where it was restored to) holding at least the
    backed-up rows of its mapped table, less the refused entries the restore skipped
    (`skipped`: engine name -> refused_skipped); and where the mapping names a probe column, a
    search in the index finding the newest restored row (unless that row was skipped)."""
    indexes, targets, skipped = indexes or {}, targets or {}, skipped or {}
    _ref, manifest = located.sql
    problems: list[str] = []
    result: dict = {"sql_rows": {}}
    backed_up = {entry["table"]: entry["rows"] for entry in manifest["tables"]}
    with connect(database_url) as conn:
        for entry in manifest["tables"]:
            schema, name = entry["table"].split(".", 1)
            live = conn.execute(
                sql.SQL("SELECT count(*) FROM {} WHERE {} = %s").format(
                    sql.Identifier(schema, name), sql.Identifier(entry["workspace_column"])
                ),
                (located.workspace,),
            ).fetchone()[0]
            result["sql_rows"][entry["table"]] = live
            if live < entry["rows"]:
                problems.append(
                    f"{entry['table']}: {live} rows live, {entry['rows']} in the backup"
                )
        for engine in index_engines(indexes):
            client = indexes[engine.name]
            collection = targets.get(engine.name) or engine.memory_collection(
                policy, located.workspace
            )
            mapping = policy.index_mapping(engine.name)
            left_out = skipped.get(engine.name) or {"count": 0, "entries": []}
            expected = backed_up.get(f"{policy.schema}.{mapping.table}", 0) - left_out["count"]
            entries = engine.count(client, collection)
            result[f"{engine.name}_entries"] = entries
            if entries < expected:
                problems.append(
                    f"{engine.label} collection {collection} holds {entries} entries, fewer than "
                    f"the {expected} backed-up rows of {policy.schema}.{mapping.table}"
                    + (" not refused and skipped" if left_out["count"] else "")
                )
            probe = probe_row(conn, located.workspace, mapping, policy.schema)
            if probe is None:
                continue  # no probe configured (counts only), or no row to look for
            if str(probe[mapping.id_column]) in {e["id"] for e in left_out["entries"]}:
                result[f"{engine.name}_search_skipped"] = "the newest row was refused and skipped"
                continue
            found = engine.finds(client, collection, probe, mapping)
            result[f"{engine.name}_search_found_memory"] = found
            if not found:
                problems.append(
                    f"{engine.label} search did not return restored row "
                    f"{probe[mapping.id_column]} of {policy.schema}.{mapping.table}"
                )
    result["problems"] = problems
    return result


def check_before_writing(database_url: str, policy: Policy, engine_names: Iterable[str]) -> None:
    """The policy's mappings of the index engines named against the database a restore
    writes to: refused with every problem (table, column, policy key) before anything is
    written."""
    check_mappings(database_url, policy, index_engines(engine_names))


def restore_workspace(
    store: BackupStore,
    date: str,
    workspace: str,
    database_url: str,
    policy: Policy,
    indexes: Mapping[str, Any] | None = None,
    mode: Mode = Mode.MERGE,
    dry_run: bool = False,
    override_gate: str = "",
    log: Log | None = None,
    index_targets: Mapping[str, str] | None = None,
    lease_owner: str | None = None,
    lease_purpose: str = "restore",
    skip_refused: bool = False,
    parallel: bool = True,
) -> RestoreReport:
    """The whole restore in-process (the command line's path; the Dagster job runs the same
    steps as separate ops). `indexes` maps engine names to clients ("typesense": client).

    `index_targets` (engine name -> collection) names the collections to restore INTO
    (default: the policy's); the backed-up collections are still looked up, gated and
    recovered by the policy's names. The restore drill uses it to restore into scratch
    collections beside the live ones.

    The workspace's lease is held from the first read to the last write: a backup of this
    workspace (from any scheduler or process) waits, another restore is refused naming the
    holder, and a whole-database restore in progress refuses this one.

    Entries an index refuses are skipped (and reported by id) only with `skip_refused`; a
    failure after the SQL commit is a PartialRestore saying what each store holds, and the
    same call again finishes what is missing.

    Once the gate passed and the indexes come from their artifacts, the SQL merge and the
    index restores run at the same time (`parallel=False`: one after another, as before; the
    benchmark's baseline)."""
    log = log or (lambda _m: None)
    leases = lease_store(store, log)
    with leases.lease(workspace, lease_purpose, lease_owner, log=log):
        if lease_purpose == "restore":
            leases.refuse_overlapping_restores(workspace)
        return _restore_workspace_held(
            store, date, workspace, database_url, policy, indexes or {}, mode, dry_run,
            override_gate, log, index_targets or {}, skip_refused, parallel,
        )  # fmt: skip


def _restore_workspace_held(
    store, date, workspace, database_url, policy, indexes, mode, dry_run, override_gate, log,
    targets, skip_refused=False, parallel=True,
) -> RestoreReport:  # fmt: skip
    timings: dict[str, float] = {}
    branch_seconds: dict[str, float] = {}  # each branch's own time when they run at once
    started = time.monotonic()

    def lap(step: str) -> None:
        timings[step] = time.monotonic() - started - sum(timings.values())

    located = locate_and_verify(store, date, workspace, index_assets(indexes), log=log)
    check_before_writing(database_url, policy, list(indexes))
    lap("locate_and_verify")
    job = IndexRestore(
        indexes, store, located, policy, mode, database_url, targets, log, skip_refused
    )
    # Staging the SQL rows writes nothing anyone sees: it runs while the gate reads.
    background = None
    if parallel and indexes and not dry_run:
        background = BackgroundMerge(database_url, artifact_source(store, located), located, log)
    try:
        report, rebuild = _gate(store, located, policy, override_gate, mode, lap, log)
        if background is not None:
            background.wait_staged()  # a table the server refused: raised, nothing written
            lap("sql_staging")
            branch_seconds["sql_staging"] = background.staging_seconds
    except BaseException as error:
        if background is not None:  # rolled back; waited for unless interrupted
            background.abandon(wait=isinstance(error, Exception))
        raise
    if background is None:
        report.sql = merge_sql(database_url, store, located, dry_run=dry_run, log=log)
        lap("sql")
        if dry_run:
            report.seconds = timings
            return report
        report.indexes = restore_indexes(job, rebuild, lap, report.sql)
    elif rebuild:  # a rebuild reads the merged SQL rows: it waits for the SQL commit
        background.proceed()
        report.sql = background.finish()
        lap("sql")
        report.indexes = restore_indexes(job, rebuild, lap, report.sql)
    else:

        def branch_lap(name: str, seconds: float) -> None:
            branch_seconds[name] = seconds

        report.indexes = commit_beside_indexes(job, background, branch_lap)
        report.sql = background.report
        lap("sql_and_indexes")
    skipped = skipped_of(report.indexes)
    report.verification.update(
        verify_restore(database_url, located, policy, indexes, targets, skipped)
    )
    lap("verify")
    report.seconds = timings | {f"{k}_branch": v for k, v in branch_seconds.items()}
    if report.verification["problems"]:
        raise partial.not_verified(
            f"{date}|{workspace}", mode, report.sql, report.indexes, report.verification
        )
    return report


def _gate(store, located: Located, policy: Policy, override_gate: str, mode: Mode, lap, log):
    """The consistency gate's verdict: refused (GateRefused), overridden (logged, in the
    report), or passed; returns the report begun and whether the indexes must be rebuilt."""
    verdict = consistency_gate(store, located, policy)
    lap("consistency_gate")
    log(f"consistency gate: {verdict.summary()}")
    if verdict.outcome == consistency.Outcome.FAIL and not override_gate:
        raise GateRefused(verdict)
    report = RestoreReport(
        located.workspace, located.date, str(mode), str(verdict.outcome), located.source
    )
    if override_gate and verdict.outcome == consistency.Outcome.FAIL:
        log(f"GATE OVERRIDDEN: {override_gate!r} — restoring despite: {verdict.summary()}")
        report.verification["gate_overridden"] = override_gate
    return report, verdict.outcome == consistency.Outcome.REBUILD_INDEX


class BackgroundMerge:
    """The SQL merge (postgres.merge: one transaction) on its own thread: it loads every table
    and inserts its rows (uncommitted: no other session sees them), every constraint checked,
    then waits (the library starts it before the consistency gate, which reads meanwhile).
    `proceed()` lets it commit; `abandon()` rolls it back. A row the server refuses is raised by
    `wait_staged()` before anything was written anywhere."""

    def __init__(self, database_url: str, source: BackupStore, located: Located, log: Log) -> None:
        ref, manifest = located.sql
        self.report: dict | None = None
        self.error: BaseException | None = None
        self.staging_seconds = 0.0
        self._go, self._staged = threading.Event(), threading.Event()
        self._proceed = False
        self._started = time.monotonic()

        def run() -> None:
            try:
                self.report = merge_sql_rows(
                    database_url, source, ref, manifest, log=log, staged=self._on_staged
                )
            except BaseException as error:  # handed to the caller's thread
                self.error = error
            finally:
                self._staged.set()

        self._thread = threading.Thread(target=run, name="restore-sql", daemon=True)
        self._thread.start()

    def _on_staged(self) -> bool:
        self.staging_seconds = time.monotonic() - self._started
        self._staged.set()
        self._go.wait()
        return self._proceed

    def wait_staged(self) -> None:
        self._staged.wait()
        if self.error is not None:
            self._thread.join()
            raise self.error

    def proceed(self) -> None:
        self._proceed = True
        self._go.set()

    def abandon(self, wait: bool = True) -> None:
        """Roll the staged rows back; `wait` until the transaction is gone (not on an
        interrupt, where the thread ends on its own and the server drops its temp tables)."""
        self._go.set()
        if wait:
            self._thread.join()

    def finish(self) -> dict:
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.report
