"""Concurrency outside the run queue (issue 10): two operators, or an operator and the
scheduler, acting on one workspace at once. The store's lease keeps them apart whichever
entry point starts the work (the command line, a Dagster run, a script), with or without the
daemon's queue. Real PostgreSQL, Typesense and the Qdrant stand-in; the CLI as a real process."""

from __future__ import annotations

import dagster as dg
import psycopg
import pytest

from backup_pipelines.lib.errors import BackupError
from backup_pipelines.lib.recovery import full_restore
from backup_pipelines.lib.recovery import workspace_restore as restore
from backup_pipelines.lib.store import ArtifactRef, LeaseHeld, LocalStore, lease_name
from backup_pipelines_tests.faults.store_faults import wait_until
from backup_pipelines_tests.helpers import DATE, back_up, restore_env
from backup_pipelines_tests.pg_checks import fingerprint
from backup_pipelines_tests.recovery.test_restore import cli, lose_workspace_memory

pytestmark = pytest.mark.faults

WORKSPACE = "ws_globex"
SQL_REF = ArtifactRef("postgres/workspace_dump", DATE, WORKSPACE)


def generation(store, ref: ArtifactRef) -> str:
    return store.require_manifest(ref)["generation"]


def run_job(defs, name: str, partition: str) -> dg.ExecuteInProcessResult:
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("workspaces", [WORKSPACE])
        return defs.resolve_job_def(name).execute_in_process(
            instance=instance, partition_key=partition, raise_on_error=False
        )


def failure_of(result: dg.ExecuteInProcessResult) -> tuple[str, str]:
    event = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    return event.step_key, str(event.event_specific_data.error)


