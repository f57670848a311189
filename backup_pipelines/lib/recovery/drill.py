"""The weekly restore drill: "a backup never restored is a hope".

Each drill restores a workspace's newest backup with the real restore code
(`workspace_restore.restore_workspace`: checksums, consistency gate, SQL rows, indexes, verification by
counts and a real search) into SCRATCH places — a new database and new collections named
`drill_<stamp>_<hex>...` — times it against the policy's RTO, and always removes the scratch
places again. Live data is never written: the scratch database is created by the drill (never
the source), and the restore is told to write only into the scratch collections.

Plain Python (no Dagster), so a drill can run from a shell too.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from backup_pipelines.lib.engines import Mode, index_engines
from backup_pipelines.lib.errors import BackupError, SourceError
from backup_pipelines.lib.policy import Policy
from backup_pipelines.lib.postgres.catalog import enum_types_ddl
from backup_pipelines.lib.postgres.connection import connect, describe_database
from backup_pipelines.lib.postgres.load import apply_schema
from backup_pipelines.lib.recovery import workspace_restore as restore
from backup_pipelines.lib.store import ArtifactRef, BackupStore
from backup_pipelines.lib.streams import Log

SCRATCH_DATABASE_ENV = "DRILL_DATABASE_URL"
SCRATCH_NAME = re.compile(r"^drill_[0-9]{8}t[0-9]{6}_[0-9a-f]{8}$")


@dataclass
class DrillResult:
    workspace: str
    date: str | None
    seconds: float  # wall time of the whole restore: the RTO measured
    rto_target_seconds: float
    passed: bool
    met_rto: bool
    counts: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    verdict: str = ""  # of the consistency gate: PASS, or REBUILD_INDEX (indexes rebuilt from SQL)
    scratch: str = ""  # name of the scratch database (and prefix of the scratch collections)
    step_seconds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def no_backup_result(workspace: str, policy: Policy) -> DrillResult:
    """A workspace asked to be drilled that has no complete backup: a failed drill."""
    return DrillResult(
        workspace,
        None,
        0.0,
        policy.rto_minutes * 60,
        False,
        False,
        problems=[f"no complete backup of {workspace} in the store to restore from"],
    )


# ---------------------------------------------------------------------------------------------
# Which workspaces, which date


def week_index(day: date) -> int:
    """Weeks since a fixed Monday. Unlike the ISO week number it never restarts at New Year,
    so the rotation keeps its order across year ends (week 52/53 -> 1 would skip a window)."""
    return (day.toordinal() - 1) // 7


def pick_workspaces(candidates: Iterable[str], sample_size: int, week_seed: int) -> list[str]:
    """A rotating window over the sorted candidates: week w drills the `sample_size`
    workspaces after the (w * sample_size)-th, so consecutive weeks tile the list and every
    workspace is drilled within ceil(n / sample_size) weeks."""
    ordered = sorted(set(candidates))
    if sample_size <= 0 or not ordered:
        return []
    if sample_size >= len(ordered):
        return ordered
    start = (week_seed * sample_size) % len(ordered)
    return [ordered[(start + i) % len(ordered)] for i in range(sample_size)]


def newest_backup_dates(
    store: BackupStore, assets: Iterable[str] = (restore.SQL_ASSET,)
) -> dict[str, str]:
    """Per workspace, the newest date that has a complete artifact (a manifest) of EVERY given
    asset — a date whose index backup is missing could not be restored as a whole. One listing
    per asset, so the store is read once, not once per workspace."""
    common: dict[str, set[str]] | None = None
    for asset in assets:
        found: dict[str, set[str]] = {}
        for ref in store.list_artifacts(asset):
            if ref.workspace is not None:
                found.setdefault(ref.workspace, set()).add(ref.date)
        if common is None:
            common = found
        else:
            common = {w: days & found.get(w, set()) for w, days in common.items()}
    return {workspace: max(days) for workspace, days in (common or {}).items() if days}


# ---------------------------------------------------------------------------------------------
# Scratch places


def scratch_name(now: datetime | None = None) -> str:
    """`drill_<UTC stamp>_<8 hex>`: unique, a lowercase identifier for PostgreSQL, Typesense
    and Qdrant alike, and recognisable when someone finds a leftover."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dt%H%M%S")
    return f"drill_{stamp}_{secrets.token_hex(4)}"


def scratch_targets(policy: Policy, prefix: str, workspace: str, indexes: Mapping) -> dict:
    """Per index engine, the scratch collection `<prefix>_<live name>` a drill restores into."""
    return {
        engine.name: f"{prefix}_{engine.memory_collection(policy, workspace)}"
        for engine in index_engines(indexes)
    }


