"""The operator's day in a real browser (Playwright on Debian's chromium) against the deployed
shape: a typo workspace refused, a dry run that leaves the restore to do, the real restore, the
gate's refusal read as a decision, a workspace deleted in SQL alerted exactly once, and the
health report read at a glance. Every step waits for what it needs to see, never a fixed
sleep; screenshots go to .artifacts/screenshots/operator_*.png."""

from __future__ import annotations

import re
import time

import psycopg
import pytest

from backup_pipelines.defs.partitions import last_completed_date, multi_key
from backup_pipelines.devstack import sample_data
from backup_pipelines_tests.conftest import SMALL
from backup_pipelines_tests.deploy.conftest import (
    days_before_last_completed,
    index_workspaces,
    make_inconsistent_partition,
)
from backup_pipelines_tests.deploy.deployment import FINISHED, wait_for
from backup_pipelines_tests.pg_checks import fingerprint
from backup_pipelines_tests.recovery.test_restore import index_state, lose_workspace_memory

# The package fixture (Dagster start, first backups) counts towards the first test's time.
pytestmark = pytest.mark.timeout(1800)

RUNS_SECONDS = 600
ALERT_SECONDS = 300
RESTORE_JOB = "workspace_restore_job"
DRY_RUN_JOB = "workspace_restore_dry_run_job"
TYPO = "dp_acmee"  # dp_acme, mistyped in the Materialize dialog
VANISHING = "dp_vanishing"  # a workspace of this file's own, deleted in SQL
QUIET_TICKS = 3
# Children first: what an accidental deletion of a workspace in the platform's SQL does.
WORKSPACE_TABLES = [
    "knowledge_graph_edges",
    "knowledge_graph_nodes",
    "turns",
    "memory_entries",
    "sessions",
    "workspaces",
]


def tags_of(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["tags"]}


def store_paths_naming(deployment, workspace: str) -> list[str]:
    """Every file or folder of the store (artifacts, leases, markers) that names `workspace`."""
    root = deployment.stack["store_dir"]
    return [str(p) for p in root.rglob("*") if workspace in str(p.relative_to(root))]


def only_run_of_backfill(deployment, backfill_id: str) -> dict:
    def finished():
        runs = deployment.runs({"dagster/backfill": backfill_id})
        return runs if runs and all(r["status"] in FINISHED for r in runs) else None

    (run,) = wait_for(
        finished, RUNS_SECONDS, f"backfill {backfill_id}", every=2, on_fail=deployment.logs_tail
    )
    return run


def alerts_of(deployment, kind: str, workspace: str | None = None) -> list[dict]:
    return [
        a
        for a in list(deployment.receiver.webhook)
        if a["kind"] == kind and (workspace is None or a.get("workspace") == workspace)
    ]


def ticks_after(deployment, sensor: str, moment: float) -> int:
    return len([t for t in deployment.ticks(sensor) if t["timestamp"] > moment])


# --------------------------------------------------------------------------------------------
# (a) a typo in "Add a partition"


def test_operator_day_typo_workspace_is_refused(deployment, backed_up, page, screenshots):
    """The Materialize dialog's "Add a partition" takes `dp_acmee`; its backup fails at once,
    naming the registry, and nothing about it reaches the store."""
    date = last_completed_date()
    page.goto(f"{deployment.url}/assets/postgres/workspace_dump")
    page.get_by_role("button", name="Materialize").first.click()
    dialog = page.locator("[role=dialog]").filter(has_text="Launch runs to materialize")
    dialog.wait_for()
    dialog.get_by_role("button", name="Add a partition").click()
    add = page.locator("[role=dialog]").filter(has_text="Add a partition for workspaces")
    add.get_by_placeholder("name").fill(TYPO)
    add.get_by_role("button", name="Save").click()
    add.wait_for(state="hidden")
    dialog.get_by_role("button", name="Latest").click()  # the last completed day
    dialog.get_by_text("Select a partition or create one").click()
    page.get_by_placeholder("Filter partitions").fill(TYPO)
    page.locator("label").filter(has_text=TYPO).first.click()
    page.keyboard.press("Escape")
    launch = dialog.get_by_role("button", name="Launch 1 run")
    launch.wait_for()
    page.screenshot(path=screenshots / "operator_typo_materialize_dialog.png")
    launch.click()
    page.get_by_text(re.compile(r"Launched run \w+")).wait_for()

    key = multi_key(date, TYPO)
    runs = wait_for(
        lambda: deployment.runs({"dagster/partition": key}), RUNS_SECONDS, f"a run of {key}"
    )
    (run,) = runs
    run = deployment.wait_runs_done([run["runId"]], RUNS_SECONDS)[run["runId"]]
    errors = " ".join(deployment.errors_of(run["runId"]))
    assert run["status"] == "FAILURE", run
    assert (
        f"workspace {TYPO} is not in the workspace registry table public.workspaces: "
        "nothing backed up, nothing written" in errors
    ), errors
    assert store_paths_naming(deployment, TYPO) == []

    page.goto(f"{deployment.url}/runs/{run['runId']}")
    page.get_by_text(
        re.compile(f"workspace {TYPO} is not in the workspace registry")
    ).first.wait_for()
    page.screenshot(path=screenshots / "operator_typo_refused_run.png")


