"""Restore time (RTO) of ONE workspace across PostgreSQL, Typesense and Qdrant.

For each size (default 100,000 and 1,000,000 memory entries in the restored workspace) a fresh
local stack is started (PostgreSQL 15 cluster, a real Typesense server, the Qdrant stand-in
process) and filled:

* generation: `devstack.sample_data` seeds the workspace inside PostgreSQL (384-dim `real[]`
  embeddings, sessions, turns, knowledge-graph nodes with embeddings and edges) plus a small
  neighbour workspace that must stay untouched, then `VACUUM (ANALYZE)`;
* indexing, the platform's own mapping (`lib.typesense.documents.to_typesense_document` /
  the policy's Qdrant payload fields), but faster than `LocalStack.seed`: Typesense gets 10,000
  documents a request; the Qdrant collection is written with Qdrant's engine (qdrant-edge,
  as the stand-in does) straight into the stand-in's storage before it starts, with the
  embeddings read from PostgreSQL by a binary COPY into numpy (no JSON of 384 floats a point);
* backup: the daily artifacts of the partition, as the tests and the Dagster assets make them
  (`postgres.dump.dump_workspace`, `typesense.export.export_typesense_collection`,
  `qdrant.snapshot.snapshot_qdrant_collections`) into a LocalStore under the work folder.

All of that is timed and printed separately and excluded. Then the incident: the workspace's
rows deleted children-first (with `session_replication_role = replica`, so that deleting
sessions does not seq-scan `memory_entries` once per session for its foreign key — the
sample schema has no index on `memory_entries.session_id`; every child row is deleted first
anyway) and both collections dropped; it is timed and printed. A `VACUUM (ANALYZE)` follows
(autovacuum would run long before anybody starts a restore; printed, excluded). Then the
measured part: `restore_workspace(..., mode=Mode.MERGE)`; its own per-step timings
(`RestoreReport.seconds`) are the figures reported, with the wall time around the call as a
cross-check and the CPU seconds each process group spent in each step (psutil, sampled every
0.2 s: this process, PostgreSQL backends, typesense-server, the Qdrant stand-in).

Aim: the 1,000,000-entry workspace back in all three stores in under 300 s (the runbooks'
target for a table-level restore is 10-20 minutes). A size list without 1,000,000 prints a
clearly labelled linear extrapolation (per step, from the two largest sizes measured).

    .venv/bin/python bench/bench_restore_rto.py                      # 100k and 1M
    .venv/bin/python bench/bench_restore_rto.py --sizes 2000         # smoke run
    .venv/bin/python bench/bench_restore_rto.py --sizes 100000,300000  # then extrapolated

Options: --sizes, --aim-seconds, --work-dir (default .bench/, git-ignored), --neighbour N
(memory entries of the untouched workspace, default 10,000), --keep (leave the work folder).
Servers and temp folders are removed at the end, also on failure or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psutil
import psycopg
import qdrant_edge as edge
from psycopg import sql

from backup_pipelines.devstack import sample_data
from backup_pipelines.devstack.postgres_cluster import PostgresCluster
from backup_pipelines.devstack.qdrant import QdrantStandinProcess
from backup_pipelines.devstack.qdrant.models import collection_config_from_request
from backup_pipelines.devstack.qdrant.storage import Collection
from backup_pipelines.devstack.stack import DATABASE_NAME
from backup_pipelines.devstack.typesense_server import TypesenseServer
from backup_pipelines.lib.engines import Mode
from backup_pipelines.lib.mapping import Row, typed_value
from backup_pipelines.lib.policy import Policy
from backup_pipelines.lib.postgres import dump as postgres
from backup_pipelines.lib.qdrant.client import QdrantHttp
from backup_pipelines.lib.qdrant.snapshot import snapshot_qdrant_collections
from backup_pipelines.lib.recovery.workspace_restore import restore_workspace
from backup_pipelines.lib.store import ArtifactRef, LocalStore
from backup_pipelines.lib.typesense.client import TypesenseClient
from backup_pipelines.lib.typesense.documents import to_typesense_document, typesense_schema
from backup_pipelines.lib.typesense.export import export_typesense_collection

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATE = "2026-11-21"
WORKSPACE = "ws_rto"
NEIGHBOUR = "ws_neighbour"
DIM = 384
AIM_SIZE = 1_000_000
STEPS = ("locate_and_verify", "consistency_gate", "sql", "typesense", "qdrant", "verify")
# The new path: the SQL merge and both index restores at once after the gate.
# The SQL rows are staged (COPY into temp tables) while the gate runs; sql_staging is the wait
# for staging after the gate ended.
PARALLEL_STEPS = (
    "locate_and_verify", "consistency_gate", "sql_staging", "sql_and_indexes", "verify"
)  # fmt: skip
BRANCHES = ("sql_staging", "sql", "typesense", "qdrant")
BASELINE_DATE = "2026-11-20"  # the baseline's text-COPY artifact
GROUPS = ("client", "postgres", "typesense", "qdrant")
ASSETS = ("postgres/workspace_dump", "typesense/collection_export", "qdrant/collection_snapshot")
INDEX_BATCH = 10_000  # documents / points per request while building the indexes (setup only)
META_COLUMNS = ("id", "workspace_id", "session_id", "kind", "content", "importance",
                "created_at", "updated_at")  # fmt: skip


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def scale_for(memories: int) -> sample_data.Scale:
    """Proportions of the other tables as in the sample data: 500 memories a session."""
    return sample_data.Scale(
        sessions=max(1, memories // 500),
        turns_per_session=10,
        memories=memories,
        nodes=max(1, memories // 100),
        edges=max(1, memories // 50),
        embedding_dim=DIM,
    )


# ---------------------------------------------------------------------------------------------
# Reading the workspace's memory rows fast (setup only)


def iter_meta_rows(database_url: str, workspace: str, batch: int = 10_000) -> Iterator[Row]:
    """Memory rows (column -> value) in id order WITHOUT their embedding."""
    query = sql.SQL("SELECT {} FROM memory_entries WHERE workspace_id = %s ORDER BY id").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in META_COLUMNS)
    )
    with psycopg.connect(database_url) as conn, conn.cursor(name="meta_rows") as cursor:
        cursor.itersize = batch
        cursor.execute(query, (workspace,))
        for r in cursor:
            yield dict(zip(META_COLUMNS, r, strict=True))


def embedding_record(dim: int) -> np.dtype:
    """One row of `COPY (SELECT id, embedding) TO STDOUT (FORMAT binary)`: fixed width when
    every embedding has `dim` elements and no NULL, so a block of rows is one numpy view."""
    return np.dtype(
        [
            ("fields", ">i2"),
            ("id_len", ">i4"),
            ("id", ">i8"),
            ("array_len", ">i4"),
            ("ndim", ">i4"),
            ("has_null", ">i4"),
            ("element_oid", ">i4"),
            ("dim", ">i4"),
            ("lower_bound", ">i4"),
            ("values", [("len", ">i4"), ("x", ">f4")], (dim,)),
        ]
    )


def iter_embedding_blocks(
    database_url: str, workspace: str, dim: int, block_rows: int = INDEX_BATCH
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids int64, embeddings float32 [n, dim]) in id order, straight from a binary COPY."""
    record = embedding_record(dim)
    size = record.itemsize
    query = sql.SQL(
        "COPY (SELECT id, embedding FROM memory_entries WHERE workspace_id = {} ORDER BY id) "
        "TO STDOUT (FORMAT binary)"
    ).format(sql.Literal(workspace))

    def parse(data: bytes) -> tuple[np.ndarray, np.ndarray]:
        rows = np.frombuffer(data, dtype=record)
        ok = (
            (rows["fields"] == 2).all()
            and (rows["id_len"] == 8).all()
            and (rows["array_len"] == 20 + 8 * dim).all()
            and (rows["ndim"] == 1).all()
            and (rows["has_null"] == 0).all()
            and (rows["dim"] == dim).all()
            and (rows["values"]["len"] == 4).all()
        )
        if not ok:
            raise RuntimeError(f"embeddings are not all {dim} non-null floats")
        return rows["id"].astype(np.int64), rows["values"]["x"].astype(np.float32)

    buffer = bytearray()
    header_done = False
    with psycopg.connect(database_url) as conn, conn.cursor() as cur, cur.copy(query) as copy:
        for chunk in copy:
            buffer += chunk
            if not header_done:
                if len(buffer) < 19:
                    continue
                if bytes(buffer[:11]) != b"PGCOPY\n\xff\r\n\x00":
                    raise RuntimeError("not a binary COPY stream")
                extension = int.from_bytes(buffer[15:19], "big")
                del buffer[: 19 + extension]
                header_done = True
            whole = len(buffer) // size
            if whole >= block_rows:
                yield parse(bytes(buffer[: whole * size]))
                del buffer[: whole * size]
    whole = (len(buffer) - 2) // size
    if bytes(buffer[whole * size :]) != b"\xff\xff":
        raise RuntimeError("binary COPY stream does not end with its trailer")
    if whole:
        yield parse(bytes(buffer[: whole * size]))


