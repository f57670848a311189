"""PostgreSQL backups against a real server: what comes back is exactly what was there."""

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import psycopg
import pytest

from backup_pipelines.devstack import sample_data
from backup_pipelines.lib.errors import InvalidWorkspaceId, SourceError, StoreError
from backup_pipelines.lib.policy import Policy, TableRule
from backup_pipelines.lib.postgres import catalog, dump
from backup_pipelines.lib.postgres import load as pg_load
from backup_pipelines.lib.store import ArtifactRef, LocalStore, S3Store
from backup_pipelines_tests.conftest import WORKSPACES
from backup_pipelines_tests.pg_checks import TABLES, fingerprint, workspaces_present

DATE = "2026-11-21"


def dump_workspace(store, url, workspace, policy=None):
    policy = policy or Policy()
    ref = ArtifactRef("postgres/workspace_dump", DATE, workspace)
    with store.begin(ref) as writer:
        writer.commit(**dump.dump_workspace(url, workspace, policy, writer))
    return ref


def test_workspace_dump_loaded_into_fresh_database_holds_exactly_that_workspace(
    store, source_db, make_database
):
    ref = dump_workspace(store, source_db, "ws_globex")
    manifest = store.require_manifest(ref)
    assert [t["table"].split(".")[1] for t in manifest["tables"]][:2] == ["workspaces", "sessions"]
    assert set(manifest["counts"]["rows"]) == {f"public.{t}" for t in TABLES}

    target = make_database("restored")
    loaded = pg_load.load_workspace_dump_into_empty_database(store, ref, target)

    assert fingerprint(target) == fingerprint(source_db, "ws_globex")
    assert workspaces_present(target) == {"ws_globex"}
    assert loaded == {f"public.{t}": n for t, (n, _) in fingerprint(source_db, "ws_globex").items()}
    assert all(n > 0 for n in loaded.values())


def test_workspace_tables_are_read_in_one_snapshot(store, source_db, pg_cluster):
    """Rows committed while the dump runs are not in it: one REPEATABLE READ transaction."""
    ref = ArtifactRef("postgres/workspace_dump", DATE, "ws_acme")
    before = fingerprint(source_db, "ws_acme")
    with store.begin(ref) as writer:
        original = dump._copy_table

        def copy_then_write_concurrently(conn, table, *args):
            entry = original(conn, table, *args)
            if table.name == "sessions":  # between two tables of the same dump
                with psycopg.connect(source_db, autocommit=True) as other:
                    other.execute(
                        "INSERT INTO memory_entries (workspace_id, kind, content, importance, embedding, created_at, updated_at) "
                        "VALUES ('ws_acme', 'fact', 'late', 0.5, '{1}', now(), now())"
                    )
            return entry

        dump._copy_table = copy_then_write_concurrently
        try:
            writer.commit(**dump.dump_workspace(source_db, "ws_acme", Policy(), writer))
        finally:
            dump._copy_table = original
    rows = store.require_manifest(ref)["counts"]["rows"]
    assert rows["public.memory_entries"] == before["memory_entries"][0]
    assert fingerprint(source_db, "ws_acme")["memory_entries"][0] == before["memory_entries"][0] + 1


def test_full_dump_restored_with_pg_restore_equals_source(store, source_db, make_database):
    ref = ArtifactRef("postgres/full_dump", DATE)
    with store.begin(ref) as writer:
        writer.commit(**dump.dump_full_database(source_db, writer))
    manifest = store.require_manifest(ref)
    assert manifest["counts"]["rows"]["public.memory_entries"] == 3 * 120
    assert manifest["tool"]["name"] == "pg_dump" and manifest["source"]["wal_lsn"]
    assert store.verify(ref).ok

    target = make_database("full")
    pg_load.pg_restore_full_dump(store, ref, target)
    assert fingerprint(target) == fingerprint(source_db)


@pytest.mark.parametrize(
    "bad", ["", "../etc", "ws acme", "ws;DROP TABLE turns", "-lead", "x" * 65, "ws/a", "é"]
)
def test_invalid_workspace_ids_are_refused_before_any_sql(tmp_path, bad):
    store = LocalStore(tmp_path)
    # An unroutable database: reaching it would be a connection error, not InvalidWorkspaceId.
    unreachable = "postgresql://nobody@127.0.0.1:9/none"
    writer = store.begin(ArtifactRef("postgres/workspace_dump", DATE, "ws_ok"))
    with pytest.raises(InvalidWorkspaceId, match="invalid workspace id"):
        dump.dump_workspace(unreachable, bad, Policy(), writer)
    assert list(store.list_artifacts()) == []


def test_unreachable_database_is_a_clear_error_and_no_manifest(tmp_path):
    store = LocalStore(tmp_path)
    ref = ArtifactRef("postgres/full_dump", DATE)
    with (
        pytest.raises(SourceError, match=r"cannot connect to PostgreSQL 127.0.0.1:9/agent"),
        store.begin(ref) as writer,
    ):
        dump.dump_full_database("postgresql://backup:s3cret-pass@127.0.0.1:9/agent", writer)
    assert store.read_manifest(ref) is None


