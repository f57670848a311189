"""The store contract, run unchanged against the local folder and the S3 endpoint."""

import json
import os
import secrets

import pytest

from backup_pipelines.lib.errors import ArtifactNotFound, ChecksumMismatch, ConfigError, StoreError
from backup_pipelines.lib.store import ArtifactRef, LocalStore, S3Store, iter_chunks, store_from_url
from backup_pipelines.lib.store import s3 as store_module
from backup_pipelines_tests.helpers import flip_one_byte

REF = ArtifactRef("postgres/workspace_dump", "2026-11-21", "ws_acme")
FIELDS = {
    "captured_at": "2026-11-21T00:00:00Z",
    "counts": {"rows": {"t": 2}},
    "source": {},
    "tool": {},
    "tables": [],  # a workspace dump's manifest lists its tables (none here)
}


def write(store, ref=REF, files=None):
    files = files or {"a.bin": b"alpha" * 1000, "b.bin": b"beta"}
    with store.begin(ref) as writer:
        for name, data in files.items():
            writer.write_bytes(name, data)
        return writer.commit(**FIELDS)


def read_all(store, ref, manifest, name):
    with store.open_file(ref, manifest, name) as reader:
        return b"".join(iter_chunks(reader))


def test_commit_then_read_and_verify(store):
    manifest = write(store)
    assert manifest["format_version"] == 1
    assert manifest["partition"] == {"date": "2026-11-21", "workspace": "ws_acme"}
    assert [f["name"] for f in manifest["files"]] == ["a.bin", "b.bin"]
    assert store.read_manifest(REF) == manifest
    assert read_all(store, REF, manifest, "a.bin") == b"alpha" * 1000
    result = store.verify(REF)
    assert result.ok and result.files == 2 and result.bytes == 5004
    assert list(store.list_artifacts()) == [REF]


def test_failure_before_commit_leaves_no_artifact(store):
    with pytest.raises(RuntimeError, match="boom"), store.begin(REF) as writer:
        writer.write_bytes("a.bin", b"data")
        raise RuntimeError("boom")
    assert store.read_manifest(REF) is None
    assert list(store.list_artifacts()) == []
    assert list(store._list("")) == []  # the staged files were removed too
    assert not store.verify(REF).ok


def test_rewrite_replaces_previous_artifact_cleanly(store):
    first = write(store, files={"a.bin": b"old"})
    second = write(store, files={"a.bin": b"new"})
    assert first["generation"] != second["generation"]
    assert read_all(store, REF, store.read_manifest(REF), "a.bin") == b"new"
    keys = [key for key, _, _ in store._list(REF.folder)]
    assert all(first["generation"] not in key for key in keys), keys


def test_failed_rewrite_keeps_previous_complete_artifact(store):
    write(store, files={"a.bin": b"good"})
    with pytest.raises(RuntimeError), store.begin(REF) as writer:
        writer.write_bytes("a.bin", b"half")
        raise RuntimeError("killed")
    assert read_all(store, REF, store.read_manifest(REF), "a.bin") == b"good"
    assert store.verify(REF).ok


def test_flipped_byte_fails_verification_with_clear_error(store):
    manifest = write(store)
    flip_one_byte(store, REF, "a.bin")
    result = store.verify(REF)
    assert not result.ok
    assert "a.bin" in result.problems[0] and "does not match its manifest" in result.problems[0]
    with pytest.raises(ChecksumMismatch, match="corrupt"):
        read_all(store, REF, manifest, "a.bin")


def test_large_file_streams_in_parts(store, monkeypatch):
    monkeypatch.setattr(store_module, "S3_PART_SIZE", 5 << 20)  # S3's minimum part size
    blob = os.urandom(1 << 20)
    with store.begin(REF) as writer:
        with writer.open_file("big.bin") as handle:
            for _ in range(12):
                handle.write(blob)
        manifest = writer.commit(**FIELDS)
    assert manifest["files"][0]["bytes"] == 12 << 20
    assert store.verify(REF).ok


def test_missing_artifact_is_reported_by_location(store):
    with pytest.raises(ArtifactNotFound, match=r"no complete artifact at .*workspace=ws_acme"):
        store.require_manifest(REF)


def test_manifest_is_written_last_and_is_json(store):
    manifest = write(store)
    body = store._get(f"{REF.folder}/manifest.json")
    assert json.loads(body) == manifest
    for entry in manifest["files"]:
        assert len(entry["sha256"]) == 64 and entry["path"].startswith(manifest["generation"])


