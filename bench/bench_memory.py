"""Memory added by a backup, at two sizes (issue 16, item 2), and the full dump / restore of a
database 4x the reference one (item 4).

For each backup — (a) the whole-database dump (`dump_full_database`), (b) the Typesense export
(`export_typesense_collection`), (c) the Qdrant snapshot (`snapshot_qdrant_collections`), each
into an S3 store (moto on loopback) — a child process imports what it needs and sets up its
store and clients ("at rest"), then:

    rest  = VmRSS after set-up and gc
    (VmHWM reset to the current RSS: `echo 5 > /proc/self/clear_refs`)
    run the backup and commit
    peak  = VmHWM of the child afterwards (the kernel's own high-water mark: no poll can miss)
    added = peak - rest

pg_dump (a child of the child) is its own process: its peak is polled and printed apart.
The parent also polls the child's RSS every 20 ms as a cross-check.

    flock /tmp/bench.lock .venv/bin/python bench/bench_memory.py pg --scale 1
    flock /tmp/bench.lock .venv/bin/python bench/bench_memory.py pg --scale 4 --item4
    flock /tmp/bench.lock .venv/bin/python bench/bench_memory.py typesense --docs 1000000
    flock /tmp/bench.lock .venv/bin/python bench/bench_memory.py qdrant --points 1000000
    .venv/bin/python bench/bench_memory.py report     # the table of every result so far

Every run appends its figures to .bench/memory-results.json; `report` (and the end of every
run) prints rest / peak / added per backup and size, PASS/MISS against 64 MB added, and
added(largest) / added(smallest) per backup (flat ~ 1.0).

--item4 (with `pg`): on the same generated database, also the floor (`pg_dump -Fc -Z0` to a
file), our dump into a local store (time and size against the floor), `restore_full_database`
(parallel pg_restore -j 2) into a new database, and — labelled as a SUBSTITUTE for the
runbook's restore, whose -Z9 dump is ~25x the floor in time — serial `pg_restore` (the
runbook's restore command) of the floor's custom dump. `--runbook` adds the real -Z9 dump and
its serial restore when there is time for it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
PARTITION = "2026-11-21"
MB = 1e6
AIM_ADDED_BYTES = 64 * MB
RESULTS = Path(os.environ.get("BENCH_MEMORY_RESULTS") or ROOT / ".bench" / "memory-results.json")
REFERENCE_MEMORIES = 300_000  # scale 1 of bench_full_dump: the 1.34 GB pg_dump stream
QDRANT_DIM = 384
QDRANT_COLLECTION = "agent_ws_bench"


# ------------------------------------------------------------------------------------------
# Child: set up, rest, reset the high-water mark, back up, peak.


def _status(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1)) * 1024


def _at_rest() -> int:
    gc.collect()
    if os.environ.get("BENCH_TRACEMALLOC"):  # diagnosis only: Python-level allocations
        import tracemalloc

        tracemalloc.start()
    rest = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS from here on
    return rest


def child_full_dump() -> dict:
    from backup_pipelines.lib.postgres.dump import dump_full_database
    from backup_pipelines.lib.store import ArtifactRef, store_from_url

    store = store_from_url(os.environ["BACKUP_STORE_URL"])
    ref = ArtifactRef("postgres/full_dump", PARTITION)
    rest = _at_rest()
    started = time.monotonic()
    with store.begin(ref) as writer:
        fields = dump_full_database(os.environ["DATABASE_URL"], writer, 1)
        manifest = writer.commit(**fields)
    return {
        "rest": rest,
        "seconds": time.monotonic() - started,
        "bytes": sum(f["bytes"] for f in manifest["files"]),
        "input_bytes": fields["tool"]["uncompressed_bytes"],
        "items": sum((manifest["counts"].get("rows") or {}).values())
        if isinstance(manifest["counts"].get("rows"), dict)
        else None,
    }


def child_typesense_export() -> dict:
    from backup_pipelines.lib.store import ArtifactRef, store_from_url
    from backup_pipelines.lib.typesense.client import TypesenseClient
    from backup_pipelines.lib.typesense.export import export_typesense_collection

    url = os.environ["BENCH_TYPESENSE_URL"]
    client = TypesenseClient(url, os.environ["BENCH_TYPESENSE_KEY"])
    store = store_from_url(os.environ["BACKUP_STORE_URL"])
    ref = ArtifactRef("typesense/collection_export", PARTITION, "ws_bench")
    rest = _at_rest()
    started = time.monotonic()
    with store.begin(ref) as writer:
        fields = export_typesense_collection(client, url, os.environ["BENCH_COLLECTION"], writer)
        manifest = writer.commit(**fields)
    seconds = time.monotonic() - started
    client.close()
    return {
        "rest": rest,
        "seconds": seconds,
        "bytes": sum(f["bytes"] for f in manifest["files"]),
        "input_bytes": manifest.get("uncompressed_bytes"),
        "items": manifest["counts"].get("documents"),
    }


def child_qdrant_snapshot() -> dict:
    from backup_pipelines.lib.qdrant.client import QdrantHttp
    from backup_pipelines.lib.qdrant.snapshot import snapshot_qdrant_collections
    from backup_pipelines.lib.store import ArtifactRef, store_from_url

    url = os.environ["BENCH_QDRANT_URL"]
    client = QdrantHttp(url)
    store = store_from_url(os.environ["BACKUP_STORE_URL"])
    ref = ArtifactRef("qdrant/collection_snapshot", PARTITION, "ws_bench")
    rest = _at_rest()
    started = time.monotonic()
    with store.begin(ref) as writer:
        fields = snapshot_qdrant_collections(client, url, [QDRANT_COLLECTION], writer)
        manifest = writer.commit(**fields)
    seconds = time.monotonic() - started
    collection = manifest["collections"][QDRANT_COLLECTION]
    return {
        "rest": rest,
        "seconds": seconds,
        "bytes": sum(f["bytes"] for f in manifest["files"]),
        "input_bytes": None,
        "items": collection.get("points"),
    }


CHILDREN = {
    "full_dump": child_full_dump,
    "typesense_export": child_typesense_export,
    "qdrant_snapshot": child_qdrant_snapshot,
}


def run_as_child(kind: str, result_path: str) -> int:
    import backup_pipelines

    out = CHILDREN[kind]()
    out["code"] = str(Path(backup_pipelines.__file__).parent)
    out["peak"] = _status("VmHWM")
    out["added"] = out["peak"] - out["rest"]
    if os.environ.get("BENCH_TRACEMALLOC"):
        import tracemalloc

        out["traced_peak"] = tracemalloc.get_traced_memory()[1]
    Path(result_path).write_text(json.dumps(out))
    return 0


# ------------------------------------------------------------------------------------------
# Parent


def log(message: str) -> None:
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"[{time.strftime('%H:%M:%S')} load {' '.join(load)}] {message}", flush=True)


class Poller:
    """RSS of the python child and, apart, of its pg_dump, every 20 ms."""

    def __init__(self, launcher_pid: int) -> None:
        self.launcher_pid = launcher_pid
        self.peak_python = 0
        self.peak_pg_dump = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.launcher_pid)
        except psutil.Error:
            return
        while not self._stop.is_set():
            try:
                for proc in root.children(recursive=True):
                    try:
                        rss = proc.memory_info().rss
                        name = proc.name()
                    except psutil.Error:
                        continue
                    if name.startswith("pg_dump"):
                        self.peak_pg_dump = max(self.peak_pg_dump, rss)
                    elif name.startswith("python"):
                        self.peak_python = max(self.peak_python, rss)
            except psutil.Error:
                break
            self._stop.wait(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def measure(kind: str, env: dict, work: Path, label: str, code: str = "") -> dict:
    """One backup in a child process (started by a bash job, so that nothing of this
    process's memory is inherited), with its memory figures."""
    if code:  # another checkout's library code, e.g. main's, for before/after
        env = env | {"PYTHONPATH": code}
        label = f"{label}-{Path(code).name}"
    result_path = work / f"{label}.json"
    child = [sys.executable, str(Path(__file__).resolve()), "--child", kind, str(result_path)]
    load = Path("/proc/loadavg").read_text().strip()
    log(f"{label}: {kind} ...  (/proc/loadavg {load})")
    started = time.monotonic()
    process = subprocess.Popen(
        ["bash", "-c", '"$@" </dev/null & wait $!', "bash", *child],
        env=env,
        cwd=str(work),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    poller = Poller(process.pid)
    output, _ = process.communicate()
    wall = time.monotonic() - started
    poller.stop()
    if process.returncode != 0 or not result_path.exists():
        raise RuntimeError(
            f"{label} failed (exit {process.returncode}):\n{output.decode(errors='replace')[-4000:]}"
        )
    out = json.loads(result_path.read_text())
    out.update(
        code_label=Path(code).name if code else "worktree",
        kind=kind,
        label=label,
        wall=wall,
        polled_python=poller.peak_python,
        polled_pg_dump=poller.peak_pg_dump,
        loadavg=load,
        at=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        part_mb=os.environ.get("BACKUP_S3_PART_MB", "default"),
    )
    if "traced_peak" in out:
        log(f"  tracemalloc peak (Python allocations): {out['traced_peak'] / MB:.1f} MB")
    log(
        f"  rest {out['rest'] / MB:.1f} MB, peak {out['peak'] / MB:.1f} MB, added "
        f"{out['added'] / MB:.1f} MB (polled peak {poller.peak_python / MB:.1f} MB; pg_dump "
        f"{poller.peak_pg_dump / MB:.1f} MB); {out['seconds']:.1f} s, {out['bytes'] / MB:,.1f} MB stored"
    )
    return out


def parse_variant(text: str) -> tuple[str, dict]:
    """NAME:K=V,K=V"""
    name, _, pairs = text.partition(":")
    return name, dict(pair.split("=", 1) for pair in pairs.split(",") if pair)


def codes(args) -> list[str]:
    """The worktree's library code, then (with --compare DIR) the one under DIR."""
    return ["", *([str(Path(args.compare).resolve())] if args.compare else [])]


def save(entry: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    entries = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    entries.append(entry)
    RESULTS.write_text(json.dumps(entries, indent=2))


def base_env() -> dict:
    keep = ("BACKUP_S3_PART_MB",)
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "PG", "DAGSTER_", "BACKUP_")) or k in keep
    }


