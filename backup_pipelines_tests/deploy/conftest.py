"""One deployment of the production shape for the whole `deploy` package (the deployed-shape
and browser tests share it, so Dagster starts once per session), over its own seeded data:
two workspaces in their own database, indexed in collections of their own (a policy file
names them), so nothing here collides with the rest of the suite's fixtures."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import uuid
from datetime import date, timedelta
from pathlib import Path

import psycopg
import pytest

from backup_pipelines.defs.partitions import last_completed_date, multi_key
from backup_pipelines.devstack import sample_data
from backup_pipelines.lib.store import LocalStore
from backup_pipelines_tests.alert_receiver import AlertReceiver
from backup_pipelines_tests.conftest import SMALL
from backup_pipelines_tests.deploy.deployment import Deployment, wait_for

WORKSPACES = ["dp_acme", "dp_globex"]
POLICY = """\
typesense_collection: "dp_memory_{workspace}"
qdrant_collections: ["dp_agent_{workspace}"]
"""
# Only what these tests exercise runs; the RPO sensor is started by its test (as an operator
# would in a staged roll-out) once the first backups are in.
AUTOMATION = {
    "BACKUP_AUTOMATION_OFF": "*",
    "BACKUP_AUTOMATION_ON": "workspace_discovery_sensor,workspace_backup_daily,run_alert_sensor",
}
BACKUPS_DONE_SECONDS = 600
# test_restore_backfill.py's own workspaces (it backs them up, loses two and restores them).
BACKFILL_WORKSPACES = ["dp_bf_acme", "dp_bf_globex", "dp_bf_initech"]
# Workspaces a test seeds (and deletes) itself; their collections are dropped at the end too.
EXTRA_WORKSPACES = ["dp_ghost", "dp_vanishing", *BACKFILL_WORKSPACES]
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


def days_before_last_completed(days: int) -> str:
    """A date inside the partitions (they start months back) that neither the discovery sensor
    nor the schedule backs up, for a test's own backups."""
    return (date.fromisoformat(last_completed_date()) - timedelta(days=days)).isoformat()


def index_workspaces(indexed: dict, workspaces: list[str]) -> None:
    from backup_pipelines_tests.helpers import index_workspace

    with psycopg.connect(indexed["db"]) as conn:
        for workspace in workspaces:
            index_workspace(
                conn, workspace, indexed["policy"], indexed["typesense"], indexed["qdrant"]
            )


def make_inconsistent_partition(stack: dict, workspace: str, date: str) -> int:
    """SQL taken; then a memory written and indexed; then the indexes taken: the index
    artifacts hold an id the SQL artifact lacks (an orphan). Live SQL and indexes both keep
    the new memory, so they stay consistent for the other tests."""
    from backup_pipelines_tests.helpers import back_up, back_up_an_orphan

    store = LocalStore(stack["store_dir"])
    back_up(store, stack, workspace, indexes=(), date=date)
    return back_up_an_orphan(store, stack, workspace, date)


@pytest.fixture(scope="package")
def deployed_stack(pg_cluster, typesense_server, qdrant_url):
    from backup_pipelines.lib.policy import load_policy
    from backup_pipelines.lib.qdrant.client import QdrantHttp
    from backup_pipelines.lib.typesense.client import TypesenseClient

    base = Path(tempfile.mkdtemp(prefix="backup-pipelines-deployed-"))
    (base / "policy.yaml").write_text(POLICY)
    source = pg_cluster.create_database(f"deployed_source_{uuid.uuid4().hex[:8]}")
    sample_data.seed(source, WORKSPACES, SMALL)
    indexed = {
        "db": source,
        "policy": load_policy(str(base / "policy.yaml")),
        "typesense": TypesenseClient(typesense_server.url, typesense_server.api_key),
        "qdrant": QdrantHttp(qdrant_url, os.environ.get("QDRANT_API_KEY")),
        "typesense_url": typesense_server.url,
        "typesense_api_key": typesense_server.api_key,
        "qdrant_url": qdrant_url,
        "store_dir": base / "store",
        "base": base,
    }
    index_workspaces(indexed, WORKSPACES)
    yield indexed
    policy = indexed["policy"]
    for workspace in [*WORKSPACES, *EXTRA_WORKSPACES]:
        name = policy.typesense_collection_for(workspace)
        if indexed["typesense"].collection_exists(name):
            indexed["typesense"].delete_collection(name)
        for name in policy.qdrant_collections_for(workspace):
            if indexed["qdrant"].collection_exists(name):
                indexed["qdrant"].delete_collection(name)
    with psycopg.connect(pg_cluster.url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{source.rsplit("/", 1)[1]}" WITH (FORCE)')
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="package")
def deployment(deployed_stack, pg_cluster):
    receiver = AlertReceiver().start()
    dagster_db = pg_cluster.create_database(f"dagster_{uuid.uuid4().hex[:8]}").rsplit("/", 1)[1]
    stack = deployed_stack
    code_env = {
        "DATABASE_URL": stack["db"],
        "TYPESENSE_URL": stack["typesense_url"],
        "TYPESENSE_API_KEY": stack["typesense_api_key"],
        "QDRANT_URL": stack["qdrant_url"],
        "BACKUP_STORE_URL": f"file://{stack['store_dir']}",
        "BACKUP_POLICY_FILE": str(stack["base"] / "policy.yaml"),
        "ALERT_WEBHOOK_URL": f"{receiver.url}/hooks/{secrets.token_hex(4)}",
        "DAGSTER_UI_URL": "https://dagster.example.test",
        **AUTOMATION,
    }
    deployment = Deployment(
        home=stack["base"] / "dagster_home",
        dagster_db_port=pg_cluster.port,
        dagster_db_name=dagster_db,
        code_env=code_env,
        fast_backfills=True,
    )
    deployment.receiver = receiver
    deployment.stack = stack
    deployment.store = LocalStore(stack["store_dir"])
    try:
        with deployment:
            yield deployment
    finally:
        receiver.stop()
        with psycopg.connect(pg_cluster.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dagster_db}" WITH (FORCE)')


def backup_runs_done(deployment: Deployment) -> dict | None:
    """The discovery sensor's first backup and the schedule's backup of every workspace for
    the last completed day, each finished; None while any is missing or running."""
    date = last_completed_date()
    found = {}
    for workspace in WORKSPACES:
        key = multi_key(date, workspace)
        for origin, tag in (
            ("sensor", {"dagster/sensor_name": "workspace_discovery_sensor"}),
            ("schedule", {"dagster/schedule_name": "workspace_backup_daily"}),
        ):
            runs = [
                r
                for r in deployment.runs({**tag, "dagster/partition": key})
                if r["status"] in {"SUCCESS", "FAILURE", "CANCELED"}
            ]
            if not runs:
                return None
            found[(workspace, origin)] = runs
    return found


@pytest.fixture(scope="package")
def backed_up(deployment) -> dict:
    """Waits (once) until discovery and the schedule have backed up every workspace."""
    return wait_for(
        lambda: backup_runs_done(deployment),
        BACKUPS_DONE_SECONDS,
        "the discovery sensor's and the schedule's backups",
        every=3,
        on_fail=deployment.logs_tail,
    )


@pytest.fixture(scope="package")
def screenshots() -> Path:
    folder = Path(__file__).resolve().parents[2] / ".artifacts" / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


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