class ScratchDatabase:
    """A new database for one drill, on the source's server (reached through its `postgres`
    maintenance database, else the source database itself) or on `server_url`'s server."""

    def __init__(self, name: str, database_url: str, server_url: str | None = None) -> None:
        if not SCRATCH_NAME.fullmatch(name):
            raise BackupError(f"refusing scratch database name {name!r}")
        if name == conninfo_to_dict(database_url).get("dbname"):
            raise BackupError("the scratch database must never be the source database")
        self.name = name
        self.admin_urls = (
            [server_url]
            if server_url
            else [make_conninfo(database_url, dbname="postgres"), database_url]
        )
        self.admin_url: str | None = None
        self.created = False

    @property
    def url(self) -> str:
        return make_conninfo(self.admin_url, dbname=self.name)

    def _admin(self):
        if self.admin_url is not None:
            return connect(self.admin_url, autocommit=True)
        last: Exception | None = None
        for url in self.admin_urls:
            try:
                conn = connect(url, autocommit=True)
            except SourceError as exc:  # e.g. no CONNECT on `postgres`: try the next one
                last = exc
                continue
            self.admin_url = url
            return conn
        raise last or BackupError("no server to create the scratch database on")

    def create(self, schema: str) -> None:
        with self._admin() as conn:
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
            except psycopg.errors.InsufficientPrivilege as exc:
                raise BackupError(
                    f"cannot create the scratch database on {describe_database(self.admin_url)}: "
                    f"{exc}; grant the drill's user CREATEDB, or point {SCRATCH_DATABASE_ENV} at "
                    "a server where it has it"
                ) from exc
        self.created = True  # only a database this drill created is ever dropped
        # pg_dump --table does not emit CREATE SCHEMA; the policy's schema may not be `public`.
        with connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))

    def drop(self) -> None:
        if not self.created:
            return
        with self._admin() as conn:
            _drop_database(conn, self.name)
        self.created = False

    def describe(self) -> str:
        return f"{self.name} on {describe_database(self.admin_url or self.admin_urls[0])}"


def _drop_database(conn: psycopg.Connection, name: str) -> None:
    # Left-over sessions (a killed psql, a pooled connection) would block the DROP.
    conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()",
        (name,),
    )
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


# ---------------------------------------------------------------------------------------------
# Places a killed drill left

# A drill killed outright (its run worker SIGKILLed or out of memory, the machine lost) runs
# no cleanup: its scratch database and collections stay on the servers, a copy of a workspace
# each. Each drill first removes the scratch places whose name says they were made over a day
# ago: no drill runs that long, so none of them is in use.
STALE_AFTER = timedelta(hours=24)
_SCRATCH_PREFIX = re.compile(r"^(drill_([0-9]{8}t[0-9]{6})_[0-9a-f]{8})(?:_|$)")


