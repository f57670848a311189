"""Workspace restore, step by step, each step gating the next (DESIGN "Restores"):

1. locate the partition's artifacts and verify every checksum;
2. the consistency gate: SQL and index artifacts of the same point in time must agree;
3. SQL: the backed-up rows into staging tables, then `INSERT ... ON CONFLICT DO NOTHING` into
   the live tables in foreign-key order — one transaction, so a killed restore leaves nothing
   half-done, and staging tables are temporary (`ON COMMIT DROP`), so none is ever left over;
4. indexes: Typesense from its export (or rebuilt from SQL when the verdict is REBUILD_INDEX),
   Qdrant from its snapshot — in `merge` mode only what is missing is added, so newer data is
   never overwritten; `replace` puts the backup's state back as it was;
5. verify: every backed-up row, document and point is present, and a search finds a restored
   memory.

Plain Python reading only the store and the live systems, so the Dagster job and the command
line (`backup-pipelines restore workspace`) run the very same code.
"""

from __future__ import annotations

import secrets
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from enum import StrEnum

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from backup_pipelines.lib import consistency
from backup_pipelines.lib.errors import BackupError
from backup_pipelines.lib.index_backup import TYPESENSE_DOCUMENTS_FILE
from backup_pipelines.lib.index_restore import (
    recover_qdrant_collection,
    restore_typesense_collection,
)
from backup_pipelines.lib.memory_index import (
    batched,
    ensure_typesense_collection,
    iter_memory_rows,
    newest_memory,
    to_qdrant_point,
    typesense_jsonl,
)
from backup_pipelines.lib.pg_load import copy_table_in
from backup_pipelines.lib.policy import Policy
from backup_pipelines.lib.postgres import (
    FULL_DUMP_FILE,
    client_env,
    connect,
    count_all_tables,
    pg_bin,
)
from backup_pipelines.lib.store import ArtifactRef, BackupStore
from backup_pipelines.lib.streams import Log, iter_decompressed
from backup_pipelines.lib.workspaces import validate_workspace_id

SQL_ASSET = "postgres/workspace_dump"
TYPESENSE_ASSET = "typesense/collection_export"
QDRANT_ASSET = "qdrant/collection_snapshot"


class Mode(StrEnum):
    MERGE = "merge"  # add what is missing; never overwrite what is there
    REPLACE = "replace"  # indexes back exactly as backed up (SQL rows still never overwritten)


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

    @property
    def sql(self) -> tuple[ArtifactRef, dict]:
        return self.refs[SQL_ASSET], self.manifests[SQL_ASSET]


@dataclass
class RestoreReport:
    workspace: str
    date: str
    mode: str
    verdict: str
    sql: dict = field(default_factory=dict)
    typesense: dict = field(default_factory=dict)
    qdrant: dict = field(default_factory=dict)
    verification: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def index_assets(typesense=None, qdrant=None) -> list[str]:
    """The index artifacts a restore with these clients reads besides the SQL dump."""
    pairs = ((TYPESENSE_ASSET, typesense), (QDRANT_ASSET, qdrant))
    return [asset for asset, client in pairs if client is not None]


def locate_and_verify(
    store: BackupStore, date: str, workspace: str, index_assets: list[str]
) -> Located:
    """Every artifact of the partition, each file checked against its manifest's sha256."""
    workspace = validate_workspace_id(workspace)
    refs, manifests, problems, verified = {}, {}, [], 0
    for asset in [SQL_ASSET, *index_assets]:
        ref = ArtifactRef(asset, date, workspace)
        manifest = store.read_manifest(ref)
        if manifest is None:
            problems.append(f"no complete {asset} artifact at {store.location(ref)}")
            continue
        result = store.verify(ref)
        problems.extend(result.problems)
        verified += result.bytes
        refs[asset], manifests[asset] = ref, manifest
    if problems:
        raise BackupError(f"cannot restore {date}|{workspace}: " + "; ".join(problems))
    return Located(date, workspace, refs, manifests, verified)


def consistency_gate(store: BackupStore, located: Located, policy: Policy):
    """The verdict of the partition's SQL artifact against each of its index artifacts."""
    return consistency.evaluate_partition(store, located.refs, located.manifests, policy)


# ---------------------------------------------------------------------------------------------
# SQL


def _live_columns(conn, schema: str, name: str) -> list[str]:
    rows = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
        (sql.Identifier(schema, name).as_string(conn),),
    ).fetchall()
    return [r[0] for r in rows]


def _primary_key(conn, schema: str, name: str) -> list[str]:
    rows = conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary",
        (sql.Identifier(schema, name).as_string(conn),),
    ).fetchall()
    return [r[0] for r in rows]


