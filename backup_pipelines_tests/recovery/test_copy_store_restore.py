"""Restores fall back to the copy store (BACKUP_COPY_STORE_URL, here moto S3 over HTTP) when
the primary's artifacts are gone or fail verification, and say so; the lease stays in the
primary. Real PostgreSQL, Typesense and Qdrant stand-in."""

from __future__ import annotations

import shutil

import psycopg
import pytest

from backup_pipelines.lib.errors import BackupError
from backup_pipelines.lib.postgres import dump as postgres
from backup_pipelines.lib.recovery.full_restore import FullRestoreRequest, restore_full
from backup_pipelines.lib.recovery.workspace_restore import locate_and_verify, restore_workspace
from backup_pipelines.lib.store import ArtifactRef, LocalStore
from backup_pipelines.lib.store.copy import copy_missing, copy_store_from_env, select_artifacts
from backup_pipelines_tests.helpers import DATE, back_up, flip_one_byte
from backup_pipelines_tests.pg_checks import fingerprint
from backup_pipelines_tests.recovery.test_restore import index_state, lose_workspace_memory


@pytest.fixture
def copy_env(s3_env, monkeypatch):
    monkeypatch.setenv("BACKUP_COPY_STORE_URL", f"s3://{s3_env.bucket}/copy-restore-{id(s3_env)}")
    store = copy_store_from_env()
    store._delete_prefix("")  # a clean copy store per test
    return store


def test_copy_store_restore_with_the_primary_removed_succeeds_from_the_copy(
    tmp_path, indexed_source, copy_env
):
    primary = LocalStore(tmp_path / "primary")
    back_up(primary, indexed_source, "ws_acme")
    report = copy_missing(primary, copy_env, select_artifacts(primary))
    assert report.count("copied") == 3
    sql_before = fingerprint(indexed_source["db"], "ws_acme")
    index_before = index_state(indexed_source, "ws_acme")
    for asset_root in ("postgres", "typesense", "qdrant"):  # the primary's artifacts are gone
        shutil.rmtree(primary.root / asset_root)
    lose_workspace_memory(indexed_source, "ws_acme")
    said: list[str] = []

    restored = restore_workspace(
        primary, DATE, "ws_acme", indexed_source["db"], indexed_source["policy"],
        indexed_source["indexes"], log=said.append,
    )  # fmt: skip

    assert restored.source == copy_env.describe()
    assert any(
        f"restoring {DATE}|ws_acme from the copy store {copy_env.describe()}" in line
        and "no complete postgres/workspace_dump artifact" in line
        for line in said
    ), said
    assert restored.verdict == "PASS"
    assert fingerprint(indexed_source["db"], "ws_acme") == sql_before
    assert index_state(indexed_source, "ws_acme") == index_before
    assert restored.verification["problems"] == []
    # The lease was taken in the primary (its lock file stays) and given back; none in the copy.
    lease_keys = {key for key, _s, _m in primary._list("_leases/")}
    assert lease_keys == {"_leases/.workspace=ws_acme.json.lock"}
    assert not list(copy_env._list("_leases/"))


def test_copy_store_serves_an_artifact_that_fails_verification_in_the_primary(
    tmp_path, indexed_source, copy_env
):
    primary = LocalStore(tmp_path / "primary")
    back_up(primary, indexed_source, "ws_acme", indexes=())
    copy_missing(primary, copy_env, select_artifacts(primary))
    ref = ArtifactRef("postgres/workspace_dump", DATE, "ws_acme")
    name = primary.require_manifest(ref)["files"][0]["name"]
    flip_one_byte(primary, ref, name)
    said: list[str] = []

    located = locate_and_verify(primary, DATE, "ws_acme", [], log=said.append)

    assert located.source == copy_env.describe()
    assert "does not match its manifest" in said[0] and "from the copy store" in said[0]

    # Without a copy store the primary's problem is the answer, as before.
    with pytest.raises(BackupError, match="does not match its manifest"):
        locate_and_verify(primary, DATE, "ws_acme", [], copy_store=None)
    # Both damaged: both named.
    flip_one_byte(copy_env, ref, name)
    with pytest.raises(BackupError, match="cannot serve it either"):
        locate_and_verify(primary, DATE, "ws_acme", [])


