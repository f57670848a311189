"""The whole-database restore from start to end: the database (into a new database, or over
the live one by a verified swap), the index collections the servers lack, the runbooks'
manual steps around it, and a final health check.

Over the live database (`overwrite_live`), in this order, so that the platform's writers are
stopped only for the swap and a failure at any step leaves the live database as it was:

    1. restore into `<live>_restoring_<date>` and verify it against the dump (counts, objects);
       a failure drops it
    2. give it live's owner, grants and settings; ANALYZE it; restore missing index collections
    3. the before-commands (stop the platform's writers)
    4. the swap: live -> `<live>_before_restore_<time>`, restored -> `<live>`, one transaction
    5. the after-commands (migrations, start the writers); if one fails, the swap is undone
       and the restored database dropped

A failure in 2-4 keeps the verified restored database (rerun with resume to swap it in without
restoring again). The previous live database stays until `backup-pipelines release-database`.
"""

from __future__ import annotations

import contextlib
import shlex
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from backup_pipelines.lib.engines import index_engines
from backup_pipelines.lib.errors import BackupError, ConfigError
from backup_pipelines.lib.policy import Policy
from backup_pipelines.lib.postgres import database_swap as swap
from backup_pipelines.lib.postgres import full_restore as database
from backup_pipelines.lib.postgres.connection import connect
from backup_pipelines.lib.postgres.full_restore import FULL_DUMP_ASSET
from backup_pipelines.lib.store import ArtifactRef, BackupStore
from backup_pipelines.lib.store.copy import lease_store, readable_source
from backup_pipelines.lib.streams import Log

MAX_JOBS = 64


@dataclass
class FullRestoreRequest:
    """What the operator asked for; `check()` refuses contradictions before anything runs."""

    date: str
    target_database: str | None = None
    overwrite_live: bool = False
    jobs: int = 2
    resume: bool = False
    commands_before: list[str] = field(default_factory=list)
    commands_after: list[str] = field(default_factory=list)

    def check(self) -> FullRestoreRequest:
        if self.overwrite_live and self.target_database:
            raise ConfigError(
                f"--overwrite-live and --target-database {self.target_database!r} contradict "
                "each other: overwriting live restores into a staging database and swaps it in "
                "under the live name; drop one of the two options"
            )
        if self.target_database:
            swap.validate_database_name(self.target_database, "target database")
        if isinstance(self.jobs, bool) or not isinstance(self.jobs, int):
            raise ConfigError(f"jobs must be a whole number, got {self.jobs!r}")
        if not 1 <= self.jobs <= MAX_JOBS:
            raise ConfigError(f"jobs must be between 1 and {MAX_JOBS}, got {self.jobs}")
        for command in [*self.commands_before, *self.commands_after]:
            _argv(command)  # refuses unbalanced quotes before anything runs
        return self


def restore_full(
    store: BackupStore,
    request: FullRestoreRequest,
    database_url: str,
    *,
    policy: Policy | None = None,
    indexes: Mapping[str, Any] | None = None,
    log: Log | None = None,
    now: datetime | None = None,
    lease_owner: str | None = None,
) -> dict:
    """Run the whole restore `request` asks for; returns what was done (see the module doc).
    `indexes` (engine name -> client) restores the collections the servers lack; `now`
    names the kept live database (default: the clock). The whole-database lease is held
    throughout: a full backup waits, and no workspace restore runs beside it."""
    log = log or (lambda _m: None)
    request.check()
    leases = lease_store(store, log)
    with leases.lease(None, "restore", lease_owner, log=log):
        leases.refuse_overlapping_restores(None)
        return _restore_full_held(store, request, database_url, policy, indexes, log, now)


def _restore_full_held(store, request, database_url, policy, indexes, log, now) -> dict:
    # The lease stays in the primary; the artifacts are read from the copy store when the
    # primary's dump is missing, unreachable or fails verification (and that is said).
    source, fallback = readable_source(store, ArtifactRef(FULL_DUMP_ASSET, request.date), log=log)
    result = _restore_full_from(source, request, database_url, policy, indexes, log, now)
    if fallback:
        result["source"] = source.describe()
        result["fallback"] = fallback
    return result


