"""S3 Object Lock on moto over HTTP, in a bucket created with Object Lock (versioning on):
new artifact objects are locked, a delete of a locked artifact fails (directly, through the
store, or by retention, which keeps it whole when S3 refuses its manifest and reports until
when), the locked artifact still restores, and `doctor` compares the bucket's settings with
the configuration."""

from __future__ import annotations

import secrets
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest
from botocore.exceptions import ClientError

from backup_pipelines import cli
from backup_pipelines.lib.errors import ConfigError
from backup_pipelines.lib.lifecycle.retention import run_retention
from backup_pipelines.lib.policy import Policy
from backup_pipelines.lib.postgres import dump as postgres
from backup_pipelines.lib.recovery.workspace_restore import restore_workspace
from backup_pipelines.lib.store import MANIFEST_NAME, ArtifactRef, S3Store, make_s3_client
from backup_pipelines.lib.store.copy import copy_artifact
from backup_pipelines.lib.store.s3 import (
    ObjectLock,
    ObjectLocked,
    lock_problems,
    object_lock_from_env,
)

DATE = "2026-11-21"
LOCK = ObjectLock("GOVERNANCE", 2)


@pytest.fixture
def locked_bucket(s3_env) -> str:
    bucket = f"locked-{secrets.token_hex(4)}"
    make_s3_client().create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    return bucket


@pytest.fixture
def locked_store(locked_bucket) -> S3Store:
    return S3Store(locked_bucket, "backups", object_lock=LOCK)


def write(store, day=DATE, workspace="ws_acme", asset="postgres/workspace_dump") -> ArtifactRef:
    ref = ArtifactRef(asset, day, workspace)
    with store.begin(ref) as writer:
        writer.write_bytes("data.bin", b"memory " * 1000)
        writer.commit(
            captured_at=f"{day}T00:30:00Z", counts={"rows": {}}, source={}, tool={}, tables=[]
        )
    return ref


def head(store: S3Store, key: str) -> dict:
    return store.client.head_object(Bucket=store.bucket, Key=store._full(key))


def test_object_lock_new_artifact_objects_are_locked_bookkeeping_is_not(locked_store):
    before = datetime.now(UTC)
    ref = write(locked_store)
    keys = [k for k, _s, _m in locked_store._list(ref.folder + "/")]
    assert len(keys) == 2 and any(k.endswith(MANIFEST_NAME) for k in keys)
    for key in keys:
        answer = head(locked_store, key)
        assert answer["ObjectLockMode"] == "GOVERNANCE"
        until = answer["ObjectLockRetainUntilDate"]
        assert before + timedelta(days=2) - timedelta(seconds=5) <= until
        assert until <= datetime.now(UTC) + timedelta(days=2, seconds=5)
    # A lease is taken and given back in the locked bucket: bookkeeping is never locked.
    with locked_store.lease("ws_acme", "backup", "test"):
        lease_keys = [k for k, _s, _m in locked_store._list("_leases/")]
        assert lease_keys and "ObjectLockMode" not in head(locked_store, lease_keys[0])
    assert not list(locked_store._list("_leases/"))  # released: the lease object is gone
    locked_store.check_writable()  # the probe object is written and deleted


def test_object_lock_multipart_file_is_locked(locked_store, monkeypatch):
    from backup_pipelines.lib.store import s3

    monkeypatch.setattr(s3, "S3_PART_SIZE", 5 << 20)
    ref = ArtifactRef("postgres/full_dump", DATE)
    with locked_store.begin(ref) as writer:
        with writer.open_file("database.dump.zst") as handle:
            for _ in range(6):
                handle.write(secrets.token_bytes(1 << 20))
        writer.commit(
            captured_at=f"{DATE}T00:30:00Z", counts={"rows": {}}, source={}, tool={}, tables=[]
        )
    manifest = locked_store.require_manifest(ref)
    key = locked_store.file_key(ref, manifest, "database.dump.zst")
    assert head(locked_store, key)["ObjectLockMode"] == "GOVERNANCE"
    assert locked_store.verify(ref).ok


def test_object_lock_direct_delete_fails_and_the_artifact_still_restores(locked_store, source_db):
    policy = Policy()
    ref = ArtifactRef("postgres/workspace_dump", DATE, "ws_acme")
    with locked_store.begin(ref) as writer:
        writer.commit(**postgres.dump_workspace(source_db, "ws_acme", policy, writer))

    # Through the store: refused, naming the lock and until when.
    with pytest.raises(ObjectLocked, match="Object Lock retention until 20"):
        locked_store.delete_artifact(ref)
    # Directly with the S3 API, version by version: S3 itself refuses.
    for version in locked_store.client.list_object_versions(
        Bucket=locked_store.bucket, Prefix=locked_store._full(ref.folder)
    )["Versions"]:
        with pytest.raises(ClientError, match="AccessDenied"):
            locked_store.client.delete_object(
                Bucket=locked_store.bucket, Key=version["Key"], VersionId=version["VersionId"]
            )
    assert locked_store.verify(ref).ok

    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute("DELETE FROM memory_entries WHERE workspace_id = 'ws_acme'")
    report = restore_workspace(locked_store, DATE, "ws_acme", source_db, policy, {})
    assert report.sql["public.memory_entries"]["inserted"] == 120
    with psycopg.connect(source_db) as conn:
        count = conn.execute(
            "SELECT count(*) FROM memory_entries WHERE workspace_id = 'ws_acme'"
        ).fetchone()[0]
    assert count == 120


