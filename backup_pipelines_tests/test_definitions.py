"""The whole code location: it loads, its asset keys are pinned, and its jobs run for real."""

import dagster as dg
import pytest

from backup_pipelines.defs.partitions import (
    daily_by_workspace,
    date_and_workspace,
    last_completed_date,
    multi_key,
)
from backup_pipelines.lib.errors import InvalidWorkspaceId
from backup_pipelines.lib.store import ArtifactRef, store_from_url

# Renaming any of these orphans its history in the UI (DESIGN "Contracts"): change on purpose only.
EXPECTED_ASSET_KEYS = [
    "monitoring/backup_health_report",
    "monitoring/restore_catalog",
    "monitoring/restore_drill",
    "postgres/full_dump",
    "postgres/workspace_dump",
    "qdrant/collection_snapshot",
    "typesense/collection_export",
]
EXPECTED_PARTITIONS = {
    "postgres/full_dump": "daily",
    "postgres/workspace_dump": "date x workspaces",
    "qdrant/collection_snapshot": "date x workspaces",
    "typesense/collection_export": "date x workspaces",
}
EXPECTED_CHECKS = [
    "postgres/full_dump:artifact_verifies",
    "postgres/full_dump:rpo_met",
    "postgres/workspace_dump:artifact_verifies",
    "postgres/workspace_dump:rpo_met",
    "qdrant/collection_snapshot:artifact_verifies",
    "qdrant/collection_snapshot:consistent_with_sql",
    "qdrant/collection_snapshot:rpo_met",
    "typesense/collection_export:artifact_verifies",
    "typesense/collection_export:consistent_with_sql",
    "typesense/collection_export:rpo_met",
]
# The checks a backup run of one partition executes (rpo_met is the RPO sensor's).
BACKUP_RUN_CHECKS = [c for c in EXPECTED_CHECKS if not c.endswith(":rpo_met")]
EXPECTED_JOBS = {
    "postgres_full_backup_job",
    "workspace_backup_job",
    "workspace_restore_job",
    "workspace_restore_dry_run_job",
    "full_restore_job",
    "backup_health_report_job",
    "restore_catalog_job",
    "restore_drill_job",
    "retention_job",
}
EXPECTED_SCHEDULES = {
    "postgres_full_backup_daily",
    "workspace_backup_daily",
    "restore_drill_weekly",
    "retention_daily",
}
EXPECTED_SENSORS = {"workspace_discovery_sensor", "rpo_sensor", "run_alert_sensor"}


def describe_partitions(partitions_def) -> str:
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        names = [
            d.partitions_def.name
            if isinstance(d.partitions_def, dg.DynamicPartitionsDefinition)
            else d.name
            for d in partitions_def.partitions_defs
        ]
        return " x ".join(names)
    return (
        "daily"
        if isinstance(partitions_def, dg.DailyPartitionsDefinition)
        else repr(partitions_def)
    )


SECRET = "hunter2-s3cret"


@pytest.fixture
def definitions(monkeypatch, tmp_path, indexed_source, typesense_server, qdrant_url):
    source_db = indexed_source["db"]
    # The test cluster trusts loopback, so a password is accepted and ignored: it stands for
    # a real secret that must never reach logs, metadata or the UI.
    monkeypatch.setenv("DATABASE_URL", source_db.replace("postgres@", f"postgres:{SECRET}@"))
    monkeypatch.setenv("TYPESENSE_URL", typesense_server.url)
    monkeypatch.setenv("TYPESENSE_API_KEY", typesense_server.api_key)
    monkeypatch.setenv("QDRANT_URL", qdrant_url)
    monkeypatch.setenv("BACKUP_STORE_URL", f"file://{tmp_path}/store")
    from backup_pipelines.definitions import build_definitions

    defs = build_definitions()
    defs.resolve_all_job_defs()  # validates the whole code location
    return defs


def test_code_location_loads_with_pinned_asset_keys_and_partitions(definitions):
    graph = definitions.resolve_asset_graph()
    keys = sorted(k.to_user_string() for k in graph.get_all_asset_keys())
    assert keys == EXPECTED_ASSET_KEYS
    for key, expected in EXPECTED_PARTITIONS.items():
        assert (
            describe_partitions(graph.get(dg.AssetKey.from_user_string(key)).partitions_def)
            == expected
        )
    assert str(multi_key("2026-11-21", "ws_acme")) == "2026-11-21|ws_acme"
    checks = sorted(k.to_user_string() for k in graph.asset_check_keys)
    assert checks == EXPECTED_CHECKS
    jobs = {j.name for j in definitions.resolve_all_job_defs() if not j.name.startswith("__")}
    assert jobs == EXPECTED_JOBS
    assert {s.name for s in definitions.schedules} == EXPECTED_SCHEDULES
    assert all(s.default_status == dg.DefaultScheduleStatus.RUNNING for s in definitions.schedules)
    assert {s.name for s in definitions.sensors} == EXPECTED_SENSORS
    assert all(s.default_status == dg.DefaultSensorStatus.RUNNING for s in definitions.sensors)


