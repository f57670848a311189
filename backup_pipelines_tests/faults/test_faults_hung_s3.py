"""An S3 endpoint (moto) hung behind a TCP proxy: reads, uploads and downloads fail within a
bound computed from the configured timeouts (about a minute by default, not 18), with a
StoreError naming S3, the operation, the key, the endpoint and the wait."""

from __future__ import annotations

import os
import secrets

import pytest

from backup_pipelines.lib.errors import BackupError
from backup_pipelines.lib.store import ArtifactRef, LocalStore, S3Store
from backup_pipelines.lib.store.s3_client import S3_ATTEMPTS
from backup_pipelines_tests.faults.proxy import TcpProxy, outcome_within

pytestmark = pytest.mark.faults

CONNECT = READ = 1.0
# Every attempt may take its connect and read timeouts; botocore's standard retry mode waits
# up to 2^n s between attempts (jittered).
BOUND = S3_ATTEMPTS * (CONNECT + READ) + sum(2**n for n in range(1, S3_ATTEMPTS)) + 15
MIB = 1 << 20


@pytest.fixture
def hung_s3(s3_env, monkeypatch):
    """(proxy, store): an S3Store whose endpoint is a proxy in front of moto."""
    monkeypatch.setenv("BACKUP_CONNECT_TIMEOUT", str(CONNECT))
    monkeypatch.setenv("BACKUP_READ_TIMEOUT", str(READ))
    proxy = TcpProxy.in_front_of(s3_env.endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url_for(s3_env.endpoint))
    store = S3Store(s3_env.bucket, f"hung-{secrets.token_hex(4)}")
    yield proxy, store
    proxy.close()


def write_artifact(store, ref, size: int) -> None:
    with store.begin(ref) as writer:
        with writer.open_file("data.bin") as out:
            for _ in range(size // MIB):
                out.write(os.urandom(MIB))
        writer.commit(captured_at="2026-11-21T00:00:00Z", counts={"rows": {}}, source={}, tool={})


def assert_names_s3(error, operation: str) -> str:
    assert isinstance(error, BackupError), repr(error)
    message = str(error)
    assert f"S3 {operation} of test-backups/hung-" in message, message
    assert "at http://127.0.0.1:" in message
    return message


def test_s3_hung_fails_a_read_within_a_minute_naming_the_wait(hung_s3):
    proxy, store = hung_s3
    proxy.hang()

    error = outcome_within(
        BOUND, store.read_manifest, ArtifactRef("postgres/full_dump", "2026-11-21")
    )

    message = assert_names_s3(error, "GetObject")
    assert "/postgres/full_dump/date=2026-11-21/manifest.json" in message
    assert f"no answer within {READ:g} s (BACKUP_READ_TIMEOUT)" in message
    assert "gave up after" in message and f"up to {S3_ATTEMPTS} attempts" in message


def test_s3_hung_mid_upload_fails_the_backup_and_commits_nothing(hung_s3, s3_env, monkeypatch):
    proxy, store = hung_s3
    proxy.hang_after(to_server=12 * MIB)  # in the second 8 MiB part
    ref = ArtifactRef("postgres/full_dump", "2026-11-21")

    error = outcome_within(BOUND, write_artifact, store, ref, 32 * MIB)

    assert isinstance(error, BackupError), repr(error)
    message = assert_names_s3(error, "UploadPart")
    assert "sending stalled: the endpoint stopped taking data; gave up after" in message
    assert proxy.mode == "hung"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_env.endpoint)  # past the proxy: what is left?
    assert S3Store(store.bucket, store.prefix).read_manifest(ref) is None


def test_s3_hung_mid_download_fails_the_read_naming_the_bytes(hung_s3):
    proxy, store = hung_s3
    ref = ArtifactRef("postgres/full_dump", "2026-11-21")
    write_artifact(store, ref, 4 * MIB)
    manifest = store.require_manifest(ref)
    proxy.hang_after(proxy.bytes_to_clients + MIB)

    def read_all() -> int:
        with store.open_file(ref, manifest, "data.bin") as reader:
            return sum(len(chunk) for chunk in iter(lambda: reader.read(256 << 10), b""))

    error = outcome_within(BOUND, read_all)

    message = assert_names_s3(error, "GetObject")
    assert "the download stalled after" in message
    assert f"no data for {READ:g} s (BACKUP_READ_TIMEOUT)" in message


def test_demo_reports_an_s3_store_as_s3_and_stopped_with_the_stack(s3_env, tmp_path):
    """The demo called an S3 store "(local folder)"; its moto endpoint stops with the demo."""
    from backup_pipelines.devstack.demo import where_artifacts_are

    local = where_artifacts_are(LocalStore(tmp_path / "store"), demo_s3=False)
    assert local == f"artifacts kept in file://{tmp_path / 'store'} (local folder)"
    s3 = S3Store(s3_env.bucket, "agent-memory")
    assert "local folder" not in where_artifacts_are(s3, demo_s3=False)
    assert where_artifacts_are(s3, demo_s3=False).startswith("artifacts kept in s3://")
    stopped = where_artifacts_are(s3, demo_s3=True)
    assert "local folder" not in stopped and "stopped" in stopped