def test_object_lock_retention_never_deletes_a_locked_artifact_and_says_until_when(
    locked_store,
):
    days = [(date(2026, 9, 1) + timedelta(days=n)).isoformat() for n in range(3)]
    refs = [write(locked_store, day=day) for day in days]
    policy = Policy(keep_daily_days=1, keep_weekly_days=1)
    lines: list[str] = []

    plan, result = run_retention(locked_store, policy, date(2026, 11, 30), log=lines.append)

    assert len(plan.to_delete) == 2  # the newest verified one is kept anyway
    assert result is not None and result.deleted == [] and result.errors == []
    assert sorted(ref for ref, _until in result.locked) == sorted(refs[:2])
    assert all(until.startswith(str(datetime.now(UTC).year)) for _r, until in result.locked)
    assert "\n".join(lines).count("NOT deleted, under Object Lock retention until") == 2
    for ref in refs:
        assert locked_store.verify(ref).ok


def test_object_lock_copy_store_is_locked_too(tmp_path, locked_bucket):
    from backup_pipelines.lib.store import LocalStore

    primary = LocalStore(tmp_path / "primary")
    ref = write(primary)
    copy = S3Store(locked_bucket, "copy", object_lock=ObjectLock("COMPLIANCE", 1))
    copy_artifact(primary, copy, ref)
    for key, _s, _m in copy._list(ref.folder + "/"):
        assert head(copy, key)["ObjectLockMode"] == "COMPLIANCE"
    with pytest.raises(ObjectLocked):
        copy.delete_artifact(ref)
    assert copy.verify(ref).ok


def _doctor_lines(capsys) -> dict[str, str]:
    cli.main(["doctor"])
    out = capsys.readouterr().out
    return {line[5:].split(" ", 1)[0] + " " + line[5:].split()[1]: line for line in
            out.splitlines() if " lock " in line}  # fmt: skip


@pytest.fixture
def doctor_env(monkeypatch):
    for name in ("DATABASE_URL", "TYPESENSE_URL", "QDRANT_URL", "MSSQL_CONNECTION_STRING",
                 "BACKUP_COPY_STORE_URL", "BACKUP_POLICY_FILE"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_object_lock_doctor_matches_bucket_and_configuration(
    doctor_env, locked_bucket, s3_env, capsys
):
    doctor_env.setenv("BACKUP_STORE_URL", f"s3://{locked_bucket}/backups")
    doctor_env.setenv("BACKUP_OBJECT_LOCK_MODE", "governance")
    doctor_env.setenv("BACKUP_OBJECT_LOCK_DAYS", "7")
    line = _doctor_lines(capsys)["store lock"]
    assert line.startswith("ok") and "Object Lock Enabled" in line and "GOVERNANCE for 7" in line

    # Lock configured, but the bucket has none: the mismatch is named.
    doctor_env.setenv("BACKUP_STORE_URL", f"s3://{s3_env.bucket}/backups")
    line = _doctor_lines(capsys)["store lock"]
    assert line.startswith("FAIL") and "the bucket has no Object Lock" in line

    # A bucket locking by default while nothing is configured: named too.
    defaulted = f"locked-{secrets.token_hex(4)}"
    client = make_s3_client()
    client.create_bucket(Bucket=defaulted, ObjectLockEnabledForBucket=True)
    client.put_object_lock_configuration(
        Bucket=defaulted,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 3}},
        },
    )
    doctor_env.setenv("BACKUP_STORE_URL", f"s3://{defaulted}/backups")
    doctor_env.delenv("BACKUP_OBJECT_LOCK_MODE")
    line = _doctor_lines(capsys)["store lock"]
    assert line.startswith("FAIL") and "BACKUP_OBJECT_LOCK_MODE is unset" in line


def test_object_lock_configuration_is_checked():
    assert object_lock_from_env({}) is None
    assert object_lock_from_env({"BACKUP_OBJECT_LOCK_MODE": "off"}) is None
    lock = object_lock_from_env(
        {"BACKUP_OBJECT_LOCK_MODE": "Compliance", "BACKUP_OBJECT_LOCK_DAYS": "30"}
    )
    assert lock == ObjectLock("COMPLIANCE", 30)
    assert object_lock_from_env({"BACKUP_OBJECT_LOCK_MODE": "governance"}).days == 30  # policy
    with pytest.raises(ConfigError, match="BACKUP_OBJECT_LOCK_MODE='legal'"):
        object_lock_from_env({"BACKUP_OBJECT_LOCK_MODE": "legal"})
    with pytest.raises(ConfigError, match="BACKUP_OBJECT_LOCK_DAYS='0'"):
        object_lock_from_env(
            {"BACKUP_OBJECT_LOCK_MODE": "governance", "BACKUP_OBJECT_LOCK_DAYS": "0"}
        )
    enabled = {"versioning": "Enabled", "object_lock": "Enabled", "default_retention": None}
    assert lock_problems(enabled, lock) == []
    assert lock_problems({**enabled, "versioning": "Suspended"}, lock)
    assert lock_problems({"versioning": "Off", "object_lock": "Off"}, None) == []