def test_a_store_not_configured_is_not_part_of_the_deployment(monkeypatch):
    for name in ("DATABASE_URL", "TYPESENSE_URL", "TYPESENSE_API_KEY", "QDRANT_URL"):
        monkeypatch.delenv(name, raising=False)
    from backup_pipelines.definitions import build_definitions

    assert list(build_definitions().resolve_asset_graph().get_all_asset_keys()) == []
    monkeypatch.setenv("DATABASE_URL", "postgresql://backup@127.0.0.1:9/agent")
    monkeypatch.setenv("QDRANT_URL", "http://127.0.0.1:9")
    graph = build_definitions().resolve_asset_graph()
    assert sorted(k.to_user_string() for k in graph.get_all_asset_keys()) == [
        "monitoring/backup_health_report",
        "monitoring/restore_catalog",
        "monitoring/restore_drill",
        "postgres/full_dump",
        "postgres/workspace_dump",
        "qdrant/collection_snapshot",
    ]


def test_secret_is_not_in_what_the_ui_sees(definitions):
    from dagster._core.remote_representation.external_data import RepositorySnap

    snapshot = str(RepositorySnap.from_def(definitions.get_repository_def()))
    assert "DATABASE_URL" in snapshot  # the variable's name is shown ...
    assert SECRET not in snapshot  # ... never its value


def test_workspace_backup_job_materializes_and_verifies(definitions, tmp_path):
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("workspaces", ["ws_acme", "ws_globex"])
        job = definitions.resolve_job_def("workspace_backup_job")
        result = job.execute_in_process(instance=instance, partition_key="2026-11-21|ws_acme")
        assert result.success
        assert {
            e.asset_key.to_user_string() for e in result.get_asset_materialization_events()
        } == {
            "postgres/workspace_dump",
            "typesense/collection_export",
            "qdrant/collection_snapshot",
        }
        [materialization] = result.asset_materializations_for_node("postgres__workspace_dump")
        metadata = materialization.metadata
        assert metadata["rows_per_table"].value["public.memory_entries"] == 120
        assert metadata["bytes"].value > 0 and metadata["throughput_mb_per_s"].value > 0
        assert "workspace=ws_acme" in metadata["location"].value
        logs = [e.message or "" for e in instance.all_logs(result.run_id)]
        assert SECRET not in str(metadata) and not any(SECRET in line for line in logs)
        checks = {
            e.event_specific_data.asset_check_key.to_user_string(): e.event_specific_data
            for e in result.all_events
            if e.event_type_value == "ASSET_CHECK_EVALUATION"
        }
        assert sorted(checks) == BACKUP_RUN_CHECKS[1:]
        assert all(c.passed for c in checks.values()), {k: c.description for k, c in checks.items()}
        manifest = store_from_url(f"file://{tmp_path}/store").read_manifest(
            ArtifactRef("postgres/workspace_dump", "2026-11-21", "ws_acme")
        )
        ids_files = [table["ids_file"] for table in manifest["tables"] if table.get("ids_file")]
        # the DDL and one file per table (7), and beside each binary table its key's ids file
        assert ids_files and len(manifest["files"]) == 7 + len(ids_files)
        verified = checks["postgres/workspace_dump:artifact_verifies"].metadata["files_verified"]
        assert verified.value == len(manifest["files"])
        evidence = (
            checks["typesense/collection_export:consistent_with_sql"].metadata["evidence"].value
        )
        assert evidence["verdict"] == "PASS" and evidence["indexes"][0]["counts"]["index"] == 120
    store = store_from_url(f"file://{tmp_path}/store")
    assert store.verify(ArtifactRef("postgres/workspace_dump", "2026-11-21", "ws_acme")).ok
    assert (
        store.read_manifest(ArtifactRef("postgres/workspace_dump", "2026-11-21", "ws_globex"))
        is None
    )


def test_failed_backup_fails_the_run_and_leaves_no_manifest(definitions, indexed_source, tmp_path):
    import psycopg

    source_db = indexed_source["db"]
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE turns RENAME TO turns_old")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("workspaces", ["ws_acme"])
        result = definitions.resolve_job_def("workspace_backup_job").execute_in_process(
            instance=instance, partition_key="2026-11-21|ws_acme", raise_on_error=False
        )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert (
        "public.turns listed in the policy's workspace_tables does not exist"
        in failure.event_specific_data.error.to_string()
    )
    assert list(store_from_url(f"file://{tmp_path}/store").list_artifacts()) == []


