"""Benchmark of the consistency gate on one workspace with 1,000,000 memory entries.

Generates the three artifacts of one partition in a LocalStore under a temp dir:

* the workspace dump's public.memory_entries COPY-text file, with realistic rows: every column
  of the memory_entries table, escaped tabs/newlines in content, a jsonb column and a 384-float
  real[] embedding (about 4.4 KB a row, about 4.3 GB uncompressed), rows in heap order (mostly
  ascending ids with some rows moved by updates);
* a Typesense export (documents.jsonl.zst): one JSON document a line as Typesense writes it,
  keys in sorted order (so "id" comes after "content" and "created_at"), compact; in insertion
  order; 37 documents are missing (a stale index);
* a Qdrant artifact's point_ids.txt.zst: sorted decimal ids.

Then runs the full evaluation (read + verify sha256 + decompress + parse + diff) in a fresh
child process, so its peak RSS is the gate's alone, and prints the time against the aim.

`--baseline` evaluates a second time with the Typesense id reader the gate had before it knew
Typesense's key order (below, `jsonl_ids_before`: a fast path only for lines starting with
`{"id":"`, so every line of a real export went through json.loads), and prints the ratios.

    .venv/bin/python bench/bench_consistency.py [--rows N] [--root DIR] [--keep] [--baseline]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from backup_pipelines.lib.store import ArtifactRef, LocalStore
from backup_pipelines.lib.streams import zstd_compressing

AIM_SECONDS = 20.0
DIM = 384
SQL_REF = ArtifactRef("postgres/workspace_dump", "2026-11-21", "ws_acme")
TS_REF = ArtifactRef("typesense/export", "2026-11-21", "ws_acme")
QD_REF = ArtifactRef("qdrant/snapshot", "2026-11-21", "ws_acme")
TABLE = "public.memory_entries"
COLUMNS = ["id", "workspace_id", "session_id", "kind", "content", "importance", "metadata",
           "embedding", "created_at", "updated_at"]  # fmt: skip
WORDS = [
    "the",
    "user",
    "prefers",
    "dark",
    "mode",
    "agent",
    "remembered",
    "meeting",
    "notes",
    "about",
    "quarterly",
    "planning",
    "Berlin",
    "invoice",
    "deadline",
    "Friday",
    "customer",
    "asked",
    "for",
    "a",
    "refund",
    "because",
    "shipment",
    "arrived",
    "late",
    "summarise",
    "project",
    "Atlas",
    "uses",
    "PostgreSQL",
    "and",
    "Typesense",
    "for",
    "search",
    "café",
    "naïve",
    "résumé",
    "東京",
    "🚀",
    "vector",
    "embedding",
    "memory",
    "graph",
    "edge",
    "node",
    "calendar",
    "email",
    "draft",
    "reply",
    "follow-up",
    "priority",
    "budget",
]
MISSING_FROM_TYPESENSE = 37


def copy_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def pools(rng: np.random.Generator, size: int = 4096) -> tuple[list[str], list[str]]:
    """Distinct embeddings (float4 text, as PostgreSQL prints them) and contents to draw from."""
    vectors = rng.uniform(-1, 1, (size, DIM)).astype(np.float32)
    embeddings = ["{" + ",".join(f"{x:.8g}" for x in row.tolist()) + "}" for row in vectors]
    contents = []
    for i in range(size):
        words = rng.choice(WORDS, int(rng.integers(12, 90))).tolist()
        if i % 5 == 0:
            words.insert(3, 'quoted "tab\there"\nline')
        contents.append(" ".join(words))
    return embeddings, contents


def entry_ids(rng: np.random.Generator, rows: int) -> np.ndarray:
    """Ids of one workspace among all workspaces' ids, in heap order (updates move some rows)."""
    ids = np.sort(rng.choice(np.arange(1, rows * 5, dtype=np.int64), rows, replace=False))
    moved = rng.choice(rows, rows // 50, replace=False)
    return np.concatenate([np.delete(ids, moved), ids[moved]])


def write_sql(store: LocalStore, ids: np.ndarray, embeddings, contents) -> None:
    n_pool = len(embeddings)
    escaped = [copy_escape(c) for c in contents]
    with store.begin(SQL_REF) as writer:
        with writer.open_file(f"{TABLE}.copy.zst") as out, zstd_compressing(out, 1) as zout:
            batch, total = [], 0
            for n, i in enumerate(ids.tolist()):
                k = (i * 2654435761) % n_pool
                metadata = f'{{"n": {i}, "tags": ["t{i % 7}"], "source": "turn"}}'
                batch.append(
                    f"{i}\tws_acme\t{i // 40}\tfact\t{escaped[k]}\t0.{i % 100:02d}\t{metadata}\t"
                    f"{embeddings[(k * 7 + n) % n_pool]}\t2026-11-20 10:00:00.{i % 1000:03d}+00\t"
                    f"2026-11-20 10:00:00.{i % 1000:03d}+00\n"
                )
                if len(batch) == 2000:
                    total += zout.write("".join(batch).encode())
                    batch = []
            total += zout.write("".join(batch).encode())
        entry = {
            "table": TABLE,
            "columns": COLUMNS,
            "workspace_column": "workspace_id",
            "rows": len(ids),
            "file": f"{TABLE}.copy.zst",
        }
        writer.commit(
            captured_at="2026-11-21T10:00:00.000Z",
            counts={"rows": {TABLE: len(ids)}},
            tables=[entry],
            uncompressed_bytes=total,
            source={},
            tool={},
        )


def write_typesense(store: LocalStore, ids: np.ndarray, contents, rng) -> None:
    kept = np.delete(ids, rng.choice(len(ids), MISSING_FROM_TYPESENSE, replace=False))
    encoded = [json.dumps(c, ensure_ascii=False, separators=(",", ":")) for c in contents]
    with store.begin(TS_REF) as writer:
        with writer.open_file("documents.jsonl.zst") as out, zstd_compressing(out, 1) as zout:
            batch, total = [], 0
            for i in kept.tolist():
                # keys sorted, no spaces: the way Typesense exports a document
                batch.append(
                    f'{{"content":{encoded[(i * 2654435761) % len(encoded)]},'
                    f'"created_at":{1763632800 + i % 86400},"id":"{i}",'
                    f'"importance":0.{i % 100:02d},"kind":"fact","session_id":"{i // 40}",'
                    f'"tags":["t{i % 7}","turn"],"workspace_id":"ws_acme"}}\n'
                )
                if len(batch) == 5000:
                    total += zout.write("".join(batch).encode())
                    batch = []
            total += zout.write("".join(batch).encode())
        writer.commit(
            captured_at="2026-11-21T10:04:10.000Z",
            export_started_at="2026-11-21T10:02:00.000Z",
            counts={"documents": len(kept)},
            uncompressed_bytes=total,
            source={"collection": "memory_ws_acme"},
            tool={},
        )


def write_qdrant(store: LocalStore, ids: np.ndarray) -> None:
    with store.begin(QD_REF) as writer:
        with writer.open_file("point_ids.txt.zst") as out, zstd_compressing(out, 1) as zout:
            body = np.sort(ids).astype("S20")
            zout.write(b"\n".join(body.tolist()) + b"\n")
        writer.commit(
            captured_at="2026-11-21T10:05:00.000Z",
            counts={"points": len(ids)},
            source={"collection": "agent_ws_acme"},
            tool={},
        )


def generate(root: Path, rows: int) -> None:
    started = time.monotonic()
    rng = np.random.default_rng(20261121)
    store = LocalStore(root)
    ids = entry_ids(rng, rows)
    embeddings, contents = pools(rng)
    write_sql(store, ids, embeddings, contents)
    write_typesense(store, rng.permutation(ids), contents, rng)
    write_qdrant(store, ids)
    print(f"generated {rows:,} rows in {time.monotonic() - started:.1f} s under {root}")
    for ref in (SQL_REF, TS_REF, QD_REF):
        manifest = store.require_manifest(ref)
        raw = manifest.get("uncompressed_bytes")
        for entry in manifest["files"]:
            size = f"{entry['bytes'] / 1e6:,.1f} MB compressed"
            if raw:
                size += f", {raw / 1e6:,.1f} MB uncompressed"
            print(f"  {ref.asset}/{entry['name']}: {size}")


def vm_hwm_kib() -> int:
    """This process's own peak RSS (Linux VmHWM; unlike ru_maxrss it is not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return -1


def run_child(*args: str) -> str:
    child = subprocess.run(
        [sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True, check=True
    )
    return child.stdout


def jsonl_ids_before(buf: bytes, start: int, stop: int) -> list[bytes]:
    """lib/typesense/ids._jsonl_ids as it was before 2026-12-04 (the baseline of --baseline)."""
    from backup_pipelines.lib.typesense.ids import _json_document_id

    fast_prefix = b'{"id":"'
    out: list[bytes] = []
    append, find, startswith = out.append, buf.find, buf.startswith
    fast = len(fast_prefix)
    pos = start
    while pos < stop:
        end = find(b"\n", pos, stop)
        if startswith(fast_prefix, pos, end):
            quote = find(b'"', pos + fast, end)
            value = buf[pos + fast : quote] if quote > 0 else b"\\"
            if b"\\" not in value:
                append(value)
                pos = end + 1
                continue
        line = buf[pos:end]
        if line.strip():
            append(_json_document_id(line))
        pos = end + 1
    return out


def evaluate_in_this_process(root: Path, before: bool = False) -> None:
    """The measured part: what the gate does for one partition (`before`: with the Typesense
    id reader of before, jsonl_ids_before)."""
    if before:
        from backup_pipelines.lib.typesense import ids as typesense_ids

        typesense_ids._jsonl_ids = jsonl_ids_before
    from backup_pipelines.lib.policy import Policy
    from backup_pipelines.lib.postgres.ids import sql_ids_from_workspace_dump
    from backup_pipelines.lib.qdrant.ids import ids_from_qdrant_artifact
    from backup_pipelines.lib.recovery import consistency
    from backup_pipelines.lib.typesense.ids import ids_from_typesense_export

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    store = LocalStore(root)
    started = time.monotonic()
    times = {}

    def timed(label, function, *args, **kwargs):
        t = time.monotonic()
        result = function(*args, **kwargs)
        times[label] = time.monotonic() - t
        return result

    sql = timed(
        "sql",
        sql_ids_from_workspace_dump,
        store,
        SQL_REF,
        store.require_manifest(SQL_REF),
    )
    typesense = timed(
        "typesense",
        ids_from_typesense_export,
        store,
        TS_REF,
        store.require_manifest(TS_REF),
    )
    qdrant = timed(
        "qdrant",
        ids_from_qdrant_artifact,
        store,
        QD_REF,
        store.require_manifest(QD_REF),
    )
    verdict = timed(
        "diff", consistency.evaluate, sql, [typesense, qdrant], Policy().max_clock_skew_seconds
    )
    total = time.monotonic() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak = usage.ru_maxrss
    print(
        json.dumps(
            {
                "seconds": total,
                "times": times,
                "peak_rss_kib": peak,
                "cpu_seconds": usage.ru_utime + usage.ru_stime,
                "vm_hwm_kib": vm_hwm_kib(),
                "baseline_rss_kib": baseline,
                "summary": verdict.summary(),
                "reasons": verdict.reasons,
            }
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--root", type=Path, help="reuse (or create) the artifacts here")
    parser.add_argument("--keep", action="store_true", help="keep the generated artifacts")
    parser.add_argument(
        "--baseline", action="store_true", help="evaluate again with the id reader of before"
    )
    parser.add_argument("--evaluate-only", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--before", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--generate-only", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.evaluate_only:
        evaluate_in_this_process(args.evaluate_only, args.before)
        return 0
    if args.generate_only:
        generate(args.generate_only, args.rows)
        return 0
    # Generation and evaluation each run in a child of this small process: Linux carries
    # ru_maxrss across fork+exec, so the evaluating child must not descend from the generator.
    root = args.root or Path(tempfile.mkdtemp(prefix="bench-consistency-"))
    try:
        if LocalStore(root).read_manifest(QD_REF) is None:
            print(run_child("--generate-only", str(root), "--rows", str(args.rows)), end="")
        else:
            print(f"reusing the artifacts under {root}")
        load_before = os.getloadavg()[0]
        result = json.loads(run_child("--evaluate-only", str(root)).strip().splitlines()[-1])
        load_after = os.getloadavg()[0]
        before = None
        if args.baseline:
            child = run_child("--evaluate-only", str(root), "--before")
            before = json.loads(child.strip().splitlines()[-1])
            load_after = os.getloadavg()[0]
    finally:
        if not args.keep and not args.root:
            shutil.rmtree(root, ignore_errors=True)
    seconds = result["seconds"]
    breakdown = ", ".join(f"{k} {v:.2f} s" for k, v in result["times"].items())
    print(
        f"cores: {os.cpu_count()}, 1-min load average {load_before:.2f} before and "
        f"{load_after:.2f} after (other work on the machine slows the wall time)"
    )
    print(f"verdict: {result['summary']}")
    print(f"evaluation: {seconds:.2f} s wall ({breakdown}); {result['cpu_seconds']:.2f} s CPU")
    print(
        f"peak RSS of the evaluating process: {result['peak_rss_kib'] / 1024:,.0f} MiB "
        f"(getrusage ru_maxrss; {result['baseline_rss_kib'] / 1024:,.0f} MiB after imports; "
        f"VmHWM {result['vm_hwm_kib'] / 1024:,.0f} MiB)"
    )
    status = "PASS" if seconds < AIM_SECONDS else "MISS"
    print(f"{status}: {seconds:.2f} s against the aim of under {AIM_SECONDS:.0f} s")
    if before is not None:
        print_ratios(before, result)
    return 0


def print_ratios(before: dict, now: dict) -> None:
    """Each part of the evaluation with the id reader of before and now, and before/now."""
    if before["summary"] != now["summary"]:
        raise SystemExit(f"the verdicts differ: {before['summary']!r} vs {now['summary']!r}")
    print("baseline (the Typesense id reader of before) -> now, same artifacts, same verdict:")
    rows = [*before["times"], "total"]
    for part in rows:
        then = before["seconds"] if part == "total" else before["times"][part]
        this = now["seconds"] if part == "total" else now["times"][part]
        print(f"  {part:<10} {then:7.2f} s -> {this:7.2f} s   {then / this:5.2f}x")
    print(
        f"  CPU        {before['cpu_seconds']:7.2f} s -> {now['cpu_seconds']:7.2f} s   "
        f"{before['cpu_seconds'] / now['cpu_seconds']:5.2f}x"
    )


if __name__ == "__main__":
    sys.exit(main())
