"""Benchmark of the typesense/collection_export backup against the runbook's curl export.

Starts a real typesense-server (0.24.1, loopback, throwaway data dir), fills one collection
with realistic memory documents (the shape of typesense.documents.to_typesense_document: id,
workspace_id, session_id, kind, content of 8-48 words, importance, created_at, updated_at),
then exports that same collection, alternately:

* the runbook's command, run as written by bash:
      curl -H "X-TYPESENSE-API-KEY: $KEY" "$URL/collections/$C/documents/export" > file
  timed by this process from launch to exit;
* ours: a child process (the venv python) that builds a TypesenseClient and a LocalStore and
  runs typesense.export.export_typesense_collection + commit, timing the export call itself;
  its peak RSS is the max of ru_maxrss in the child and psutil polling from this process.

Each side runs --rounds times (default 2, alternating) and the best of each is compared.
Generation (documents built and imported) is timed and printed separately, excluded.
When ours is slower than the aim, a profiling pass breaks the export path down (HTTP client,
chunk size, zstd threads) and the findings are printed.

    .venv/bin/python bench/bench_typesense_export.py [--docs 1000000] [--rounds 2]
        [--profile | --no-profile] [--work-dir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AIM_TIME_RATIO = 1.10
AIM_RSS_BYTES = 150 * 1000 * 1000  # 150 MB
COLLECTION = "memories_ws_bench"
WORKSPACE = "ws_bench"
REF_ARGS = ("typesense/collection_export", "2026-11-21", WORKSPACE)
KEY_ENV = "BENCH_TYPESENSE_KEY"
URL_ENV = "BENCH_TYPESENSE_URL"
MB = 1e6
KINDS = ["fact", "preference", "episode", "summary", "task", "observation"]
KIND_WEIGHTS = [30, 15, 25, 10, 12, 8]
COMMON_WORDS = [
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
    "in",
    "Berlin",
    "invoice",
    "deadline",
    "on",
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
    "search",
    "café",
    "Zürich",
    "naïve",
    "report",
    "budget",
    "review",
    "with",
    "team",
    "lead",
    "next",
    "week",
    "call",
    "scheduled",
    "follow",
    "up",
    "email",
    "draft",
    "password",
    "reset",
    "ticket",
    "priority",
    "high",
    "low",
    "medium",
    "onboarding",
    "new",
    "hire",
    "laptop",
    "order",
    "travel",
    "flight",
    "hotel",
    "booking",
    "receipt",
    "expense",
    "policy",
    "approved",
    "rejected",
    "pending",
    "migration",
    "database",
    "backup",
    "restore",
    "nightly",
    "job",
    "failed",
    "succeeded",
    "alert",
    "pager",
    "on-call",
    "rotation",
    "incident",
    "postmortem",
    "action",
    "items",
    "owner",
    "due",
    "date",
    "roadmap",
    "feature",
    "request",
    "bug",
    "fix",
    "release",
    "notes",
    "version",
    "2.4.1",
    "API",
    "key",
    "rotated",
    "(not",
    "stored)",
    '"quoted"',
    "remark:",
    "it's,",
    "that's,",
    "we're",
]


# ------------------------------------------------------------------------------------------
# Document generation (excluded from every timing).


def make_vocabulary(rng) -> tuple[list[str], list[float]]:
    """Common words plus ~6,000 pseudo-words, Zipf-like weights (a realistic token spread)."""
    syllables = ["ka", "lo", "mi", "ter", "an", "vel", "os", "ri", "qua", "zen", "dor", "pi",
                 "sto", "ne", "ul", "bra", "fe", "gi", "hum", "ix"]  # fmt: skip
    rare = {"".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))) for _ in range(6000)}
    words = COMMON_WORDS + sorted(rare)
    rng.shuffle(words)
    weights = [1.0 / (rank + 1) ** 0.9 for rank in range(len(words))]
    cumulative, total = [], 0.0
    for weight in weights:
        total += weight
        cumulative.append(total)
    return words, cumulative


def generate_jsonl(count: int, seed: int = 20261121, batch: int = 5000):
    """JSONL chunks of `count` documents, built with the project's own row -> document map."""
    import random
    from datetime import UTC, datetime, timedelta

    from backup_pipelines.lib.policy import Policy
    from backup_pipelines.lib.typesense.documents import to_typesense_document

    mapping = Policy().index_mapping("typesense")
    rng = random.Random(seed)
    words, cumulative = make_vocabulary(rng)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    span_seconds = 320 * 86400
    dumps = json.dumps
    lines: list[bytes] = []
    for doc_id in range(1, count + 1):
        created = start + timedelta(seconds=span_seconds * doc_id / count + rng.random())
        updated = created if rng.random() < 0.7 else created + timedelta(hours=rng.random() * 500)
        n_words = rng.randint(8, 48)
        content = " ".join(rng.choices(words, cum_weights=cumulative, k=n_words))
        if rng.random() < 0.05:
            content += "\n(edited)\t" + rng.choice(words)
        row = {
            "id": doc_id,
            "workspace_id": WORKSPACE,
            "session_id": None if rng.random() < 0.1 else 1 + doc_id // 1000,
            "kind": rng.choices(KINDS, weights=KIND_WEIGHTS)[0],
            "content": content[:1].upper() + content[1:] + ".",
            "importance": round(rng.random(), 6),
            "created_at": created,
            "updated_at": updated,
        }
        lines.append(dumps(to_typesense_document(row, mapping), ensure_ascii=False).encode())
        if len(lines) == batch:
            yield b"\n".join(lines) + b"\n"
            lines = []
    if lines:
        yield b"\n".join(lines) + b"\n"


