"""The production shape proven end to end: PostgreSQL storage, code server, webserver and
daemon as separate processes (conftest.py), with only the automation under test switched on.

Schedules: the test code location (deployed_definitions.py) is the production one with the
daily backup schedule ticking every minute until one tick has asked for runs: it fires once,
soon after start, and the daemon's own schedule loop ticks it with the real evaluation function;
nothing is called in-process."""

from __future__ import annotations

import shutil
import time

import pytest

from backup_pipelines.defs.partitions import last_completed_date, multi_key
from backup_pipelines.lib.store import ArtifactRef
from backup_pipelines_tests.deploy.conftest import WORKSPACES
from backup_pipelines_tests.deploy.deployment import wait_for
from backup_pipelines_tests.pg_checks import fingerprint
from backup_pipelines_tests.recovery.test_restore import index_state, lose_workspace_memory

# The package fixture (Dagster start, first backups) counts towards the first test's time.
pytestmark = pytest.mark.timeout(1800)

BACKUP_ASSETS = [
    "postgres/workspace_dump",
    "typesense/collection_export",
    "qdrant/collection_snapshot",
]
RUNS_SECONDS = 600
ALERT_SECONDS = 300


def tags_of(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["tags"]}


def test_deployed_discovery_sensor_and_schedule_back_up_every_workspace(deployment, backed_up):
    date = last_completed_date()
    for (workspace, origin), runs in backed_up.items():
        assert [r["status"] for r in runs] == ["SUCCESS"], (workspace, origin, runs)
        tags = tags_of(runs[0])
        # The per-workspace concurrency limit keys on this tag: every launch path must set it.
        assert tags["dagster/partition/workspace"] == workspace
    for workspace in WORKSPACES:
        for asset in BACKUP_ASSETS:
            assert deployment.store.read_manifest(ArtifactRef(asset, date, workspace)), asset
    # Only the automation switched on launched anything (BACKUP_AUTOMATION_OFF=*).
    for run in deployment.runs():
        tags = tags_of(run)
        assert tags.get("dagster/schedule_name") in {None, "workspace_backup_daily"}, tags
        assert tags.get("dagster/sensor_name") in {None, "workspace_discovery_sensor"}, tags


def test_deployed_backup_and_restore_of_one_workspace_never_overlap(deployment, backed_up):
    """Queued together, a backup and a restore of one workspace run one after the other (the
    tag concurrency limit of deploy/dagster.yaml), while max_concurrent_runs would allow both."""
    key = multi_key(last_completed_date(), "dp_acme")
    backup = deployment.launch_run("workspace_backup_job", key)
    restore = deployment.launch_run("workspace_restore_job", key, {"restore/mode": "merge"})
    runs = deployment.wait_runs_done([backup, restore], RUNS_SECONDS)
    assert [runs[backup]["status"], runs[restore]["status"]] == ["SUCCESS", "SUCCESS"], [
        deployment.errors_of(backup),
        deployment.errors_of(restore),
    ]
    for run in runs.values():
        assert tags_of(run)["dagster/partition/workspace"] == "dp_acme"
    first, second = sorted(runs.values(), key=lambda r: r["startTime"])
    assert first["endTime"] <= second["startTime"], (
        f"{first['jobName']} ran {first['startTime']}..{first['endTime']}, "
        f"{second['jobName']} started {second['startTime']}"
    )


def test_deployed_restore_backfill_runs_through_the_daemon(deployment, backed_up):
    stack = deployment.stack
    key = multi_key(last_completed_date(), "dp_globex")
    before = fingerprint(stack["db"], "dp_globex"), index_state(stack, "dp_globex")
    lose_workspace_memory(stack, "dp_globex")
    assert fingerprint(stack["db"], "dp_globex")["memory_entries"][0] == 0

    backfill_id = deployment.launch_backfill(
        "workspace_restore_job", [key], {"restore/mode": "merge"}
    )

    def finished():
        runs = deployment.runs({"dagster/backfill": backfill_id})
        backfill = deployment.backfill(backfill_id)
        done = runs and all(r["status"] in {"SUCCESS", "FAILURE", "CANCELED"} for r in runs)
        return (runs, backfill) if done and backfill["status"] != "REQUESTED" else None

    runs, backfill = wait_for(
        finished, RUNS_SECONDS, "the restore backfill", every=2, on_fail=deployment.logs_tail
    )
    assert [r["status"] for r in runs] == ["SUCCESS"], [
        (r["status"], deployment.errors_of(r["runId"])) for r in runs
    ] + [(r["jobName"], r["status"], tags_of(r)) for r in deployment.runs()]
    assert backfill["status"].startswith("COMPLETED"), backfill
    assert tags_of(runs[0])["dagster/partition"] == key
    after = fingerprint(stack["db"], "dp_globex"), index_state(stack, "dp_globex")
    assert after == before


