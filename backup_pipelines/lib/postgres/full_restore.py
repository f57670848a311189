"""The whole database back from a `postgres/full_dump` artifact, with parallel pg_restore."""

from __future__ import annotations

import subprocess
import tempfile
import time

from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from backup_pipelines.lib.errors import BackupError
from backup_pipelines.lib.postgres.catalog import count_all_tables
from backup_pipelines.lib.postgres.connection import client_env, connect, pg_bin
from backup_pipelines.lib.postgres.dump import FULL_DUMP_FILE
from backup_pipelines.lib.store import ArtifactRef, BackupStore
from backup_pipelines.lib.streams import Log, iter_decompressed


def restore_full_database(
    store: BackupStore,
    date: str,
    database_url: str,
    target_database: str | None = None,
    overwrite_live: bool = False,
    jobs: int = 2,
    log: Log | None = None,
) -> dict:
    """`postgres/full_dump` of `date` into a NEW database on the same server (default name
    `<live>_restored_<date>`), with parallel pg_restore; into the live database itself only
    with overwrite_live=True (its objects are dropped and recreated by pg_restore --clean)."""
    log = log or (lambda _m: None)
    ref = ArtifactRef("postgres/full_dump", date)
    result = store.verify(ref)
    if not result.ok:
        raise BackupError(f"cannot restore {ref}: " + "; ".join(result.problems))
    manifest = store.require_manifest(ref)
    live = conninfo_to_dict(database_url).get("dbname")
    target = (
        live if overwrite_live else (target_database or f"{live}_restored_{date.replace('-', '')}")
    )
    if target == live and not overwrite_live:
        raise BackupError(f"restoring over the live database {live!r} needs overwrite_live=True")
    target_url = make_conninfo(database_url, dbname=target)
    if target != live:
        with connect(make_conninfo(database_url, dbname="postgres"), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (target,)
            ).fetchone()
            if exists:
                raise BackupError(
                    f"target database {target!r} already exists: pick another name or drop it"
                )
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target)))
    started = time.monotonic()
    # pg_restore -j needs a seekable file: decompress the verified dump to local disk first.
    with tempfile.TemporaryDirectory(prefix="full-restore-") as scratch:
        local = f"{scratch}/database.dump"
        with store.open_file(ref, manifest, FULL_DUMP_FILE) as reader, open(local, "wb") as out:
            for chunk in iter_decompressed(reader):
                out.write(chunk)
        log(
            f"decompressed {ref} in {time.monotonic() - started:.1f} s; pg_restore -j {jobs} into {target}"
        )
        argv = [
            pg_bin("pg_restore"),
            "--no-password",
            "--exit-on-error",
            "--no-owner",
            f"--jobs={jobs}",
            "-d",
            target,
        ]
        if overwrite_live:
            argv += ["--clean", "--if-exists"]
        done = subprocess.run(
            [*argv, local], env=client_env(target_url), capture_output=True, text=True
        )
        if done.returncode != 0:
            raise BackupError(f"pg_restore into {target} failed: {done.stderr.strip()[-2000:]}")
    with connect(target_url) as conn:
        rows = count_all_tables(conn)
    expected = manifest["counts"]["rows"]
    if rows != expected:
        differing = {t: (rows.get(t), n) for t, n in expected.items() if rows.get(t) != n}
        raise BackupError(f"restored database {target} differs from the dump's counts: {differing}")
    return {"database": target, "rows": rows, "seconds": round(time.monotonic() - started, 3)}
