"""The RPO sensor against a real store, a real Dagster instance and a real HTTP receiver:
one alert per breach, none repeated, one per recovery; never-backed-up workspaces are late."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from backup_pipelines.defs.monitoring import rpo as rpo_defs
from backup_pipelines.defs.resources import (
    BackupStoreResource,
    PolicyResource,
    WorkspaceRegistryResource,
)
from backup_pipelines.lib.monitoring import alerts
from backup_pipelines.lib.store import ArtifactRef, LocalStore

WORKSPACE_DUMP = "postgres/workspace_dump"
NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


def commit_artifact(store, asset: str, captured: datetime, workspace: str | None) -> None:
    """A real committed artifact whose data represents `captured` (the daily partition of the
    day before it was captured, as the schedule writes it)."""
    day = (captured - timedelta(days=1)).date().isoformat()
    with store.begin(ArtifactRef(asset, day, workspace)) as writer:
        writer.write_bytes("rows.copy.zst", b"data")
        writer.commit(
            captured_at=captured.isoformat(),
            counts={"rows": {}},
            source={},
            tool={"name": "t"},
            tables=[],
        )


@pytest.fixture
def setting(tmp_path, monkeypatch):
    """A store, an instance knowing three workspaces, the sensor's clock at NOW."""
    monkeypatch.setattr(rpo_defs, "utc_now", lambda: NOW)
    store = LocalStore(tmp_path / "store")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("workspaces", ["ws_fresh", "ws_missed"])
        resources = {
            "backup_store": BackupStoreResource(url=f"file://{store.root}"),
            "policy": PolicyResource(),
            # No SQL source: every known workspace is held to the RPO.
            "workspace_registry": WorkspaceRegistryResource(),
        }
        yield store, instance, resources


def tick(sensor, instance, resources, cursor):
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        result = sensor(context)
    return result


def rpo_evaluation(result, asset: str = WORKSPACE_DUMP) -> dg.AssetCheckEvaluation:
    (evaluation,) = [e for e in result.asset_events if e.asset_key == dg.AssetKey(asset.split("/"))]
    assert evaluation.check_name == "rpo_met"
    return evaluation


def test_missed_partition_alerts_once_then_recovery_once(setting, alert_receiver):
    store, instance, resources = setting
    sensor = rpo_defs.build_rpo_sensor([WORKSPACE_DUMP])
    commit_artifact(store, WORKSPACE_DUMP, NOW - timedelta(hours=8), "ws_fresh")
    # ws_missed: last night's backup never happened; the newest is from the night before.
    commit_artifact(store, WORKSPACE_DUMP, NOW - timedelta(hours=32), "ws_missed")

    result = tick(sensor, instance, resources, None)
    assert len(alert_receiver.webhook) == 1
    payload = alert_receiver.webhook[0]
    assert payload["kind"] == "rpo_breach"
    assert payload["workspace"] == "ws_missed"
    assert payload["asset"] == WORKSPACE_DUMP
    assert payload["details"]["age_hours"] == pytest.approx(32.0)
    assert payload["details"]["target_hours"] == 24.0
    assert payload["details"]["newest_date"] == "2026-11-20"
    assert payload["url"] == "https://dagster.example.test/assets/postgres/workspace_dump"
    assert "ws_missed" in payload["text"] and "32.0 h" in payload["text"]
    evaluation = rpo_evaluation(result)
    assert not evaluation.passed
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    late = evaluation.metadata["late_workspaces"].value
    assert [(r["workspace"], r["age_hours"]) for r in late] == [("ws_missed", 32.0)]

    cursor = result.cursor
    for _ in range(3):  # the breach goes on: nothing repeated
        cursor = tick(sensor, instance, resources, cursor).cursor
    assert len(alert_receiver.webhook) == 1

    commit_artifact(store, WORKSPACE_DUMP, NOW - timedelta(minutes=5), "ws_missed")
    result = tick(sensor, instance, resources, cursor)
    assert [p["kind"] for p in alert_receiver.webhook] == ["rpo_breach", "rpo_recovered"]
    recovered = alert_receiver.webhook[1]
    assert recovered["workspace"] == "ws_missed"
    assert recovered["details"]["age_hours"] == pytest.approx(5 / 60, abs=0.01)
    assert rpo_evaluation(result).passed is False  # run history has not recorded it (below)
    assert "run history" in rpo_evaluation(result).description

    tick(sensor, instance, resources, result.cursor)
    assert len(alert_receiver.webhook) == 2


def test_within_grace_is_not_late(setting, alert_receiver):
    store, instance, resources = setting
    sensor = rpo_defs.build_rpo_sensor([WORKSPACE_DUMP])
    commit_artifact(store, WORKSPACE_DUMP, NOW - timedelta(hours=24, minutes=59), "ws_fresh")
    commit_artifact(store, WORKSPACE_DUMP, NOW - timedelta(hours=25, minutes=1), "ws_missed")
    result = tick(sensor, instance, resources, None)
    late = rpo_evaluation(result).metadata["late_workspaces"].value
    assert [r["workspace"] for r in late] == ["ws_missed"]
    assert [p["workspace"] for p in alert_receiver.webhook] == ["ws_missed"]


