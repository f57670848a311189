"""The automation switch (BACKUP_AUTOMATION_OFF/ON) and alerts on failed `__ASSET_JOB` runs
("Materialize" in the UI, `dagster asset materialize`)."""

from __future__ import annotations

import dagster as dg
import pytest

from backup_pipelines.defs import automation
from backup_pipelines.defs.monitoring import run_alerts
from backup_pipelines.defs.resources import PolicyResource

SENSORS = {"workspace_discovery_sensor", "rpo_sensor", "run_alert_sensor"}
SCHEDULES = {
    "postgres_full_backup_daily",
    "workspace_backup_daily",
    "backup_health_report_hourly",
    "restore_drill_weekly",
    "retention_daily",
}


@pytest.fixture
def location_env(monkeypatch, tmp_path):
    # Loading the code location needs no live server: the stores are only named.
    monkeypatch.setenv("DATABASE_URL", "postgresql://backup@127.0.0.1:9/agent_memory")
    monkeypatch.setenv("TYPESENSE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("TYPESENSE_API_KEY", "unused")
    monkeypatch.setenv("QDRANT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("BACKUP_STORE_URL", f"file://{tmp_path}/store")
    for name in (automation.OFF_VARIABLE, automation.ON_VARIABLE):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def statuses(defs: dg.Definitions) -> dict[str, str]:
    return {d.name: d.default_status.value for d in [*defs.sensors, *defs.schedules]}


def test_everything_runs_by_default(location_env):
    from backup_pipelines.definitions import build_definitions

    found = statuses(build_definitions())
    assert set(found) == SENSORS | SCHEDULES
    assert set(found.values()) == {"RUNNING"}


def test_switch_stops_all_but_the_named_ones(location_env):
    from backup_pipelines.definitions import build_definitions

    location_env.setenv(automation.OFF_VARIABLE, "*")
    location_env.setenv(automation.ON_VARIABLE, "workspace_discovery_sensor, run_alert_sensor")
    defs = build_definitions()
    found = statuses(defs)
    running = {name for name, status in found.items() if status == "RUNNING"}
    assert running == {"workspace_discovery_sensor", "run_alert_sensor"}
    # Only the default changed: the schedule still targets its job and the code location loads.
    assert defs.resolve_schedule_def("workspace_backup_daily").job_name == "workspace_backup_job"
    defs.resolve_all_job_defs()


def test_switch_stops_named_ones(location_env):
    from backup_pipelines.definitions import build_definitions

    location_env.setenv(automation.OFF_VARIABLE, "retention_daily,restore_drill_weekly")
    found = statuses(build_definitions())
    stopped = {name for name, status in found.items() if status == "STOPPED"}
    assert stopped == {"retention_daily", "restore_drill_weekly"}


def test_a_misspelt_name_stops_the_load(location_env):
    from backup_pipelines.definitions import build_definitions

    location_env.setenv(automation.OFF_VARIABLE, "retention_dialy")
    with pytest.raises(automation.AutomationSwitchError, match="retention_dialy"):
        build_definitions()


# --------------------------------------------------------------------------------------------
# __ASSET_JOB


@dg.asset(key=["postgres", "workspace_dump"])
def ours():
    raise OSError("connection to the source database refused")


@dg.asset(key=["someone_else", "table"])
def theirs():
    raise OSError("not ours to alert on")


def test_a_failed_materialization_of_our_asset_alerts_once(alert_receiver):
    defs = dg.Definitions(assets=[ours, theirs])
    asset_job = defs.resolve_implicit_global_asset_job_def()
    assert asset_job.name == run_alerts.ASSET_JOB
    sensor = run_alerts.build_run_alert_sensor(
        ["workspace_backup_job"], asset_keys={dg.AssetKey(["postgres", "workspace_dump"])}
    )
    with dg.instance_for_test() as instance:
        failed = asset_job.execute_in_process(
            instance=instance, asset_selection=[ours.key], raise_on_error=False
        )
        other = asset_job.execute_in_process(
            instance=instance, asset_selection=[theirs.key], raise_on_error=False
        )
        assert not failed.success and not other.success
        assert instance.get_run_by_id(failed.run_id).job_name == "__ASSET_JOB"

        cursor = None
        for _ in range(2):
            with dg.build_sensor_context(
                instance=instance, cursor=cursor, resources={"policy": PolicyResource()}
            ) as context:
                cursor = sensor(context).cursor
    (payload,) = alert_receiver.webhook
    assert payload["kind"] == "run_failed"
    assert payload["details"]["run_id"] == failed.run_id
    assert payload["details"]["job"] == "__ASSET_JOB"
    assert "postgres/workspace_dump" in payload["title"]
    assert "connection to the source database refused" in payload["details"]["error"]


def test_a_failed_run_updated_later_is_not_alerted_again(alert_receiver):
    """Run retries tag the failed run when they launch its retry, which moves its update time
    past the sensor's high-water mark: the cursor remembers what was already alerted."""
    defs = dg.Definitions(assets=[ours])
    asset_job = defs.resolve_implicit_global_asset_job_def()
    sensor = run_alerts.build_run_alert_sensor([], asset_keys={ours.key})
    with dg.instance_for_test() as instance:
        failed = asset_job.execute_in_process(
            instance=instance, asset_selection=[ours.key], raise_on_error=False
        )
        cursor = None
        for tick in range(3):
            if tick == 1:
                instance.add_run_tags(failed.run_id, {"dagster/will_retry": "true"})
            with dg.build_sensor_context(
                instance=instance, cursor=cursor, resources={"policy": PolicyResource()}
            ) as context:
                cursor = sensor(context).cursor
    assert [a["details"]["run_id"] for a in alert_receiver.webhook] == [failed.run_id]
