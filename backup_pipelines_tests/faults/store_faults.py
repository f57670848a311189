"""What the store fault tests share: artifacts as the product writes them, tampering of a
manifest as an attacker with write access to the store would do it, and the CLI run as a
real process (so a hang or a traceback is seen as an operator would see it)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

import zstandard

from backup_pipelines.lib.store import MANIFEST_NAME, ArtifactRef, LocalStore, S3Store

DATE = "2026-11-21"
WORKSPACE = "ws_acme"
SQL_REF = ArtifactRef("postgres/workspace_dump", DATE, WORKSPACE)
QDRANT_REF = ArtifactRef("qdrant/collection_snapshot", DATE, WORKSPACE)
TYPESENSE_REF = ArtifactRef("typesense/collection_export", DATE, WORKSPACE)
FULL_REF = ArtifactRef("postgres/full_dump", DATE)
MEMORY_FILE = "public.memory_entries.copy.zst"


def store_url(store) -> str:
    if isinstance(store, LocalStore):
        return f"file://{store.root}"
    assert isinstance(store, S3Store)
    return f"s3://{store.bucket}/{store.prefix}"


def compressed(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=1).compress(data)


def write_workspace_dump(store, ref: ArtifactRef = SQL_REF, rows: bytes = b"1\tws_acme\tx\n"):
    """A small workspace dump with the sections a restore reads."""
    with store.begin(ref) as writer:
        writer.write_bytes(MEMORY_FILE, compressed(rows))
        return writer.commit(
            captured_at=f"{ref.date}T01:00:00.000Z",
            counts={"rows": {"public.memory_entries": rows.count(b"\n")}},
            source={"kind": "postgresql"},
            tool={"name": "test"},
            tables=[
                {
                    "table": "public.memory_entries",
                    "columns": ["id", "workspace_id", "content"],
                    "workspace_column": "workspace_id",
                    "rows": rows.count(b"\n"),
                    "file": MEMORY_FILE,
                }
            ],
        )


def write_qdrant_artifact(store, ref: ArtifactRef = QDRANT_REF):
    snapshot = b"not really a snapshot, but its checksums are right"
    with store.begin(ref) as writer:
        writer.write_bytes("agent_ws_acme.snapshot.zst", compressed(snapshot))
        writer.write_bytes("agent_ws_acme.point_ids.txt.zst", compressed(b"1\n"))
        sha = hashlib.sha256(snapshot).hexdigest()
        return writer.commit(
            captured_at=f"{ref.date}T01:05:00.000Z",
            counts={"points": 1, "points_per_collection": {"agent_ws_acme": 1}},
            collections={
                "agent_ws_acme": {
                    "points": 1,
                    "sha256_uncompressed": sha,
                    "snapshot": {
                        "name": "agent_ws_acme-1.snapshot",
                        "creation_time": f"{ref.date}T01:05:00",
                        "checksum": sha,
                    },
                    "aliases": [],
                }
            },
            collections_missing=[],
            source={"kind": "qdrant"},
            tool={"name": "test"},
        )


def write_typesense_artifact(store, ref: ArtifactRef = TYPESENSE_REF):
    with store.begin(ref) as writer:
        writer.write_bytes("collection.json", b'{"schema": {"name": "memory_ws_acme"}}')
        writer.write_bytes("documents.jsonl.zst", compressed(b'{"id": "1"}\n'))
        return writer.commit(
            captured_at=f"{ref.date}T01:04:00.000Z",
            export_started_at=f"{ref.date}T01:03:00.000Z",
            collection_exists=True,
            aliases=[],
            counts={"documents": 1},
            source={"kind": "typesense", "collection": "memory_ws_acme"},
            tool={"name": "test"},
        )


def write_full_dump(store, ref: ArtifactRef = FULL_REF):
    with store.begin(ref) as writer:
        writer.write_bytes("database.dump.zst", compressed(b"PGDMP"))
        return writer.commit(
            captured_at=f"{ref.date}T01:00:00.000Z",
            counts={"rows": {"public.memory_entries": 1}, "tables": 1},
            source={"kind": "postgresql"},
            tool={"name": "test"},
        )


def raw_manifest(store, ref: ArtifactRef) -> dict:
    return json.loads(store._get(f"{ref.folder}/{MANIFEST_NAME}"))


def put_manifest_bytes(store, ref: ArtifactRef, body: bytes) -> None:
    """Replace manifest.json behind the writer's back, as tampering or damage would."""
    store._put_atomic(f"{ref.folder}/{MANIFEST_NAME}", body)


def tamper(store, ref: ArtifactRef, change: Callable[[dict], object]) -> None:
    """Apply `change` to the stored manifest (it mutates, or returns a replacement)."""
    manifest = raw_manifest(store, ref)
    replaced = change(manifest)
    body = manifest if replaced is None else replaced
    put_manifest_bytes(store, ref, json.dumps(body).encode())


def cli_env(store, **extra: str) -> dict[str, str]:
    return {**os.environ, "BACKUP_STORE_URL": store_url(store), **extra}


def run_cli(args: list[str], env: dict[str, str], deadline: float = 120.0):
    """`backup-pipelines ARGS` as a real process; (exit code, stdout, stderr), or exit code
    None (and the process killed) when it has not finished by the deadline: it hangs."""
    process = subprocess.Popen(
        [sys.executable, "-m", "backup_pipelines.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = process.communicate(timeout=deadline)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        return None, out, err
    return process.returncode, out, err


# Several CLI commands in ONE process (imports are the slow part of a CLI run), each with its
# own exit code, output and — if it escaped main() — traceback. Optionally as user nobody:
# everything is imported as root first, since the interpreter's files are root's.
_COMMANDS = """
import contextlib, importlib, io, json, os, pkgutil, sys, traceback
import getpass, socket, encodings.idna, http.client, _strptime
import backup_pipelines.cli as cli
import backup_pipelines.lib
for module in pkgutil.walk_packages(backup_pipelines.lib.__path__, "backup_pipelines.lib."):
    importlib.import_module(module.name)
commands, uid = json.loads(sys.argv[1]), int(sys.argv[2])
if uid:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
results = []
for args in commands:
    out, err, code, trace = io.StringIO(), io.StringIO(), None, ""
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(args)
        except SystemExit as exc:
            code = exc.code
        except BaseException:
            trace = traceback.format_exc()
    results.append({"args": args, "code": code, "out": out.getvalue(), "err": err.getvalue(), "traceback": trace})
print(json.dumps(results))
"""


def run_cli_commands(
    commands: list[list[str]], env: dict[str, str], uid: int = 0, deadline: float = 300.0
) -> list[dict]:
    """Each of `commands` through the CLI's main() in one child process (as `uid` if not 0):
    per command its exit code, stdout, stderr and the traceback of an exception that
    escaped (empty when none did)."""
    done = subprocess.run(
        [sys.executable, "-c", _COMMANDS, json.dumps(commands), str(uid)],
        env=env,
        capture_output=True,
        text=True,
        timeout=deadline,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def wait_until(condition: Callable[[], object], deadline: float, what: str):
    """Poll `condition` until it returns something truthy; fail naming `what` at the deadline."""
    end = time.monotonic() + deadline
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