def made_before(name: str, moment: datetime) -> bool:
    """Whether `name` is a drill's scratch place (or starts with one's name and "_") made
    before `moment`."""
    match = _SCRATCH_PREFIX.match(name)
    if match is None:
        return False
    try:
        made = datetime.strptime(match.group(2), "%Y%m%dt%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return False
    return made < moment


def remove_stale_scratch_places(
    database: ScratchDatabase, indexes: Mapping, log: Log, now: datetime | None = None
) -> list[str]:
    """Drop the scratch databases (on the server the drill uses) and delete the scratch
    collections made before STALE_AFTER ago; returns what was removed. A failure is logged
    and left for the next drill: it must not stop this one."""
    before = (now or datetime.now(UTC)) - STALE_AFTER
    removed = []
    try:
        with database._admin() as conn:
            names = [row[0] for row in conn.execute("SELECT datname FROM pg_database")]
            for name in names:  # named and dated as only a drill names what it creates
                if SCRATCH_NAME.fullmatch(name) and made_before(name, before):
                    _drop_database(conn, name)
                    removed.append(f"scratch database {name}")
    except Exception as exc:
        log(f"the scratch databases of earlier drills could not be checked: {exc}")
    for engine in index_engines(indexes):
        client = indexes[engine.name]
        try:
            for name in client.list_collections():
                if made_before(name, before):
                    client.delete_collection(name)
                    removed.append(f"{engine.label} collection {name}")
        except Exception as exc:
            log(
                f"the scratch {engine.label} collections of earlier drills could not be checked: {exc}"
            )
    for place in removed:
        log(f"removed the {place}, left by a drill that did not finish")
    return removed


# ---------------------------------------------------------------------------------------------
# The drill


def drill_workspace(
    store: BackupStore,
    workspace: str,
    date: str,
    database_url: str,
    policy: Policy,
    indexes: Mapping[str, Any] | None = None,
    log: Log | None = None,
    scratch_database_url: str | None = None,
    warn: Log | None = None,
) -> DrillResult:
    """Restore `date|workspace` into scratch places, time it, always clean up. Never raises for
    a failed restore: the result says passed=False with the problems (the caller alerts).
    `indexes` maps index engine names to clients."""
    log = log or (lambda _m: None)
    warn = warn or log
    indexes = indexes or {}
    prefix = scratch_name()
    targets = scratch_targets(policy, prefix, workspace, indexes)
    database = ScratchDatabase(prefix, database_url, scratch_database_url)
    result = DrillResult(
        workspace, date, 0.0, policy.rto_minutes * 60, False, False, scratch=prefix
    )
    remove_stale_scratch_places(database, indexes, warn)
    started = time.monotonic()
    try:
        report = _restore_into_scratch(
            store, workspace, date, policy, targets, database, indexes, log, database_url
        )
        result.seconds = round(time.monotonic() - started, 3)
        result.counts, result.verdict = _counts(report), report.verdict
        result.step_seconds = {step: round(s, 3) for step, s in report.seconds.items()}
        result.passed = True
    except Exception as exc:  # any failure is the drill's finding, reported, never swallowed
        result.seconds = round(time.monotonic() - started, 3)
        # Our own errors already say what and where; anything else needs its type to be read.
        result.problems.append(str(exc) if isinstance(exc, BackupError) else f"{exc!r}")
        warn(f"drill of {date}|{workspace} FAILED after {result.seconds:.1f} s: {exc}")
    finally:
        cleanup_problems = _clean_up(database, targets, indexes)
        for problem in cleanup_problems:
            warn(f"DRILL CLEANUP FAILED — remove it by hand: {problem}")
        result.problems += cleanup_problems
    result.passed = result.passed and not cleanup_problems
    result.met_rto = result.passed and result.seconds <= result.rto_target_seconds
    log(
        f"drill of {date}|{workspace}: {'passed' if result.passed else 'FAILED'} in "
        f"{result.seconds:.1f} s (RTO target {result.rto_target_seconds:g} s)"
    )
    return result


def _create_enum_types(source_url: str, scratch_url: str, tables: list[str]) -> None:
    """The enum types the backed-up tables use, as the source defines them: the workspace
    dump's DDL (pg_dump --table) does not carry them, and the tables cannot be created
    without them."""
    with connect(source_url) as source:
        statements = enum_types_ddl(source, tables)
    if statements:
        with connect(scratch_url, autocommit=True) as scratch:
            for statement in statements:
                scratch.execute(statement)


def _restore_into_scratch(
    store, workspace, date, policy, targets, database, indexes, log, source_url
) -> restore.RestoreReport:
    database.create(policy.schema)
    log(f"drill of {date}|{workspace}: scratch database {database.describe()}")
    sql_ref = ArtifactRef(restore.SQL_ASSET, date, workspace)
    manifest = store.require_manifest(sql_ref)
    _create_enum_types(source_url, database.url, [t["table"] for t in manifest["tables"]])
    apply_schema(store, sql_ref, manifest, database.url)
    for engine in index_engines(indexes):
        ref = ArtifactRef(engine.asset, date, workspace)
        manifest = store.read_manifest(ref)
        if manifest is not None:  # else the restore reports the missing artifact
            engine.prepare_scratch(indexes[engine.name], store, ref, manifest, targets[engine.name])
    # REPLACE: the scratch places are empty, so this is the disaster restore (collections put
    # back exactly as backed up); SQL rows are inserted the same way in either mode.
    return restore.restore_workspace(
        store,
        date,
        workspace,
        database.url,
        policy,
        indexes,
        mode=Mode.REPLACE,
        log=log,
        index_targets=targets,
        lease_purpose="drill",
    )


def _clean_up(database: ScratchDatabase, targets: dict[str, str], indexes: Mapping) -> list[str]:
    """Remove every scratch place, each on its own, so one failure does not leave the others."""
    problems = []
    steps = [(f"scratch database {database.name}", database.drop)]
    for engine in index_engines(indexes):
        name = targets[engine.name]
        steps.append((f"{engine.label} collection {name}", _deleter(indexes[engine.name], name)))
    for what, step in steps:
        try:
            step()
        except Exception as exc:
            problems.append(f"cleanup of {what} failed: {type(exc).__name__}: {exc}")
    return problems


def _deleter(client, collection: str):
    def delete() -> None:
        if client.collection_exists(collection):
            client.delete_collection(collection)

    return delete


def _counts(report: restore.RestoreReport) -> dict:
    return {"sql_rows": report.verification.get("sql_rows", {}), **report.indexes}