def _restore_full_from(store, request, database_url, policy, indexes, log, now) -> dict:
    if request.overwrite_live:
        return _overwrite_live(store, request, database_url, policy, indexes, log, now)
    run_commands(request.commands_before, log, "before restore")
    result = database.restore_full_database(
        store, request.date, database_url, request.target_database, request.jobs,
        request.resume, log,
    )  # fmt: skip
    result["indexes"] = _missing_indexes(store, request.date, policy, indexes, log)
    run_commands(request.commands_after, log, "after restore")
    return result


def _overwrite_live(store, request, database_url, policy, indexes, log, now) -> dict:
    started = time.monotonic()
    live = swap.live_database(database_url)
    with swap.admin_connection(database_url, avoid=(live,)) as conn:
        # Marked: a killed run of this very path left it (resume continues into it).
        gone = not swap.database_exists(conn, live) or database.read_marker(conn, live)
    if gone:
        return _restore_dropped_live(
            store, request, database_url, live, policy, indexes, log, started
        )
    staging = database.staging_name(live, request.date)
    live_tables = database.tables_of(database_url)
    restored = database.restore_into_new_database(
        store, request.date, database_url, staging,
        jobs=request.jobs, resume=request.resume, keep_owners=True, log=log,
    )  # fmt: skip
    with _keeping(staging, "before the swap"):
        with swap.admin_connection(database_url, avoid=(live, staging)) as conn:
            swap.adopt_attributes(conn, staging, swap.read_attributes(conn, live))
        database.analyze(database_url, staging, log)
        index_report = _missing_indexes(store, request.date, policy, indexes, log)
    with _keeping(staging, "the before-commands", writers_stopped=True):
        run_commands(request.commands_before, log, "before restore")
    with _keeping(staging, "the swap", writers_stopped=True):
        swapped = swap.swap_into_place(database_url, staging, now=now, log=log)
    try:
        run_commands(request.commands_after, log, "after restore")
    except BackupError as exc:
        raise _undo_swap(database_url, swapped, exc, log) from exc
    not_in_backup = sorted(live_tables - set(restored.rows))
    if not_in_backup:
        log(
            f"the live database had {len(not_in_backup)} tables the backup did not have "
            f"(kept in {swapped.previous!r}): {', '.join(not_in_backup)}"
        )
    log(
        f"the previous live database is kept as {swapped.previous!r}: drop it when no longer "
        f"needed with `backup-pipelines release-database {swapped.previous}`"
    )
    return _swap_result(
        restored, live, swapped.previous, staging, not_in_backup, index_report, started
    )


def _swap_result(restored, live, previous, restored_as, not_in_backup, indexes, started) -> dict:
    return {
        **restored.to_dict(),
        "database": live,
        "previous_database": previous,
        "restored_as": restored_as,
        "live_tables_not_in_backup": not_in_backup,
        "indexes": indexes,
        "seconds": round(time.monotonic() - started, 3),
    }


def _restore_dropped_live(store, request, database_url, live, policy, indexes, log, started):
    """Live is gone (DROP DATABASE): there is nothing to swap out or keep, so the backup is
    restored and verified under the live name itself (CREATE DATABASE claims the name first:
    one the platform made meanwhile is refused as not ours). Its database-level owner,
    grants and settings went with the dropped database; the restoring role owns it."""
    log(
        f"the live database {live!r} does not exist on this server: restoring the backup "
        "under that name (nothing to swap or keep)"
    )
    restored = database.restore_into_new_database(
        store, request.date, database_url, live,
        jobs=request.jobs, resume=request.resume, keep_owners=True, log=log,
    )  # fmt: skip
    database.set_marker(database_url, live, request.date, None)
    database.analyze(database_url, live, log)
    index_report = _missing_indexes(store, request.date, policy, indexes, log)
    for commands, what in (
        (request.commands_before, "before restore"),
        (request.commands_after, "after restore"),
    ):
        try:
            run_commands(commands, log, what)
        except BackupError as exc:
            raise BackupError(
                f"{exc} — the database was restored and verified as {live!r} (it did not "
                "exist before) and is kept; finish the runbook's steps by hand"
            ) from exc
    return _swap_result(restored, live, None, live, [], index_report, started)


