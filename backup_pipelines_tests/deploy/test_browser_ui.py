"""The Dagster UI of the deployed shape in a real browser: Playwright for Python driving
Debian's chromium (no browser download ever). Every step waits for what it needs to see,
never a fixed sleep; each test saves a screenshot under .artifacts/screenshots/."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import psycopg
import pytest

from backup_pipelines.defs.partitions import last_completed_date, multi_key
from backup_pipelines_tests.deploy.deployment import wait_for
from backup_pipelines_tests.helpers import back_up, index_workspace
from backup_pipelines_tests.pg_checks import fingerprint

# The package fixture (Dagster start, first backups) counts towards the first test's time.
pytestmark = pytest.mark.timeout(1800)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",  # root, in a container-less sandbox
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
UI_SECONDS = 120  # the UI's own queries on a busy machine
RUNS_SECONDS = 600
GATE_DATE = "2026-06-01"


@pytest.fixture(scope="package")
def browser():
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail(
            "chromium is missing: `make install` installs it (scripts/install-system-deps.sh)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1440, "height": 960})
    context.set_default_timeout(UI_SECONDS * 1000)
    page = context.new_page()
    yield page
    context.close()


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
    stack = deployment.stack
    key = multi_key(last_completed_date(), "dp_acme")
    sql_before = fingerprint(stack["db"], "dp_acme")
    page.goto(f"{deployment.url}/locations/backup_pipelines/jobs/workspace_restore_job/partitions")
    page.get_by_role("button", name="Launch backfill…").click()
    dialog = page.locator("[role=dialog]").filter(has_text="Launch workspace_restore_job backfill")
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
    dialog.get_by_role("button", name="Add tags to backfill runs").click()
    tags = page.locator("[role=dialog]").filter(has_text="Add tags to run")
    tags.get_by_placeholder("Tag Key").fill("restore/dry_run")
    tags.get_by_placeholder("Tag Value").fill("true")
    tags.get_by_role("button", name="Apply").click()
    dialog.get_by_text("restore/dry_run: true").wait_for()
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
    assert run["status"] == "SUCCESS", deployment.logs_tail()
    assert tags_of_run["restore/dry_run"] == "true"
    assert tags_of_run["dagster/partition"] == key
    assert fingerprint(stack["db"], "dp_acme") == sql_before
    page.goto(f"{deployment.url}/runs/{run['runId']}")
    page.get_by_text("dry run: nothing was written, nothing to verify").first.wait_for()
    page.screenshot(path=screenshots / "backfill_dry_run_run.png")


def make_inconsistent_partition(stack: dict, workspace: str, date: str) -> int:
    """SQL taken; then a memory written and indexed; then the indexes taken: the index
    artifacts hold an id the SQL artifact lacks (an orphan). Live SQL and indexes both keep
    the new memory, so they stay consistent for the other tests."""
    from backup_pipelines.lib.store import LocalStore

    store = LocalStore(stack["store_dir"])
    policy = stack["policy"]
    back_up(store, stack, workspace, indexes=(), date=date)
    with psycopg.connect(stack["db"], autocommit=True) as conn:
        new_id = conn.execute(
            "INSERT INTO memory_entries (workspace_id, kind, content, importance, embedding, "
            "created_at, updated_at) SELECT workspace_id, 'fact', 'written between the two "
            "backups', 0.5, embedding, now(), now() FROM memory_entries WHERE workspace_id = %s "
            "LIMIT 1 RETURNING id",
            (workspace,),
        ).fetchone()[0]
    with psycopg.connect(stack["db"]) as conn:  # a transaction: the rows come from a cursor
        index_workspace(
            conn, workspace, policy, stack["typesense"], stack["qdrant"], only_ids={new_id}
        )
    back_up(store, stack, workspace, sql=False, date=date)
    return new_id


def test_browser_run_page_shows_the_gate_refusal(deployment, backed_up, page, screenshots):
    stack = deployment.stack
    orphan = make_inconsistent_partition(stack, "dp_acme", GATE_DATE)
    live_before = fingerprint(stack["db"], "dp_acme")
    run_id = deployment.launch_run("workspace_restore_job", multi_key(GATE_DATE, "dp_acme"))
    run = deployment.wait_runs_done([run_id], RUNS_SECONDS)[run_id]
    assert run["status"] == "FAILURE"
    assert fingerprint(stack["db"], "dp_acme") == live_before  # nothing written

    page.goto(f"{deployment.url}/runs/{run_id}")
    refusal = page.get_by_text(re.compile("restore refused, nothing written")).first
    refusal.wait_for()
    assert "orphan" in refusal.inner_text()
    page.get_by_text("consistency_gate").first.wait_for()
    page.screenshot(path=screenshots / "gate_refusal_run_page.png")
    assert str(orphan) in page.inner_text("body") or "orphan" in refusal.inner_text()