def test_discovery_sensor_adds_valid_workspaces_and_skips_invalid_ids(
    definitions, indexed_source, tmp_path
):
    import psycopg

    from backup_pipelines.lib.policy import Policy
    from backup_pipelines.lib.postgres import dump as postgres

    source_db = indexed_source["db"]
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO workspaces (workspace_id, name) VALUES ('bad id; drop', 'x'), ('ws_new', 'y')"
        )
    # ws_initech already has yesterday's backup in the store: a fresh instance must not
    # replace it with a backup of the current state.
    store = store_from_url(f"file://{tmp_path}/store")
    ref = ArtifactRef("postgres/workspace_dump", last_completed_date(), "ws_initech")
    with store.begin(ref) as writer:
        writer.commit(**postgres.dump_workspace(source_db, "ws_initech", Policy(), writer))
    sensor = definitions.resolve_sensor_def("workspace_discovery_sensor")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("workspaces", ["ws_acme"])
        with dg.build_sensor_context(
            instance=instance, definitions=definitions, resources=definitions.resources
        ) as context:
            result = sensor(context)
        [request] = result.dynamic_partitions_requests
        assert sorted(request.partition_keys) == ["ws_globex", "ws_initech", "ws_new"]
        backups = [r for r in result.run_requests if r.job_name == "workspace_backup_job"]
        assert sorted(r.partition_key for r in backups) == sorted(
            f"{last_completed_date()}|{w}" for w in ["ws_globex", "ws_new"]
        )
        # The first tick also takes a new deployment's first full dump (none in the store: its
        # RPO would fail at once) and refreshes the restore catalog.
        others = [(r.job_name, r.partition_key) for r in result.run_requests if r not in backups]
        assert others == [
            ("postgres_full_backup_job", last_completed_date()),
            ("restore_catalog_job", None),
        ]
        instance.add_dynamic_partitions("workspaces", list(request.partition_keys))
        with dg.build_sensor_context(
            instance=instance,
            definitions=definitions,
            resources=definitions.resources,
            cursor=result.cursor,
        ) as context:
            again = sensor(context)
        assert not again.dynamic_partitions_requests and not again.run_requests
        assert "4 workspace(s) in SQL, 0 new, 0 gone from SQL" in again.skip_reason.skip_message


def test_workspace_schedule_requests_last_completed_day_for_every_workspace(definitions):
    from datetime import UTC, datetime

    schedule = definitions.resolve_schedule_def("workspace_backup_daily")
    with dg.instance_for_test() as instance:
        # ws_typo was added by hand ("Add a partition"): SQL does not list it, nothing to back up.
        instance.add_dynamic_partitions("workspaces", ["ws_acme", "ws_globex", "ws_typo"])
        when = datetime(2026, 11, 22, 1, 15, tzinfo=UTC)
        with dg.build_schedule_context(
            instance=instance,
            scheduled_execution_time=when,
            resources=definitions.resources,
            repository_def=definitions.get_repository_def(),
        ) as context:
            data = schedule.evaluate_tick(context)
    assert sorted(r.partition_key for r in data.run_requests) == [
        "2026-11-21|ws_acme",
        "2026-11-21|ws_globex",
    ]


def test_partition_keys_refuse_invalid_workspace_ids():
    assert date_and_workspace("2026-11-21|ws_acme") == ("2026-11-21", "ws_acme")
    with pytest.raises(InvalidWorkspaceId):
        date_and_workspace("2026-11-21|../../etc")
    assert (
        daily_by_workspace.get_partition_key_from_str("2026-11-21|ws_acme").keys_by_dimension[
            "date"
        ]
        == "2026-11-21"
    )


def test_every_backup_asset_has_the_rpo_freshness_policy(definitions):
    from datetime import timedelta

    graph = definitions.resolve_asset_graph()
    for key in EXPECTED_PARTITIONS:  # the backup assets
        policy = graph.get(dg.AssetKey.from_user_string(key)).freshness_policy
        assert policy.warn_window.to_timedelta() == timedelta(hours=24), key
        assert policy.fail_window.to_timedelta() == timedelta(hours=25), key


def test_demo_drives_discovery_schedules_and_monitoring_like_the_daemon(definitions):
    """`make demo`'s own driver (devstack/demo.py) against this code location: it broke once
    unnoticed when the schedules gained a resource, as nothing but the demo called it."""
    from backup_pipelines.devstack import demo

    with dg.instance_for_test() as instance:
        backups = demo.run_backups_like_the_daemon(definitions, instance)
        monitoring = demo.run_monitoring_like_the_daemon(definitions, instance)
    assert [job for job, _partition, _ok in backups].count("workspace_backup_job") == 3
    assert ("postgres_full_backup_job", last_completed_date(), True) in backups
    assert all(ok for _job, _name, ok in backups + monitoring), backups + monitoring
    assert {name for _job, name, _ok in monitoring} >= {"postgres/workspace_dump:rpo_met"}