# ---------------------------------------------------------------------------------------------
# Building the indexes (setup only)


def index_typesense(client: TypesenseClient, database_url: str, workspace: str, policy) -> int:
    collection = policy.typesense_collection_for(workspace)
    mapping = policy.index_mapping("typesense")
    client.create_collection(typesense_schema(collection, mapping))
    documents = (
        json.dumps(to_typesense_document(row, mapping), ensure_ascii=False).encode() + b"\n"
        for row in iter_meta_rows(database_url, workspace)
    )
    return client.import_jsonl(collection, documents, action="upsert", batch_size=INDEX_BATCH)


def build_qdrant_collection(storage: Path, database_url: str, workspace: str, policy) -> int:
    """The collection the stand-in would hold after upserting every point, written with the
    same engine and config into its storage folder (the stand-in is not running yet)."""
    name = policy.qdrant_collections_for(workspace)[0]
    mapping = policy.index_mapping("qdrant")
    config = collection_config_from_request({"vectors": {"size": DIM, "distance": "Cosine"}})
    collection = Collection.create(name, storage / "collections" / name, config)
    count = 0
    try:
        rows = iter_meta_rows(database_url, workspace)
        for ids, vectors in iter_embedding_blocks(database_url, workspace, DIM):
            points = []
            for point_id, vector in zip(ids.tolist(), vectors, strict=True):
                row = next(rows)
                if row["id"] != point_id:
                    raise RuntimeError(f"row {row['id']} and embedding {point_id} out of step")
                payload = {
                    spec.field: typed_value(row[spec.column], spec.type) for spec in mapping.fields
                }
                points.append(edge.Point(point_id, vector, payload))
            collection.apply(edge.UpdateOperation.upsert_points(points))
            count += len(points)
        if next(rows, None) is not None:
            raise RuntimeError("more memory rows than embeddings")
        collection.shard.flush()
    finally:
        collection.close()
    return count