def start_s3():
    from backup_pipelines.devstack.s3_server import S3Server

    return S3Server(bucket="bench-memory").start()


def s3_env(s3, prefix: str) -> dict:
    # moto answers CompleteMultipartUpload only once it has copied every part into one object
    # (over 20 s, the default read timeout, for 2.4 GB here; real S3 keeps the connection
    # alive meanwhile), and a retry then gets a 500: give moto time.
    return {
        **s3.env,
        "BACKUP_STORE_URL": f"s3://{s3.bucket}/{prefix}",
        "BACKUP_READ_TIMEOUT": "900",
    }


# ---- (a) and item 4 ------------------------------------------------------------------------


def run_pg(args, work: Path) -> None:
    sys.path.insert(0, str(BENCH))
    import bench_full_dump as full  # the reference generator and the timed pg_dump/restores

    from backup_pipelines.devstack.postgres_cluster import PostgresCluster

    memories = round(REFERENCE_MEMORIES * args.scale)
    cluster = PostgresCluster()
    s3 = None
    try:
        cluster.start()
        log(f"generating {memories:,} memory entries (scale {args.scale:g}) ...")
        url, _totals, gen_seconds, db_size = full.generate(cluster, memories, 3)
        log(
            f"  generated in {gen_seconds:.1f} s (excluded), pg_database_size {db_size / 1e9:.2f} GB"
        )
        s3 = start_s3()
        env = {**base_env(), **s3_env(s3, f"pg-{args.scale:g}"), "DATABASE_URL": url}
        variants = [parse_variant(v) for v in args.variant]
        for _ in range(0 if args.skip_s3 else args.repeat):  # alternating: fair times
            for code in codes(args):
                out = measure("full_dump", env, work, f"full_dump-s3-x{args.scale:g}", code)
                out.update(size=f"{args.scale:g}x", scale=args.scale, memories=memories,
                           db_size=db_size)  # fmt: skip
                save({"what": "memory", "backup": "(a) full dump -> S3", **out})
            for name, extra in variants:  # the same dump with other settings
                label = f"full_dump-s3-x{args.scale:g}-{name}"
                out = measure("full_dump", env | extra, work, label)
                out.update(size=f"{args.scale:g}x", scale=args.scale, variant=name, env=extra)
                save({"what": "variant", "backup": f"(a) full dump -> S3 [{name}]", **out})
        s3.stop()
        s3 = None
        if args.item4:
            run_item4(args, full, url, work, base_env() | {"DATABASE_URL": url}, memories, db_size)
    finally:
        if s3 is not None:
            s3.stop()
        cluster.stop()


