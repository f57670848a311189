"""The SQL Server + Qdrant deployment as Dagster sees it: its pinned keys, the three backup jobs
materializing and verifying (RESTORE VERIFYONLY of the stored copy), a log skipped in SIMPLE
recovery, the agent restore job as a backfill would run it, and the log's 15-minute RPO."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from backup_pipelines.lib.mssql.connection import connected, query, quote_name, run
from backup_pipelines.lib.mssql.restore import scratch_database_name
from backup_pipelines.lib.store import ArtifactRef, LocalStore
from backup_pipelines_tests.mssql.platform import add_episodes, create_platform, rows
from backup_pipelines_tests.mssql.test_mssql_restore import index_episodes, next_second

EXPECTED_ASSET_KEYS = [
    "monitoring/backup_health_report",
    "monitoring/restore_catalog",
    "monitoring/restore_drill",
    "mssql/diff_backup",
    "mssql/full_backup",
    "mssql/log_backup",
    "qdrant/collection_snapshot",
]
EXPECTED_JOBS = {
    "mssql_full_backup_job",
    "mssql_diff_backup_job",
    "mssql_log_backup_job",
    "mssql_point_in_time_restore_job",
    "agent_restore_job",
    "workspace_backup_job",
    "backup_health_report_job",
    "restore_catalog_job",
    "restore_drill_job",
    "retention_job",
}
EXPECTED_SCHEDULES = {
    "mssql_full_backup",
    "mssql_diff_backup",
    "mssql_log_backup",
    "workspace_backup_daily",
    "restore_drill_weekly",
    "retention_daily",
}
DAY = "2026-12-01"


@pytest.fixture
def deployment(monkeypatch, tmp_path, mssql_server, mssql_databases, mssql_dirs, qdrant_url):
    database = mssql_databases.create("platform")
    create_platform(mssql_server.connection_string(), database, ["a1", "a2"])
    backups, _data = mssql_dirs
    for name in ("DATABASE_URL", "TYPESENSE_URL", "TYPESENSE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MSSQL_CONNECTION_STRING", mssql_server.connection_string(database))
    monkeypatch.setenv("MSSQL_BACKUP_DIR", str(backups))
    monkeypatch.setenv("QDRANT_URL", qdrant_url)
    monkeypatch.setenv("BACKUP_STORE_URL", f"file://{tmp_path}/store")
    from backup_pipelines.definitions import build_definitions

    defs = build_definitions()
    defs.resolve_all_job_defs()
    return {
        "defs": defs,
        "db": database,
        "cs": mssql_server.connection_string(database),
        "store": LocalStore(tmp_path / "store"),
    }


def materialize(defs, job: str, partition: str, instance) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def(job).execute_in_process(
        instance=instance, partition_key=partition, raise_on_error=False
    )


def check_results(result) -> dict[str, bool]:
    return {
        e.asset_check_evaluation_data.asset_key.to_user_string(): e.asset_check_evaluation_data.passed
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }


def test_mssql_deployment_loads_with_pinned_keys(deployment):
    defs = deployment["defs"]
    graph = defs.resolve_asset_graph()
    assert sorted(k.to_user_string() for k in graph.get_all_asset_keys()) == EXPECTED_ASSET_KEYS
    checks = sorted(k.to_user_string() for k in graph.asset_check_keys)
    for asset in ("mssql/full_backup", "mssql/diff_backup", "mssql/log_backup"):
        assert f"{asset}:artifact_verifies" in checks and f"{asset}:rpo_met" in checks
    jobs = {j.name for j in defs.resolve_all_job_defs() if not j.name.startswith("__")}
    assert jobs == EXPECTED_JOBS
    assert {s.name for s in defs.schedules} == EXPECTED_SCHEDULES
    log_partitions = graph.get(dg.AssetKey(["mssql", "log_backup"])).partitions_def
    assert (
        log_partitions.get_partition_key_for_timestamp(
            datetime(2026, 12, 1, 13, 20, tzinfo=UTC).timestamp()
        )
        == "2026-12-01-13:15"
    )


def test_mssql_backup_jobs_materialize_and_verify_with_the_server(deployment):
    defs, cs, db, store = (
        deployment["defs"],
        deployment["cs"],
        deployment["db"],
        deployment["store"],
    )
    add_episodes(cs, db, "a1", 3)
    with dg.instance_for_test() as instance:
        full = materialize(defs, "mssql_full_backup_job", DAY, instance)
        add_episodes(cs, db, "a1", 1)
        diff = materialize(defs, "mssql_diff_backup_job", f"{DAY}-04:00", instance)
        add_episodes(cs, db, "a1", 1)
        log = materialize(defs, "mssql_log_backup_job", f"{DAY}-04:15", instance)
    for result in (full, diff, log):
        assert result.success
        assert all(check_results(result).values()) and len(check_results(result)) == 1
    manifest = store.require_manifest(ArtifactRef("mssql/log_backup", DAY, None, "0415"))
    assert manifest["header"]["type"] == "log"
    diff_manifest = store.require_manifest(ArtifactRef("mssql/diff_backup", DAY, None, "0400"))
    full_manifest = store.require_manifest(ArtifactRef("mssql/full_backup", DAY))
    assert (
        diff_manifest["header"]["database_backup_lsn"] == full_manifest["header"]["checkpoint_lsn"]
    )
    materializations = [e for e in log.all_events if e.event_type_value == "ASSET_MATERIALIZATION"]
    metadata = materializations[0].materialization.metadata
    assert metadata["backup_type"].value == "log" and metadata["bytes"].value > 0


def test_mssql_log_job_in_simple_recovery_skips_without_failing(deployment):
    defs, cs, db, store = (
        deployment["defs"],
        deployment["cs"],
        deployment["db"],
        deployment["store"],
    )
    with connected(cs, "master") as conn:
        run(conn, f"ALTER DATABASE [{db}] SET RECOVERY SIMPLE")
    with dg.instance_for_test() as instance:
        result = materialize(defs, "mssql_log_backup_job", f"{DAY}-05:00", instance)
        logs = " ".join(str(e.message) for e in instance.all_logs(result.run_id) if e.message)
    assert result.success
    assert not [e for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"]
    assert "SIMPLE recovery" in logs
    assert not list(store.list_artifacts("mssql/log_backup"))


def test_mssql_agent_restore_job_brings_one_agent_back(deployment, monkeypatch):
    import os

    from backup_pipelines.lib.qdrant.client import QdrantHttp

    defs, cs, db, store = (
        deployment["defs"],
        deployment["cs"],
        deployment["db"],
        deployment["store"],
    )

    qdrant = QdrantHttp(os.environ["QDRANT_URL"], os.environ.get("QDRANT_API_KEY"))
    for name in ("agent_a1", "agent_a2"):
        if qdrant.collection_exists(name):
            qdrant.delete_collection(name)
    index_episodes(qdrant, "a1", add_episodes(cs, db, "a1", 4))
    index_episodes(qdrant, "a2", add_episodes(cs, db, "a2", 2))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("workspaces", ["a1", "a2"])
        assert materialize(defs, "mssql_full_backup_job", DAY, instance).success
        # a Qdrant snapshot's creation time is whole seconds: take it a second after the full
        full = store.require_manifest(ArtifactRef("mssql/full_backup", DAY))
        next_second({"cs": cs}, full)
        assert materialize(defs, "workspace_backup_job", f"{DAY}|a1", instance).success
        before = rows(cs, db, "a1")
        add_episodes(cs, db, "a2", 1)  # another agent goes on
        assert materialize(defs, "mssql_log_backup_job", f"{DAY}-06:00", instance).success
        with connected(cs, db) as conn:  # agent a1 loses its memory, in both stores
            run(conn, "DELETE FROM dbo.procedures WHERE agent_id = 'a1'")
            run(conn, "DELETE FROM dbo.episodes WHERE agent_id = 'a1'")
        qdrant.delete_collection("agent_a1")
        others = rows(cs, db, "a2")
        with store.lease("a1", "restore", "operator-b"):  # another operator's restore of a1
            refused = materialize(defs, "agent_restore_job", f"{DAY}|a1", instance)
        result = materialize(defs, "agent_restore_job", f"{DAY}|a1", instance)
    failure = next(e for e in refused.all_events if e.is_step_failure)
    assert "workspace a1 is busy" in failure.step_failure_data.user_failure_data.description
    assert "operator-b" in failure.step_failure_data.user_failure_data.description
    assert result.success
    assert rows(cs, db, "a1") == before
    assert rows(cs, db, "a2") == others
    assert qdrant.count("agent_a1") == 4
    qdrant.close()


def test_mssql_log_rpo_is_fifteen_minutes(deployment, monkeypatch):
    from backup_pipelines.defs.monitoring import rpo as rpo_defs

    defs, store = deployment["defs"], deployment["store"]
    captured = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    ref = ArtifactRef("mssql/log_backup", DAY, None, "1145")
    with store.begin(ref) as writer:
        writer.write_bytes("backup.bak", b"x")
        writer.commit(captured_at=captured.isoformat(), counts={}, source={}, tool={})
    sensor = defs.resolve_sensor_def("rpo_sensor")
    resources = {k: v for k, v in defs.resources.items()}
    for minutes, late in ((20, False), (26, True)):
        monkeypatch.setattr(rpo_defs, "utc_now", lambda m=minutes: captured + timedelta(minutes=m))
        with (
            dg.instance_for_test() as instance,
            dg.build_sensor_context(instance=instance, resources=resources) as context,
        ):
            result = sensor(context)
        evaluation = next(
            e for e in result.asset_events if e.asset_key.to_user_string() == "mssql/log_backup"
        )
        # Late is judged on the store; the artifact was written outside Dagster's history, so
        # the check also warns about that disagreement.
        assert evaluation.metadata["workspaces_late"].value == int(late), evaluation.description


def test_mssql_agents_are_discovered_as_workspaces_and_backed_up_first(deployment):
    defs = deployment["defs"]
    sensor = defs.resolve_sensor_def("workspace_discovery_sensor")
    with (
        dg.instance_for_test() as instance,
        dg.build_sensor_context(
            instance=instance, definitions=defs, resources=defs.resources
        ) as context,
    ):
        result = sensor(context)
    [request] = result.dynamic_partitions_requests
    assert sorted(request.partition_keys) == ["a1", "a2"]
    backups = [r for r in result.run_requests if r.job_name == "workspace_backup_job"]
    assert sorted(r.partition_key.split("|")[1] for r in backups) == ["a1", "a2"]


def test_mssql_weekly_drill_restores_checks_and_drops_a_scratch_database(deployment):
    """...and drops the scratch databases runs killed over a day ago left (a younger one may
    be a drill still running; a database not named as ours is never looked at)."""
    defs, cs, db = deployment["defs"], deployment["cs"], deployment["db"]
    now = datetime.now(UTC)
    stale = scratch_database_name("drill", now - timedelta(days=2))
    stale_agent = scratch_database_name("agent", now - timedelta(days=3))
    running = scratch_database_name("drill", now - timedelta(hours=1))
    others = "drill_20000101T000000_notes"
    with connected(cs, "master") as conn:
        for name in (stale, stale_agent, running, others):
            run(conn, f"CREATE DATABASE {quote_name(name)}")
    add_episodes(cs, db, "a1", 3)
    with dg.instance_for_test() as instance:
        assert materialize(defs, "mssql_full_backup_job", DAY, instance).success
        add_episodes(cs, db, "a1", 2)
        assert materialize(defs, "mssql_log_backup_job", f"{DAY}-07:00", instance).success
        result = defs.resolve_job_def("restore_drill_job").execute_in_process(instance=instance)
    assert result.success
    [materialization] = [
        e.materialization
        for e in result.all_events
        if e.event_type_value == "ASSET_MATERIALIZATION"
    ]
    [row] = materialization.metadata["results"].value
    assert row["workspace"] == f"mssql:{db}" and row["passed"] and row["met_rto"]
    assert row["counts"]["dbo.episodes"] == 5
    with connected(cs, "master") as conn:
        assert not query(conn, "SELECT name FROM sys.databases WHERE name = ?", row["scratch"])
        left = {r["name"] for r in query(conn, "SELECT name FROM sys.databases")}
        assert {running, others} <= left and not {stale, stale_agent} & left
        for name in (running, others):
            run(conn, f"DROP DATABASE {quote_name(name)}")
