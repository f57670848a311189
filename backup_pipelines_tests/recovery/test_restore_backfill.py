"""The on-call path end to end: a running Dagster (webserver + daemon), and a backfill of the
workspace restore job for two workspaces launched through GraphQL, as the UI does."""

import contextlib
import os
import shutil
import sys
import time
from pathlib import Path

import psycopg
import pytest
import requests

from backup_pipelines.devstack.ports import free_port
from backup_pipelines.lib.store import LocalStore
from backup_pipelines_tests import processes
from backup_pipelines_tests.conftest import pinned_policy_file
from backup_pipelines_tests.pg_checks import fingerprint
from backup_pipelines_tests.recovery.test_restore import (
    DATE,
    back_up,
    index_state,
    lose_workspace_memory,
    restore_env,
)

PROJECT = Path(__file__).resolve().parents[2]
# Budgets for a busy 2-core machine: each wait ends as soon as its condition holds.
SERVER_UP_SECONDS = 180
RUNS_DONE_SECONDS = 600
# This test exercises the backfill alone: no sensor or schedule may launch runs that take the
# workspace's concurrency slot before the restore (defs/automation.py).
NO_AUTOMATION = {"BACKUP_AUTOMATION_OFF": "*", "BACKUP_AUTOMATION_ON": ""}
REPOSITORY = {"repositoryName": "__repository__", "repositoryLocationName": "backup_pipelines"}

LAUNCH = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
  }
}"""
ALL_RUNS = """
query { runsOrError { ... on Runs { results { runId jobName status } } } }"""
ADD_PARTITION = """
mutation($key: String!, $repo: RepositorySelector!) {
  addDynamicPartition(partitionsDefName: "workspaces", partitionKey: $key, repositorySelector: $repo) {
    __typename
  }
}"""
RUNS = """
query($backfill: String!) {
  runsOrError(filter: {tags: [{key: "dagster/backfill", value: $backfill}]}) {
    ... on Runs { results { runId status tags { key value } } }
  }
}"""


@contextlib.contextmanager
def dagster_dev(env: dict, home: Path):
    port = free_port()
    shutil.copy(PROJECT / "dagster.yaml", home / "dagster.yaml")
    process = processes.start(
        [
            sys.executable,
            "-m",
            "dagster",
            "dev",
            "-w",
            str(PROJECT / "workspace.yaml"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env={
            **os.environ,
            **env,
            **NO_AUTOMATION,
            "DAGSTER_HOME": str(home),
            "BACKUP_POLICY_FILE": str(pinned_policy_file(home)),  # DATE among the partitions
        },
        log=home / "dagster-dev.log",
        cwd=PROJECT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_UP_SECONDS
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/server_info", timeout=2).ok:
                    break
            assert process.poll() is None, (home / "dagster-dev.log").read_text()[-3000:]
            time.sleep(0.5)
        yield url
    finally:
        processes.stop(process, grace_seconds=30)


def graphql(url: str, query: str, **variables) -> dict:
    answer = requests.post(
        f"{url}/graphql", json={"query": query, "variables": variables}, timeout=60
    )
    answer.raise_for_status()
    body = answer.json()
    assert "errors" not in body, body["errors"]
    return body["data"]


@pytest.mark.timeout(SERVER_UP_SECONDS + RUNS_DONE_SECONDS + 120)
def test_backfill_of_the_restore_job_brings_two_workspaces_back(tmp_path, indexed_source):
    store_dir = tmp_path / "store"
    store = LocalStore(store_dir)
    for workspace in ("ws_acme", "ws_globex"):
        back_up(store, indexed_source, workspace)
    expected = {
        w: (fingerprint(indexed_source["db"], w), index_state(indexed_source, w))
        for w in ("ws_acme", "ws_globex")
    }
    untouched = fingerprint(indexed_source["db"], "ws_initech")
    with psycopg.connect(indexed_source["db"], autocommit=True) as conn:
        kept = conn.execute(
            "SELECT max(id) FROM memory_entries WHERE workspace_id = 'ws_acme'"
        ).fetchone()[0]
        conn.execute("UPDATE memory_entries SET importance = 0.999 WHERE id = %s", (kept,))
    lose_workspace_memory(indexed_source, "ws_acme", keep_memory_id=kept)
    lose_workspace_memory(indexed_source, "ws_globex")
    home = tmp_path / "dagster_home"
    home.mkdir()

    with dagster_dev(restore_env(indexed_source, store_dir), home) as url:
        for workspace in ("ws_acme", "ws_globex"):
            graphql(url, ADD_PARTITION, key=workspace, repo=REPOSITORY)
        params = {
            "selector": {
                "partitionSetName": "workspace_restore_job_partition_set",
                "repositorySelector": REPOSITORY,
            },
            "partitionNames": [f"{DATE}|ws_acme", f"{DATE}|ws_globex"],
            "tags": [{"key": "restore/mode", "value": "merge"}],
        }
        launched = graphql(url, LAUNCH, params=params)["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        deadline = time.monotonic() + RUNS_DONE_SECONDS
        while time.monotonic() < deadline:
            runs = graphql(url, RUNS, backfill=launched["backfillId"])["runsOrError"]["results"]
            if len(runs) == 2 and all(
                r["status"] in {"SUCCESS", "FAILURE", "CANCELED"} for r in runs
            ):
                break
            time.sleep(2)
        log_tail = (home / "dagster-dev.log").read_text()[-4000:]
        assert sorted(r["status"] for r in runs) == ["SUCCESS", "SUCCESS"], log_tail
        assert all({"key": "restore/mode", "value": "merge"} in r["tags"] for r in runs)
        # Automation was off: the backfill's two runs are the only runs of the instance.
        every_run = graphql(url, ALL_RUNS)["runsOrError"]["results"]
        assert sorted(r["runId"] for r in every_run) == sorted(r["runId"] for r in runs)

    for workspace, (sql_rows, indexes) in expected.items():
        assert index_state(indexed_source, workspace) == indexes
        after = fingerprint(indexed_source["db"], workspace)
        if workspace == "ws_globex":
            assert after == sql_rows
        else:  # every row is back; the row changed after the backup keeps its newer value
            assert {t: v for t, v in after.items() if t != "memory_entries"} == {
                t: v for t, v in sql_rows.items() if t != "memory_entries"
            }
            with psycopg.connect(indexed_source["db"]) as conn:
                count, importance = conn.execute(
                    "SELECT count(*), max(importance) FILTER (WHERE id = %s) FROM memory_entries WHERE workspace_id = 'ws_acme'",
                    (kept,),
                ).fetchone()
            assert (count, round(importance, 3)) == (sql_rows["memory_entries"][0], 0.999)
    assert fingerprint(indexed_source["db"], "ws_initech") == untouched