def run_item4(args, full, url: str, work: Path, env: dict, memories: int, db_size: int) -> None:
    entry: dict = {"what": "item4", "scale": args.scale, "memories": memories, "db_size": db_size}
    floor_file = work / "floor.dump"
    log(
        f"floor: pg_dump -Fc -Z0 -f FILE ... (/proc/loadavg {Path('/proc/loadavg').read_text().strip()})"
    )
    entry["floor"] = full.timed_pg_dump(
        url, ["--format=custom", "--compress=0"], floor_file, keep=True
    )
    log(f"  {entry['floor']['wall']:.1f} s, {entry['floor']['bytes']:,} bytes")
    store_dir = work / "store-local"
    local = measure("full_dump", env | {"BACKUP_STORE_URL": f"file://{store_dir}"}, work,
                    f"full_dump-local-x{args.scale:g}")  # fmt: skip
    entry["ours_local"] = local
    save({"what": "memory", "backup": "(a) full dump -> local", **local,
          "size": f"{args.scale:g}x", "scale": args.scale})  # fmt: skip
    if args.skip_restore:
        shutil.rmtree(store_dir, ignore_errors=True)
        floor_file.unlink(missing_ok=True)
        log("floor #2 ...")
        entry["floor2"] = full.timed_pg_dump(url, ["--format=custom", "--compress=0"], floor_file)
        log(f"  {entry['floor2']['wall']:.1f} s")
        save_partial(entry)
        print_item4(entry)
        return
    log(
        f"restore_full_database -j {full.RESTORE_JOBS} ... (/proc/loadavg {Path('/proc/loadavg').read_text().strip()})"
    )
    entry["restore_ours"] = full.timed_restore_full_database(url, store_dir, "bench_restored_ours")
    for at, line in entry["restore_ours"]["steps"]:
        log(f"  +{at:7.1f} s  {line}")
    log(f"  {entry['restore_ours']['wall']:.1f} s")
    log(
        f"restore_full_database, one job: streamed into pg_restore ... (/proc/loadavg {Path('/proc/loadavg').read_text().strip()})"
    )
    entry["restore_ours_streamed"] = full.timed_restore_full_database(
        url, store_dir, "bench_restored_streamed", jobs=1
    )
    for at, line in entry["restore_ours_streamed"]["steps"]:
        log(f"  +{at:7.1f} s  {line}")
    log(f"  {entry['restore_ours_streamed']['wall']:.1f} s")
    shutil.rmtree(store_dir, ignore_errors=True)
    save_partial(entry)
    log(
        "SUBSTITUTE for the runbook's restore: serial pg_restore of the floor's -Z0 custom dump ..."
    )
    entry["restore_floor_j1"] = full.timed_pg_restore(url, floor_file, "bench_restored_floor", 1)
    log(f"  {entry['restore_floor_j1']['wall']:.1f} s")
    save_partial(entry)
    if args.runbook:
        runbook_file = work / "runbook.dump"
        log("runbook: pg_dump -Fc -Z9 --no-acl --no-owner ...")
        entry["runbook"] = full.timed_pg_dump(
            url, ["--format=custom", "--compress=9", "--no-acl", "--no-owner"], runbook_file,
            keep=True,
        )  # fmt: skip
        log(f"  {entry['runbook']['wall']:.1f} s")
        entry["restore_runbook_j1"] = full.timed_pg_restore(
            url, runbook_file, "bench_restored_runbook", 1
        )
        runbook_file.unlink(missing_ok=True)
    floor_file.unlink(missing_ok=True)
    if not args.one_floor:
        log("floor #2 ...")
        entry["floor2"] = full.timed_pg_dump(url, ["--format=custom", "--compress=0"], floor_file)
        log(f"  {entry['floor2']['wall']:.1f} s")
    save_partial(entry)
    print_item4(entry)


