"""The whole database back from a `postgres/full_dump` artifact into a NEW database on the
same server (pg_restore fed by a decompressing stream, or parallel pg_restore from a local
copy), verified against the dump: row counts of the dump's tables
against the manifest, and every object of the dump's table of contents present (toc.py).
Putting it in the live database's place is a rename swap (database_swap.py), never a
`pg_restore --clean` into live.

A database this tool creates carries a marker (COMMENT ON DATABASE) saying so and how far the
restore got. A failed restore drops it again, so a rerun starts clean; a run killed before it
could clean up leaves it marked, and `resume=True` continues into it: a database whose
pg_restore finished is verified again and reused, one whose pg_restore did not finish is
dropped and restored afresh (pg_restore cannot continue half-way). A database without the
marker is never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from backup_pipelines.lib.errors import BackupError, SourceError
from backup_pipelines.lib.postgres import database_swap as swap
from backup_pipelines.lib.postgres import toc
from backup_pipelines.lib.postgres.catalog import count_all_tables
from backup_pipelines.lib.postgres.connection import (
    client_env,
    connect,
    describe_database,
    pg_bin,
    server_answers,
)
from backup_pipelines.lib.postgres.dump import FULL_DUMP_FILE
from backup_pipelines.lib.scratch import ScratchFolder, require_free_space
from backup_pipelines.lib.store import ArtifactRef, BackupStore
from backup_pipelines.lib.streams import Log, iter_decompressed
from backup_pipelines.lib.timeouts import Watchdog

MARKER_PREFIX = "backup-pipelines full restore "
FULL_DUMP_ASSET = "postgres/full_dump"


class State(StrEnum):
    CREATED = "created"  # pg_restore started, not finished (or killed)
    RESTORED = "restored"  # pg_restore finished
    VERIFIED = "verified"  # counts and objects checked against the dump

    @property
    def rank(self) -> int:
        return list(State).index(self)


def _quiet(_message: str) -> None:
    pass


@dataclass
class RestoredDatabase:
    name: str
    date: str
    rows: dict[str, int]
    objects: dict
    extra_tables: list[str]  # in the restored database but not in the dump (extensions' own)
    seconds: float
    resumed: str | None = None  # the state a resumed database was found in
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "database": self.name,
            "date": self.date,
            "rows": self.rows,
            "objects": self.objects,
            "extra_tables": self.extra_tables,
            "seconds": self.seconds,
            "resumed_from": self.resumed,
        }


def default_target(live: str, date: str) -> str:
    return swap.derived_name(live, f"_restored_{date.replace('-', '')}")


def staging_name(live: str, date: str) -> str:
    """Where an --overwrite-live restore is built before the swap (fixed per date, so a
    rerun with resume finds it)."""
    return swap.derived_name(live, f"_restoring_{date.replace('-', '')}")


def restore_full_database(
    store: BackupStore,
    date: str,
    database_url: str,
    target_database: str | None = None,
    jobs: int = 2,
    resume: bool = False,
    log: Log | None = None,
) -> dict:
    """`postgres/full_dump` of `date` into a NEW database on the live database's server
    (default `<live>_restored_<date>`), objects owned by the restoring role. Never into the
    live database: that is a swap (lib/recovery/full_restore.py)."""
    live = swap.live_database(database_url)
    target = swap.validate_database_name(
        target_database or default_target(live, date), "target database"
    )
    if target == live:
        raise BackupError(
            f"target database {target!r} is the live database: overwriting it is "
            "--overwrite-live (a verified swap), not --target-database"
        )
    restored = restore_into_new_database(
        store, date, database_url, target, jobs=jobs, resume=resume, keep_owners=False, log=log
    )
    return restored.to_dict()


def restore_into_new_database(
    store: BackupStore,
    date: str,
    database_url: str,
    target: str,
    *,
    jobs: int = 2,
    resume: bool = False,
    keep_owners: bool = False,
    log: Log | None = None,
) -> RestoredDatabase:
    """Restore and verify into `target` (created here, like live: encoding, locale); on any
    failure the target is dropped again. keep_owners restores every object's owner (the
    swap puts the result in live's place); otherwise objects belong to the restoring role."""
    log = log or _quiet
    if jobs < 1:
        raise BackupError(f"jobs must be at least 1, got {jobs}")
    started = time.monotonic()
    ref = ArtifactRef(FULL_DUMP_ASSET, date)
    manifest = store.require_manifest(ref)
    expected = _expected_rows(manifest, store.location(ref))
    target_url = make_conninfo(database_url, dbname=target)
    _refuse_taken_target(database_url, target, date, resume)  # before a long decompression
    with ScratchFolder("full-restore", log=log) as scratch:
        # The checksum is proved before anything is created: a dump is SQL that pg_restore runs.
        source = _verified_source(store, ref, manifest, scratch, jobs, log)
        log(
            f"{ref}: every file verified, ready for pg_restore after {time.monotonic() - started:.1f} s"
        )
        found = _prepare_target(database_url, target, date, resume, log, manifest)
        try:
            if found is None or found.rank < State.RESTORED.rank:
                _pg_restore(source, target, target_url, jobs, keep_owners, log)
                set_marker(database_url, target, date, State.RESTORED)
            entries = list(toc.parse_toc(source.listing()))
            rows, objects, extra = verify_restored_database(target_url, target, entries, expected)
            set_marker(database_url, target, date, State.VERIFIED)
        except BaseException as exc:
            _drop_after_failure(database_url, target, exc, log)
            raise
    return RestoredDatabase(
        target,
        date,
        rows,
        objects,
        extra,
        round(time.monotonic() - started, 3),
        resumed=found.value if found else None,
    )