def merge_sql_rows(
    database_url: str,
    store: BackupStore,
    located: Located,
    dry_run: bool = False,
    log: Log | None = None,
) -> dict:
    """Insert the backed-up rows the live tables lack, parents first, in ONE transaction.

    Rows present in the live tables (same key) keep their newer values; rows of any other
    workspace are never read or written (every INSERT filters on this workspace's id).
    """
    ref, manifest = located.sql
    workspace = located.workspace
    report: dict[str, dict] = {}
    with connect(database_url) as conn:
        conn.execute("SET LOCAL lock_timeout = '60s'")
        for entry in manifest["tables"]:
            report[entry["table"]] = _merge_table(conn, store, ref, manifest, entry, workspace)
            if log:
                log(f"{entry['table']}: {report[entry['table']]}")
        _advance_sequences(conn, manifest["tables"])
        if dry_run:
            conn.rollback()
        else:
            conn.commit()
    return report


def _merge_table(conn, store, ref, manifest, entry: dict, workspace: str) -> dict:
    schema, name = entry["table"].split(".", 1)
    live = sql.Identifier(schema, name)
    live_columns = _live_columns(conn, schema, name)
    gone = [c for c in entry["columns"] if c not in live_columns]
    if gone:
        raise BackupError(
            f"{entry['table']}: column(s) {', '.join(gone)} of the backup no longer exist in the live "
            "table; restore the full dump into a new database instead"
        )
    stage = sql.Identifier(f"restore_stage_{name}")
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in entry["columns"])
    conn.execute(
        sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
            stage, columns, live
        )
    )
    staged = copy_table_in(conn, store, ref, manifest, entry, stage)
    if staged != entry["rows"]:
        raise BackupError(
            f"{entry['table']}: staged {staged} rows, the manifest says {entry['rows']}"
        )
    inserted = conn.execute(
        sql.SQL(
            "INSERT INTO {live} ({cols}) SELECT {cols} FROM {stage} WHERE {ws} = %s ON CONFLICT DO NOTHING"
        ).format(
            live=live, cols=columns, stage=stage, ws=sql.Identifier(entry["workspace_column"])
        ),
        (workspace,),
    ).rowcount
    missing = _rows_still_missing(conn, schema, name, stage)
    if missing:
        raise BackupError(
            f"{entry['table']}: {missing} backed-up row(s) neither inserted nor present (a key "
            "conflict with different data?); the restore was rolled back"
        )
    return {"in_backup": staged, "inserted": inserted, "already_present": staged - inserted}


def _rows_still_missing(conn, schema: str, name: str, stage: sql.Identifier) -> int:
    key = _primary_key(conn, schema, name)
    if not key:
        return 0
    match = sql.SQL(" AND ").join(sql.SQL("l.{c} = s.{c}").format(c=sql.Identifier(c)) for c in key)
    query = sql.SQL(
        "SELECT count(*) FROM {stage} s WHERE NOT EXISTS (SELECT 1 FROM {live} l WHERE {m})"
    ).format(stage=stage, live=sql.Identifier(schema, name), m=match)
    return conn.execute(query).fetchone()[0]


def _advance_sequences(conn, tables: list[dict]) -> None:
    """Rows restored with their ids: move identity/serial sequences past them."""
    for entry in tables:
        schema, name = entry["table"].split(".", 1)
        qualified = sql.Identifier(schema, name).as_string(conn)
        for column in entry["columns"]:
            sequence = conn.execute(
                "SELECT pg_get_serial_sequence(%s, %s)", (qualified, column)
            ).fetchone()[0]
            if sequence:
                conn.execute(
                    sql.SQL(
                        "SELECT setval(%s, GREATEST((SELECT coalesce(max({c}), 1) FROM {t}), "
                        "(SELECT last_value FROM {s})))"
                    ).format(
                        c=sql.Identifier(column),
                        t=sql.Identifier(schema, name),
                        s=sql.SQL(sequence),
                    ),
                    (sequence,),
                )


# ---------------------------------------------------------------------------------------------
# Indexes


def restore_typesense(
    client,
    store: BackupStore,
    located: Located,
    collection: str,
    mode: Mode,
    rebuild_from_sql: bool,
    database_url: str,
    policy: Policy,
) -> dict:
    if rebuild_from_sql or TYPESENSE_ASSET not in located.refs:
        with psycopg.connect(database_url) as conn:
            ensure_typesense_collection(client, collection)
            documents = typesense_jsonl(iter_memory_rows(conn, located.workspace, policy))
            if mode is Mode.REPLACE:
                return {
                    "source": "sql",
                    "upserted": client.import_jsonl(collection, documents, action="upsert"),
                }
            created, kept = client.import_missing(collection, documents)
            return {"source": "sql", "created": created, "already_present": kept}
    ref = located.refs[TYPESENSE_ASSET]
    if mode is Mode.REPLACE or not client.collection_exists(collection):
        return {
            "source": "export",
            "upserted": restore_typesense_collection(client, store, ref, collection),
        }
    manifest = located.manifests[TYPESENSE_ASSET]
    with store.open_file(ref, manifest, TYPESENSE_DOCUMENTS_FILE) as reader:
        created, kept = client.import_missing(collection, iter_decompressed(reader))
    return {"source": "export", "created": created, "already_present": kept}


