"""Benchmark of client-side encryption on the whole-database backup (`postgres/full_dump`).

One run, one generated database (bench_full_dump.py's generator), every measurement on the
same data, in this process (the library call a Dagster asset makes):

  off       dump_full_database into a LocalStore, BACKUP_ENCRYPTION_KEY_ID unset
  on        the same with a key configured (AES-256-GCM chunks, lib/store/cipher.py)
  read      the stored artifact read back as a restore reads it (store.open_file, zstd
            decompression to /dev/null), off vs on: the cost of decrypting on the fly
  cipher    the raw Encryptor on 256 MiB in memory (the ceiling, MB/s)

Rounds alternate off/on (off, on, off, on, ...) so a neighbour's load hits both alike; the
best round of each is compared (aim: on within 10% of off). Generation is timed separately
and excluded.

    .venv/bin/python bench/bench_encrypt.py [--memories 300000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_full_dump import GIB, MB, ROOT, generate, log

PARTITION = "2026-11-21"
AIM_ON_OVER_OFF = 1.10
KEY_ID = "bench"


def set_encryption(on: bool, key: str) -> None:
    os.environ.pop("BACKUP_ENCRYPTION_KEY_FILE", None)
    os.environ["BACKUP_ENCRYPTION_KEYS"] = f"{KEY_ID}:{key}"
    if on:
        os.environ["BACKUP_ENCRYPTION_KEY_ID"] = KEY_ID
    else:
        os.environ.pop("BACKUP_ENCRYPTION_KEY_ID", None)


def timed_dump(url: str, folder: Path) -> dict:
    from backup_pipelines.lib.postgres.dump import dump_full_database
    from backup_pipelines.lib.store import ArtifactRef, LocalStore

    store = LocalStore(folder)
    ref = ArtifactRef("postgres/full_dump", PARTITION)
    started = time.monotonic()
    with store.begin(ref) as writer:
        manifest = writer.commit(**dump_full_database(url, writer, 1))
    seconds = time.monotonic() - started
    entry = manifest["files"][0]
    return {
        "seconds": seconds,
        "bytes": entry["bytes"],
        "encrypted": "encryption" in entry,
        "uncompressed": manifest["tool"]["uncompressed_bytes"],
    }


def timed_read(folder: Path) -> float:
    from backup_pipelines.lib.postgres.dump import FULL_DUMP_FILE
    from backup_pipelines.lib.store import ArtifactRef, LocalStore
    from backup_pipelines.lib.streams import iter_decompressed

    store = LocalStore(folder)
    ref = ArtifactRef("postgres/full_dump", PARTITION)
    manifest = store.require_manifest(ref)
    started = time.monotonic()
    with store.open_file(ref, manifest, FULL_DUMP_FILE) as reader:
        for _chunk in iter_decompressed(reader):
            pass
    return time.monotonic() - started


def cipher_ceiling(key: str) -> float:
    import base64

    from backup_pipelines.lib.store.cipher import Encryptor

    block = os.urandom(1 << 20)
    encryptor = Encryptor(KEY_ID, base64.b64decode(key))
    started = time.monotonic()
    for _ in range(256):
        encryptor.update(block)
    encryptor.finalize()
    return 256 * (1 << 20) / (time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--memories",
        type=int,
        default=300_000,
        help="memory entries in total (384-dim embeddings); 300000 give the 1.34 GB "
        "custom-format dump stream of /work/shared/FACTS.md",
    )
    parser.add_argument("--workspaces", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="dumps of each kind, alternated")
    parser.add_argument("--work-dir", default=str(ROOT / ".bench"))
    args = parser.parse_args(argv)

    import signal

    from backup_pipelines.devstack.postgres_cluster import PostgresCluster
    from backup_pipelines.lib.postgres.connection import pg_bin, tool_version
    from backup_pipelines.lib.store.cipher import new_key

    def interrupted(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    for name in [k for k in os.environ if k.startswith(("AWS_", "PG", "BACKUP_"))]:
        if name != "BACKUP_S3_PART_MB":
            del os.environ[name]

    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="encrypt-", dir=args.work_dir))
    key = new_key()
    cluster = PostgresCluster()
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    reads: dict[str, float] = {}
    try:
        log(f"python {sys.executable}; {tool_version(pg_bin('pg_dump'))}; {os.cpu_count()} CPUs")
        cluster.start()
        log(f"generating {args.memories:,} memory entries ...")
        url, totals, gen_seconds, db_size = generate(cluster, args.memories, args.workspaces)
        log(f"generated in {gen_seconds:.1f} s (excluded): {totals}")
        log(
            f"pg_database_size = {db_size:,} bytes ({db_size / GIB:.2f} GiB, {db_size / 1e9:.2f} GB)"
        )
        log(f"cipher ceiling: {cipher_ceiling(key) / MB:,.0f} MB/s (Encryptor, 1 MiB writes)")
        for number in range(args.rounds):
            for mode in ("off", "on"):
                set_encryption(mode == "on", key)
                folder = work / f"{mode}-{number}"
                result = timed_dump(url, folder)
                assert result["encrypted"] == (mode == "on"), result
                runs[mode].append(result)
                log(
                    f"round {number + 1} {mode:>3}: {result['seconds']:.2f} s, "
                    f"{result['uncompressed'] / MB:,.0f} MB dump stream -> "
                    f"{result['bytes'] / MB:,.0f} MB stored"
                )
                if number == args.rounds - 1:
                    reads[mode] = timed_read(folder)
                    log(f"read back {mode:>3}: {reads[mode]:.2f} s (open_file + zstd)")
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)

    best = {mode: min(r["seconds"] for r in results) for mode, results in runs.items()}
    ratio = best["on"] / best["off"]
    stream = runs["on"][0]["uncompressed"]
    print()
    print(
        f"database      {db_size / 1e9:.2f} GB pg_database_size, {stream / 1e9:.2f} GB dump stream"
    )
    print(
        f"dump off      {best['off']:.2f} s  ({stream / best['off'] / MB:,.0f} MB/s of dump stream)"
    )
    print(
        f"dump on       {best['on']:.2f} s  ({stream / best['on'] / MB:,.0f} MB/s of dump stream)"
    )
    print(f"stored bytes  off {runs['off'][0]['bytes']:,}  on {runs['on'][0]['bytes']:,}")
    print(
        f"read back     off {reads['off']:.2f} s  on {reads['on']:.2f} s  ratio {reads['on'] / reads['off']:.3f}"
    )
    verdict = "OK" if ratio <= AIM_ON_OVER_OFF else "OVER AIM"
    print(f"ratio on/off  {ratio:.3f}  (aim <= {AIM_ON_OVER_OFF:.2f}: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