def _expected_rows(manifest: dict, where: str) -> dict[str, int]:
    rows = (manifest.get("counts") or {}).get("rows") if isinstance(manifest, dict) else None
    if not isinstance(rows, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
        for k, v in rows.items()
    ):
        raise BackupError(
            f"{where}: the manifest's counts.rows is not a table -> row count map; "
            "the restore cannot be verified, use another date"
        )
    return rows


class DumpSource:
    """Where pg_restore reads the dump from. With one job, a decompressing stream into its
    stdin: no scratch copy, and decompression overlaps the load. pg_restore -j needs a
    seekable file, so with more jobs the dump is decompressed to local disk first."""

    def __init__(self, store: BackupStore, ref: ArtifactRef, manifest: dict, path: str | None):
        self.store, self.ref, self.manifest, self.path = store, ref, manifest, path
        self._listing: str | None = None

    @property
    def streamed(self) -> bool:
        return self.path is None

    def run(
        self, argv: list[str], env: dict[str, str], watchdog: Watchdog | None = None
    ) -> subprocess.CompletedProcess:
        """pg_restore with `argv` (no input file) on this dump. With a `watchdog`, a stall kills
        pg_restore and its parallel workers (one process group): the bytes fed to its stdin
        are the progress; a pg_restore -j reading a file shows none, so it is abandoned only
        when the server also stops answering a new connection."""
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            # Files, not pipes, for its output: a pg_restore blocked on a full stderr pipe
            # would never read the rest of its stdin.
            process = subprocess.Popen(
                argv if self.streamed else [*argv, self.path],
                stdin=subprocess.PIPE if self.streamed else subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env or None,
                bufsize=0,
                start_new_session=True,
            )
            if watchdog is not None:
                watchdog.stop_with(lambda: _kill_group(process))
            try:
                if self.streamed:
                    self._feed(process, watchdog)
            finally:
                if process.stdin is not None:
                    with contextlib.suppress(BrokenPipeError):
                        process.stdin.close()
                returncode = process.wait()
            out.seek(0), err.seek(0)
            return subprocess.CompletedProcess(
                argv, returncode, out.read().decode(errors="replace"),
                err.read().decode(errors="replace"),
            )  # fmt: skip

    def listing(self) -> str:
        """`pg_restore --list` of the dump (read once: it is a header, not the data)."""
        if self._listing is None:
            done = self.run([pg_bin("pg_restore"), "--list"], env={})
            if done.returncode != 0:
                raise BackupError(
                    f"pg_restore --list of {self.ref} failed: {done.stderr.strip()[-1000:]}"
                )
            self._listing = done.stdout
        return self._listing

    def _feed(self, process: subprocess.Popen, watchdog: Watchdog | None) -> None:
        # Only the writes are watched: reading the artifact is the store's time.
        paused = watchdog.paused if watchdog is not None else contextlib.nullcontext
        with self.store.open_file(self.ref, self.manifest, FULL_DUMP_FILE) as reader:
            chunks = iter(iter_decompressed(reader))
            while True:
                with paused():
                    chunk = next(chunks, None)
                if chunk is None:
                    return
                try:
                    process.stdin.write(chunk)
                except BrokenPipeError:
                    return  # it read what it needed (a listing, a section), or failed: see rc
                if watchdog is not None:
                    watchdog.progress()


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _verified_source(
    store: BackupStore, ref: ArtifactRef, manifest: dict, scratch: Path, jobs: int, log: Log
) -> DumpSource:
    # Every file verified before anything is decompressed or created: a corrupt dump is
    # refused with the store's own list of problems.
    result = store.verify(ref)
    if not result.ok:
        raise BackupError(f"cannot restore {ref}: " + "; ".join(result.problems))
    if jobs == 1:
        return DumpSource(store, ref, manifest, None)
    needed = (manifest.get("tool") or {}).get("uncompressed_bytes")
    if isinstance(needed, int) and not isinstance(needed, bool) and needed > 0:
        require_free_space(
            scratch,
            needed,
            f"decompressing {ref} for pg_restore -j {jobs}",
            "restore with --jobs 1, which streams the dump into pg_restore and writes no copy",
        )
    path = str(scratch / "database.dump")
    started = time.monotonic()
    with store.open_file(ref, manifest, FULL_DUMP_FILE) as reader, open(path, "wb") as out:
        for chunk in iter_decompressed(reader):
            out.write(chunk)
    log(f"decompressed {ref} to local disk for pg_restore -j {jobs}: "
        f"{time.monotonic() - started:.1f} s")  # fmt: skip
    return DumpSource(store, ref, manifest, path)