# ---------------------------------------------------------------------------------------------
# CPU of each process group, sampled


class CpuSampler:
    """Cumulative CPU seconds (user + system) of each process group, every `interval` s."""

    def __init__(self, groups: dict[str, Callable[[], float]], interval: float = 0.2) -> None:
        self.groups = groups
        self.interval = interval
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def _sample(self) -> None:
        values = {}
        for name, read in self.groups.items():
            try:
                values[name] = read()
            except psutil.Error:
                values[name] = self.samples[-1][1][name] if self.samples else 0.0
        self.samples.append((time.monotonic(), values))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> CpuSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def at(self, moment: float) -> dict[str, float]:
        """Cumulative CPU per group at `moment`, interpolated between samples."""
        times = [t for t, _ in self.samples]
        return {
            name: float(np.interp(moment, times, [v[name] for _, v in self.samples]))
            for name in self.groups
        }


class PgActivitySampler:
    """What PostgreSQL's client backends are busy with, sampled from pg_stat_activity: seconds
    per statement kind (the time between samples goes to every statement seen active)."""

    KINDS = (
        ("COPY", "COPY straight into the live table"),
        ("INSERT", "INSERT .. ON CONFLICT DO NOTHING"),
        ("CREATE TEMP", "CREATE TEMP staging"),
        ("SELECT setval", "advance sequences"),
    )

    def __init__(self, database_url: str, interval: float = 0.2) -> None:
        self.database_url = database_url
        self.interval = interval
        self.seconds: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pg-activity", daemon=True)

    def classify(self, query: str) -> str:
        text = " ".join(query.split())
        if "NOT EXISTS" in text:
            return "missing-row check (NOT EXISTS)"
        if text.startswith("COPY") and "restore_stage_" in text:
            return "COPY into staging"
        for prefix, kind in self.KINDS:
            if text.startswith(prefix):
                return kind
        return "other: " + text[:40]

    def _run(self) -> None:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            last = time.monotonic()
            while not self._stop.wait(self.interval):
                rows = conn.execute(
                    "SELECT query FROM pg_stat_activity WHERE state = 'active' AND "
                    "backend_type = 'client backend' AND pid <> pg_backend_pid()"
                ).fetchall()
                now = time.monotonic()
                for (query,) in rows:
                    kind = self.classify(query or "")
                    self.seconds[kind] = self.seconds.get(kind, 0.0) + now - last
                last = now

    def __enter__(self) -> PgActivitySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def cpu_of(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def postgres_cpu(postmaster: psutil.Process) -> Callable[[], float]:
    """Postmaster + reaped backends (its children_* times) + live backends."""

    def read() -> float:
        times = postmaster.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in postmaster.children():
            with contextlib.suppress(psutil.Error):
                total += cpu_of(child)
        return total

    return read


def client_cpu() -> float:
    me = psutil.Process()
    total = cpu_of(me)
    for child in me.children(recursive=True):  # pg_dump/psql helpers, if any
        if child.name().startswith(("pg_", "psql")):
            with contextlib.suppress(psutil.Error):
                total += cpu_of(child)
    return total


# ---------------------------------------------------------------------------------------------
# One size


def artifact_bytes(root: Path, asset: str, date: str = DATE) -> int:
    folder = root / asset / f"date={date}"
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def back_up(
    store, database_url, typesense, qdrant, policy, workspace, date=DATE, binary=True
) -> dict[str, float]:
    """The partition's three artifacts; `binary=False` writes the SQL dump in COPY text only,
    as every workspace dump before binary COPY (the baseline's artifact)."""
    seconds = {}
    started = time.monotonic()
    with store.begin(ArtifactRef(ASSETS[0], date, workspace)) as writer:
        writer.commit(
            **postgres.dump_workspace(database_url, workspace, policy, writer, binary=binary)
        )
    seconds["sql"] = time.monotonic() - started
    started = time.monotonic()
    with store.begin(ArtifactRef(ASSETS[1], date, workspace)) as writer:
        writer.commit(
            **export_typesense_collection(
                typesense,
                typesense.http.base_url,
                policy.typesense_collection_for(workspace),
                writer,
            )
        )
    seconds["typesense"] = time.monotonic() - started
    started = time.monotonic()
    with store.begin(ArtifactRef(ASSETS[2], date, workspace)) as writer:
        writer.commit(
            **snapshot_qdrant_collections(
                qdrant, qdrant.http.base_url, policy.qdrant_collections_for(workspace), writer
            )
        )
    seconds["qdrant"] = time.monotonic() - started
    return seconds


def lose_workspace_memory(database_url, typesense, qdrant, policy, workspace) -> None:
    """The incident: the workspace's rows deleted children first, both collections dropped."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        for table in ("knowledge_graph_edges", "knowledge_graph_nodes", "turns", "memory_entries"):
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE workspace_id = %s").format(sql.Identifier(table)),
                (workspace,),
            )
        conn.execute("DELETE FROM sessions WHERE workspace_id = %s", (workspace,))
        conn.execute("DELETE FROM workspaces WHERE workspace_id = %s", (workspace,))
    typesense.delete_collection(policy.typesense_collection_for(workspace))
    qdrant.delete_collection(policy.qdrant_collections_for(workspace)[0])


def workspace_counts(database_url: str, workspace: str) -> dict[str, int]:
    tables = ("workspaces", "sessions", "turns", "memory_entries", "knowledge_graph_nodes",
              "knowledge_graph_edges")  # fmt: skip
    with psycopg.connect(database_url) as conn:
        return {
            t: conn.execute(
                sql.SQL("SELECT count(*) FROM {} WHERE workspace_id = %s").format(
                    sql.Identifier(t)
                ),
                (workspace,),
            ).fetchone()[0]
            for t in tables
        }


def measure_restore(label, date, parallel, store, url, policy, typesense, qdrant, groups) -> dict:
    """One measured `restore_workspace(mode=merge)`: its own step timings, CPU per step and
    process group, the SQL step per table and PostgreSQL's active statements."""
    say(f"{label}: loadavg {load_average()}; restore_workspace(mode=merge, parallel={parallel})")
    messages: list[tuple[float, str]] = []

    def log(message: str) -> None:
        messages.append((time.monotonic(), message))
        say(f"  restore: {message}")

    with CpuSampler(groups) as sampler, PgActivitySampler(url) as activity:
        started = time.monotonic()
        report = restore_workspace(
            store, date, WORKSPACE, url, policy, {"typesense": typesense, "qdrant": qdrant},
            mode=Mode.MERGE, log=log, parallel=parallel,
        )  # fmt: skip
        wall = time.monotonic() - started
    steps = STEPS if not parallel else PARALLEL_STEPS
    seconds = {s: report.seconds.get(s, 0.0) for s in steps}
    branches = {b: report.seconds.get(f"{b}_branch", 0.0) for b in BRANCHES if parallel}
    edges, moment = {}, started
    for step in steps:
        edges[step] = (moment, moment + seconds[step])
        moment += seconds[step]
    cpu = {}
    for step, (begin, end) in edges.items():
        low, high = sampler.at(begin), sampler.at(end)
        cpu[step] = {g: high[g] - low[g] for g in GROUPS}
    # The SQL merge per table, from one table's log line to the next (tables go in order):
    # every table is staged ("staged N rows"; in the new path from the start, beside the
    # gate), then inserted ("{'in_backup': ...}").
    sql_tables = sql_table_times(
        messages, edges["locate_and_verify" if parallel else "consistency_gate"][1]
    )
    return {
        "label": label,
        "parallel": parallel,
        "verdict": report.verdict,
        "verification_problems": report.verification.get("problems"),
        "steps": list(steps),
        "seconds": seconds,
        "branches": branches,
        "total": sum(seconds.values()),
        "wall": wall,
        "cpu": cpu,
        "sql_tables": sql_tables,
        "pg_statements": dict(sorted(activity.seconds.items(), key=lambda kv: -kv[1])),
        "restored": {"sql": report.sql, **report.indexes},
        "load_before": load_average(),
    }


DAGSTER_JOB = "workspace_restore_job"
# Dagster's event type values (a run's start and end keep their old PIPELINE_ names).
RUN_START, RUN_SUCCESS = "PIPELINE_START", "PIPELINE_SUCCESS"
DAGSTER_EVENTS = (RUN_START, RUN_SUCCESS, "PIPELINE_FAILURE", "STEP_WORKER_STARTING",
                  "STEP_START", "STEP_SUCCESS", "STEP_FAILURE")  # fmt: skip
SHOWN = (": started", ": ended", ": staged", ": copied", ": not copied", "FAIL", "consistency gate")


def dagster_cpu(holder: dict) -> Callable[[], float]:
    """The `dagster job execute` process: itself, its reaped children (the multiprocess
    executor's step processes, counted in its children_* times once waited for) and the live
    ones."""

    def read() -> float:
        process = holder.get("process")
        if process is None:
            return 0.0
        times = process.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += cpu_of(child)
        return total

    return read


def measure_dagster(executor, date, work, store_root, url, ts_server, qd_process, groups) -> dict:
    """The Dagster job operators run, `workspace_restore_job` of (date, workspace), started as
    production starts a run: `dagster job execute` in a fresh process (Dagster and the code
    location imported and loaded there; timed), with BACKUP_RUN_EXECUTOR=`executor`. Steps and
    their start-up come from the run's own event log; the stores' times from its log lines."""
    import dagster as dg  # only this mode needs it

    home = Path(tempfile.mkdtemp(prefix=f"dagster-{executor}-", dir=work))
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("workspaces", [WORKSPACE])
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DATABASE_URL": url,
        "BACKUP_STORE_URL": f"file://{store_root}",
        "TYPESENSE_URL": ts_server.url,
        "TYPESENSE_API_KEY": ts_server.api_key,
        "QDRANT_URL": qd_process.url,
        "BACKUP_RUN_EXECUTOR": executor,
    }
    tags = {
        "dagster/partition": f"{date}|{WORKSPACE}",
        "dagster/partition/date": date,
        "dagster/partition/workspace": WORKSPACE,
    }
    argv = [str(Path(sys.executable).parent / "dagster"), "job", "execute", "-m",
            "backup_pipelines.definitions", "-j", DAGSTER_JOB, "--tags", json.dumps(tags)]  # fmt: skip
    label = f"dagster_{executor}"
    say(f"{label}: loadavg {load_average()}; dagster job execute {DAGSTER_JOB} ({executor})")
    holder: dict = {}
    groups = {**groups, "dagster": dagster_cpu(holder)}
    with CpuSampler(groups) as sampler, PgActivitySampler(url) as activity:
        started, wall_clock = time.monotonic(), time.time()
        process = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT
        )
        with contextlib.suppress(psutil.Error):
            holder["process"] = psutil.Process(process.pid)
        output = process.communicate()[0].decode(errors="replace")
        wall = time.monotonic() - started
    (home / "output.txt").write_text(output)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        [run] = instance.get_runs()
        entries = instance.all_logs(run.run_id)
    # Event times are wall-clock; the sampler's are monotonic: shift by the launch moment.
    to_mono = started - wall_clock
    events = [
        (e.timestamp + to_mono, e.dagster_event.event_type_value, e.step_key)
        for e in entries
        if e.dagster_event is not None and e.dagster_event.event_type_value in DAGSTER_EVENTS
    ]
    messages = [(e.timestamp + to_mono, e.user_message) for e in entries if e.dagster_event is None]
    for moment, message in messages:
        if any(part in message for part in SHOWN):
            say(f"  [{moment - started:6.1f} s into the run] {message[:160]}")
    edges = dagster_edges(events, started, started + wall, executor)
    cpu = {}
    for step, (begin, end) in edges.items():
        low, high = sampler.at(begin), sampler.at(end)
        cpu[step] = {g: high[g] - low[g] for g in groups}
    failures = [m for m in messages if "FAIL" in m[1]]
    branches = {}
    for _moment, message in messages:
        store, _, rest = message.partition(": ")
        if rest.startswith("ended after "):
            branches[store] = float(rest.split()[2])
    problems = [] if process.returncode == 0 else [f"dagster exit {process.returncode}"]
    return {
        "label": label,
        "parallel": True,
        "dagster": executor,
        "verdict": "PASS" if process.returncode == 0 else "?",
        "verification_problems": [m for _t, m in failures],
        "steps": list(edges),
        "seconds": {step: end - begin for step, (begin, end) in edges.items()},
        "branches": branches,
        "total": wall,
        "wall": wall,
        "run_seconds": next((t for t, k, _ in events if k == RUN_SUCCESS), started + wall)
        - next((t for t, k, _ in events if k == RUN_START), started),
        "cpu": cpu,
        "sql_tables": sql_table_times(messages, edges.get(first_step(events), (started,))[0]),
        "pg_statements": dict(sorted(activity.seconds.items(), key=lambda kv: -kv[1])),
        "restored": {},
        "load_before": load_average(),
        "output_tail": output[-3000:] if process.returncode else "",
        "problems_early": problems,
    }