# --------------------------------------------------------------------------------------------
# (b) the dry run, then (c) the real restore


def restore_backfill_in_the_ui(page, deployment, key: str, screenshots) -> str:
    """The restore job's "Launch backfill…" with the dialog's default status filters (missing
    and failed only): the partition is offered only if it was never really restored."""
    page.goto(f"{deployment.url}/locations/backup_pipelines/jobs/{RESTORE_JOB}/partitions")
    page.get_by_role("button", name="Launch backfill…").click()
    dialog = page.locator("[role=dialog]").filter(has_text=f"Launch {RESTORE_JOB} backfill")
    dialog.wait_for()
    selection = dialog.get_by_placeholder(re.compile("^ex: "))
    selection.fill(f'"{key}"')
    selection.press("Enter")
    dialog.get_by_text("Missing (1)").wait_for()
    dialog.get_by_text("Completed (0)").wait_for()
    submit = dialog.get_by_role("button", name="Submit 1 run")
    submit.wait_for()
    page.screenshot(path=screenshots / "operator_restore_backfill_dialog.png")
    submit.click()
    toast = page.get_by_text(re.compile(r"Created backfill \w+"))
    toast.wait_for()
    return re.search(r"Created backfill (\w+)", toast.inner_text()).group(1)


def test_operator_day_dry_run_leaves_the_partition_restorable_then_restore(
    deployment, backed_up, page, screenshots
):
    stack = deployment.stack
    workspace = "dp_globex"
    key = multi_key(days_before_last_completed(2), workspace)
    backup = deployment.launch_run("workspace_backup_job", key)
    assert deployment.wait_runs_done([backup], RUNS_SECONDS)[backup]["status"] == "SUCCESS", (
        deployment.errors_of(backup)
    )
    before = fingerprint(stack["db"], workspace), index_state(stack, workspace)
    # The incident: most of the workspace's rows deleted, both collections dropped (the
    # workspace row and one memory stay, so it is still in the registry).
    with psycopg.connect(stack["db"]) as conn:
        kept = conn.execute(
            "SELECT min(id) FROM memory_entries WHERE workspace_id = %s", (workspace,)
        ).fetchone()[0]
    lose_workspace_memory(stack, workspace, keep_memory_id=kept)
    damaged = fingerprint(stack["db"], workspace)
    lost_rows = sum(before[0][t][0] - damaged[t][0] for t in damaged)
    assert lost_rows > 0

    # (b) The dry run: a backfill of its own job.
    dry_run = only_run_of_backfill(deployment, deployment.launch_backfill(DRY_RUN_JOB, [key]))
    assert dry_run["status"] == "SUCCESS", deployment.errors_of(dry_run["runId"])
    assert fingerprint(stack["db"], workspace) == damaged  # nothing written
    plan = deployment.output_metadata(dry_run["runId"], "plan_workspace_restore")
    assert plan["decision"]["text"] == "RESTORE: SQL rows and indexes from their artifacts"
    assert plan["rows_to_insert"]["intValue"] == lost_rows
    page.goto(f"{deployment.url}/runs/{dry_run['runId']}")
    page.get_by_text("RESTORE: SQL rows and indexes from their artifacts").first.wait_for()
    # The plan is one long event: its full message shows every table.
    page.get_by_role("button", name="View full message").last.click()
    shown = page.locator("[role=dialog]").filter(has_text="plan_workspace_restore")
    shown.get_by_role("button", name="Done").wait_for()
    sql_plan = shown.locator("table").filter(has_text="already_present").last
    sql_plan.get_by_text("public.memory_entries", exact=True).wait_for()
    index_plan = shown.locator("table").filter(has_text="entries_live_now").last
    for collection in ("dp_memory_dp_globex", "dp_agent_dp_globex"):
        index_plan.get_by_text(collection, exact=True).wait_for()
    assert index_plan.get_by_text(re.compile("^collection missing: created with")).count() == 2
    page.screenshot(path=screenshots / "operator_dry_run_plan.png", animations="disabled")
    shown.get_by_role("button", name="Done").click()
    # Its own job's partition is done; the restore job's is not.
    assert deployment.partition_run_statuses(DRY_RUN_JOB)[key] == "SUCCESS"
    assert key not in deployment.partition_run_statuses(RESTORE_JOB)

    # (c) The real restore, from the backfill dialog as it opens (no "Completed" to tick).
    run = only_run_of_backfill(
        deployment, restore_backfill_in_the_ui(page, deployment, key, screenshots)
    )
    assert run["status"] == "SUCCESS", deployment.errors_of(run["runId"])
    assert run["jobName"] == RESTORE_JOB
    assert "restore/dry_run" not in tags_of(run)
    assert (fingerprint(stack["db"], workspace), index_state(stack, workspace)) == before
    assert deployment.partition_run_statuses(RESTORE_JOB)[key] == "SUCCESS"
    page.goto(f"{deployment.url}/runs/{run['runId']}")
    page.get_by_text("rows_inserted").first.wait_for()
    page.get_by_text("verify_restored").first.wait_for()
    page.screenshot(path=screenshots / "operator_restore_run.png")