# --------------------------------------------------------------------------------------------
# The marker


def marker_text(date: str, state: State) -> str:
    return MARKER_PREFIX + json.dumps({"date": date, "state": state.value})


def read_marker(conn: psycopg.Connection, name: str) -> dict | None:
    """The marker of a database this tool created, or None (no such database, or not ours)."""
    row = conn.execute(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
        (name,),
    ).fetchone()
    if row is None or not row[0] or not row[0].startswith(MARKER_PREFIX):
        return None
    try:
        marker = json.loads(row[0][len(MARKER_PREFIX) :])
        State(marker["state"])
        return marker
    except (ValueError, KeyError, TypeError):
        return None


def set_marker(database_url: str, name: str, date: str, state: State | None) -> None:
    """Mark `name` as this tool's restore of `date` in `state`; None clears the mark (the
    database is live now, not a restore in progress)."""
    text = None if state is None else marker_text(date, state)
    with swap.admin_connection(database_url, avoid=(name,)) as conn:
        conn.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(text))
        )


def _prepare_target(
    database_url: str, target: str, date: str, resume: bool, log: Log, manifest: dict
) -> State | None:
    """Create the target like live (encoding, locale) and mark it; or, with resume, take
    over one this tool created for the same date. Returns the state a resumed database was
    found in. With live gone (DROP DATABASE), the locale the backup recorded is used."""
    live = swap.live_database(database_url)
    with swap.admin_connection(database_url, avoid=(target,)) as conn:
        if swap.database_exists(conn, target):
            found = _resumable(conn, target, date, resume)
            if found.rank >= State.RESTORED.rank:
                log(f"resuming into {target!r}: its pg_restore finished ({found}); verifying it")
                return found
            log(f"resuming {target!r}: its pg_restore never finished; restoring it afresh")
            swap.drop_database(conn, target)
        like = swap.read_locale(conn, live)
        if like is None:
            like = recorded_locale(manifest)
            log(
                f"the live database {live!r} does not exist on this server: {target!r} is "
                "created with "
                + (f"the backup's locale ({like.describe()})" if like else "the server's "
                   "default encoding and locale (the backup recorded none)")
            )  # fmt: skip
        try:
            swap.create_database_like(conn, target, like)
        except psycopg.Error as exc:
            raise SourceError(
                f"cannot create database {target!r}: {swap.server_message(exc)}"
            ) from exc
        try:
            conn.execute(
                sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                    sql.Identifier(target), sql.Literal(marker_text(date, State.CREATED))
                )
            )
        except BaseException:
            swap.drop_database(conn, target)  # unmarked, it would never be ours again
            raise
    log(f"created database {target!r} ({like.describe() if like else 'server defaults'})")
    return None


def recorded_locale(manifest: dict) -> swap.DatabaseLocale | None:
    """The locale a full dump's manifest recorded (source.locale), or None when it has none
    or it is not four short strings (the manifest is read as untrusted: CREATE DATABASE gets
    the values as literals and refuses ones it does not know)."""
    source = manifest.get("source") if isinstance(manifest, dict) else None
    locale = source.get("locale") if isinstance(source, dict) else None
    if not isinstance(locale, dict):
        return None
    fields = [locale.get(key) for key in ("encoding", "collate", "ctype")]
    icu = locale.get("icu_locale")
    if not all(_short_text(v) for v in fields) or not (icu is None or _short_text(icu)):
        return None
    return swap.DatabaseLocale(*fields, icu)