def dagster_edges(events, launched: float, ended: float, executor: str) -> dict:
    """The run cut into consecutive parts, each (begin, end): the launch up to RUN_START (the
    process starting, importing Dagster, loading the code location); per step the time before
    it (Dagster's own work; with multiprocess up to STEP_WORKER_STARTING, then the step
    process's start-up up to STEP_START) and its own time (STEP_START -> STEP_SUCCESS or
    STEP_FAILURE); the end of the run and the process exit."""
    edges: dict[str, tuple[float, float]] = {}
    run_start = next((t for t, k, _ in events if k == RUN_START), launched)
    edges["launch (process, Dagster, code location)"] = (launched, run_start)
    cursor, worker = run_start, False
    for moment, kind, step in events:
        if kind == "STEP_WORKER_STARTING":
            edges[f"  before {step}"] = (cursor, moment)
            cursor, worker = moment, True
        elif kind == "STEP_START":
            name = f"  {step} process start-up" if worker else f"  before {step}"
            edges[name] = (cursor, moment)
            cursor, worker = moment, False
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE"):
            edges[step] = (cursor, moment)
            cursor = moment
    edges["run end + process exit"] = (cursor, ended)
    return edges


def sql_table_times(messages: list[tuple[float, str]], previous: float) -> dict[str, float]:
    """Each table's loading ("staged N rows", or "copied N rows straight in") and inserting
    ("{'in_backup': ...}"), from one table's log line to the one before (tables go in order)."""
    sql_tables = {}
    for moment, message in messages:
        table, _, rest = message.partition(": ")
        kind = "staging" if rest.startswith(("staged ", "copied ")) else "insert"
        if kind == "staging" or rest.startswith("{'in_backup'"):
            sql_tables[f"{table} {kind}"] = moment - previous
            previous = moment
    return sql_tables


