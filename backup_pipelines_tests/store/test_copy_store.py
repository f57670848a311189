"""The second copy (lib/store/copy.py) between real stores: local folders and moto S3 over
HTTP. The copy carries the stored bytes and the manifest's own bytes, verifies each file on
arrival, commits by its manifest last, and skips what is already there."""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import subprocess
import sys
import time

import pytest

from backup_pipelines.lib.errors import ChecksumMismatch
from backup_pipelines.lib.store import MANIFEST_NAME, ArtifactRef, LocalStore, S3Store
from backup_pipelines.lib.store.copy import (
    COPIED,
    FAILED,
    SKIPPED,
    copy_artifact,
    copy_missing,
    copy_store_from_env,
    select_artifacts,
)
from backup_pipelines_tests.helpers import flip_one_byte

DATE = "2026-11-21"


def write(store, asset="postgres/workspace_dump", day=DATE, workspace="ws_acme", sizes=(1000,)):
    """An artifact of random files (incompressible, so every byte counts)."""
    ref = ArtifactRef(asset, day, workspace)
    with store.begin(ref) as writer:
        for number, size in enumerate(sizes):
            with writer.open_file(f"part{number}.bin") as handle:
                left = size
                while left:
                    chunk = os.urandom(min(left, 1 << 20))
                    handle.write(chunk)
                    left -= len(chunk)
        writer.commit(
            captured_at=f"{day}T00:30:00Z", counts={"rows": {}}, source={}, tool={}, tables=[]
        )
    return ref


def stored_sha256(store, ref) -> dict[str, str]:
    """sha256 of every stored file of the artifact, read raw (not through the manifest)."""
    manifest = store.require_manifest(ref)
    digests = {}
    for entry in manifest["files"]:
        digest = hashlib.sha256()
        with store._open_read(f"{ref.folder}/{entry['path']}") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        digests[entry["path"]] = digest.hexdigest()
    return digests


def manifest_bytes(store, ref) -> bytes | None:
    return store._get(f"{ref.folder}/{MANIFEST_NAME}")


def s3_store(s3_server, bucket=None) -> S3Store:
    return S3Store(bucket or s3_server.bucket, f"copy-{secrets.token_hex(4)}")


@pytest.fixture(params=["local_to_local", "local_to_s3", "s3_to_local"])
def stores(request, tmp_path):
    kind = request.param
    if kind == "local_to_local":
        return LocalStore(tmp_path / "primary"), LocalStore(tmp_path / "copy")
    server = request.getfixturevalue("s3_env")
    if kind == "local_to_s3":
        return LocalStore(tmp_path / "primary"), s3_store(server)
    return s3_store(server), LocalStore(tmp_path / "copy")


def test_copy_store_copy_equals_primary_sha256_of_every_file(stores):
    primary, copy = stores
    # 9 MiB crosses the default 8 MiB S3 part size: a real multipart upload on S3.
    big = write(primary, sizes=(9 << 20, 10, 0))
    small = write(primary, asset="typesense/collection_export")
    full = write(primary, asset="postgres/full_dump", workspace=None, sizes=(3000,))

    report = copy_missing(primary, copy, select_artifacts(primary))

    assert [r.outcome for r in report.results] == [COPIED] * 3
    for ref in (big, small, full):
        assert stored_sha256(copy, ref) == stored_sha256(primary, ref)
        assert manifest_bytes(copy, ref) == manifest_bytes(primary, ref)
        assert copy.verify(ref).ok
    assert report.results[0].bytes + report.results[1].bytes + report.results[2].bytes == (
        (9 << 20) + 10 + 1000 + 3000
    )


def test_copy_store_is_idempotent_and_follows_a_new_generation(tmp_path):
    primary, copy = LocalStore(tmp_path / "primary"), LocalStore(tmp_path / "copy")
    ref = write(primary)
    assert copy_artifact(primary, copy, ref).outcome == COPIED
    again = copy_artifact(primary, copy, ref)
    assert again.outcome == SKIPPED and again.bytes == 0

    old_generation = copy.require_manifest(ref)["generation"]
    write(primary)  # a re-run of the partition: a new generation in the primary
    assert copy_artifact(primary, copy, ref).outcome == COPIED
    assert copy.require_manifest(ref)["generation"] == primary.require_manifest(ref)["generation"]
    assert stored_sha256(copy, ref) == stored_sha256(primary, ref)
    # the copy's previous generation is gone, as in the primary after a re-run
    assert not any(old_generation in key for key, _s, _m in copy._list(ref.folder + "/"))


def test_copy_store_refuses_a_damaged_source_and_commits_nothing(tmp_path):
    primary, copy = LocalStore(tmp_path / "primary"), LocalStore(tmp_path / "copy")
    ref = write(primary, sizes=(5000, 5000))
    flip_one_byte(primary, ref, "part1.bin")

    with pytest.raises(ChecksumMismatch, match=r"part1\.bin"):
        copy_artifact(primary, copy, ref)

    assert copy.read_manifest(ref) is None
    assert list(copy._list(ref.folder + "/")) == []  # the staged generation is removed too
    report = copy_missing(primary, copy, [ref])
    assert report.results[0].outcome == FAILED and "part1.bin" in report.results[0].detail


