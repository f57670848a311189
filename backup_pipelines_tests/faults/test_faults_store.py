"""A store that fails: full, unwritable, read-only, or (S3) down. Each failure is a clear
StoreError naming the store, the artifact and what to do; never a traceback, never a
half-written artifact taken for complete, never the previous artifact lost."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from backup_pipelines.devstack.s3_server import S3Server
from backup_pipelines.lib.errors import StoreError
from backup_pipelines.lib.store import LocalStore, S3Store
from backup_pipelines_tests.faults.store_faults import (
    DATE,
    SQL_REF,
    WORKSPACE,
    cli_env,
    run_cli_commands,
    write_full_dump,
    write_workspace_dump,
)

pytestmark = pytest.mark.faults

NOBODY = 65534


@contextlib.contextmanager
def small_filesystem(size: str = "1m"):
    """A tmpfs of `size` mounted for the test (needs root and CAP_SYS_ADMIN), unmounted after."""
    where = Path(tempfile.mkdtemp(prefix="store-fs-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        where.rmdir()
        pytest.skip(
            f"cannot mount a small tmpfs here ({mounted.stderr.strip()}); see the RLIMIT test"
        )
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        where.rmdir()


def write_big(store, size: int = 2 << 20) -> None:
    with store.begin(SQL_REF) as writer:
        writer.write_bytes("public.memory_entries.copy.zst", os.urandom(size))
        writer.commit(captured_at=f"{DATE}T02:00:00Z", counts={}, source={}, tool={}, tables=[])


def assert_previous_artifact_intact(store, previous: dict) -> None:
    assert store.read_manifest(SQL_REF) == previous
    assert store.verify(SQL_REF).ok
    keys = sorted(key for key, _size, _mtime in store._list(SQL_REF.folder))
    assert keys == sorted(
        [f"{SQL_REF.folder}/manifest.json"]
        + [f"{SQL_REF.folder}/{entry['path']}" for entry in previous["files"]]
    ), keys


def test_store_full_is_a_clear_error_naming_store_artifact_and_remedy():
    with small_filesystem("1m") as mounted:
        store = LocalStore(mounted / "store")
        previous = write_workspace_dump(store)
        with pytest.raises(StoreError) as raised:
            write_big(store)
        message = str(raised.value)
        assert store.describe() in message and SQL_REF.folder in message, message
        assert "No space left on device" in message and "free space" in message, message
        assert "nothing of this artifact was committed" in message, message
        assert_previous_artifact_intact(store, previous)


# A backup writer in a child process with a file-size limit (RLIMIT_FSIZE): where no small
# file system can be mounted, this is how a full store looks (EFBIG instead of ENOSPC).
LIMITED_WRITER = """
import sys
from backup_pipelines.lib.errors import StoreError
from backup_pipelines.lib.store import LocalStore
from backup_pipelines_tests.faults.test_faults_store import write_big
try:
    write_big(LocalStore(sys.argv[1]))
except StoreError as exc:
    print("StoreError:", exc)
    sys.exit(1)