def test_never_backed_up_workspace_is_late(setting, alert_receiver):
    store, instance, resources = setting
    instance.add_dynamic_partitions("workspaces", ["ws_new"])
    for workspace in ("ws_fresh", "ws_missed"):
        commit_artifact(store, WORKSPACE_DUMP, NOW - timedelta(hours=2), workspace)
    sensor = rpo_defs.build_rpo_sensor([WORKSPACE_DUMP, "postgres/full_dump"])

    result = tick(sensor, instance, resources, None)
    late = rpo_evaluation(result).metadata["late_workspaces"].value
    assert [(r["workspace"], r["age_hours"]) for r in late] == [("ws_new", None)]
    full = rpo_evaluation(result, "postgres/full_dump")
    assert not full.passed  # the whole-database dump was never taken either
    assert full.metadata["late_workspaces"].value[0]["workspace"] is None
    by_workspace = {p["workspace"]: p for p in alert_receiver.webhook}
    assert set(by_workspace) == {"ws_new", None}
    assert "no backup in the last" in by_workspace["ws_new"]["title"]


def test_store_and_run_history_must_agree(setting, alert_receiver):
    store, instance, resources = setting
    for workspace in ("ws_fresh", "ws_missed"):
        commit_artifact(store, WORKSPACE_DUMP, NOW - timedelta(hours=2), workspace)
    key = dg.AssetKey(WORKSPACE_DUMP.split("/"))
    instance.report_runless_asset_event(
        dg.AssetMaterialization(key, partition="2026-11-21|ws_fresh")
    )
    # Dagster recorded ws_missed's partition, but the store no longer holds it.
    instance.report_runless_asset_event(
        dg.AssetMaterialization(key, partition="2026-11-22|ws_missed")
    )
    sensor = rpo_defs.build_rpo_sensor([WORKSPACE_DUMP])
    evaluation = rpo_evaluation(tick(sensor, instance, resources, None))
    assert not evaluation.passed
    assert evaluation.severity == dg.AssetCheckSeverity.WARN  # nobody is late
    (row,) = evaluation.metadata["history_disagreements"].value
    assert row["workspace"] == "ws_missed"
    assert "2026-11-22" in row["disagreement"] and "store" in row["disagreement"]
    assert alert_receiver.webhook == []


def test_a_failing_channel_is_retried_on_the_next_tick_not_fatal(setting, alert_receiver):
    store, instance, resources = setting
    commit_artifact(store, WORKSPACE_DUMP, NOW - timedelta(hours=2), "ws_fresh")
    sensor = rpo_defs.build_rpo_sensor([WORKSPACE_DUMP])
    alert_receiver.failures_left = 1000  # the webhook is down
    result = tick(sensor, instance, resources, None)
    assert alert_receiver.webhook == []
    assert "ws_missed" in result.cursor  # kept for the next tick

    alert_receiver.failures_left = 0
    result = tick(sensor, instance, resources, result.cursor)
    assert [(p["kind"], p["workspace"]) for p in alert_receiver.webhook] == [
        ("rpo_breach", "ws_missed")
    ]
    tick(sensor, instance, resources, result.cursor)
    assert len(alert_receiver.webhook) == 1


def test_slack_channel_posts_through_the_slack_client(setting, alert_receiver, monkeypatch):
    store, instance, resources = setting
    monkeypatch.delenv("ALERT_WEBHOOK_URL")
    monkeypatch.setenv("SLACK_TOKEN", "xoxb-test-secret")
    monkeypatch.setenv("SLACK_CHANNEL", "#backups")
    monkeypatch.setenv("SLACK_API_BASE_URL", f"{alert_receiver.url}/api/")
    commit_artifact(store, WORKSPACE_DUMP, NOW - timedelta(hours=2), "ws_fresh")
    sensor = rpo_defs.build_rpo_sensor([WORKSPACE_DUMP])
    result = tick(sensor, instance, resources, None)
    (message,) = alert_receiver.slack
    assert message["channel"] == "#backups"
    assert message["authorization"] == "Bearer xoxb-test-secret"
    assert "RPO missed for workspace ws_missed" in message["text"]
    assert "xoxb" not in result.cursor


def test_many_breaches_make_one_summary():
    from backup_pipelines.lib.monitoring import rpo

    items = [rpo.Freshness(WORKSPACE_DUMP, f"ws_{n}", 24.0, 60.0) for n in range(50)]
    (summary,) = rpo.alerts_for(items, "rpo_breach", lambda _a: None)
    assert summary.details["workspaces"] == 50
    assert len(rpo.alerts_for(items[:3], "rpo_breach", lambda _a: None)) == 3


def test_webhook_errors_never_show_the_url_path():
    channel = alerts.WebhookChannel("http://127.0.0.1:9/hooks/T000/secret-token")
    logged: list[str] = []
    undelivered = alerts.deliver(
        [alerts.Alert(kind="run_failed", title="x")],
        [channel],
        logged.append,
        sleep=lambda _s: None,
    )
    assert len(undelivered) == 1
    assert logged and not any("secret-token" in line for line in logged)