def first_step(events) -> str:
    """The step that writes SQL (its start is where the per-table times begin)."""
    steps = [step for _t, kind, step in events if kind == "STEP_START"]
    return next((s for s in steps if "sql" in s), steps[0] if steps else "")


def load_average() -> str:
    return Path("/proc/loadavg").read_text().strip()


def run_size(
    memories: int, work: Path, neighbour: int, baseline: bool = False, dagster: tuple = ()
) -> dict:
    policy = Policy()
    result: dict = {"memories": memories, "setup_seconds": {}}
    setup = result["setup_seconds"]
    say(f"=== {memories:,} memory entries in workspace {WORKSPACE} ===")
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(PostgresCluster())
        url = cluster.create_database(DATABASE_NAME)
        typesense_server = stack.enter_context(TypesenseServer())
        qdrant_process = QdrantStandinProcess()
        stack.callback(qdrant_process.stop)

        started = time.monotonic()
        totals = sample_data.seed(url, [WORKSPACE], scale_for(memories))
        if neighbour:
            sample_data.seed(url, [NEIGHBOUR], scale_for(neighbour), seed_value=0.17)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM (ANALYZE)")
            result["database_bytes"] = conn.execute(
                "SELECT pg_database_size(current_database())"
            ).fetchone()[0]
        setup["generate"] = time.monotonic() - started
        say(
            f"generated in {setup['generate']:.1f} s (excluded): {totals}; neighbour "
            f"{NEIGHBOUR} {neighbour:,} memories; database {result['database_bytes'] / 1e9:.2f} GB"
        )

        started = time.monotonic()
        # The stand-in's storage folder, filled before it starts (it loads it at start-up).
        points = build_qdrant_collection(qdrant_process._dir, url, WORKSPACE, policy)
        qdrant_process.start()
        setup["index_qdrant"] = time.monotonic() - started
        say(f"Qdrant collection built: {points:,} points in {setup['index_qdrant']:.1f} s")

        typesense = stack.enter_context(
            TypesenseClient(typesense_server.url, typesense_server.api_key)
        )
        qdrant = stack.enter_context(QdrantHttp(qdrant_process.url))
        started = time.monotonic()
        documents = index_typesense(typesense, url, WORKSPACE, policy)
        setup["index_typesense"] = time.monotonic() - started
        say(f"Typesense indexed: {documents:,} documents in {setup['index_typesense']:.1f} s")

        store_root = work / f"store-{memories}"
        store = LocalStore(store_root)
        os.environ["BACKUP_WORK_DIR"] = str(work)
        runs = [("new", DATE, True)]
        if baseline:
            runs.insert(0, ("baseline", BASELINE_DATE, False))
        result["artifact_bytes"] = {}
        for label, date, binary in runs:
            backups = back_up(store, url, typesense, qdrant, policy, WORKSPACE, date, binary)
            setup.update({f"backup_{k}_{label}": v for k, v in backups.items()})
            result["artifact_bytes"][label] = {
                a: artifact_bytes(store_root, a, date) for a in ASSETS
            }
            say(
                f"backed up for the {label} run ({'binary' if binary else 'text'} COPY; "
                "excluded): "
                + ", ".join(
                    f"{a} {backups[k]:.1f} s, {result['artifact_bytes'][label][a] / 1e6:,.1f} MB"
                    for k, a in zip(("sql", "typesense", "qdrant"), ASSETS, strict=True)
                )
            )
        before = workspace_counts(url, WORKSPACE)
        neighbour_before = workspace_counts(url, NEIGHBOUR)
        postmaster = psutil.Process(
            int((cluster.data_dir / "postmaster.pid").read_text().splitlines()[0])
        )
        groups = {
            "client": client_cpu,
            "postgres": postgres_cpu(postmaster),
            "typesense": lambda: cpu_of(psutil.Process(typesense_server._process.pid)),
            "qdrant": lambda: cpu_of(psutil.Process(qdrant_process._process.pid)),
        }
        result["runs"] = {}
        # The Dagster job restores the new (binary) artifact, after its own fresh incident.
        restores = [*runs, *((f"dagster_{e}", DATE, e) for e in dagster)]
        for label, date, binary in restores:
            started = time.monotonic()
            lose_workspace_memory(url, typesense, qdrant, policy, WORKSPACE)
            result[f"incident_seconds_{label}"] = time.monotonic() - started
            lost = workspace_counts(url, WORKSPACE)
            if any(lost.values()):
                raise RuntimeError(f"incident left rows behind: {lost}")
            started = time.monotonic()
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("VACUUM (ANALYZE)")
            setup[f"vacuum_after_incident_{label}"] = time.monotonic() - started
            say(
                f"incident before the {label} run: rows deleted, both collections dropped in "
                f"{result[f'incident_seconds_{label}']:.1f} s; VACUUM (ANALYZE) "
                f"{setup[f'vacuum_after_incident_{label}']:.1f} s (excluded)"
            )
            if label.startswith("dagster_"):
                run = measure_dagster(
                    binary, date, work, store_root, url, typesense_server, qdrant_process, groups
                )
            else:
                run = measure_restore(
                    label, date, parallel=binary, store=store, url=url, policy=policy,
                    typesense=typesense, qdrant=qdrant, groups=groups,
                )  # fmt: skip
            after = workspace_counts(url, WORKSPACE)
            problems = []
            if after != before:
                problems.append(f"SQL rows {after} after the restore, {before} before the incident")
            if workspace_counts(url, NEIGHBOUR) != neighbour_before:
                problems.append("the neighbour workspace changed")
            ts_count = typesense.num_documents(policy.typesense_collection_for(WORKSPACE))
            qd_count = qdrant.count(policy.qdrant_collections_for(WORKSPACE)[0])
            if not ts_count == qd_count == memories:
                problems.append(f"indexes hold {ts_count} documents and {qd_count} points")
            if run["verdict"] != "PASS" or run["verification_problems"]:
                problems.append(f"verdict {run['verdict']}, {run['verification_problems']}")
            problems += run.pop("problems_early", [])
            run.update(
                checks={"sql_rows": after, "typesense": ts_count, "qdrant": qd_count},
                problems=problems,
            )
            result["runs"][label] = run
            say(f"{label}: restored in {run['total']:.1f} s; checks: {problems or 'all OK'}")
        result["problems"] = [p for r in result["runs"].values() for p in r["problems"]]
    say("servers stopped")
    return result