def generically_alerted(runs: list[dict]) -> set[str]:
    """Failed runs the generic `run_failed` alert is for: not those that sent an alert of their
    own (a gate refusal alerts as `restore_refused` and tags its run)."""
    return {
        r["runId"]
        for r in runs
        if r["status"] == "FAILURE" and tags_of(r).get("backup_pipelines/alert_sent") != "true"
    }


def test_deployed_failed_runs_and_rpo_breach_alert_exactly_once(deployment, backed_up):
    """A failed ad-hoc materialization (`__ASSET_JOB`) and a failed restore each reach the
    webhook once; the RPO sensor, started like an operator would, reports the breaches it finds
    once, however many ticks follow."""
    receiver = deployment.receiver
    deployment.add_workspace_partition("dp_ghost")  # no rows, no collection, no backup
    # "Execute check" on a partition that was never backed up: the blocking verify check
    # finds no artifact and fails the `__ASSET_JOB` run.
    failed_materialization = deployment.materialize(
        [],
        multi_key(last_completed_date(), "dp_ghost"),
        checks=["typesense/collection_export:artifact_verifies"],
    )
    failed_restore = deployment.launch_run(
        "workspace_restore_job",
        multi_key("2026-03-01", "dp_acme"),  # never backed up
    )
    runs = deployment.wait_runs_done([failed_materialization, failed_restore], RUNS_SECONDS)
    assert {r["status"] for r in runs.values()} == {"FAILURE"}, runs
    assert runs[failed_materialization]["jobName"] == "__ASSET_JOB"

    # The first full dump (discovery takes it at start) lost: the whole database is late.
    shutil.rmtree(deployment.stack["store_dir"] / "postgres" / "full_dump")
    started = time.time()
    deployment.start_sensor("rpo_sensor")

    def run_failed_alerts() -> dict[str, list[dict]]:
        found: dict[str, list[dict]] = {}
        for alert in list(receiver.webhook):
            if alert["kind"] == "run_failed":
                found.setdefault(alert["details"]["run_id"], []).append(alert)
        return found

    last_change = {"count": -1, "at": started}

    def settled():
        if len(receiver.webhook) != last_change["count"]:
            last_change.update(count=len(receiver.webhook), at=time.time())
        breaches = [a for a in list(receiver.webhook) if a["kind"] == "rpo_breach"]
        alerted = run_failed_alerts()
        if not breaches or not {failed_materialization, failed_restore} <= set(alerted):
            return None
        # Run retries (deploy/dagster.yaml) add failed runs of their own: all finished first.
        runs = deployment.runs()
        if any(r["status"] not in {"SUCCESS", "FAILURE", "CANCELED"} for r in runs):
            return None
        if not generically_alerted(runs) <= set(alerted):
            return None
        # Then several more ticks of both sensors with nothing new, to see nothing repeated.
        last = last_change["at"]
        rpo_ticks = [t for t in deployment.ticks("rpo_sensor") if t["timestamp"] > last]
        alert_ticks = [t for t in deployment.ticks("run_alert_sensor") if t["timestamp"] > last]
        return len(rpo_ticks) >= 3 and len(alert_ticks) >= 3

    wait_for(settled, ALERT_SECONDS, "the alerts and three quiet ticks", every=3)

    alerted = run_failed_alerts()
    assert set(alerted) == generically_alerted(deployment.runs())
    assert all(len(a) == 1 for a in alerted.values()), alerted
    (asset_job_alert,) = alerted[failed_materialization]
    assert asset_job_alert["details"]["job"] == "__ASSET_JOB"
    assert asset_job_alert["url"] == (f"https://dagster.example.test/runs/{failed_materialization}")

    breaches = [a for a in receiver.webhook if a["kind"] == "rpo_breach"]
    by_subject = {}
    for alert in breaches:
        by_subject.setdefault(alert["workspace"], []).append(alert)
    # Late: the whole database (its dump lost, its daily schedule switched off here). Not the
    # ghost workspace: a partition the SQL registry never listed is not watched. The two real
    # workspaces were backed up minutes ago.
    assert list(by_subject) == [None], breaches
    assert all(len(a) == 1 for a in by_subject.values()), breaches
    assert "postgres/full_dump" in by_subject[None][0]["asset"]
    assert not [a for a in receiver.webhook if a["kind"] == "rpo_recovered"]