def test_health_report_table_shows_rpo_and_last_drill_per_workspace(setting):
    from backup_pipelines.defs.monitoring import health

    store, instance, resources = setting
    commit_artifact(store, WORKSPACE_DUMP, NOW - timedelta(hours=3), "ws_fresh")
    # ws_missed's newest backup is 10 days old: beyond the sensor's window, not the report's.
    commit_artifact(store, WORKSPACE_DUMP, NOW - timedelta(days=10), "ws_missed")
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            health.RESTORE_DRILL,
            metadata={
                "results": dg.MetadataValue.json(
                    [
                        {
                            "workspace": "ws_fresh",
                            "date": "2026-11-20",
                            "seconds": 42.5,
                            "passed": True,
                            "met_rto": True,
                        },
                        {
                            "workspace": "ws_missed",
                            "date": "2026-11-11",
                            "seconds": 1200.0,
                            "passed": True,
                            "met_rto": False,
                        },
                    ]
                )
            },
        )
    )
    report_defs = health.build_health_defs([WORKSPACE_DUMP])
    (report_asset,) = report_defs.assets
    result = dg.materialize([report_asset], instance=instance, resources=resources)
    (materialization,) = result.asset_materializations_for_node(report_asset.op.name)
    rows = {r.data["workspace"]: r.data for r in materialization.metadata["report"].value.records}
    assert rows["ws_fresh"]["rpo"] == "OK"
    assert rows["ws_fresh"]["age_hours"] == pytest.approx(3.0)
    assert rows["ws_fresh"]["drill"] == "OK" and rows["ws_fresh"]["drill_seconds"] == 42.5
    assert rows["ws_missed"]["rpo"] == "LATE"
    assert rows["ws_missed"]["age_hours"] == pytest.approx(240.0)
    assert rows["ws_missed"]["drill"] == "RTO MISSED"
    assert materialization.metadata["workspaces_late"].value == 1


def test_a_policy_file_may_set_one_key_and_keep_every_other_default(tmp_path):
    from backup_pipelines.lib.errors import ConfigError
    from backup_pipelines.lib.policy import Policy, load_policy

    path = tmp_path / "policy.yaml"
    path.write_text("rpo_hours: 6\nrto_minutes: 30\n")
    policy = load_policy(path)
    assert (policy.rpo_hours, policy.rto_minutes) == (6, 30)
    assert policy.typesense_collection == Policy.typesense_collection
    path.write_text('qdrant_collections: ["agent"]\n')
    with pytest.raises(ConfigError, match="lacks"):
        load_policy(path)


def test_rpo_check_with_no_workspace_yet_passes_and_says_so():
    fields = rpo_defs.rpo_check_result([])
    assert fields["passed"] is True
    assert "all 0 workspace(s)" in fields["description"]


def test_rpo_check_runs_on_demand_from_a_job(setting):
    from backup_pipelines.defs.postgres import defs as postgres_defs

    store, instance, resources = setting
    commit_artifact(store, WORKSPACE_DUMP, NOW - timedelta(hours=1), "ws_fresh")
    checks = rpo_defs.build_rpo_checks([WORKSPACE_DUMP])
    check_keys = [key for check in checks for key in check.check_keys]
    job = dg.define_asset_job("rpo_on_demand", selection=dg.AssetSelection.checks(*check_keys))
    defs = dg.Definitions.merge(
        postgres_defs,
        dg.Definitions(
            asset_checks=checks,
            jobs=[job],
            resources={**resources, "postgres_db": dg.ResourceDefinition.none_resource()},
        ),
    )
    result = defs.resolve_job_def("rpo_on_demand").execute_in_process(instance=instance)
    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed
    assert evaluation.description.startswith("1 of 2 workspace(s) past the RPO")


def test_a_rerun_of_the_same_partition_is_seen_on_the_next_tick(setting, alert_receiver):
    store, instance, resources = setting
    sensor = rpo_defs.build_rpo_sensor([WORKSPACE_DUMP])
    commit_artifact(store, WORKSPACE_DUMP, NOW - timedelta(hours=2), "ws_fresh")
    commit_artifact(store, WORKSPACE_DUMP, NOW - timedelta(hours=30), "ws_missed")
    cursor = tick(sensor, instance, resources, None).cursor
    # The same partition (date) re-run later: a new manifest, so captured_at is read again.
    day = (NOW - timedelta(hours=30, days=1)).date().isoformat()
    ref = ArtifactRef(WORKSPACE_DUMP, day, "ws_missed")
    with store.begin(ref) as writer:
        writer.write_bytes("rows.copy.zst", b"data")
        writer.commit(
            captured_at=(NOW - timedelta(hours=1)).isoformat(),
            counts={},
            source={},
            tool={},
            tables=[],
        )
    result = tick(sensor, instance, resources, cursor)
    assert [p["kind"] for p in alert_receiver.webhook] == ["rpo_breach", "rpo_recovered"]
    assert rpo_evaluation(result).metadata["workspaces_late"].value == 0