# --------------------------------------------------------------------------------------------
# (d) the gate's refusal


def test_operator_day_gate_refusal_reads_as_a_decision(deployment, backed_up, page, screenshots):
    stack = deployment.stack
    workspace = "dp_acme"
    date = days_before_last_completed(4)
    orphan = make_inconsistent_partition(stack, workspace, date)
    live_before = fingerprint(stack["db"], workspace)
    run_id = deployment.launch_run(RESTORE_JOB, multi_key(date, workspace))
    run = deployment.wait_runs_done([run_id], RUNS_SECONDS)[run_id]
    assert run["status"] == "FAILURE"
    assert fingerprint(stack["db"], workspace) == live_before  # nothing written

    page.goto(f"{deployment.url}/runs/{run_id}")
    refusal = page.get_by_text(re.compile("Restore refused: the consistency gate's verdict")).first
    refusal.wait_for()
    text = refusal.inner_text()
    assert f"{date}|{workspace} is FAIL" in text and "Nothing was written" in text, text
    assert "restore/override_gate" in text, text
    refusal.scroll_into_view_if_needed()
    page.screenshot(path=screenshots / "operator_gate_refusal_run.png")

    # The alert: one `restore_refused` with the verdict and its evidence; the generic
    # failed-run alert stays quiet for it, however many ticks of its sensor follow.
    def refused_and_quiet():
        refused = [
            a for a in alerts_of(deployment, "restore_refused") if a["details"]["run_id"] == run_id
        ]
        if not refused:
            return None
        ended = deployment.runs({"dagster/partition": multi_key(date, workspace)})
        ended = max(r["endTime"] or 0 for r in ended)
        return (
            refused if ticks_after(deployment, "run_alert_sensor", ended) >= QUIET_TICKS else None
        )

    (alert,) = wait_for(refused_and_quiet, ALERT_SECONDS, "the restore_refused alert", every=2)
    assert alert["workspace"] == workspace
    assert alert["details"]["verdict"] == "FAIL"
    assert alert["details"]["decision"].startswith("Restore refused: the consistency gate's")
    assert alert["url"] == f"https://dagster.example.test/runs/{run_id}"
    evidence = str(alert["details"]["evidence"])
    assert "orphan" in evidence and str(orphan) in evidence, evidence
    failed_alerts = [
        a for a in alerts_of(deployment, "run_failed") if a["details"].get("run_id") == run_id
    ]
    assert failed_alerts == []


# --------------------------------------------------------------------------------------------
# (f) a workspace deleted in SQL


def delete_workspace_in_sql(database_url: str, workspace: str) -> None:
    with psycopg.connect(database_url) as conn:  # one transaction, as an accidental DELETE
        for table in WORKSPACE_TABLES:
            conn.execute(f"DELETE FROM {table} WHERE workspace_id = %s", (workspace,))