def restore_qdrant(
    client,
    store: BackupStore,
    located: Located,
    collection: str,
    mode: Mode,
    rebuild_from_sql: bool,
    database_url: str,
    policy: Policy,
    target_collection: str | None = None,
) -> dict:
    """`collection` names the backed-up collection; `target_collection` (default: the same)
    the one restored into — the restore drill restores into a scratch collection."""
    target = target_collection or collection
    if (
        rebuild_from_sql
        or QDRANT_ASSET not in located.refs
        or collection not in located.manifests[QDRANT_ASSET].get("collections", {})
    ):
        with psycopg.connect(database_url) as conn:
            points = (to_qdrant_point(r) for r in iter_memory_rows(conn, located.workspace, policy))
            added, kept = _upsert_missing_points(client, target, points, create=True)
        return {"source": "sql", "added": added, "already_present": kept}
    ref = located.refs[QDRANT_ASSET]
    if mode is Mode.REPLACE or not client.collection_exists(target):
        points = recover_qdrant_collection(client, store, ref, collection, target)
        return {"source": "snapshot", "recovered": points}
    # Merge: recover into a scratch collection, then copy over only the points the live one lacks.
    scratch = f"{target}__restore_{secrets.token_hex(4)}"
    try:
        recover_qdrant_collection(client, store, ref, collection, scratch)
        added, kept = _upsert_missing_points(client, target, client.scroll(scratch), create=False)
    finally:
        if client.collection_exists(scratch):
            client.delete_collection(scratch)
    return {"source": "snapshot", "added": added, "already_present": kept}


def _upsert_missing_points(client, collection: str, points, create: bool) -> tuple[int, int]:
    added = kept = 0
    for group in batched(iter(points), 256):
        if create and added + kept == 0 and not client.collection_exists(collection):
            client.create_collection(collection, size=len(group[0]["vector"]), distance="Cosine")
        present = client.existing_ids(collection, [p["id"] for p in group])
        missing = [p for p in group if p["id"] not in present]
        if missing:
            client.upsert_points(
                collection, [{k: p[k] for k in ("id", "vector", "payload")} for p in missing]
            )
        added += len(missing)
        kept += len(group) - len(missing)
    return added, kept


# ---------------------------------------------------------------------------------------------
# Verification


def verify_restore(
    database_url: str, located: Located, policy: Policy, typesense=None, qdrant=None
) -> dict:
    """Counts at least the backup's, and a restored memory found by search in every index."""
    _ref, manifest = located.sql
    problems: list[str] = []
    result: dict = {"sql_rows": {}}
    with psycopg.connect(database_url) as conn:
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
        probe = newest_memory(conn, located.workspace, policy)
    if probe is not None and typesense is not None:
        collection = policy.typesense_collection_for(located.workspace)
        # A real search, narrowed to the probe's timestamp: it must return the probe.
        hits = typesense.search(
            collection,
            "*",
            "content",
            filter_by=f"created_at:={int(probe.created_at.timestamp())}",
            per_page=50,
        )
        found = any(h["document"]["id"] == str(probe.id) for h in hits.get("hits", []))
        result["typesense_search_found_memory"] = found
        if not found:
            problems.append(f"Typesense search did not return restored memory {probe.id}")
    if probe is not None and qdrant is not None:
        collection = policy.qdrant_collections_for(located.workspace)[0]
        hits = qdrant.search(collection, [float(x) for x in probe.embedding], limit=3)
        found = any(h["id"] == probe.id for h in hits)
        result["qdrant_search_found_memory"] = found
        if not found:
            problems.append(f"Qdrant search did not return restored memory {probe.id}")
    result["problems"] = problems
    return result