# ---------------------------------------------------------------------------------------------
# Report


def print_run(r: dict, memories: int, aim: float) -> None:
    how = (
        f"the Dagster job, `dagster job execute`, {r['dagster']} executor"
        if r.get("dagster")
        else "binary COPY where types allow, SQL merge and indexes at once"
        if r["parallel"]
        else "COPY text, one step after another (the old path)"
    )
    print(
        f"{r['label']} ({how}): RTO {r['total']:.1f} s (wall around the call {r['wall']:.1f} s), "
        f"verdict {r['verdict']}, checks {'OK' if not r['problems'] else '; '.join(r['problems'])}"
    )
    print(f"  load before it: {r['load_before']}")
    cpus = psutil.cpu_count() or 1
    groups = list(next(iter(r["cpu"].values()), {})) or list(GROUPS)
    width = max([18, *(len(step) for step in r["steps"])])
    print(
        f"  {'step':<{width}} {'seconds':>8} {'share':>7}   CPU s: "
        + " ".join(f"{g:>9}" for g in groups)
        + f"  {'CPUs busy':>9}"
    )
    for step in r["steps"]:
        sec = r["seconds"][step]
        share = 100 * sec / r["total"] if r["total"] else 0.0
        cpu = r["cpu"][step]
        busy = 100 * sum(cpu.values()) / (sec * cpus) if sec else 0.0
        print(
            f"  {step:<{width}} {sec:8.1f} {share:6.1f}%          "
            + " ".join(f"{cpu[g]:9.1f}" for g in groups)
            + f"  {busy:8.0f}%"
        )
    print(f"  {'total':<{width}} {r['total']:8.1f} {100.0:6.1f}%")
    total_cpu = {g: sum(c[g] for c in r["cpu"].values()) for g in groups}
    print(
        f"  CPU s over the whole restore: {sum(total_cpu.values()):.1f} ("
        + ", ".join(f"{g} {v:.1f}" for g, v in total_cpu.items())
        + ")"
    )
    if r.get("dagster"):
        print(f"  the run itself (RUN_START -> RUN_SUCCESS): {r['run_seconds']:.1f} s")
    if r["branches"]:
        print(
            "  the stores' branches, each its own time (they overlap when run at once): "
            + ", ".join(
                f"{b} {v:.1f} s ({100 * v / r['total']:.0f}% of the total)"
                for b, v in r["branches"].items()
            )
        )
    print("  sql per table: " + ", ".join(f"{t} {v:.1f} s" for t, v in r["sql_tables"].items()))
    print(
        "  PostgreSQL statements active (sampled): "
        + ", ".join(f"{k} {v:.1f} s" for k, v in r["pg_statements"].items())
    )
    if memories == AIM_SIZE:
        verdict = "PASS" if r["total"] < aim and not r["problems"] else "MISS"
        print(f"  aim: {AIM_SIZE:,} entries back in < {aim:.0f} s: {r['total']:.1f} s -> {verdict}")