def test_copy_store_checks_what_arrived_and_replaces_a_damaged_copy(tmp_path):
    """A copy damaged after it arrived (bit rot in the second store) fails its check and the
    next copy replaces it; the damage is only ever found by reading what is stored."""
    primary, copy = LocalStore(tmp_path / "primary"), LocalStore(tmp_path / "copy")
    ref = write(primary, sizes=(5000,))
    copy_artifact(primary, copy, ref)
    flip_one_byte(copy, ref, "part0.bin")
    assert not copy.verify(ref).ok

    # Same generation and manifest: the fingerprint matches, so only verification catches it.
    assert copy_artifact(primary, copy, ref).outcome == SKIPPED
    copy._delete_prefix(f"{ref.folder}/{MANIFEST_NAME}")  # as `verify` would flag it
    assert copy_artifact(primary, copy, ref).outcome == COPIED
    assert copy.verify(ref).ok
    assert stored_sha256(copy, ref) == stored_sha256(primary, ref)


def test_copy_store_from_env_uses_the_same_url_forms(tmp_path):
    assert copy_store_from_env({}) is None
    store = copy_store_from_env({"BACKUP_COPY_STORE_URL": f"file://{tmp_path}/c"})
    assert isinstance(store, LocalStore) and store.describe() == f"file://{tmp_path}/c"
    with pytest.raises(Exception, match="BACKUP_COPY_STORE_URL: unsupported scheme"):
        copy_store_from_env({"BACKUP_COPY_STORE_URL": "ftp://x/y"})


def _copy_command(env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "backup_pipelines.cli", "copy", "--all-missing"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _upload_started(copy: S3Store) -> bool:
    """Some bytes of the copy arrived: a multipart upload with a part, or an object."""
    if any(True for _ in copy._list("")):
        return True
    for key, upload_id, _started in copy.incomplete_uploads():
        if copy.upload_last_part_time(key, upload_id) is not None:
            return True
    return False


def test_copy_store_kill_mid_copy_leaves_no_manifest_then_catches_up(tmp_path, s3_env):
    primary = LocalStore(tmp_path / "primary")
    first = write(primary, sizes=(10, 40 << 20, 10))  # 40 MiB: eight 5 MiB parts
    second = write(primary, asset="typesense/collection_export", sizes=(2000,))
    copy = s3_store(s3_env)
    env = {
        "BACKUP_STORE_URL": f"file://{primary.root}",
        "BACKUP_COPY_STORE_URL": f"s3://{copy.bucket}/{copy.prefix}",
        "BACKUP_S3_PART_MB": "5",
    }
    process = _copy_command(env)
    try:
        deadline = time.monotonic() + 120
        while not _upload_started(copy):
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "the copy never started uploading"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()

    assert process.returncode == -signal.SIGKILL
    assert not [k for k, _s, _m in copy._list("") if k.endswith(MANIFEST_NAME)]
    assert copy.read_manifest(first) is None and copy.read_manifest(second) is None

    catch_up = _copy_command(env)
    output, _ = catch_up.communicate(timeout=300)
    assert catch_up.returncode == 0, output
    assert "2 copied" in output
    for ref in (first, second):
        assert stored_sha256(copy, ref) == stored_sha256(primary, ref)
        assert copy.verify(ref).ok

    again = _copy_command(env)
    output, _ = again.communicate(timeout=120)
    assert again.returncode == 0 and "0 copied" in output and "2 already in the copy" in output


def test_copy_store_retention_prunes_the_copy_by_the_primarys_keep_markers(tmp_path, monkeypatch):
    """The copy store does not grow without bound: the same policy prunes it, and what the
    operator marked kept in the primary (the copy has no markers of its own) stays in both."""
    from backup_pipelines import cli
    from backup_pipelines.lib.lifecycle.markers import mark_kept
    from backup_pipelines.lib.lifecycle.retention import run_retention
    from backup_pipelines.lib.policy import Policy
    from backup_pipelines_tests.lifecycle.test_retention import TODAY, ago, write_artifact

    primary, copy = LocalStore(tmp_path / "primary"), LocalStore(tmp_path / "copy")
    sql = "postgres/workspace_dump"
    young = write_artifact(primary, sql, TODAY.isoformat(), "ws_acme")
    marked = write_artifact(primary, sql, ago(201), "ws_acme")
    old = write_artifact(primary, sql, ago(200), "ws_acme")
    report = copy_missing(primary, copy, [young, marked, old])
    assert sorted(r.ref for r in report.results) == sorted([young, marked, old])
    mark_kept(primary, ago(201), "ws_acme", "before migration 42")

    _plan, result = run_retention(copy, Policy(), TODAY, log=lambda _m: None, control=primary)

    assert result.deleted == [old]
    assert [ref for ref in (young, marked, old) if copy.read_manifest(ref)] == [young, marked]
    assert all(primary.read_manifest(ref) for ref in (young, marked, old))  # primary untouched

    # The command line prunes the copy after the primary, with the same rules.
    old_again = write_artifact(copy, sql, ago(199), "ws_acme")
    monkeypatch.setenv("BACKUP_STORE_URL", f"file://{primary.root}")
    monkeypatch.setenv("BACKUP_COPY_STORE_URL", f"file://{copy.root}")
    assert cli.main(["retention", "--today", TODAY.isoformat()]) == 0
    assert copy.read_manifest(old_again) is None and copy.read_manifest(marked) is not None
    assert primary.read_manifest(marked) is not None
