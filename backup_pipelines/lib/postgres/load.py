"""Loading PostgreSQL artifacts back: the DDL of a workspace dump, its COPY files, a full dump.

Every reader verifies sha256 as it streams (VerifyingReader raises at the end of a file whose
bytes differ); callers that must not write anything from a corrupt artifact verify the whole
artifact first (`BackupStore.verify`).

A watchdog abandons a load once nothing moved for BACKUP_STALL_SECONDS and the server does
not answer a new connection either (psql/pg_restore killed, the COPY's connection closed); a
server that answers is busy (an index build after the last byte), and is waited on.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading

import psycopg
from psycopg import sql

from backup_pipelines.lib.errors import BackupError
from backup_pipelines.lib.postgres.connection import (
    abort_connection,
    client_conninfo,
    client_env,
    client_failure,
    connect,
    describe_database,
    pg_bin,
    server_answers,
    server_answers_for,
)
from backup_pipelines.lib.postgres.copy_format import BINARY, TEXT, server_major
from backup_pipelines.lib.postgres.dump import FULL_DUMP_FILE, SCHEMA_FILE
from backup_pipelines.lib.store import ArtifactRef, BackupStore, iter_chunks
from backup_pipelines.lib.streams import iter_decompressed
from backup_pipelines.lib.timeouts import Watchdog


def _pump(chunks, stdin, watchdog: Watchdog) -> list[BaseException]:
    """Feed a child's stdin from a chunk iterator on a thread; errors are returned to the
    caller. Only the writes are watched: reading the artifact is the store's time."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            source = iter(chunks)
            while True:
                with watchdog.paused():
                    chunk = next(source, None)
                if chunk is None:
                    break
                stdin.write(chunk)
                watchdog.progress()
        except BrokenPipeError:
            pass
        except BaseException as exc:
            errors.append(exc)
        finally:
            with contextlib.suppress(BrokenPipeError):
                stdin.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    errors.append(thread)  # type: ignore[arg-type]  # joined by the caller
    return errors


def _run_fed(argv: list[str], chunks, database_url: str, what: str) -> str:
    """Run a client (psql, pg_restore) fed `chunks` on stdin; abandoned if the server stops
    taking data for BACKUP_STALL_SECONDS."""
    process = subprocess.Popen(
        [*argv, f"--dbname={client_conninfo(database_url)}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=client_env(database_url),
    )
    with Watchdog(
        "PostgreSQL",
        f"{what} into {describe_database(database_url)}",
        answers=lambda: server_answers(database_url),
    ) as watchdog:
        watchdog.stop_with(process.kill)
        pending = _pump(chunks, process.stdin, watchdog)
        output = process.stdout.read().decode(errors="replace")
        process.wait()
        pending.pop(0).join()
    if pending:
        raise pending[0]
    if process.returncode != 0:
        raise BackupError(
            f"{what} into PostgreSQL {describe_database(database_url)} failed "
            f"(exit {process.returncode}): {client_failure(output[-2000:])}"
        )
    return output


def apply_schema(store: BackupStore, ref: ArtifactRef, manifest: dict, target_url: str) -> None:
    """Run the dump's DDL (pg_dump --schema-only output) against the target with psql."""
    with store.open_file(ref, manifest, SCHEMA_FILE) as reader:
        _run_fed(
            [pg_bin("psql"), "--no-psqlrc", "-q", "-v", "ON_ERROR_STOP=1", "-X", "-f", "-"],
            iter_chunks(reader),
            target_url,
            f"applying the DDL of {ref}",
        )


def is_binary(entry: dict) -> bool:
    return entry.get("copy_format", TEXT) == BINARY


def check_binary_target(conn: psycopg.Connection, ref: ArtifactRef, manifest: dict) -> None:
    """Refuse, before anything is written, binary table files dumped by a server of another
    major version than the target's: PostgreSQL documents binary COPY as less portable across
    versions than text, and no release promises that every type's binary form stays."""
    target = server_major(conn)
    other = [e for e in manifest["tables"] if is_binary(e) and e.get("server_major") != target]
    if other:
        tables = ", ".join(f"{e['table']} (PostgreSQL {e.get('server_major')})" for e in other)
        raise BackupError(
            f"{ref}: binary COPY files of {tables} were dumped by another PostgreSQL major "
            f"version than the target's ({target}); binary COPY is not portable across major "
            "versions. Nothing was written. Restore into a PostgreSQL server of the dump's major "
            "version, or use a full dump (pg_dump) of that day"
        )


def copy_table_in(
    conn: psycopg.Connection,
    store: BackupStore,
    ref: ArtifactRef,
    manifest: dict,
    entry: dict,
    target: sql.Composable,
    only_workspace: str | None = None,
) -> int:
    """Stream one table file of a workspace dump into `target` (a table) with COPY FROM STDIN,
    in the file's format (text, or binary as the manifest's entry says). With `only_workspace`
    the server keeps only that workspace's rows (COPY .. WHERE); the count returned is of the
    rows kept."""
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in entry["columns"])
    binary = is_binary(entry)
    statement = sql.SQL("COPY {} ({}) FROM STDIN{}").format(
        target, columns, sql.SQL(" (FORMAT binary)" if binary else "")
    )
    if only_workspace is not None:  # COPY takes no bind parameters: a literal
        statement += sql.SQL(" WHERE {} = {}").format(
            sql.Identifier(entry["workspace_column"]), sql.Literal(only_workspace)
        )
    what = f"COPY of {entry['table']} from {ref}"
    with (
        Watchdog("PostgreSQL", what, answers=lambda: server_answers_for(conn)) as watchdog,
        store.open_file(ref, manifest, entry["file"]) as reader,
        conn.cursor() as cur,
        _damaged_binary_named(binary, entry, ref),
    ):
        watchdog.stop_with(lambda: abort_connection(conn))
        with cur.copy(statement) as copy:
            source = iter_decompressed(reader)
            while True:
                with watchdog.paused():  # reading the artifact is the store's time
                    chunk = next(source, None)
                if chunk is None:
                    break
                copy.write(chunk)
                watchdog.progress()
        return cur.rowcount


