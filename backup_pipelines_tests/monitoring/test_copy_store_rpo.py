"""The copy store's RPO through the real RPO sensor (real stores, a real Dagster instance and
a real HTTP receiver): the primary fresh and the copy days behind raises one
`copy_rpo_breach` naming the copy store, once; the copy catching up raises one recovery; the
health report shows the copy's state per workspace."""

from __future__ import annotations

from datetime import timedelta

import pytest

from backup_pipelines.defs.monitoring import health
from backup_pipelines.defs.monitoring import rpo as rpo_defs
from backup_pipelines.lib.monitoring import rpo, rpo_copy
from backup_pipelines.lib.policy import Policy
from backup_pipelines.lib.store import LocalStore
from backup_pipelines.lib.store.copy import copy_missing, select_artifacts
from backup_pipelines_tests.monitoring.test_rpo import (
    NOW,
    WORKSPACE_DUMP,
    commit_artifact,
    setting,  # noqa: F401 (a fixture)
    tick,
)


@pytest.fixture
def copy_store(tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "copy")
    monkeypatch.setenv("BACKUP_COPY_STORE_URL", f"file://{store.root}")
    return store


def test_copy_store_behind_alerts_naming_it_once_then_recovers(
    setting,  # noqa: F811
    copy_store,
    alert_receiver,
):
    store, instance, resources = setting
    sensor = rpo_defs.build_rpo_sensor([WORKSPACE_DUMP])
    for workspace in ("ws_fresh", "ws_missed"):
        commit_artifact(store, WORKSPACE_DUMP, NOW - timedelta(hours=80), workspace)
    copy_missing(store, copy_store, select_artifacts(store))  # the copy was up three days ago
    for workspace in ("ws_fresh", "ws_missed"):
        commit_artifact(store, WORKSPACE_DUMP, NOW - timedelta(hours=8), workspace)

    result = tick(sensor, instance, resources, None)

    kinds = sorted((p["kind"], p["workspace"]) for p in alert_receiver.webhook)
    assert kinds == [("copy_rpo_breach", "ws_fresh"), ("copy_rpo_breach", "ws_missed")]
    title = alert_receiver.webhook[0]["title"]
    assert f"copy store {copy_store.describe()}" in title
    assert "primary fresh, copy 3 day(s) behind" in title
    assert alert_receiver.webhook[0]["details"]["days_behind"] == 3
    # The primary's own check finds nothing late (no run history here, hence not "passed"):
    # only the copy is behind.
    (evaluation,) = result.asset_events
    assert evaluation.description.startswith("all 2 workspace(s) within the RPO")

    again = tick(sensor, instance, resources, result.cursor)
    assert len(alert_receiver.webhook) == 2  # no repeat while still behind

    copy_missing(store, copy_store, select_artifacts(store))  # catch up
    tick(sensor, instance, resources, again.cursor)
    assert sorted(p["kind"] for p in alert_receiver.webhook[2:]) == ["copy_rpo_recovered"] * 2


def test_copy_store_health_report_column(tmp_path):
    primary, copy = LocalStore(tmp_path / "p"), LocalStore(tmp_path / "c")
    commit_artifact(primary, WORKSPACE_DUMP, NOW - timedelta(hours=8), "ws_a")
    commit_artifact(primary, WORKSPACE_DUMP, NOW - timedelta(hours=8), "ws_b")
    commit_artifact(copy, WORKSPACE_DUMP, NOW - timedelta(hours=56), "ws_a")
    copy_missing(primary, copy, select_artifacts(primary, workspace="ws_b"))
    policy = Policy()
    subjects = {WORKSPACE_DUMP: ["ws_a", "ws_b"]}
    evaluation = rpo.evaluate(primary, subjects, {}, policy, NOW)
    copied = rpo_copy.evaluate_copy(copy, evaluation, policy, NOW)

    copies = health.copy_states(evaluation, copied)
    rows = {r["workspace"]: r for r in health.workspace_rows(evaluation, {}, copies=copies)}

    assert rows["ws_a"]["rpo"] == "OK"
    assert rows["ws_a"]["copy"].startswith("LATE postgres/workspace_dump: primary fresh, copy 2")
    assert rows["ws_b"]["copy"] == "OK"
    without = health.workspace_rows(evaluation, {})
    assert all(r["copy"] is None for r in without)  # an empty cell, not a made-up state
    assert "copy" in {c.name for c in health.WORKSPACE_COLUMNS}  # the column is declared
