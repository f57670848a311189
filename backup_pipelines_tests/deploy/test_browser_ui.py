"""The Dagster UI of the deployed shape in a real browser: Playwright for Python driving
Debian's chromium (no browser download ever). Every step waits for what it needs to see,
never a fixed sleep; each test saves a screenshot under .artifacts/screenshots/."""

from __future__ import annotations

import re

import pytest

from backup_pipelines.defs.partitions import last_completed_date, multi_key
from backup_pipelines_tests.deploy.conftest import (
    days_before_last_completed,
    make_inconsistent_partition,
)
from backup_pipelines_tests.deploy.deployment import wait_for
from backup_pipelines_tests.pg_checks import fingerprint

# The package fixture (Dagster start, first backups) counts towards the first test's time.
pytestmark = pytest.mark.timeout(1800)

RUNS_SECONDS = 600
# Within the partitions (policy partitions_start: by default a few months back), not a
# date the discovery sensor or the schedule backs up.
GATE_DATE = days_before_last_completed(3)
DRY_RUN_JOB = "workspace_restore_dry_run_job"


def test_browser_partitions_grid_shows_what_is_materialized(
    deployment, backed_up, page, screenshots
):
    date = last_completed_date()
    page.goto(f"{deployment.url}/assets/postgres/workspace_dump?view=partitions")
    # Two workspaces backed up for the last completed day; nothing failed.
    page.get_by_text("Materialized (2)").wait_for()
    page.get_by_text("Failed (0)").wait_for()
    for workspace in ("dp_acme", "dp_globex"):
        page.get_by_text(workspace, exact=True).first.wait_for()
    # Open one cell: its latest materialization with the artifact's metadata.
    page.get_by_text(date, exact=True).first.click()
    page.get_by_text("dp_acme", exact=True).first.click()
    page.get_by_text("sha256").first.wait_for()
    page.screenshot(path=screenshots / "partitions_grid.png", full_page=True)


def test_browser_launches_a_dry_run_restore_backfill(deployment, backed_up, page, screenshots):
    """The dry run is a job of its own: its backfill leaves the restore job's partition
    missing, so the real restore afterwards needs no "Completed" box ticked."""
    stack = deployment.stack
    key = multi_key(last_completed_date(), "dp_acme")
    sql_before = fingerprint(stack["db"], "dp_acme")
    page.goto(f"{deployment.url}/locations/backup_pipelines/jobs/{DRY_RUN_JOB}/partitions")
    page.get_by_role("button", name="Launch backfill…").click()
    dialog = page.locator("[role=dialog]").filter(has_text=f"Launch {DRY_RUN_JOB} backfill")
    dialog.wait_for()
    # Every status filter on: the partition counts whatever ran before.
    # (Styled checkboxes: the input itself is hidden, so the click is dispatched to it.)
    for box in dialog.locator("input[type=checkbox]").all():
        if not box.is_checked():
            box.dispatch_event("click")
    selection = dialog.get_by_placeholder(re.compile("^ex: "))
    selection.fill(f'"{key}"')
    selection.press("Enter")
    submit = dialog.get_by_role("button", name="Submit 1 run")
    submit.wait_for()
    page.screenshot(path=screenshots / "backfill_dialog_dry_run.png")
    submit.click()
    toast = page.get_by_text(re.compile(r"Created backfill \w+"))
    toast.wait_for()
    backfill_id = re.search(r"Created backfill (\w+)", toast.inner_text()).group(1)

    def finished():
        runs = deployment.runs({"dagster/backfill": backfill_id})
        if runs and all(r["status"] in {"SUCCESS", "FAILURE", "CANCELED"} for r in runs):
            return runs
        return None

    (run,) = wait_for(finished, RUNS_SECONDS, "the dry-run backfill", every=2)
    tags_of_run = {t["key"]: t["value"] for t in run["tags"]}
    assert run["status"] == "SUCCESS", deployment.errors_of(run["runId"])
    assert run["jobName"] == DRY_RUN_JOB
    assert tags_of_run["dagster/partition"] == key
    assert fingerprint(stack["db"], "dp_acme") == sql_before
    # Completed for the dry-run job; still to be done for the restore job.
    assert deployment.partition_run_statuses(DRY_RUN_JOB)[key] == "SUCCESS"
    assert key not in deployment.partition_run_statuses("workspace_restore_job")
    page.goto(f"{deployment.url}/runs/{run['runId']}")
    page.get_by_text("RESTORE: SQL rows and indexes from their artifacts").first.wait_for()
    page.get_by_text("rows_to_insert").first.wait_for()
    page.screenshot(path=screenshots / "backfill_dry_run_run.png")


def test_browser_run_page_shows_the_gate_refusal(deployment, backed_up, page, screenshots):
    stack = deployment.stack
    orphan = make_inconsistent_partition(stack, "dp_acme", GATE_DATE)
    live_before = fingerprint(stack["db"], "dp_acme")
    run_id = deployment.launch_run("workspace_restore_job", multi_key(GATE_DATE, "dp_acme"))
    run = deployment.wait_runs_done([run_id], RUNS_SECONDS)[run_id]
    assert run["status"] == "FAILURE"
    assert fingerprint(stack["db"], "dp_acme") == live_before  # nothing written

    page.goto(f"{deployment.url}/runs/{run_id}")
    refusal = page.get_by_text(re.compile("Restore refused: the consistency gate's verdict")).first
    refusal.wait_for()
    assert "orphan" in refusal.inner_text()
    page.get_by_text("consistency_gate").first.wait_for()
    page.screenshot(path=screenshots / "gate_refusal_run_page.png")
    assert str(orphan) in page.inner_text("body") or "orphan" in refusal.inner_text()
