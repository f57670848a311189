"""Benchmark: the client's CPU for listing one S3 folder, in one run, three ways (issue 16 item 3).

The S3 retention plan at 10,000 workspaces lists ~442,000 objects; on this 2-core machine the
stand-in server (bench/scale_moto.py, indexed) and the client share the cores, and on real S3
the client's own CPU is what stays on the machine. Measured here, per way, best of --repeat:

  boto3 paginator   botocore parses each page into dicts (the baseline)
  fast, 2 parses    the store's fast listing with botocore's whole-body check for an <Error>
                    in a 200 still parsing every page first (before commit 0b9aaff), and
                    every key through unquote_plus
  fast, unquote_plus
                    one parse a page, every key through unquote_plus (before 0b118ed)
  fast              the store's fast listing as it is (one parse a page; a key's %3D
                    decoded without unquote_plus where nothing else is encoded)

Each way lists the same folder through a new client; the key count must agree.

    .venv/bin/python bench/bench_s3_listing.py [--store DIR] [--prefix P] [--repeat 3]

--store is a store folder loaded into the server (default: bench_scale.py's 10,000-workspace
store under .bench/, which bench_scale.py builds); --prefix a folder of it (default: the
newest date folder of postgres/workspace_dump).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from urllib.parse import unquote_plus

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_scale

from backup_pipelines.lib.store import listing, store_from_url

DEFAULT_STORE = Path(__file__).resolve().parents[1] / ".bench" / "scale-10000" / "store"


def with_botocore_check(events) -> None:
    """The hook as registered before 0b9aaff: botocore's own check left in place."""
    events.register(
        "before-parse.s3.ListObjectsV2", listing._fast_parse_hook, unique_id=listing._HOOK_ID
    )


def fast(store, prefix: str) -> int:
    return sum(1 for _ in listing._s3_keys(store, prefix))


def paginator(store, prefix: str) -> int:
    pages = store.client.get_paginator("list_objects_v2").paginate(
        Bucket=store.bucket, Prefix=store._full(prefix)
    )
    return sum(len(page.get("Contents", [])) for page in pages)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=DEFAULT_STORE)
    parser.add_argument("--prefix")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not args.store.is_dir():
        sys.exit(f"{args.store}: no store folder (bench_scale.py --sizes 10000 builds it)")
    prefix = args.prefix
    if prefix is None:
        dates = sorted((args.store / "postgres" / "workspace_dump").glob("date=*"))
        prefix = f"postgres/workspace_dump/{dates[-1].name}/"
    moto = bench_scale.Moto(args.store, indexed=True)
    installed, shortcut = listing._install_hooks, listing._url_decoded
    ways = {
        "boto3 paginator": (installed, shortcut, paginator),
        "fast, 2 parses": (with_botocore_check, unquote_plus, fast),
        "fast, unquote_plus": (installed, unquote_plus, fast),
        "fast": (installed, shortcut, fast),
    }
    cpu: dict[str, list[float]] = {name: [] for name in ways}
    counts: set[int] = set()
    try:
        print(f"{moto.objects:,} objects loaded in {moto.load_seconds:.1f} s; listing {prefix}")
        bench_scale.deployment_env(
            f"s3://{bench_scale.BUCKET}/{bench_scale.S3_PREFIX}", "postgresql://unused/x", moto.env
        )
        for _ in range(args.repeat):
            for name, (install, decode, way) in ways.items():
                listing._install_hooks, listing._url_decoded = install, decode
                store = store_from_url(os.environ["BACKUP_STORE_URL"])  # a new client
                started, cpu_started = time.perf_counter(), time.process_time()
                counts.add(way(store, prefix))
                cpu[name].append(time.process_time() - cpu_started)
                print(f"  {name:18} {time.perf_counter() - started:6.2f} s wall, "
                      f"{cpu[name][-1]:5.2f} s client CPU, load {os.getloadavg()[0]:.2f}")  # fmt: skip
    finally:
        listing._install_hooks, listing._url_decoded = installed, shortcut
        moto.stop()
    if len(counts) != 1:
        raise AssertionError(f"the ways listed different key counts: {sorted(counts)}")
    keys = counts.pop()
    base = min(cpu["boto3 paginator"])
    print(f"\n{keys:,} keys; client CPU, best of {args.repeat}, and ratio to the paginator's:")
    for name, seconds in cpu.items():
        best = min(seconds)
        print(f"  {name:18} {best:5.2f} s  {1e6 * best / keys:5.1f} us/key  {base / best:4.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