def store_seconds(r: dict) -> dict[str, float]:
    """Time per store and step, comparable across both paths (a parallel run's branches)."""
    out = {k: r["seconds"].get(k, 0.0) for k in ("locate_and_verify", "consistency_gate")}
    for branch in ("sql", "typesense", "qdrant"):
        out[branch] = r["branches"].get(branch, r["seconds"].get(branch, 0.0))
    # the new path's SQL work: staging (beside the gate) + inserting (beside the indexes)
    out["sql"] += r["branches"].get("sql_staging", 0.0)
    out["verify"] = r["seconds"].get("verify", 0.0)
    return out


def print_ratios(base: dict, new: dict, memories: int, aim: float) -> None:
    print(f"  before -> after, ratio baseline/new (> 1: faster now), {memories:,} entries:")
    old_steps, new_steps = store_seconds(base), store_seconds(new)
    for step, before in old_steps.items():
        after = new_steps[step]
        ratio = f"{before / after:5.2f}x" if after else "  n/a"
        print(
            f"    {step:<18} {before:7.1f} s ({100 * before / base['total']:4.1f}%) -> "
            f"{after:7.1f} s ({100 * after / new['total']:4.1f}%)  {ratio}"
        )
    print(
        f"    {'total (RTO)':<18} {base['total']:7.1f} s -> {new['total']:7.1f} s  "
        f"{base['total'] / new['total']:5.2f}x"
    )
    if memories == AIM_SIZE:
        for r in (base, new):
            verdict = "PASS" if r["total"] < aim and not r["problems"] else "MISS"
            print(f"    {r['label']}: {r['total']:.1f} s vs aim {aim:.0f} s -> {verdict}")