def blocked_inserts(database_url: str) -> int:
    """Sessions other than the test's waiting on a lock (the restore, held mid-write: its
    INSERT from staging, or its COPY straight into a table holding none of the workspace)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND (query ILIKE 'INSERT%' OR query ILIKE 'COPY%') AND pid <> pg_backend_pid()"
        ).fetchone()[0]


def test_concurrent_backup_and_restores_wait_or_are_refused_while_a_cli_restore_runs(
    tmp_path, indexed_source, monkeypatch
):
    """The finding: a command-line restore racing a backup of the same workspace left the store
    holding the damaged state in place of the good backup. Here the restore is held in the
    middle of its SQL write (a lock the test takes); meanwhile a Dagster backup of the workspace
    waits for the lease and fails naming the restore, a second command-line restore and the
    Dagster restore job are refused naming it, and the store keeps the good backup. Once the
    lock goes, the first restore completes."""
    store = LocalStore(tmp_path / "store")
    back_up(store, indexed_source, WORKSPACE)
    good = {ref.asset: generation(store, ref) for ref in store.list_artifacts()}
    before = fingerprint(indexed_source["db"], WORKSPACE)
    # The damaged state: memory lost, the workspace itself still registered (a backup of a
    # workspace gone from SQL is refused before it asks for the lease).
    with psycopg.connect(indexed_source["db"]) as conn:
        kept = conn.execute(
            "SELECT min(id) FROM memory_entries WHERE workspace_id = %s", (WORKSPACE,)
        ).fetchone()[0]
    lose_workspace_memory(indexed_source, WORKSPACE, keep_memory_id=kept)
    env = restore_env(indexed_source, tmp_path / "store")
    for key, value in {**env, "BACKUP_LEASE_WAIT_SECONDS": "1"}.items():
        monkeypatch.setenv(key, value)
    from backup_pipelines.definitions import build_definitions

    defs = build_definitions()
    locker = psycopg.connect(indexed_source["db"])
    try:
        tables = ", ".join(t["table"] for t in store.require_manifest(SQL_REF)["tables"])
        locker.execute(f"LOCK TABLE {tables} IN SHARE MODE")  # reads go on; writes wait
        first = cli(["restore", "workspace", "--date", DATE, "--workspace", WORKSPACE], env)
        wait_until(
            lambda: blocked_inserts(indexed_source["db"]), 120, "the restore's blocked INSERT"
        )
        holder = store.read_lease(lease_name(WORKSPACE))
        assert holder.record.owner.purpose == "restore"
        assert holder.record.owner.who.endswith("(command line)")

        backup = run_job(defs, "workspace_backup_job", f"{DATE}|{WORKSPACE}")
        step, error = failure_of(backup)
        assert not backup.success and step == "postgres__workspace_dump"
        assert f"workspace {WORKSPACE} is busy: held for restore by" in error
        assert f"lease break --workspace {WORKSPACE}" in error

        second = cli(["restore", "workspace", "--date", DATE, "--workspace", WORKSPACE], env)
        output = second.communicate(timeout=120)[0]
        assert second.returncode != 0
        assert f"workspace {WORKSPACE} is busy: held for restore by" in output, output

        job = run_job(defs, "workspace_restore_job", f"{DATE}|{WORKSPACE}")
        step, error = failure_of(job)
        assert not job.success and step == "locate_and_verify_artifacts"
        assert "is busy: held for restore" in error
        # Nothing the refused runs did replaced the good backup or wrote rows.
        assert {ref.asset: generation(store, ref) for ref in store.list_artifacts()} == good
        assert first.poll() is None
    finally:
        locker.rollback()
        locker.close()
    output = first.communicate(timeout=300)[0]
    assert first.returncode == 0, output
    assert fingerprint(indexed_source["db"], WORKSPACE) == before
    assert store.read_lease(lease_name(WORKSPACE)) is None


def test_lease_dagster_restore_job_hands_the_lease_between_steps_and_gives_it_back(
    tmp_path, indexed_source, monkeypatch
):
    """The restore job's steps run under one lease (taken by the first, released by the last)
    and a failing step gives it back at once: an inconsistent pair is refused at the gate, and
    the workspace is free for the next backup immediately, not after the lease expires."""
    from backup_pipelines_tests.helpers import back_up_an_orphan

    store = LocalStore(tmp_path / "store")
    back_up(store, indexed_source, WORKSPACE)
    for key, value in restore_env(indexed_source, tmp_path / "store").items():
        monkeypatch.setenv(key, value)
    from backup_pipelines.definitions import build_definitions

    defs = build_definitions()
    restored = run_job(defs, "workspace_restore_job", f"{DATE}|{WORKSPACE}")
    assert restored.success
    # Each later step took up the lease the first one kept; none had to take it afresh.
    assert not [e for e in restored.all_events if "taken again" in (e.message or "")]
    assert store.read_lease(lease_name(WORKSPACE)) is None

    # A memory written and indexed after the SQL backup, then only the indexes backed up: the
    # index artifacts hold an id the SQL artifact lacks, the gate's FAIL.
    back_up_an_orphan(store, indexed_source, WORKSPACE)
    refused = run_job(defs, "workspace_restore_job", f"{DATE}|{WORKSPACE}")
    step, _error = failure_of(refused)
    assert not refused.success and step == "consistency_gate"
    assert store.read_lease(lease_name(WORKSPACE)) is None  # given back by the failure hook


def test_lease_restore_refuses_artifacts_replaced_since_they_were_gated(tmp_path, indexed_source):
    """The finding: the gate could pass on one Typesense export while the restore imported a
    newer one. A restore pins the generations it verified and gated; a newer backup committed
    in between (a retried step whose lease had ended) is refused, naming the artifact."""
    store = LocalStore(tmp_path / "store")
    back_up(store, indexed_source, WORKSPACE)
    assets = restore.index_assets(indexed_source["indexes"])
    located = restore.locate_and_verify(store, DATE, WORKSPACE, assets)
    restore.check_pinned(store, located)  # nothing changed: passes

    back_up(store, indexed_source, WORKSPACE, sql=False, indexes=("typesense",))
    with pytest.raises(BackupError) as refused:
        restore.check_pinned(store, located)
    message = str(refused.value)
    assert "typesense/collection_export: verified generation" in message
    assert "postgres/workspace_dump" not in message
    assert "start the restore again" in message


def test_lease_workspace_and_whole_database_restores_exclude_each_other(tmp_path, source_db):
    """A workspace restore and a whole-database restore take different leases, yet one refuses
    the other: an overwrite of the live database would discard the workspace's restored rows."""
    from backup_pipelines.lib.policy import Policy

    store = LocalStore(tmp_path / "store")
    before = fingerprint(source_db, WORKSPACE)
    busy = "the whole database is busy: held for restore"
    with (
        store.lease(None, "restore", owner="operator b (command line)"),
        pytest.raises(LeaseHeld, match=busy),
    ):
        restore.restore_workspace(store, DATE, WORKSPACE, source_db, Policy())
    assert fingerprint(source_db, WORKSPACE) == before
    assert store.read_lease(lease_name(WORKSPACE)) is None  # the refused one let go

    request = full_restore.FullRestoreRequest(date=DATE)
    with (
        store.lease(WORKSPACE, "restore", owner="operator a (command line)"),
        pytest.raises(LeaseHeld, match=f"workspace {WORKSPACE} is busy: held for restore"),
    ):
        full_restore.restore_full(store, request, source_db)
    assert store.list_leases() == []


def test_lease_retention_keeps_the_artifacts_a_restore_is_reading(tmp_path):
    """Retention never deletes a partition a restore or drill is reading; the next run does."""
    from backup_pipelines.lib.lifecycle.retention import apply_plan, plan_retention
    from backup_pipelines.lib.policy import Policy
    from backup_pipelines_tests.lifecycle.test_retention import TODAY, ago, write_artifact

    store = LocalStore(tmp_path / "store")
    write_artifact(store, SQL_REF.asset, TODAY.isoformat(), WORKSPACE)
    old = write_artifact(store, SQL_REF.asset, ago(200), WORKSPACE)
    plan = plan_retention(store, Policy(), TODAY)
    assert [artifact.ref for artifact in plan.to_delete] == [old]

    with store.lease(WORKSPACE, "restore", owner="operator a (command line)"):
        kept = apply_plan(store, plan, log=lambda _m: None)
    assert kept.deleted == [] and store.read_manifest(old) is not None
    assert kept.skipped[0][0] == old and "being read by a restore" in kept.skipped[0][1]

    done = apply_plan(store, plan_retention(store, Policy(), TODAY), log=lambda _m: None)
    assert done.deleted == [old] and store.read_manifest(old) is None