@contextlib.contextmanager
def _damaged_binary_named(binary: bool, entry: dict, ref: ArtifactRef):
    """A binary file the server cannot read (cut, garbled: untrusted store data) becomes an
    error naming the table and the artifact; the caller's transaction is rolled back."""
    try:
        yield
    except psycopg.Error as error:
        state = error.sqlstate or ""
        if not binary or not (state.startswith("22") or state == "08P01"):
            raise
        raise BackupError(
            f"the binary COPY file {entry['file']} of table {entry['table']} in {ref} is damaged "
            f"or not readable by this server ({state}: {_one_line(error)}); nothing was written "
            "(the restore's transaction was rolled back). Restore another date, or verify the "
            "artifact's source"
        ) from error


def load_workspace_dump_into_empty_database(
    store: BackupStore, ref: ArtifactRef, target_url: str
) -> dict[str, int]:
    """DDL then every table, parents first: a fresh database holding just this workspace."""
    manifest = store.require_manifest(ref)
    with connect(target_url) as conn:
        check_binary_target(conn, ref, manifest)
    apply_schema(store, ref, manifest, target_url)
    loaded = {}
    with connect(target_url) as conn:
        for entry in manifest["tables"]:
            schema, name = entry["table"].split(".", 1)
            loaded[entry["table"]] = copy_table_in(
                conn, store, ref, manifest, entry, sql.Identifier(schema, name)
            )
    return loaded


def pg_restore_full_dump(
    store: BackupStore,
    ref: ArtifactRef,
    target_url: str,
    jobs: int = 1,
    extra_args: list[str] | None = None,
) -> None:
    """Restore a `postgres/full_dump` artifact with pg_restore into the target database.

    A piped restore is single-job; `jobs > 1` needs a seekable file, which the caller
    provides by decompressing to local disk first (see restore code).
    """
    manifest = store.require_manifest(ref)
    with store.open_file(ref, manifest, FULL_DUMP_FILE) as reader:
        _run_fed(
            [
                pg_bin("pg_restore"),
                "--no-password",
                "--exit-on-error",
                "--no-owner",
                *(extra_args or []),
            ],
            iter_decompressed(reader),
            target_url,
            f"pg_restore of {ref}",
        )


def _one_line(error: BaseException) -> str:
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