def print_dagster_ratios(runs: dict, memories: int, aim: float) -> None:
    """Each Dagster run's RTO (launch to exit) against the library path's and the baseline's."""
    for label, r in runs.items():
        if not r.get("dagster"):
            continue
        against = [(other, runs[other]["total"]) for other in ("baseline", "new") if other in runs]
        print(
            f"  {label}: RTO {r['total']:.1f} s (launch to exit)"
            + "".join(
                f"; {o} {t:.1f} s -> ratio {o}/{label} {t / r['total']:.2f}x" for o, t in against
            )
        )
        if memories == AIM_SIZE:
            verdict = "PASS" if r["total"] < aim and not r["problems"] else "MISS"
            print(f"    {label}: {r['total']:.1f} s vs aim {aim:.0f} s -> {verdict}")


def print_summary(results: list[dict], aim: float) -> None:
    print()
    print("=" * 96)
    print(
        f"RESTORE RTO of ONE workspace (PostgreSQL + Typesense + Qdrant stand-in), merge mode, "
        f"{psutil.cpu_count()} CPUs"
    )
    for r in results:
        print("-" * 96)
        print(f"{r['memories']:,} memory entries; database {r['database_bytes'] / 1e9:.2f} GB")
        print("  excluded: " + ", ".join(f"{k} {v:.1f} s" for k, v in r["setup_seconds"].items()))
        for label, sizes in r["artifact_bytes"].items():
            print(
                f"  artifacts ({label}): "
                + ", ".join(f"{a} {sizes[a] / 1e6:,.1f} MB" for a in ASSETS)
            )
        for run in r["runs"].values():
            print_run(run, r["memories"], aim)
        if "baseline" in r["runs"]:
            print_ratios(r["runs"]["baseline"], r["runs"]["new"], r["memories"], aim)
        print_dagster_ratios(r["runs"], r["memories"], aim)
    measured = sorted(results, key=lambda r: r["memories"])
    if len(measured) >= 2:
        print("-" * 96)
        print("scaling (new path), seconds per 100,000 entries: " + ", ".join(
            f"{r['memories']:,}: {r['runs']['new']['total'] / r['memories'] * 1e5:.1f}"
            for r in measured
        ))  # fmt: skip
    if not any(r["memories"] == AIM_SIZE for r in results) and len(measured) >= 2:
        small, large = (m["runs"]["new"] for m in measured[-2:])
        sizes = [m["memories"] for m in measured[-2:]]
        print("-" * 96)
        print(
            f"EXTRAPOLATED (NOT MEASURED) to {AIM_SIZE:,} entries, new path, linear per step "
            f"from {sizes[0]:,} and {sizes[1]:,}:"
        )
        total = 0.0
        for step in large["steps"]:
            slope = (large["seconds"][step] - small["seconds"][step]) / (sizes[1] - sizes[0])
            estimate = max(0.0, large["seconds"][step] + slope * (AIM_SIZE - sizes[1]))
            total += estimate
            print(f"  {step:<18} {estimate:8.1f}")
        verdict = "PASS" if total < aim else "MISS"
        print(
            f"  total (extrapolated) {total:.1f} s vs aim {aim:.0f} s -> {verdict} (extrapolated)"
        )
    print("=" * 96)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100000,1000000", help="memory entries, comma-separated")
    parser.add_argument("--aim-seconds", type=float, default=60.0)
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="also restore a COPY-text artifact one step after another (the old path) in the "
        "same run, before the new path, and print both with ratios",
    )
    parser.add_argument(
        "--dagster",
        default="",
        help="also restore through the Dagster job workspace_restore_job (`dagster job "
        "execute` in a new process, as a run starts) with these executors, comma-separated: "
        "in_process (the default of BACKUP_RUN_EXECUTOR), multiprocess; each after a fresh "
        "incident",
    )
    parser.add_argument("--work-dir", default=str(PROJECT_ROOT / ".bench"))
    parser.add_argument("--neighbour", type=int, default=10_000)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]

    def stop(signum, _frame):
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="restore-rto-", dir=args.work_dir))
    say(f"python {sys.executable}; {psutil.cpu_count()} CPUs; work folder {work}")
    say(f"loadavg at start: {load_average()}")
    results = []
    try:
        for memories in sizes:
            dagster = tuple(e.strip() for e in args.dagster.split(",") if e.strip())
            results.append(run_size(memories, work, args.neighbour, args.baseline, dagster))
            (Path(args.work_dir) / "restore-rto-results.json").write_text(
                json.dumps(results, indent=2, default=str)
            )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        if results:
            print_summary(results, args.aim_seconds)
    if any(r["problems"] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