def test_secret_never_in_error_message(tmp_path):
    store = LocalStore(tmp_path)
    with (
        pytest.raises(SourceError) as raised,
        store.begin(ArtifactRef("postgres/full_dump", DATE)) as writer,
    ):
        dump.dump_full_database("postgresql://backup:s3cret-pass@127.0.0.1:9/agent", writer)
    assert "s3cret-pass" not in str(raised.value)


def test_missing_table_is_a_clear_error_and_no_manifest(store, source_db):
    policy = Policy(workspace_tables=(*Policy().workspace_tables, TableRule("agent_notes")))
    ref = ArtifactRef("postgres/workspace_dump", DATE, "ws_acme")
    with pytest.raises(
        SourceError,
        match=r"table public.agent_notes listed in the policy's workspace_tables does not exist",
    ):
        dump_workspace(store, source_db, "ws_acme", policy)
    assert store.read_manifest(ref) is None


def test_table_without_workspace_column_is_a_clear_error(store, source_db):
    policy = Policy(workspace_tables=(TableRule("workspaces"), TableRule("sessions", "tenant")))
    with pytest.raises(SourceError, match=r"public.sessions has no column 'tenant'"):
        dump_workspace(store, source_db, "ws_acme", policy)


def test_wildcard_tables_are_discovered(source_db):
    with psycopg.connect(source_db) as conn:
        names = [t.name for t in catalog.discover_tables(conn, Policy())]
    assert {"knowledge_graph_nodes", "knowledge_graph_edges"} <= set(names)
    assert names.index("knowledge_graph_nodes") < names.index("knowledge_graph_edges")
    assert names.index("sessions") < names.index("turns")


def test_store_refusing_writes_leaves_no_manifest(tmp_path, source_db):
    (tmp_path / "blocked").write_text("a file where the store's folder should be")
    store = LocalStore(tmp_path / "blocked" / "store")
    with pytest.raises(StoreError, match="refused to write"):
        dump_workspace(store, source_db, "ws_acme")
    assert store.read_manifest(ArtifactRef("postgres/workspace_dump", DATE, "ws_acme")) is None


KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    from backup_pipelines.lib.postgres import dump
    from backup_pipelines.lib.store import ArtifactRef, store_from_url
    store = store_from_url(sys.argv[2])
    with store.begin(ArtifactRef("postgres/full_dump", "2026-11-21")) as writer:
        writer.commit(**dump.dump_full_database(sys.argv[1], writer, level=19))
    """
)


# The killed dump uploads 1 MiB parts, not the default 8 MiB: at zstd -19 its first part is in
# the bucket in seconds rather than minutes. S3 enforces its 5 MiB minimum part only when an
# upload completes, and this one is killed before; the rerun uses the default.
KILLED_PART_MB = "1"


def staged_bytes(store) -> int:
    """Bytes of the unfinished dump already in the store: the local store's temp file; on S3,
    the uploaded parts of its unfinished multipart upload (no object exists before the upload
    completes, so `_list` sees nothing there)."""
    if not isinstance(store, S3Store):
        return sum(size for key, size, _ in store._list("postgres/full_dump/"))
    staged = 0
    for key, upload_id, _ in store.incomplete_uploads():
        if "/postgres/full_dump/" in f"/{key}":
            answer = store.client.list_parts(Bucket=store.bucket, Key=key, UploadId=upload_id)
            staged += sum(part["Size"] for part in answer.get("Parts", []))
    return staged


@pytest.fixture(scope="module")
def big_database(pg_cluster):
    """Seeded once for both stores: the dumps only read it."""
    name = f"big_{uuid.uuid4().hex[:8]}"
    url = pg_cluster.create_database(name)
    # Big enough that the dump is still running when it is killed (zstd -19 slows it down).
    sample_data.seed(
        url,
        WORKSPACES[:1],
        sample_data.Scale(
            sessions=50, turns_per_session=20, memories=20000, nodes=10, edges=10, embedding_dim=384
        ),
    )
    yield url
    with psycopg.connect(pg_cluster.url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_sigkill_mid_dump_leaves_nothing_accepted_and_rerun_succeeds(store, big_database):
    url = big_database
    ref = ArtifactRef("postgres/full_dump", DATE)
    store_url = store.describe()
    process = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, url, store_url],
        env={**os.environ, "BACKUP_S3_PART_MB": KILLED_PART_MB},
    )
    deadline = time.monotonic() + 300  # a busy machine; the wait ends once bytes are staged
    while staged_bytes(store) < 64 << 10 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, (
        "the dump finished before it could be killed; make the database bigger"
    )
    assert staged_bytes(store) >= 64 << 10, (
        "no 64 KiB of the dump reached the store before its kill"
    )
    os.kill(process.pid, signal.SIGKILL)
    process.wait()

    assert store.read_manifest(ref) is None
    assert list(store.list_artifacts()) == []
    assert not store.verify(ref).ok

    with store.begin(ref) as writer:
        writer.commit(**dump.dump_full_database(url, writer))
    assert store.verify(ref).ok
    assert store.require_manifest(ref)["counts"]["rows"]["public.memory_entries"] == 20000