def save_partial(entry: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    entries = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    entries = [e for e in entries if e is not entry and e.get("id") != id(entry)]
    entry["id"] = id(entry)
    entries.append(entry)
    RESULTS.write_text(json.dumps(entries, indent=2))


def print_item4(entry: dict) -> None:
    floors = [entry[k]["wall"] for k in ("floor", "floor2") if k in entry]
    floor = min(floors)
    ours = entry["ours_local"]
    print(f"\nitem 4: {entry['memories']:,} memory entries, pg_database_size "
          f"{entry['db_size'] / 1e9:.2f} GB, floor stream {entry['floor']['bytes'] / 1e9:.2f} GB "
          f"({entry['floor']['bytes'] / 1.34e9:.2f} x 1.34 GB)")  # fmt: skip
    print(
        f"  floor pg_dump -Fc -Z0: {', '.join(f'{f:.1f}' for f in floors)} s (floor = {floor:.1f} s)"
    )
    print(f"  ours dump_full_database -> local store: {ours['seconds']:.1f} s = "
          f"{ours['seconds'] / floor:.3f} x floor; {ours['bytes']:,} bytes = "
          f"{ours['bytes'] / entry['floor']['bytes']:.3f} x floor size")  # fmt: skip
    r = entry.get("restore_ours")
    s = entry.get("restore_floor_j1")
    streamed = entry.get("restore_ours_streamed")
    if r:
        print(f"  restore_full_database -j 2: {r['wall']:.1f} s (load {r['load'][0]:.2f})")
    if streamed:
        print(f"  restore_full_database, one job streamed: {streamed['wall']:.1f} s "
              f"(load {streamed['load'][0]:.2f})")  # fmt: skip
    if s:
        print(f"  SUBSTITUTE (not the runbook's figure): serial pg_restore of the floor's -Z0 "
              f"custom dump: {s['wall']:.1f} s (load {s['load'][0]:.2f})")  # fmt: skip
        if r:
            print(f"  ours / substitute = {r['wall'] / s['wall']:.3f}")
    if "restore_runbook_j1" in entry:
        rb = entry["restore_runbook_j1"]
        print(f"  runbook -Z9 dump {entry['runbook']['wall']:.1f} s; its serial pg_restore "
              f"{rb['wall']:.1f} s; ours -j 2 / runbook restore = {r['wall'] / rb['wall']:.3f}")  # fmt: skip
        if streamed:
            print(f"  ours streamed / runbook restore = {streamed['wall'] / rb['wall']:.3f}")


# ---- (b) -----------------------------------------------------------------------------------


def run_typesense(args, work: Path) -> None:
    sys.path.insert(0, str(BENCH))
    import secrets

    import bench_typesense_export as tsb

    from backup_pipelines.devstack.typesense_server import TypesenseServer

    server = TypesenseServer(api_key="bench-" + secrets.token_hex(12))
    s3 = None
    try:
        server.start()
        log(f"typesense-server on {server.url}; importing {args.docs:,} documents ...")
        gen_seconds, held = tsb.generate(server, args.docs)
        log(f"  imported in {gen_seconds:.1f} s (excluded): {held:,} documents")
        s3 = start_s3()
        env = {**base_env(), **s3_env(s3, f"ts-{args.docs}"), "BENCH_TYPESENSE_URL": server.url,
               "BENCH_TYPESENSE_KEY": server.api_key, "BENCH_COLLECTION": tsb.COLLECTION}  # fmt: skip
        for code in codes(args):
            out = measure("typesense_export", env, work, f"typesense-s3-{args.docs}", code)
            save({"what": "memory", "backup": "(b) typesense export -> S3", **out,
                  "size": f"{args.docs:,} docs", "scale": args.docs / 1_000_000})  # fmt: skip
    finally:
        if s3 is not None:
            s3.stop()
        server.stop()


# ---- (c) -----------------------------------------------------------------------------------


def fill_qdrant(storage: Path, points: int, batch: int = 10_000) -> float:
    """The collection the stand-in would hold after upserting `points` random 384-dim points
    with a small payload, written with its own engine into its storage folder."""
    import numpy as np
    import qdrant_edge as edge

    from backup_pipelines.devstack.qdrant.models import collection_config_from_request
    from backup_pipelines.devstack.qdrant.storage import Collection

    started = time.monotonic()
    config = collection_config_from_request({"vectors": {"size": QDRANT_DIM, "distance": "Cosine"}})
    collection = Collection.create(QDRANT_COLLECTION, storage / "collections" / QDRANT_COLLECTION, config)  # fmt: skip
    rng = np.random.default_rng(20261203)
    try:
        for start in range(1, points + 1, batch):
            count = min(batch, points + 1 - start)
            vectors = rng.standard_normal((count, QDRANT_DIM), dtype=np.float32)
            ops = [
                edge.Point(
                    start + i,
                    vectors[i],
                    {
                        "workspace_id": "ws_bench",
                        "session_id": (start + i) // 500,
                        "kind": "fact",
                        "importance": 0.5,
                    },
                )
                for i in range(count)
            ]
            collection.apply(edge.UpdateOperation.upsert_points(ops))
            if (start // batch) % 50 == 0:
                log(f"  {start + count - 1:,} points")
        collection.shard.flush()
    finally:
        collection.close()
    return time.monotonic() - started


def run_qdrant(args, work: Path) -> None:
    from backup_pipelines.devstack.qdrant import QdrantStandinProcess

    standin = QdrantStandinProcess()
    s3 = None
    try:
        log(f"writing {args.points:,} points into the stand-in's storage ...")
        seconds = fill_qdrant(standin._dir, args.points)
        standin.start()
        log(f"  filled in {seconds:.1f} s (excluded); stand-in on {standin.url}")
        s3 = start_s3()
        scratch = work / "qdrant-scratch"
        scratch.mkdir()
        env = {**base_env(), **s3_env(s3, f"qd-{args.points}"), "BENCH_QDRANT_URL": standin.url,
               "BACKUP_WORK_DIR": str(scratch)}  # fmt: skip
        for code in codes(args):
            out = measure("qdrant_snapshot", env, work, f"qdrant-s3-{args.points}", code)
            save({"what": "memory", "backup": "(c) qdrant snapshot -> S3", **out,
                  "size": f"{args.points:,} points", "scale": args.points / 1_000_000})  # fmt: skip
    finally:
        if s3 is not None:
            s3.stop()
        standin.stop()


# ---- report --------------------------------------------------------------------------------


def report() -> None:
    entries = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    rows = [e for e in entries if e.get("what") == "memory"]
    print()
    print(f"{'backup':<28} {'code':>8} {'size':>16} {'rest MB':>8} {'peak MB':>8} {'added MB':>9} "
          f"{'aim <64':>7} {'time s':>8} {'stored MB':>10} {'pg_dump MB':>10} {'load (1,5,15)':>16}")  # fmt: skip
    by_backup: dict[str, list[dict]] = {}
    for e in rows:
        code = e.get("code_label", "worktree")
        code = "branch" if code == "worktree" else code
        by_backup.setdefault(f"{e['backup']} [{code}]", []).append(e)
        pg = f"{e['polled_pg_dump'] / MB:.1f}" if e.get("polled_pg_dump") else "-"
        print(f"{e['backup']:<28} {code:>8} {e['size']:>16} {e['rest'] / MB:>8.1f} {e['peak'] / MB:>8.1f} "
              f"{e['added'] / MB:>9.1f} {'PASS' if e['added'] < AIM_ADDED_BYTES else 'MISS':>7} "
              f"{e['seconds']:>8.1f} {e['bytes'] / MB:>10.1f} {pg:>10} "
              f"{' '.join(e['loadavg'].split()[:3]):>16}")  # fmt: skip
    print()
    for backup, group in by_backup.items():
        small = min(group, key=lambda e: e["scale"])
        large = max(group, key=lambda e: e["scale"])
        if large["scale"] > small["scale"]:
            print(f"{backup:<37} added({large['size']}) / added({small['size']}) = "
                  f"{large['added'] / MB:.1f} / {small['added'] / MB:.1f} = "
                  f"{large['added'] / small['added']:.2f}  (flat ~ 1.0; size ratio "
                  f"{large['scale'] / small['scale']:.1f})")  # fmt: skip
    for e in entries:
        if e.get("what") == "item4" and "ours_local" in e and "floor" in e:
            print_item4(e)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--child", nargs=2, metavar=("KIND", "RESULT"), help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command")
    pg = sub.add_parser("pg", help="(a) the full dump to S3; --item4 adds the dump/restore timings")
    pg.add_argument("--scale", type=float, default=1.0)
    pg.add_argument("--item4", action="store_true")
    pg.add_argument("--repeat", type=int, default=1, help="S3 dumps per code version")
    pg.add_argument("--skip-s3", action="store_true", help="no S3 dump (item 4 only)")
    pg.add_argument(
        "--skip-restore", action="store_true", help="with --item4: floor, ours, floor only"
    )
    pg.add_argument("--variant", action="append", default=[],
                    help="NAME:K=V,... also measure the S3 dump with these variables set")  # fmt: skip
    pg.add_argument(
        "--runbook", action="store_true", help="with --item4: the real -Z9 dump too (slow)"
    )
    pg.add_argument(
        "--one-floor", action="store_true", help="with --item4: skip the second floor run"
    )
    ts = sub.add_parser("typesense", help="(b) the Typesense export to S3")
    ts.add_argument("--docs", type=int, default=1_000_000)
    qd = sub.add_parser("qdrant", help="(c) the Qdrant snapshot to S3")
    qd.add_argument("--points", type=int, default=1_000_000)
    sub.add_parser("report", help="print every result so far")
    parser.add_argument("--work-dir", default=str(ROOT / ".bench"))
    parser.add_argument(
        "--compare", help="measure each backup also with the backup_pipelines package under "
        "this folder (e.g. an export of main: before/after), right after the worktree's")  # fmt: skip
    args = parser.parse_args(argv)
    if args.child:
        return run_as_child(*args.child)
    if args.command in (None, "report"):
        report()
        return 0

    def interrupted(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="memory-", dir=args.work_dir))
    log(f"start: /proc/loadavg {Path('/proc/loadavg').read_text().strip()}; free disk "
        f"{shutil.disk_usage(work).free / 1e9:.1f} GB; work folder {work}")  # fmt: skip
    try:
        {"pg": run_pg, "typesense": run_typesense, "qdrant": run_qdrant}[args.command](args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        log("servers stopped, temp files removed")
    report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