"""


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG from write(), not a killed process


def test_store_file_size_limit_is_a_clear_error(tmp_path):
    store = LocalStore(tmp_path / "store")
    previous = write_workspace_dump(store)
    done = subprocess.run(
        [sys.executable, "-c", LIMITED_WRITER, str(store.root)],
        preexec_fn=_limit_file_size,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "StoreError:" in done.stdout and "File too large" in done.stdout, done.stdout
    assert store.describe() in done.stdout and SQL_REF.folder in done.stdout
    assert_previous_artifact_intact(store, previous)


def test_store_read_only_is_a_clear_error_and_reads_still_work():
    with small_filesystem("4m") as mounted:
        store = LocalStore(mounted / "store")
        previous = write_workspace_dump(store)
        subprocess.run(["mount", "-o", "remount,ro", str(mounted)], check=True)
        with pytest.raises(StoreError) as raised:
            write_big(store)
        message = str(raised.value)
        assert "Read-only file system" in message and "remount it read-write" in message
        assert store.describe() in message and SQL_REF.folder in message
        assert store.verify(SQL_REF).ok and store.read_manifest(SQL_REF) == previous


def test_store_folder_without_permission_is_a_clear_error():
    """As an unprivileged user (root ignores permissions), every command that touches a
    store folder it may not enter says so, naming the store, the user and the remedy."""
    base = Path(tempfile.mkdtemp(prefix="store-perm-"))
    try:
        base.chmod(0o755)
        store = LocalStore(base / "store")
        write_workspace_dump(store)
        store.root.chmod(0o000)
        env = cli_env(store, DATABASE_URL="postgresql://unused.invalid/db")
        commands = [
            ["list"],
            ["verify"],
            ["kept"],
            ["lease", "list"],
            ["keep", "--date", DATE, "--workspace", WORKSPACE, "--reason", "r"],
            ["restore", "workspace", "--date", DATE, "--workspace", WORKSPACE],
        ]
        for result in run_cli_commands(commands, env, uid=NOBODY):
            assert result["traceback"] == "" and result["code"] not in (0, None), result
            assert "Permission denied" in result["err"], result
            assert store.describe() in result["err"] and f"uid {NOBODY}" in result["err"], result
        done = subprocess.run(
            [sys.executable, "-c", WRITER_AS_NOBODY, str(store.root)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert "Permission denied" in done.stdout and f"uid {NOBODY}" in done.stdout, done.stdout
    finally:
        with contextlib.suppress(FileNotFoundError):
            (base / "store").chmod(0o755)
        shutil.rmtree(base)


WRITER_AS_NOBODY = f"""
import os, sys
from backup_pipelines.lib.errors import StoreError
from backup_pipelines.lib.store import LocalStore
from backup_pipelines_tests.faults.test_faults_store import write_big
os.setgroups([])
os.setgid({NOBODY})
os.setuid({NOBODY})
try:
    write_big(LocalStore(sys.argv[1]))
except StoreError as exc:
    print("StoreError:", exc)
    sys.exit(1)
"""


def test_store_s3_endpoint_down_during_restore_is_a_clear_error():
    with S3Server(bucket="down-store") as server:
        store = S3Store(server.bucket, "prefix", client=server.client())
        write_workspace_dump(store)
        write_full_dump(store)
        env = {**os.environ, **server.env}
    # The server is stopped now: every command that needs the store must say so.
    env |= {
        "BACKUP_STORE_URL": f"s3://{store.bucket}/prefix",
        "DATABASE_URL": "postgresql://unused.invalid/db",
    }
    with pytest.raises(StoreError, match="unreachable"):
        store.read_manifest(SQL_REF)
    with pytest.raises(StoreError, match="unreachable"):
        store.verify(SQL_REF)
    commands = [
        ["restore", "workspace", "--date", DATE, "--workspace", WORKSPACE],
        ["restore", "full", "--date", DATE],
    ]
    for result in run_cli_commands(commands, env):
        assert result["traceback"] == "" and result["code"] == 1, result
        assert "unreachable" in result["err"] and "s3://down-store/prefix" in result["err"], result


def test_store_s3_down_in_the_middle_of_a_read_is_a_clear_error():
    """The endpoint goes away while a restore streams a file: a StoreError naming the file
    and how far it got, not a botocore or urllib3 exception."""
    big = os.urandom(1 << 20) * 32  # far more than socket buffers hold
    with S3Server(bucket="dying-store") as server:
        store = S3Store(server.bucket, "prefix", client=server.client())
        with store.begin(SQL_REF) as writer:
            writer.write_bytes("public.memory_entries.copy.zst", big)
            manifest = writer.commit(
                captured_at=f"{DATE}T02:00:00Z", counts={}, source={}, tool={}, tables=[]
            )
        reader = store.open_file(SQL_REF, manifest, "public.memory_entries.copy.zst")
        assert len(reader.read(1 << 20)) == 1 << 20
    # stopped: the rest of the body never comes
    with pytest.raises(StoreError) as raised, reader:
        while reader.read(1 << 20):
            pass
    message = str(raised.value)
    assert (
        "public.memory_entries.copy.zst" in message
        and "reading it from the store failed" in message
    )
    assert "s3://dying-store/prefix" in message, message