def test_local_store_refusing_writes_is_a_clear_error(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the store's folder should be")
    store = LocalStore(blocker / "store")
    with (
        pytest.raises(StoreError, match=r"backup store file://.*not-a-dir/store refused to write"),
        store.begin(REF) as writer,
    ):
        writer.write_bytes("a.bin", b"x")
    assert store.read_manifest(REF) is None


def test_s3_store_missing_bucket_is_a_clear_error(s3_env):
    store = S3Store(f"missing-{secrets.token_hex(3)}", "x")
    with pytest.raises(
        StoreError, match=r"backup store s3://missing-.* refused to write .*NoSuchBucket"
    ):
        store.check_writable()


def test_store_url_parsing(tmp_path):
    assert isinstance(store_from_url(f"file://{tmp_path}"), LocalStore)
    with pytest.raises(ConfigError, match="absolute"):
        store_from_url("file://relative/dir")
    with pytest.raises(ConfigError, match="unsupported scheme 'ftp'"):
        store_from_url("ftp://host/x")


def test_refs_refuse_invalid_workspace_and_date():
    with pytest.raises(ValueError, match="invalid workspace id"):
        ArtifactRef("postgres/workspace_dump", "2026-11-21", "../etc")
    with pytest.raises(ValueError):
        ArtifactRef("postgres/workspace_dump", "2026-13-40", "ws")


# ---------------------------------------------------------------------------------------------
# memory of an S3 upload (issue 16, item 2): two part buffers at most, each released after its
# upload, also when the upload fails


def _track_part_buffers(monkeypatch) -> list:
    created = []
    real_init = store_module._PartBuffer.__init__

    def tracking_init(self, capacity):
        real_init(self, capacity)
        created.append(self)

    monkeypatch.setattr(store_module._PartBuffer, "__init__", tracking_init)
    return created


def test_memory_s3_upload_holds_at_most_two_part_buffers(s3_env, monkeypatch):
    monkeypatch.setattr(store_module, "S3_PART_SIZE", 5 << 20)  # S3's minimum part size
    created = _track_part_buffers(monkeypatch)
    store = S3Store(s3_env.bucket, f"run-{secrets.token_hex(4)}")
    open_at_upload = []
    real_upload = store.client.upload_part

    def observed_upload(**kwargs):
        open_at_upload.append(sum(not buffer.closed for buffer in created))
        assert isinstance(kwargs["Body"], store_module._PartBuffer)  # handed over, not copied
        return real_upload(**kwargs)

    monkeypatch.setattr(store.client, "upload_part", observed_upload)
    blob = os.urandom(1 << 20)
    with store.begin(REF) as writer:
        with writer.open_file("big.bin") as handle:
            for _ in range(22):  # parts of 5, 5, 5, 5 and 2 MiB
                handle.write(blob)
                assert sum(not buffer.closed for buffer in created) <= 2
        manifest = writer.commit(**FIELDS)
    assert len(open_at_upload) == 5 and max(open_at_upload) <= 2
    assert all(buffer.closed for buffer in created)
    assert manifest["files"][0]["bytes"] == 22 << 20
    assert store.verify(REF).ok
    assert read_all(store, REF, manifest, "big.bin") == blob * 22


def test_memory_s3_failed_upload_releases_every_part_buffer(s3_env, monkeypatch):
    monkeypatch.setattr(store_module, "S3_PART_SIZE", 5 << 20)
    created = _track_part_buffers(monkeypatch)
    store = S3Store(s3_env.bucket, f"run-{secrets.token_hex(4)}")
    real_upload = store.client.upload_part

    def failing_upload(**kwargs):
        if kwargs["PartNumber"] == 2:
            raise ConnectionError("endpoint went away")
        return real_upload(**kwargs)

    monkeypatch.setattr(store.client, "upload_part", failing_upload)
    blob = os.urandom(1 << 20)
    with pytest.raises(StoreError, match="upload part of"), store.begin(REF) as writer:
        with writer.open_file("big.bin") as handle:
            for _ in range(30):
                handle.write(blob)
        writer.commit(**FIELDS)
    assert created and all(buffer.closed for buffer in created)
    with pytest.raises(ArtifactNotFound):
        store.require_manifest(REF)


def test_memory_s3_parts_past_the_memory_limit_are_staged_on_disk(s3_env, monkeypatch, tmp_path):
    """Parts grow past 1,000 parts (s3_part_size); past S3_MEMORY_PART_BYTES they go through
    an unlinked temp file in BACKUP_WORK_DIR instead of memory, byte for byte the same."""
    monkeypatch.setattr(store_module, "S3_PART_SIZE", 5 << 20)
    monkeypatch.setattr(store_module, "S3_MEMORY_PART_BYTES", 0)  # every part on disk
    monkeypatch.setenv("BACKUP_WORK_DIR", str(tmp_path))
    created = _track_part_buffers(monkeypatch)
    store = S3Store(s3_env.bucket, f"run-{secrets.token_hex(4)}")
    blob = os.urandom(1 << 20)
    with store.begin(REF) as writer:
        with writer.open_file("big.bin") as handle:
            for _ in range(11):
                handle.write(blob)
        manifest = writer.commit(**FIELDS)
    assert created and all(buffer._map is None and buffer.closed for buffer in created)
    assert list(tmp_path.iterdir()) == []  # unlinked temp files, nothing left behind
    assert store.verify(REF).ok
    assert read_all(store, REF, manifest, "big.bin") == blob * 11


def test_memory_s3_part_buffers_setting(s3_env, monkeypatch):
    monkeypatch.setattr(store_module, "S3_PART_SIZE", 5 << 20)
    store = S3Store(s3_env.bucket, f"run-{secrets.token_hex(4)}")
    monkeypatch.setenv("BACKUP_S3_PART_BUFFERS", "1")
    with (
        pytest.raises(ConfigError, match="BACKUP_S3_PART_BUFFERS='1'"),
        store.begin(REF) as refused,
        refused.open_file("a.bin") as handle,
    ):
        handle.write(b"x")
    monkeypatch.setenv("BACKUP_S3_PART_BUFFERS", "3")
    created = _track_part_buffers(monkeypatch)
    blob = os.urandom(1 << 20)
    with store.begin(REF) as writer:
        with writer.open_file("big.bin") as handle:
            for _ in range(16):
                handle.write(blob)
                assert sum(not buffer.closed for buffer in created) <= 3
        manifest = writer.commit(**FIELDS)
    assert all(buffer.closed for buffer in created)
    assert read_all(store, REF, manifest, "big.bin") == blob * 16