def test_copy_store_full_restore_with_the_primary_dump_removed(tmp_path, source_db, copy_env):
    primary = LocalStore(tmp_path / "primary")
    ref = ArtifactRef("postgres/full_dump", DATE)
    with primary.begin(ref) as writer:
        writer.commit(**postgres.dump_full_database(source_db, writer))
    copy_missing(primary, copy_env, [ref])
    primary.delete_artifact(ref)
    said: list[str] = []

    result = restore_full(primary, FullRestoreRequest(DATE), source_db, log=said.append)

    target = source_db.rsplit("/", 1)[0] + "/" + result["database"]
    try:
        assert result["source"] == copy_env.describe()
        assert "from the copy store" in result["fallback"]
        assert any("from the copy store" in line for line in said)
        assert fingerprint(target) == fingerprint(source_db)
    finally:
        with psycopg.connect(source_db.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{result["database"]}" WITH (FORCE)')


def test_copy_store_serves_the_partition_when_the_primary_is_unreachable(
    tmp_path, source_db, monkeypatch
):
    from backup_pipelines.devstack.ports import free_port
    from backup_pipelines.lib.policy import Policy
    from backup_pipelines.lib.store import S3Store, make_s3_client

    copy = LocalStore(tmp_path / "copy")
    ref = ArtifactRef("postgres/workspace_dump", DATE, "ws_acme")
    with copy.begin(ref) as writer:
        writer.commit(**postgres.dump_workspace(source_db, "ws_acme", Policy(), writer))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")  # nobody there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "unused")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "unused")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    unreachable = S3Store("primary-bucket", "backups", client=make_s3_client())
    said: list[str] = []

    located = locate_and_verify(unreachable, DATE, "ws_acme", [], copy_store=copy, log=said.append)

    assert located.source == copy.describe()
    assert "unreachable" in said[0] and f"from the copy store {copy.describe()}" in said[0]


def test_copy_store_restore_with_the_primary_unreachable_takes_its_lease_in_the_copy(
    tmp_path, source_db, monkeypatch
):
    """The disaster the copy exists for: the primary cannot be reached at all. The restore
    takes its lease in the copy store (no backup can run: they write to the primary), reads
    the copy, says both, and gives the lease back."""
    from backup_pipelines.devstack.ports import free_port
    from backup_pipelines.lib.policy import Policy
    from backup_pipelines.lib.store import S3Store, lease_name, make_s3_client

    copy = LocalStore(tmp_path / "copy")
    ref = ArtifactRef("postgres/workspace_dump", DATE, "ws_acme")
    with copy.begin(ref) as writer:
        writer.commit(**postgres.dump_workspace(source_db, "ws_acme", Policy(), writer))
    before = fingerprint(source_db, "ws_acme")
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute("DELETE FROM knowledge_graph_edges WHERE workspace_id = 'ws_acme'")
    monkeypatch.setenv("BACKUP_COPY_STORE_URL", f"file://{copy.root}")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")  # nobody there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "unused")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "unused")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("BACKUP_READ_TIMEOUT", "1")
    monkeypatch.setenv("BACKUP_CONNECT_TIMEOUT", "1")
    unreachable = S3Store("primary-bucket", "backups", client=make_s3_client())
    said: list[str] = []

    restored = restore_workspace(unreachable, DATE, "ws_acme", source_db, Policy(), log=said.append)

    assert restored.source == copy.describe()
    assert any(
        "primary store is unreachable" in line and f"copy store {copy.describe()}" in line
        for line in said
    ), said
    assert fingerprint(source_db, "ws_acme") == before
    assert copy.read_lease(lease_name("ws_acme")) is None
