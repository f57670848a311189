"""Failed and stuck runs alert once each, through a real HTTP receiver."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from backup_pipelines.defs.monitoring import run_alerts
from backup_pipelines.defs.resources import PolicyResource
from backup_pipelines.lib.policy import Policy


@dg.op
def dump_database():
    raise OSError("disk full on /backups")


@dg.job
def nightly_backup_job():
    dump_database()


@dg.job
def unrelated_job():
    dump_database()


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def tick(sensor, instance, cursor):
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"policy": PolicyResource()}
    ) as context:
        return sensor(context).cursor


def test_a_failed_run_alerts_once_with_its_error(instance, alert_receiver):
    sensor = run_alerts.build_run_alert_sensor(["nightly_backup_job"])
    failed = nightly_backup_job.execute_in_process(instance=instance, raise_on_error=False)
    unrelated_job.execute_in_process(instance=instance, raise_on_error=False)
    self_alerted = nightly_backup_job.execute_in_process(
        instance=instance, raise_on_error=False, tags={run_alerts.ALERT_SENT_TAG: "true"}
    )
    assert not failed.success and not self_alerted.success

    cursor = tick(sensor, instance, None)
    (payload,) = alert_receiver.webhook
    assert payload["kind"] == "run_failed"
    assert payload["details"]["run_id"] == failed.run_id
    assert "disk full on /backups" in payload["details"]["error"]
    assert payload["url"] == f"https://dagster.example.test/runs/{failed.run_id}"

    tick(sensor, instance, cursor)
    assert len(alert_receiver.webhook) == 1


def test_a_run_queued_far_too_long_alerts_once(instance, alert_receiver, monkeypatch):
    sensor = run_alerts.build_run_alert_sensor(["nightly_backup_job"])
    # What the queued run coordinator stores for a submitted run (no code server here).
    from dagster._core.remote_origin import (
        RegisteredCodeLocationOrigin,
        RemoteJobOrigin,
        RemoteRepositoryOrigin,
    )

    origin = RemoteJobOrigin(
        RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("backup_pipelines"), "__repository__"),
        "nightly_backup_job",
    )
    run = instance.create_run_for_job(
        nightly_backup_job, status=dg.DagsterRunStatus.QUEUED, remote_job_origin=origin
    )
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.QUEUED
    cursor = tick(sensor, instance, None)
    assert alert_receiver.webhook == []  # just queued

    later = datetime.now(UTC) + timedelta(minutes=Policy().queued_max_minutes + 5)
    monkeypatch.setattr(run_alerts, "utc_now", lambda: later)
    cursor = tick(sensor, instance, cursor)
    (payload,) = alert_receiver.webhook
    assert payload["kind"] == "run_stuck"
    assert payload["details"]["run_id"] == run.run_id
    assert payload["details"]["state"] == "queued"
    tick(sensor, instance, cursor)
    assert len(alert_receiver.webhook) == 1


def test_a_run_running_far_beyond_usual_alerts(instance, alert_receiver, monkeypatch):
    sensor = run_alerts.build_run_alert_sensor(["nightly_backup_job"])
    run = instance.create_run_for_job(nightly_backup_job, status=dg.DagsterRunStatus.NOT_STARTED)
    instance.handle_run_event(
        run.run_id,
        dg.DagsterEvent(
            event_type_value=dg.DagsterEventType.RUN_START.value, job_name=run.job_name
        ),
    )
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
    policy = Policy()
    no_history_limit = policy.stuck_run_factor * policy.stuck_run_min_minutes

    monkeypatch.setattr(
        run_alerts, "utc_now", lambda: datetime.now(UTC) + timedelta(minutes=no_history_limit - 5)
    )
    cursor = tick(sensor, instance, None)
    assert alert_receiver.webhook == []

    monkeypatch.setattr(
        run_alerts, "utc_now", lambda: datetime.now(UTC) + timedelta(minutes=no_history_limit + 5)
    )
    cursor = tick(sensor, instance, cursor)
    (payload,) = alert_receiver.webhook
    assert payload["details"]["state"] == "running"
    assert payload["details"]["limit_minutes"] == no_history_limit
    tick(sensor, instance, cursor)
    assert len(alert_receiver.webhook) == 1


def test_stuck_threshold_follows_the_usual_duration():
    policy = Policy(stuck_run_factor=3.0, stuck_run_min_minutes=60.0)
    assert run_alerts.stuck_threshold_minutes(policy, 50.0) == 150.0
    assert run_alerts.stuck_threshold_minutes(policy, 5.0) == 60.0  # never below the floor
    assert run_alerts.stuck_threshold_minutes(policy, None) == 180.0