def _short_text(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 128 and value.isprintable()


def _refuse_taken_target(database_url: str, target: str, date: str, resume: bool) -> None:
    with swap.admin_connection(database_url, avoid=(target,)) as conn:
        if swap.database_exists(conn, target):
            _resumable(conn, target, date, resume)


def _resumable(conn: psycopg.Connection, target: str, date: str, resume: bool) -> State:
    marker = read_marker(conn, target)
    if marker is None:
        raise BackupError(
            f"target database {target!r} already exists and was not created by "
            "backup-pipelines: pick another name or drop it"
        )
    state = State(marker["state"])
    if marker.get("date") != date:
        raise BackupError(
            f"database {target!r} holds an unfinished restore of {marker.get('date')}, not "
            f"{date}: drop it (DROP DATABASE) or restore that date"
        )
    if not resume:
        raise BackupError(
            f"database {target!r} already exists: a restore of {date} this tool started "
            f"and never finished ({state}); rerun with --resume to continue into it, or drop it"
        )
    return state


def _drop_after_failure(database_url: str, target: str, exc: BaseException, log: Log) -> None:
    """A failed restore removes the database it was restoring into, so a rerun starts
    clean. If that fails too, the error says what is left."""
    try:
        with swap.admin_connection(database_url, avoid=(target,)) as conn:
            if read_marker(conn, target) is not None:
                swap.drop_database(conn, target)
        log(f"dropped {target!r} after the failed restore")
    except (BackupError, psycopg.Error) as drop_error:
        note = (
            f"; the partly restored database {target!r} could not be dropped ({drop_error}): "
            "drop it, or rerun with --resume"
        )
        if isinstance(exc, BackupError):
            exc.args = (f"{exc.args[0] if exc.args else exc}{note}",)
        log(note.lstrip("; "))


# --------------------------------------------------------------------------------------------
# pg_restore and verification


SECTIONS = ("pre-data", "data", "post-data")


def _pg_restore(
    source: DumpSource, target: str, target_url: str, jobs: int, keep_owners: bool, log: Log
) -> None:
    """pg_restore one section at a time, so every row is loaded before any trigger, index
    or constraint exists. In one parallel run, pg_restore orders a trigger on a partitioned
    table only after the parent table (which has no data), so it may fire while the
    partitions load and insert rows twice (seen here: an audit trigger, PostgreSQL 15)."""
    argv = [pg_bin("pg_restore"), "--no-password", "--exit-on-error"]
    if not source.streamed:
        argv.append(f"--jobs={jobs}")
    if not keep_owners:
        argv.append("--no-owner")
    for section in SECTIONS:
        started = time.monotonic()
        with Watchdog(
            "PostgreSQL",
            f"pg_restore --section={section} of {source.ref} into {describe_database(target_url)}",
            answers=lambda: server_answers(target_url),
        ) as watchdog:
            done = source.run(
                [*argv, f"--section={section}", "-d", target], client_env(target_url), watchdog
            )
        if done.returncode != 0:
            how = f"killed by signal {-done.returncode}" if done.returncode < 0 else "failed"
            raise BackupError(
                f"pg_restore ({section}) into {target!r} {how} (exit {done.returncode}): "
                f"{done.stderr.strip()[-2000:] or 'no message'}"
            )
        how = "streamed" if source.streamed else f"-j {jobs}"
        log(f"pg_restore {how} --section={section} into {target!r}: "
            f"{time.monotonic() - started:.1f} s")  # fmt: skip


def verify_restored_database(
    target_url: str, name: str, entries: list[toc.TocEntry], expected_rows: dict[str, int]
) -> tuple[dict[str, int], dict, list[str]]:
    """Row counts of every table of the dump equal the manifest's, and every object of the
    dump's table of contents (`entries`) exists. Returns (rows, object check, tables not in
    the dump)."""
    with connect(target_url) as conn:
        rows = count_all_tables(conn)
        objects = toc.missing_objects(conn, entries)
    problems = []
    differing = {t: (rows.get(t), n) for t, n in expected_rows.items() if rows.get(t) != n}
    if differing:
        shown = ", ".join(
            f"{t}: {got if got is not None else 'missing'} rows, the dump has {n}"
            for t, (got, n) in sorted(differing.items())[:20]
        )
        problems.append(f"{len(differing)} tables differ from the dump's row counts ({shown})")
    if objects.missing:
        problems.append(
            f"{len(objects.missing)} objects of the dump are missing: "
            + ", ".join(objects.missing[:20])
        )
    if problems:
        raise BackupError(
            f"restored database {name!r} does not match the dump: " + "; ".join(problems)
        )
    extra = sorted(set(rows) - set(expected_rows))
    return {t: rows[t] for t in expected_rows}, objects.to_dict(), extra


def analyze(database_url: str, name: str, log: Log) -> None:
    """Planner statistics before applications use it (pg_restore does not gather them)."""
    started = time.monotonic()
    with connect(make_conninfo(database_url, dbname=name), autocommit=True) as conn:
        conn.execute("ANALYZE")
    log(f"analyzed {name!r} in {time.monotonic() - started:.1f} s")


def tables_of(database_url: str) -> set[str]:
    """schema.table of every table of a database (as the manifest's counts name them)."""
    with connect(database_url) as conn:
        return {
            f"{schema}.{name}"
            for schema, name in conn.execute(
                "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = "
                "c.relnamespace WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN "
                "('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'"
            )
        }
