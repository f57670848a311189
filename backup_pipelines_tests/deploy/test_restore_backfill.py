"""The on-call path end to end on the package's deployment (webserver, daemon, code server): a
backfill of the workspace restore job for two workspaces launched through GraphQL, as the UI
does. Its workspaces, and the date it restores, are its own, and this file sorts last in the
package: the other tests never see them (the partitions grid counts what is materialized).
(Moved from recovery/, where it started a `dagster dev` of its own.)"""

from __future__ import annotations

import psycopg
import pytest

from backup_pipelines.defs.partitions import last_completed_date, multi_key
from backup_pipelines.devstack import sample_data
from backup_pipelines_tests.conftest import SMALL
from backup_pipelines_tests.deploy.conftest import (
    BACKFILL_WORKSPACES,
    days_before_last_completed,
    index_workspaces,
)
from backup_pipelines_tests.deploy.deployment import FINISHED, wait_for
from backup_pipelines_tests.helpers import back_up
from backup_pipelines_tests.pg_checks import fingerprint
from backup_pipelines_tests.recovery.test_restore import index_state, lose_workspace_memory

# Alone (-k), the package fixture (Dagster start) counts towards its time.
pytestmark = pytest.mark.timeout(1800)

RUNS_SECONDS = 600
ACME, GLOBEX, INITECH = BACKFILL_WORKSPACES
DATE = days_before_last_completed(6)  # no other test backs up or restores this day


def discovery_backed_up(deployment, workspaces: list[str]) -> dict[str, dict] | None:
    """The discovery sensor's first backup of each new workspace, finished (it runs anyway:
    waiting for it keeps those backups from racing the incident below)."""
    found = {}
    for workspace in workspaces:
        runs = deployment.runs(
            {
                "dagster/sensor_name": "workspace_discovery_sensor",
                "dagster/partition": multi_key(last_completed_date(), workspace),
            }
        )
        if not runs or any(r["status"] not in FINISHED for r in runs):
            return None
        found[workspace] = runs[-1]
    return found


def test_backfill_of_the_restore_job_brings_two_workspaces_back(deployment):
    stack = deployment.stack
    sample_data.seed(stack["db"], BACKFILL_WORKSPACES, SMALL)
    index_workspaces(stack, BACKFILL_WORKSPACES)
    discovered = wait_for(
        lambda: discovery_backed_up(deployment, BACKFILL_WORKSPACES),
        RUNS_SECONDS,
        f"discovery's first backups of {BACKFILL_WORKSPACES}",
        every=2,
        on_fail=deployment.logs_tail,
    )
    assert {w: r["status"] for w, r in discovered.items()} == dict.fromkeys(
        BACKFILL_WORKSPACES, "SUCCESS"
    ), {w: deployment.errors_of(r["runId"]) for w, r in discovered.items()}

    store = deployment.store
    for workspace in (ACME, GLOBEX):
        back_up(store, stack, workspace, date=DATE)
    expected = {w: (fingerprint(stack["db"], w), index_state(stack, w)) for w in (ACME, GLOBEX)}
    untouched = fingerprint(stack["db"], INITECH)
    with psycopg.connect(stack["db"], autocommit=True) as conn:
        kept = conn.execute(
            "SELECT max(id) FROM memory_entries WHERE workspace_id = %s", (ACME,)
        ).fetchone()[0]
        conn.execute("UPDATE memory_entries SET importance = 0.999 WHERE id = %s", (kept,))
    lose_workspace_memory(stack, ACME, keep_memory_id=kept)
    lose_workspace_memory(stack, GLOBEX)

    for workspace in (ACME, GLOBEX):
        deployment.add_workspace_partition(workspace)
    keys = [multi_key(DATE, ACME), multi_key(DATE, GLOBEX)]
    backfill_id = deployment.launch_backfill(
        "workspace_restore_job", keys, {"restore/mode": "merge"}
    )

    def finished():
        runs = deployment.runs({"dagster/backfill": backfill_id})
        return runs if len(runs) == 2 and all(r["status"] in FINISHED for r in runs) else None

    runs = wait_for(finished, RUNS_SECONDS, f"backfill {backfill_id}", every=2)
    assert sorted(r["status"] for r in runs) == ["SUCCESS", "SUCCESS"], deployment.logs_tail()
    assert all({"key": "restore/mode", "value": "merge"} in r["tags"] for r in runs)
    # The backfill's two runs are the only runs of these partitions (automation is on here,
    # but only for the last completed day).
    every_run = [r for key in keys for r in deployment.runs({"dagster/partition": key})]
    assert sorted(r["runId"] for r in every_run) == sorted(r["runId"] for r in runs)

    for workspace, (sql_rows, indexes) in expected.items():
        assert index_state(stack, workspace) == indexes
        after = fingerprint(stack["db"], workspace)
        if workspace == GLOBEX:
            assert after == sql_rows
        else:  # every row is back; the row changed after the backup keeps its newer value
            assert {t: v for t, v in after.items() if t != "memory_entries"} == {
                t: v for t, v in sql_rows.items() if t != "memory_entries"
            }
            with psycopg.connect(stack["db"]) as conn:
                count, importance = conn.execute(
                    "SELECT count(*), max(importance) FILTER (WHERE id = %s) FROM memory_entries "
                    "WHERE workspace_id = %s",
                    (kept, ACME),
                ).fetchone()
            assert (count, round(importance, 3)) == (sql_rows["memory_entries"][0], 0.999)
    assert fingerprint(stack["db"], INITECH) == untouched