# ------------------------------------------------------------------------------------------
# Child processes: ours (the measured export) and the profiling probes.


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _maxrss_self() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _vm_hwm() -> int:
    """The peak RSS of this process's own address space (/proc/self/status VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def child_export(result_path: str, store_dir: str) -> int:
    """Ours, as a backup run does it: client + LocalStore, export, commit."""
    marks = {"started": time.monotonic()}
    from backup_pipelines.lib.store import ArtifactRef, LocalStore
    from backup_pipelines.lib.typesense.client import TypesenseClient
    from backup_pipelines.lib.typesense.export import (
        TYPESENSE_DOCUMENTS_FILE,
        export_typesense_collection,
    )

    url, key = os.environ[URL_ENV], os.environ[KEY_ENV]
    client = TypesenseClient(url, key)
    store = LocalStore(store_dir)
    ref = ArtifactRef(*REF_ARGS)
    rss_before = _maxrss_self()
    cpu_before = _cpu_self()
    marks["ready"] = time.monotonic()
    with store.begin(ref) as writer:
        t0 = time.perf_counter()
        fields = export_typesense_collection(client, url, COLLECTION, writer)
        t1 = time.perf_counter()
        manifest = writer.commit(**fields)
        t2 = time.perf_counter()
    client.close()
    documents_file = next(f for f in manifest["files"] if f["name"] == TYPESENSE_DOCUMENTS_FILE)
    result = {
        "export_seconds": t1 - t0,
        "commit_seconds": t2 - t1,
        "startup_seconds": marks["ready"] - marks["started"],
        "cpu_seconds": _cpu_self() - cpu_before,
        "ru_maxrss_before": rss_before,
        "ru_maxrss": _maxrss_self(),
        "vm_hwm": _vm_hwm(),
        "documents": manifest["counts"]["documents"],
        "uncompressed_bytes": manifest["uncompressed_bytes"],
        "zst_bytes": documents_file["bytes"],
        "library_duration_seconds": manifest.get("duration_seconds"),
    }
    Path(result_path).write_text(json.dumps(result))
    return 0


def child_probe(result_path: str, variant: str, scratch: str) -> int:
    """One piece of the export path alone, for the profile (see PROBES)."""
    import requests
    import zstandard

    from backup_pipelines.lib.typesense.client import API_KEY_HEADER, TypesenseClient

    url, key = os.environ[URL_ENV], os.environ[KEY_ENV]
    export_url = f"{url}/collections/{COLLECTION}/documents/export"
    out_path = Path(scratch) / f"probe-{variant}.out"
    chunks = nbytes = 0
    headers: dict = {}
    cpu_before = _cpu_self()
    t0 = time.perf_counter()
    if variant.startswith("requests_iter_content_"):
        size = int(variant.rsplit("_", 1)[1])
        with requests.get(export_url, headers={API_KEY_HEADER: key}, stream=True) as response:
            headers = dict(response.headers)
            for chunk in response.iter_content(chunk_size=size):
                chunks += 1
                nbytes += len(chunk)
    elif variant == "urllib3_raw_read_1MiB":
        with requests.get(export_url, headers={API_KEY_HEADER: key}, stream=True) as response:
            headers = dict(response.headers)
            while chunk := response.raw.read(1 << 20):
                chunks += 1
                nbytes += len(chunk)
    elif variant.startswith("client_"):
        # The client's streamed export (incl. its JSONL tally), then optionally zstd into a
        # plain file with a given number of zstd worker threads (no store, no sha256).
        client = TypesenseClient(url, key)
        export = client.stream_export(COLLECTION)
        if variant == "client_discard":
            for chunk in export:
                chunks += 1
                nbytes += len(chunk)
        else:
            threads = {"client_zstd_threads_auto": -1, "client_zstd_threads_0": 0}[variant]
            compressor = zstandard.ZstdCompressor(level=1, threads=threads, write_checksum=True)
            with (
                open(out_path, "wb") as out,
                compressor.stream_writer(out, closefd=False, write_size=1 << 20) as zw,
            ):
                for chunk in export:
                    chunks += 1
                    nbytes += len(chunk)
                    zw.write(chunk)
        client.close()
    else:
        raise SystemExit(f"unknown probe {variant!r}")
    seconds = time.perf_counter() - t0
    out_path.unlink(missing_ok=True)
    result = {
        "variant": variant,
        "seconds": seconds,
        "cpu_seconds": _cpu_self() - cpu_before,
        "bytes": nbytes,
        "chunks": chunks,
        "ru_maxrss": _maxrss_self(),
        "content_encoding": headers.get("Content-Encoding") or headers.get("content-encoding"),
        "transfer_encoding": headers.get("Transfer-Encoding") or headers.get("transfer-encoding"),
    }
    Path(result_path).write_text(json.dumps(result))
    return 0


PROBES = [
    "requests_iter_content_1048576",
    "requests_iter_content_65536",
    "urllib3_raw_read_1MiB",
    "client_discard",
    "client_zstd_threads_0",
    "client_zstd_threads_auto",
]


# ------------------------------------------------------------------------------------------
# Parent: server, data, alternating runs, report.


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class RssPoller:
    """Peak RSS polled with psutil every `interval` seconds: of the process itself, or (with
    descendants=True) the sum over its descendants, for a child started through a launcher."""

    def __init__(self, pid: int, interval: float = 0.02, descendants: bool = False) -> None:
        self.pid = pid
        self.interval = interval
        self.descendants = descendants
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _rss(self, process) -> int:
        import psutil

        if not self.descendants:
            return process.memory_info().rss
        total = 0
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return total

    def _run(self) -> None:
        import psutil

        try:
            process = psutil.Process(self.pid)
            while not self._stop.is_set():
                self.peak = max(self.peak, self._rss(process))
                self.samples += 1
                self._stop.wait(self.interval)
        except psutil.Error:
            pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class ServerCpu:
    """CPU seconds the typesense-server process spends during one measured run."""

    def __init__(self, pid: int) -> None:
        import psutil

        self._process = psutil.Process(pid)

    def now(self) -> float:
        times = self._process.cpu_times()
        return times.user + times.system


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_curl(server, out_file: Path, server_cpu: ServerCpu) -> dict:
    """The runbook's command, exactly, through bash; timed from launch to exit."""
    command = (
        'curl -H "X-TYPESENSE-API-KEY: $KEY" "$URL/collections/$C/documents/export" > "$OUT_FILE"'
    )
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "KEY": server.api_key,
        "URL": server.url,
        "C": COLLECTION,
        "OUT_FILE": str(out_file),
    }
    cpu0, scpu0 = children_cpu(), server_cpu.now()
    t0 = time.perf_counter()
    process = subprocess.Popen(["bash", "-c", command], env=env, stderr=subprocess.DEVNULL)
    poller = RssPoller(process.pid)
    code = process.wait()
    seconds = time.perf_counter() - t0
    poller.stop()
    if code != 0:
        raise RuntimeError(f"curl exited with {code}")
    size = out_file.stat().st_size
    return {
        "seconds": seconds,
        "bytes": size,
        "documents": count_jsonl_documents(out_file),
        "cpu_seconds": children_cpu() - cpu0,
        "server_cpu_seconds": server_cpu.now() - scpu0,
    }