def test_operator_day_workspace_deleted_in_sql_alerts_once(
    deployment, backed_up, page, screenshots
):
    stack = deployment.stack
    date = last_completed_date()
    # A new workspace: discovery adds it and backs it up at once.
    sample_data.seed(stack["db"], [VANISHING], SMALL)
    index_workspaces(stack, [VANISHING])

    def first_backup():
        runs = deployment.runs(
            {
                "dagster/sensor_name": "workspace_discovery_sensor",
                "dagster/partition": multi_key(date, VANISHING),
            }
        )
        return runs if runs and all(r["status"] in FINISHED for r in runs) else None

    (first,) = wait_for(first_backup, RUNS_SECONDS, f"discovery's first backup of {VANISHING}")
    assert first["status"] == "SUCCESS", deployment.errors_of(first["runId"])
    rows = sum(count for count, _ in fingerprint(stack["db"], VANISHING).values())

    delete_workspace_in_sql(stack["db"], VANISHING)
    first_seen: dict[str, float] = {}

    def alerted_then_quiet():
        vanished = alerts_of(deployment, "workspace_vanished", VANISHING)
        if not vanished:
            return None
        first_seen.setdefault("at", time.time())
        # Several more discovery ticks after the alert arrived, to see it is not repeated.
        quiet = ticks_after(deployment, "workspace_discovery_sensor", first_seen["at"])
        return vanished if quiet >= QUIET_TICKS else None

    (alert,) = wait_for(
        alerted_then_quiet, ALERT_SECONDS, f"the {VANISHING} alert, then quiet ticks", every=2
    )
    assert len(alerts_of(deployment, "workspace_vanished", VANISHING)) == 1
    details = alert["details"]
    assert details["newest_restorable_date"] == date
    assert details["rows_in_newest_backup"] == rows
    assert details["restore_command"] == (
        f"backup-pipelines restore workspace --date {date} --workspace {VANISHING}"
    )
    assert f"partition {date}|{VANISHING}" in details["backfill"]
    assert alert["title"].startswith(f"Workspace {VANISHING} is gone from the workspace registry")

    # The sensor's page: its cursor keeps the vanished workspace (and only absent ones).
    page.goto(f"{deployment.url}/locations/backup_pipelines/sensors/workspace_discovery_sensor")
    page.get_by_text(re.compile(re.escape(f'"{VANISHING}": {{"kind": "vanished"'))).first.wait_for()
    page.screenshot(path=screenshots / "operator_workspace_vanished_sensor.png")


# --------------------------------------------------------------------------------------------
# (e) the health report


def test_operator_day_health_report_is_readable(deployment, backed_up, page, screenshots):
    """Recorded by the RPO sensor's ticks (started as an operator would, if not yet): the
    workspace column first, the whole database in a table of its own, empty cells for none,
    and the table no wider than its panel."""
    started = time.time()
    if deployment.sensor_status("rpo_sensor") != "RUNNING":
        deployment.start_sensor("rpo_sensor")
    wait_for(
        lambda: ticks_after(deployment, "rpo_sensor", started) >= 1,
        ALERT_SECONDS,
        "a tick of rpo_sensor",
        every=2,
    )
    page.goto(f"{deployment.url}/assets/monitoring/backup_health_report")
    page.get_by_text("Recorded by rpo_sensor").first.wait_for()
    report = page.locator("table").filter(has_text="drill_seconds").last
    report.get_by_text("dp_globex", exact=True).wait_for()
    headers = report.locator("th").all_inner_texts()
    assert headers[0] == "workspace", headers
    rows = {r.split("\t")[0]: r.split("\t") for r in report.locator("tbody tr").all_inner_texts()}
    for workspace in ("dp_acme", "dp_globex"):
        assert rows[workspace][1] == "OK", rows
    assert not [w for w in rows if "whole database" in w or w.startswith("postgres/")], rows
    assert not [r for r in rows.values() if "-1" in r], rows
    whole = (
        page.locator("table")
        .filter(has_text="newest_backup")
        .filter(has_not_text="drill_seconds")
        .last
    )
    assert whole.locator("th").all_inner_texts()[0] == "backup"
    whole.get_by_text("postgres/full_dump", exact=True).wait_for()
    panel = page.locator("table").filter(has_text="workspaces_late").first
    assert report.bounding_box()["width"] <= panel.bounding_box()["width"]
    report.scroll_into_view_if_needed()
    page.screenshot(path=screenshots / "operator_health_report.png")
