"""Benchmark of the second copy (lib/store/copy.py) against `cp -r` of the same files.

Builds a primary local store of incompressible artifacts (default 1,024 MB: one whole-database
dump of half the total, and 4 workspaces x 3 assets of two files each sharing the rest), then
copies it to a second local store, alternately:

* `cp -r <primary> <dest>` — the plain file copy (no checksum, no fsync), and the same
  followed by `sync` (what it takes for the bytes to be on disk, as ours are);
* `sha256sum` of the source files, `cp -r`, `sync`, `sha256sum` of the copied files: the
  plain tools doing what ours guarantees (both ends hashed, bytes on disk);
* ours: `copy_missing(primary, copy, every artifact)` in a child process (the venv python):
  each file streamed and checked against its sha256 as it is read, fsynced, read back in the
  copy and checked again, the manifest written last (fsync + rename).

Each side runs --rounds times (default 2, alternating, destination removed in between) and
the best of each is compared; the ratio ours / `cp -r` (and ours / `cp -r` + sync) is printed.
The primary stays in the page cache for every run (generated just before, 24 GB RAM here):
the figures compare copy paths, not cold-disk reads. Generation is timed separately.

    .venv/bin/python bench/bench_copy_store.py [--mb 1024] [--rounds 2] [--work-dir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backup_pipelines.lib.store import ArtifactRef, LocalStore  # noqa: E402

DATE = "2026-11-21"
WORKSPACES = [f"ws_bench{n}" for n in range(4)]
ASSETS = ["postgres/workspace_dump", "typesense/collection_export", "qdrant/collection_snapshot"]
MB = 1e6
SUMMED = "sha256sum + cp -r + sync + sha256sum"  # the same guarantees as ours

OURS = """
import sys, time
from backup_pipelines.lib.store import LocalStore
from backup_pipelines.lib.store.copy import copy_missing, select_artifacts
primary, copy = LocalStore(sys.argv[1]), LocalStore(sys.argv[2])
started = time.monotonic()
report = copy_missing(primary, copy, select_artifacts(primary))
seconds = time.monotonic() - started
assert not report.failed, report.summary()
print(seconds, sum(r.bytes for r in report.results), len(report.results))
"""


def write_artifact(store: LocalStore, ref: ArtifactRef, sizes: list[int]) -> None:
    block = os.urandom(1 << 20)  # incompressible; varied per file by a prefix
    with store.begin(ref) as writer:
        for number, size in enumerate(sizes):
            with writer.open_file(f"part{number}.bin") as handle:
                left = size
                while left:
                    chunk = os.urandom(64) + block[: min(left, len(block)) - 64]
                    chunk = chunk[:left]
                    handle.write(chunk)
                    left -= len(chunk)
        writer.commit(
            captured_at=f"{DATE}T00:30:00Z", counts={"rows": {}}, source={}, tool={}, tables=[]
        )


def generate(root: Path, total_mb: int) -> int:
    store = LocalStore(root)
    total = total_mb * 1_000_000
    write_artifact(store, ArtifactRef("postgres/full_dump", DATE), [total // 2])
    per_file = (total - total // 2) // (len(WORKSPACES) * len(ASSETS) * 2)
    for workspace in WORKSPACES:
        for asset in ASSETS:
            write_artifact(store, ArtifactRef(asset, DATE, workspace), [per_file, per_file])
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


def run_cp(source: Path, dest: Path, sync: bool, checksums: bool = False) -> float:
    started = time.monotonic()
    if checksums:  # what ours guarantees: the source's and the copy's bytes hashed
        files = [str(p) for p in source.rglob("*.bin")]
        subprocess.run(["sha256sum", *files], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cp", "-r", str(source), str(dest)], check=True)
    if sync:
        subprocess.run(["sync"], check=True)
    if checksums:
        files = [str(p) for p in dest.rglob("*.bin")]
        subprocess.run(["sha256sum", *files], check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def run_ours(source: Path, dest: Path) -> tuple[float, int, int]:
    done = subprocess.run(
        [sys.executable, "-c", OURS, str(source), str(dest)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    seconds, copied, artifacts = done.stdout.split()
    return float(seconds), int(copied), int(artifacts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1024, help="total MB of artifacts")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work-dir", default=str(ROOT / ".bench"))
    parser.add_argument("--keep", action="store_true", help="keep the generated stores")
    args = parser.parse_args()
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="copy-store-", dir=args.work_dir))
    try:
        primary = work / "primary"
        started = time.monotonic()
        size = generate(primary, args.mb)
        subprocess.run(["sync"], check=True)
        print(f"generated {size / MB:,.0f} MB in {time.monotonic() - started:.1f} s (excluded)")
        best = {name: float("inf") for name in ("cp -r", "cp -r + sync", SUMMED, "ours")}
        for round_number in range(1, args.rounds + 1):
            for name in best:
                dest = work / "dest"
                shutil.rmtree(dest, ignore_errors=True)
                subprocess.run(["sync"], check=True)
                if name == "ours":
                    seconds, copied, artifacts = run_ours(primary, dest)
                    assert copied == sum(
                        p.stat().st_size
                        for p in primary.rglob("*")
                        if p.is_file() and p.name != "manifest.json"
                    )
                else:
                    seconds = run_cp(primary, dest, sync=name != "cp -r", checksums=name == SUMMED)
                best[name] = min(best[name], seconds)
                print(
                    f"round {round_number} {name:<38} {seconds:7.2f} s "
                    f"{size / MB / seconds:8.1f} MB/s"
                )
        print()
        print(f"{'copy':<38} {'best s':>8} {'MB/s':>9}")
        for name, seconds in best.items():
            print(f"{name:<38} {seconds:8.2f} {size / MB / seconds:9.1f}")
        print(
            f"\nratio ours / cp -r        = {best['ours'] / best['cp -r']:.2f}x the time"
            f"\nratio ours / cp -r + sync = {best['ours'] / best['cp -r + sync']:.2f}x the time"
            f"\nratio ours / {SUMMED} = {best['ours'] / best[SUMMED]:.2f}x the time"
            f"\n(ours reads every byte twice — sha256 of the source as read, and of the copy "
            f"read back on arrival — and fsyncs each file; {artifacts} artifacts)"
        )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