def count_jsonl_documents(path: Path) -> int:
    """Newlines, plus one for a last line without one (Typesense ends without a newline)."""
    newlines, last = 0, b""
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            newlines += chunk.count(b"\n")
            last = chunk
    return newlines + (1 if last and not last.endswith(b"\n") else 0)


def child_env(server) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BACKUP_", "DAGSTER_"))}
    env[URL_ENV] = server.url
    env[KEY_ENV] = server.api_key
    return env


def run_child(args: list[str], env: dict, result_path: Path, server_cpu: ServerCpu) -> dict:
    cpu0, scpu0 = children_cpu(), server_cpu.now()
    t0 = time.perf_counter()
    # Launched by a forked bash job, not spawned from this process: on Linux an exec'd child
    # inherits the RSS high-water mark of the process it was forked/vforked from in its
    # ru_maxrss, and this process holds the generator's memory. bash's own few MB are the
    # most that a background job of it can inherit.
    child = [sys.executable, str(Path(__file__).resolve()), "--child", *args, str(result_path)]
    process = subprocess.Popen(
        ["bash", "-c", '"$@" </dev/null & wait $!', "bash", *child],
        env=env,
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    poller = RssPoller(process.pid, descendants=True)
    output, _ = process.communicate()
    wall = time.perf_counter() - t0
    poller.stop()
    if process.returncode != 0 or not result_path.exists():
        raise RuntimeError(
            f"child {args} failed (exit {process.returncode}):\n"
            + output.decode(errors="replace")[-4000:]
        )
    result = json.loads(result_path.read_text())
    result_path.unlink()
    result.update(
        wall_seconds=wall,
        rss_polled=poller.peak,
        rss_samples=poller.samples,
        child_cpu_seconds=children_cpu() - cpu0,
        server_cpu_seconds=server_cpu.now() - scpu0,
    )
    return result


def run_ours(work: Path, env: dict, server_cpu: ServerCpu, index: int) -> dict:
    store_dir = work / f"store-{index}"
    result = run_child(["export", str(store_dir)], env, work / f"ours-{index}.json", server_cpu)
    shutil.rmtree(store_dir, ignore_errors=True)
    result["peak_rss"] = max(result["ru_maxrss"], result["vm_hwm"], result["rss_polled"])
    return result


def generate(server, docs: int) -> tuple[float, int]:
    from backup_pipelines.lib.policy import Policy
    from backup_pipelines.lib.typesense.client import TypesenseClient
    from backup_pipelines.lib.typesense.documents import typesense_schema

    t0 = time.perf_counter()
    with TypesenseClient(server.url, server.api_key) as client:
        client.create_collection(typesense_schema(COLLECTION, Policy().index_mapping("typesense")))
        imported = client.import_jsonl(
            COLLECTION, generate_jsonl(docs), action="upsert", batch_size=10_000
        )
        held = client.num_documents(COLLECTION)
    if imported != docs or held != docs:
        raise RuntimeError(f"imported {imported}, collection holds {held}, wanted {docs}")
    return time.perf_counter() - t0, held


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def profile(work: Path, env: dict, server_cpu: ServerCpu, curl_best: float) -> list[dict]:
    rows = []
    for variant in PROBES:
        result = run_child(
            ["probe", variant, str(work)], env, work / f"probe-{variant}.json", server_cpu
        )
        rows.append(result)
        log(
            f"probe {variant}: {result['seconds']:.2f} s ({result['seconds'] / curl_best:.2f}x curl), "
            f"child CPU {result['cpu_seconds']:.2f} s, server CPU {result['server_cpu_seconds']:.2f} s, "
            f"{result['chunks']:,} chunks of {result['bytes'] / max(result['chunks'], 1) / 1024:,.1f} KiB "
            f"avg, RSS {result['ru_maxrss'] / MB:.0f} MB"
        )
    return rows


def report(args, gen_seconds, held, curl_runs, ours_runs, probes, cpus) -> None:
    curl_best = min(curl_runs, key=lambda r: r["seconds"])
    ours_best = min(ours_runs, key=lambda r: r["export_seconds"])
    ratio = ours_best["export_seconds"] / curl_best["seconds"]
    ratio_commit = (ours_best["export_seconds"] + ours_best["commit_seconds"]) / curl_best[
        "seconds"
    ]
    peak_rss = max(r["peak_rss"] for r in ours_runs)
    raw = curl_best["bytes"]
    lines = [
        "",
        "=" * 78,
        f"typesense/collection_export benchmark: {held:,} documents, typesense-server 0.24.1, "
        f"{cpus} CPUs",
        f"generation (build + import, excluded): {gen_seconds:.1f} s",
        "",
        "run          seconds   MB/s(raw)  proc CPU s  server CPU s  peak RSS MB  output bytes",
    ]
    order = sorted(
        [("curl", i, r) for i, r in enumerate(curl_runs)]
        + [("ours", i, r) for i, r in enumerate(ours_runs)],
        key=lambda item: item[2]["order"],
    )
    for name, i, r in order:
        if name == "curl":
            lines.append(
                f"curl #{i + 1}   {r['seconds']:9.2f}  {raw / r['seconds'] / MB:9.1f}  "
                f"{r['cpu_seconds']:10.2f}  {r['server_cpu_seconds']:12.2f}  {'-':>11}  "
                f"{r['bytes']:,} (raw JSONL)"
            )
        else:
            lines.append(
                f"ours #{i + 1}   {r['export_seconds']:9.2f}  "
                f"{r['uncompressed_bytes'] / r['export_seconds'] / MB:9.1f}  "
                f"{r['cpu_seconds']:10.2f}  {r['server_cpu_seconds']:12.2f}  "
                f"{r['peak_rss'] / MB:11.1f}  {r['zst_bytes']:,} (zstd)"
            )
    lines += [
        "",
        "ours: seconds = export_typesense_collection() inside the child; "
        f"commit {ours_best['commit_seconds']:.3f} s more; child wall (launch to exit) "
        f"{ours_best['wall_seconds']:.2f} s, of which start-up/imports "
        f"{ours_best['startup_seconds']:.2f} s.",
        "ours peak RSS per run: "
        + ", ".join(
            f"ru_maxrss {r['ru_maxrss'] / MB:.1f} MB / VmHWM {r['vm_hwm'] / MB:.1f} MB / "
            f"psutil {r['rss_polled'] / MB:.1f} MB "
            f"({r['rss_samples']} samples)"
            for r in ours_runs
        )
        + f"; RSS after imports, before the export: {ours_best['ru_maxrss_before'] / MB:.1f} MB.",
        f"documents: curl {curl_best['documents']:,}, ours {ours_best['documents']:,}; raw JSONL "
        f"{raw:,} bytes (curl) vs {ours_best['uncompressed_bytes']:,} (ours, before zstd); "
        f"zstd {ours_best['zst_bytes']:,} bytes = {ours_best['zst_bytes'] / raw:.3f} of raw.",
        "",
        f"time ratio ours/curl (best of {len(ours_runs)} vs best of {len(curl_runs)}): "
        f"{ratio:.3f}  aim <= {AIM_TIME_RATIO:.2f}  {verdict(ratio <= AIM_TIME_RATIO)}",
        f"  (incl. commit: {ratio_commit:.3f}; best ours {ours_best['export_seconds']:.2f} s, "
        f"best curl {curl_best['seconds']:.2f} s)",
        f"peak RSS of our export process (max over runs): {peak_rss / MB:.1f} MB  aim < "
        f"{AIM_RSS_BYTES / MB:.0f} MB  {verdict(peak_rss < AIM_RSS_BYTES)}",
    ]
    if probes:
        lines += ["", "profile (one run each, same collection; x = seconds / best curl):"]
        for p in probes:
            lines.append(
                f"  {p['variant']:<30} {p['seconds']:6.2f} s {p['seconds'] / curl_best['seconds']:5.2f}x  "
                f"CPU {p['cpu_seconds']:5.2f} s  server CPU {p['server_cpu_seconds']:5.2f} s  "
                f"{p['chunks']:>8,} chunks  avg {p['bytes'] / max(p['chunks'], 1) / 1024:8.1f} KiB"
            )
        first = probes[0]
        lines.append(
            f"  response: Content-Encoding={first['content_encoding']}, "
            f"Transfer-Encoding={first['transfer_encoding']}"
        )
    lines.append("=" * 78)
    print("\n".join(lines), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each side, alternating")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--profile", action="store_true", help="profile even when within aim")
    group.add_argument("--no-profile", action="store_true", help="never profile")
    parser.add_argument("--work-dir", default=str(ROOT / ".bench"))
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, *rest = args.child
        if mode == "export":
            store_dir, result_path = rest
            return child_export(result_path, store_dir)
        variant, scratch, result_path = rest
        return child_probe(result_path, variant, scratch)

    import signal

    def interrupted(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)

    from backup_pipelines.devstack.typesense_server import TypesenseServer

    if shutil.which("curl") is None:
        raise SystemExit("curl is not installed (apt-get install -y curl)")
    curl_version = subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="typesense-export-", dir=args.work_dir))
    server = TypesenseServer(api_key="bench-" + secrets.token_hex(12))
    try:
        log(f"python {sys.executable}; {curl_version.splitlines()[0]}; {os.cpu_count()} CPUs")
        log(f"work folder {work}")
        server.start()
        log(f"typesense-server on {server.url}; generating {args.docs:,} documents ...")
        gen_seconds, held = generate(server, args.docs)
        log(f"generated and imported in {gen_seconds:.1f} s (excluded): {held:,} documents")
        server_cpu = ServerCpu(server._process.pid)
        env = child_env(server)
        curl_runs, ours_runs = [], []
        order = 0
        for round_number in range(1, args.rounds + 1):
            out_file = work / "curl-export.jsonl"
            result = run_curl(server, out_file, server_cpu)
            out_file.unlink()
            result["order"] = order = order + 1
            curl_runs.append(result)
            log(
                f"round {round_number}: curl {result['seconds']:.2f} s, {result['bytes']:,} bytes, "
                f"{result['documents']:,} docs, curl CPU {result['cpu_seconds']:.2f} s, "
                f"server CPU {result['server_cpu_seconds']:.2f} s"
            )
            result = run_ours(work, env, server_cpu, round_number)
            result["order"] = order = order + 1
            ours_runs.append(result)
            log(
                f"round {round_number}: ours {result['export_seconds']:.2f} s (+commit "
                f"{result['commit_seconds']:.3f} s, wall {result['wall_seconds']:.2f} s), "
                f"{result['zst_bytes']:,} zstd bytes, {result['documents']:,} docs, "
                f"CPU {result['cpu_seconds']:.2f} s, server CPU {result['server_cpu_seconds']:.2f} s, "
                f"peak RSS {result['peak_rss'] / MB:.1f} MB"
            )
            for r in (curl_runs[-1], ours_runs[-1]):
                if r["documents"] != held:
                    raise RuntimeError(f"export holds {r['documents']:,} documents, not {held:,}")
        curl_best = min(r["seconds"] for r in curl_runs)
        ours_best = min(r["export_seconds"] for r in ours_runs)
        probes: list[dict] = []
        if args.profile or (not args.no_profile and ours_best / curl_best > AIM_TIME_RATIO):
            log("profiling the export path ...")
            probes = profile(work, env, server_cpu, curl_best)
        report(args, gen_seconds, held, curl_runs, ours_runs, probes, os.cpu_count())
    finally:
        server.stop()
        log("typesense-server stopped")
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