def restore_workspace(
    store: BackupStore,
    date: str,
    workspace: str,
    database_url: str,
    policy: Policy,
    typesense=None,
    qdrant=None,
    mode: Mode = Mode.MERGE,
    dry_run: bool = False,
    override_gate: str = "",
    log: Log | None = None,
    index_targets: Policy | None = None,
) -> RestoreReport:
    """The whole restore in-process (the command line's path; the Dagster job runs the same
    steps as separate ops).

    `index_targets` names the collections to restore INTO (default: `policy`'s); the backed-up
    collections are still looked up, gated and recovered by `policy`'s names. The restore
    drill uses it to restore into scratch collections beside the live ones."""
    log = log or (lambda _m: None)
    targets = index_targets or policy
    timings: dict[str, float] = {}
    started = time.monotonic()
    located = locate_and_verify(store, date, workspace, index_assets(typesense, qdrant))
    timings["locate_and_verify"] = time.monotonic() - started
    verdict = consistency_gate(store, located, policy)
    timings["consistency_gate"] = time.monotonic() - started - sum(timings.values())
    log(f"consistency gate: {verdict.summary()}")
    if verdict.outcome == consistency.Outcome.FAIL and not override_gate:
        raise GateRefused(verdict)
    report = RestoreReport(workspace, date, str(mode), str(verdict.outcome))
    if override_gate and verdict.outcome == consistency.Outcome.FAIL:
        log(f"GATE OVERRIDDEN: {override_gate!r} — restoring despite: {verdict.summary()}")
        report.verification["gate_overridden"] = override_gate
    report.sql = merge_sql_rows(database_url, store, located, dry_run=dry_run, log=log)
    timings["sql"] = time.monotonic() - started - sum(timings.values())
    if dry_run:
        report.seconds = timings
        return report
    rebuild = verdict.outcome == consistency.Outcome.REBUILD_INDEX
    if typesense is not None:
        collection = targets.typesense_collection_for(workspace)
        report.typesense = restore_typesense(
            typesense, store, located, collection, mode, rebuild, database_url, policy
        )
        timings["typesense"] = time.monotonic() - started - sum(timings.values())
    if qdrant is not None:
        collection = policy.qdrant_collections_for(workspace)[0]
        target = targets.qdrant_collections_for(workspace)[0]
        report.qdrant = restore_qdrant(
            qdrant, store, located, collection, mode, rebuild, database_url, policy, target
        )
        timings["qdrant"] = time.monotonic() - started - sum(timings.values())
    # Verified where it was restored to: the targets' collections.
    report.verification.update(verify_restore(database_url, located, targets, typesense, qdrant))
    timings["verify"] = time.monotonic() - started - sum(timings.values())
    report.seconds = timings
    if report.verification["problems"]:
        raise BackupError(
            f"restore of {date}|{workspace} did not verify: "
            + "; ".join(report.verification["problems"])
        )
    return report


# ---------------------------------------------------------------------------------------------
# Full database


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


def restore_missing_indexes(
    store: BackupStore,
    date: str,
    policy: Policy,
    typesense=None,
    qdrant=None,
    log: Log | None = None,
) -> dict:
    """After a full restore: every workspace's collections of `date` that the index stores lack,
    recreated from their artifacts (existing collections are left alone: newer data wins)."""
    log = log or (lambda _m: None)
    done: dict[str, dict] = {}
    for asset, client in ((TYPESENSE_ASSET, typesense), (QDRANT_ASSET, qdrant)):
        if client is None:
            continue
        for ref in store.list_artifacts(asset):
            if ref.date != date:
                continue
            result = done.setdefault(ref.workspace, {})
            if asset == TYPESENSE_ASSET:
                collection = policy.typesense_collection_for(ref.workspace)
                if store.require_manifest(ref).get(
                    "collection_exists", True
                ) and not client.collection_exists(collection):
                    result["typesense"] = restore_typesense_collection(
                        client, store, ref, collection
                    )
            else:
                for collection in store.require_manifest(ref).get("collections", {}):
                    if not client.collection_exists(collection):
                        result.setdefault("qdrant", {})[collection] = recover_qdrant_collection(
                            client, store, ref, collection
                        )
            log(f"{ref}: {result}")
    return done


def run_commands(commands: list[str], log: Log, what: str, timeout: float = 3600) -> None:
    """The runbooks' manual steps around a restore (stop the gateway, run migrations, restart)."""
    import shlex

    for command in commands:
        log(f"{what}: running {command!r}")
        done = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=timeout)
        if done.stdout.strip():
            log(done.stdout.strip()[-2000:])
        if done.returncode != 0:
            raise BackupError(
                f"{what} command {command!r} failed (exit {done.returncode}): {done.stderr.strip()[-1000:]}"
            )


def health_check(database_url: str, typesense=None, qdrant=None) -> dict:
    """Every store answers (the runbooks' final checklist)."""
    health: dict[str, str] = {}
    with connect(database_url) as conn:
        health["postgres"] = conn.execute("SHOW server_version").fetchone()[0]
    if typesense is not None:
        health["typesense"] = typesense.server_version()
    if qdrant is not None:
        health["qdrant"] = qdrant.server_version()
    return health