@contextlib.contextmanager
def _keeping(staging: str, step: str, writers_stopped: bool = False) -> Iterator[None]:
    """A failure before the swap completed: the live database was not touched; the verified
    restored database is kept so a rerun with resume swaps it in without restoring again."""
    try:
        yield
    except (BackupError, psycopg.Error) as exc:
        reason = str(exc).strip().splitlines()[0] if isinstance(exc, psycopg.Error) else exc
        message = (
            f"{reason} — failed at {step}; the live database was not changed. The restored, "
            f"verified database {staging!r} is kept: rerun with resume (--resume) to swap it "
            "in without restoring again, or drop it"
        )
        if writers_stopped:
            message += (
                "; the before-commands ran (or started), so the platform's writers may be "
                "stopped: start them again (the after-commands were not run)"
            )
        raise BackupError(message) from exc


def _undo_swap(database_url: str, swapped: swap.Swap, exc: BackupError, log: Log) -> BackupError:
    """An after-command failed: swap back, so live is the database it was, and drop the
    restored one (the failed commands may have changed it half-way)."""
    log(f"{exc}; swapping back")
    try:
        swap.swap_back(database_url, swapped, log=log)
        with swap.admin_connection(database_url, avoid=(swapped.restored_as,)) as conn:
            swap.drop_database(conn, swapped.restored_as)
    except (BackupError, psycopg.Error) as undo_error:
        return BackupError(
            f"{exc}; swapping back ALSO FAILED ({undo_error}): {swapped.live!r} is the restored "
            f"database and the previous live one is {swapped.previous!r} — rename them by hand"
        )
    return BackupError(
        f"{exc}; the swap was undone: {swapped.live!r} is the live database as it was before "
        f"the restore, and the restored database was dropped. The platform's writers were "
        "stopped by the before-commands: start them again"
    )


def _missing_indexes(store, date, policy, indexes, log) -> dict:
    if not indexes:
        return {}
    if policy is None:
        raise ConfigError("restoring missing index collections needs the policy")
    return restore_missing_indexes(store, date, policy, indexes, log)


def restore_missing_indexes(
    store: BackupStore,
    date: str,
    policy: Policy,
    indexes: Mapping[str, Any] | None = None,
    log: Log | None = None,
) -> dict:
    """Every workspace's collections of `date` that the index servers lack, recreated from
    their artifacts (existing collections are left alone: newer data wins). `indexes` maps
    engine names to clients; returns workspace -> engine -> collection -> entries."""
    log = log or (lambda _m: None)
    done: dict[str, dict] = {}
    for engine in index_engines(indexes or {}):
        client = indexes[engine.name]
        for ref in store.list_artifacts(engine.asset):
            if ref.date != date:
                continue
            manifest = store.require_manifest(ref)
            result = done.setdefault(ref.workspace, {})
            restored = engine.restore_missing(client, store, ref, manifest, policy, log)
            if restored:
                result[engine.name] = restored
            log(f"{ref}: {result}")
    return done


def run_commands(commands: list[str], log: Log, what: str, timeout: float = 3600) -> None:
    """The runbooks' manual steps around a restore (stop the gateway, run migrations,
    restart), in order; the first that fails, cannot start or outlives `timeout` stops the
    rest with a BackupError naming it."""
    for command in commands:
        log(f"{what}: running {command!r}")
        try:
            done = subprocess.run(_argv(command), capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise BackupError(
                f"{what} command {command!r} ran longer than {timeout:.0f} s"
            ) from exc
        except OSError as exc:  # not found, not executable
            raise BackupError(f"{what} command {command!r} could not start: {exc}") from exc
        if done.stdout.strip():
            log(done.stdout.strip()[-2000:])
        if done.returncode != 0:
            raise BackupError(
                f"{what} command {command!r} failed (exit {done.returncode}): "
                f"{done.stderr.strip()[-1000:]}"
            )


def _argv(command: str) -> list[str]:
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise ConfigError(f"command {command!r} cannot be parsed: {exc}") from exc
    if not argv:
        raise ConfigError("an empty command was given")
    return argv


def health_check(
    database_url: str, indexes: Mapping[str, Any] | None = None, database: str | None = None
) -> dict:
    """Every store answers (the runbooks' final checklist). `database`: the one restored
    into, on the same server (a new database is not live, and live may have been dropped)."""
    health: dict[str, str] = {}
    if database is not None:
        database_url = make_conninfo(database_url, dbname=database)
    with connect(database_url) as conn:
        health["postgres"] = conn.execute("SHOW server_version").fetchone()[0]
    for engine in index_engines(indexes or {}):
        health[engine.name] = indexes[engine.name].server_version()
    return health
