"""The weekly restore drill against the real servers: it restores into scratch places only,
always removes them, fails loudly on a corrupt backup and alerts through a real webhook."""

import json
import math
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import psycopg
import pytest

from backup_pipelines.defs.monitoring.health import last_drills
from backup_pipelines.defs.recovery.drill import ALERT_SENT_TAG, WORKSPACES_TAG, build_drill_defs
from backup_pipelines.defs.resources import build_resources
from backup_pipelines.lib.policy import Policy
from backup_pipelines.lib.recovery import drill
from backup_pipelines.lib.store import ArtifactRef, LocalStore
from backup_pipelines_tests.conftest import WORKSPACES
from backup_pipelines_tests.helpers import DATE, back_up, flip_one_byte, restore_env
from backup_pipelines_tests.pg_checks import fingerprint

ALL_ASSETS = [
    "postgres/workspace_dump",
    "typesense/collection_export",
    "qdrant/collection_snapshot",
]


@pytest.fixture
def webhook(alert_receiver):
    """The shared real HTTP receiver (conftest): (webhook URL, bodies received)."""
    return os.environ["ALERT_WEBHOOK_URL"], alert_receiver.webhook


def scratch_leftovers(indexed) -> dict:
    """Every database and collection whose name says it belongs to a drill."""
    with psycopg.connect(indexed["db"]) as conn:
        databases = [
            r[0]
            for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'drill\\_%'")
        ]
    typesense = [c["name"] for c in indexed["typesense"].http.json("GET", "/collections", "list")]
    qdrant = indexed["qdrant"].http.json("GET", "/collections", "list")["result"]["collections"]
    return {
        "databases": databases,
        "typesense": [n for n in typesense if n.startswith("drill")],
        "qdrant": [c["name"] for c in qdrant if c["name"].startswith("drill")],
    }


def live_state(indexed) -> dict:
    typesense, qdrant, policy = indexed["typesense"], indexed["qdrant"], indexed["policy"]
    return {
        "sql": fingerprint(indexed["db"]),
        "aliases": typesense.list_aliases(),
        "documents": {
            w: typesense.num_documents(policy.typesense_collection_for(w)) for w in WORKSPACES
        },
        "points": {w: qdrant.count(policy.qdrant_collections_for(w)[0]) for w in WORKSPACES},
    }


def test_drill_restores_newest_complete_backup_into_scratch_and_removes_it(
    tmp_path, indexed_source
):
    # A live alias: restoring the collection by its backed-up definition would move it.
    indexed_source["typesense"].upsert_alias("memory_acme_live", "memory_ws_acme")
    store = LocalStore(tmp_path / "store")
    back_up(store, indexed_source, "ws_acme")
    newer = (date.fromisoformat(DATE) + timedelta(days=1)).isoformat()
    back_up(store, indexed_source, "ws_acme", indexes=(), date=newer)  # SQL only: incomplete
    assert drill.newest_backup_dates(store)["ws_acme"] == newer
    newest = drill.newest_backup_dates(store, ALL_ASSETS)["ws_acme"]
    assert newest == DATE
    before = live_state(indexed_source)
    logs: list[str] = []

    result = drill.drill_workspace(
        store, "ws_acme", newest, indexed_source["db"], indexed_source["policy"],
        indexed_source["indexes"], log=logs.append,
    )  # fmt: skip

    assert result.problems == []
    assert result.passed and result.met_rto and result.verdict == "PASS"
    assert 0 < result.seconds < result.rto_target_seconds == 15 * 60
    # Restored from the artifacts themselves, not rebuilt from SQL.
    assert result.counts["typesense"] == {"source": "export", "upserted": 120}
    assert result.counts["qdrant"] == {"source": "snapshot", "recovered": 120}
    assert result.counts["sql_rows"]["public.memory_entries"] == 120
    assert any(f"scratch database {result.scratch} on " in line for line in logs)
    assert scratch_leftovers(indexed_source) == {"databases": [], "typesense": [], "qdrant": []}
    assert live_state(indexed_source) == before
    assert json.loads(json.dumps(result.to_dict()))["workspace"] == "ws_acme"
    print(f"\ndrill seconds at test scale: {result.seconds} {result.step_seconds}")


def make_scratch_places(indexed, name: str) -> None:
    """A scratch database and collections named as a drill named its own `name`."""
    with psycopg.connect(indexed["db"], autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    indexed["typesense"].create_collection(
        {"name": f"{name}_memory_ws_acme", "fields": [{"name": "text", "type": "string"}]}
    )
    indexed["qdrant"].create_collection(f"{name}_agent_ws_acme", size=4)


def test_drill_removes_the_scratch_places_a_killed_drill_left_and_none_in_use(
    tmp_path, indexed_source
):
    """A drill killed outright leaves its scratch database and collections: the next drill
    removes those made over a day ago, and leaves a younger drill's (it may be running) and
    anything not named as a drill names its places."""
    now = datetime.now(UTC)
    stale = drill.scratch_name(now - timedelta(days=2))
    running = drill.scratch_name(now - timedelta(hours=1))
    for name in (stale, running):
        make_scratch_places(indexed_source, name)
    with psycopg.connect(indexed_source["db"], autocommit=True) as conn:
        conn.execute('CREATE DATABASE "drill_20000101t000000_notes"')
    store = LocalStore(tmp_path / "store")
    back_up(store, indexed_source, "ws_acme")
    logs: list[str] = []
    try:
        result = drill.drill_workspace(
            store, "ws_acme", DATE, indexed_source["db"], indexed_source["policy"],
            indexed_source["indexes"], log=logs.append,
        )  # fmt: skip
        assert result.passed, result.problems
        left = scratch_leftovers(indexed_source)
        assert sorted(left["databases"]) == sorted([running, "drill_20000101t000000_notes"])
        assert left["typesense"] == [f"{running}_memory_ws_acme"]
        assert left["qdrant"] == [f"{running}_agent_ws_acme"]
        for place in (
            f"scratch database {stale}",
            f"Typesense collection {stale}_memory_ws_acme",
            f"Qdrant collection {stale}_agent_ws_acme",
        ):
            assert f"removed the {place}, left by a drill that did not finish" in logs
    finally:
        with psycopg.connect(indexed_source["db"], autocommit=True) as conn:
            for name in (stale, running, "drill_20000101t000000_notes"):
                conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        for name in (stale, running):
            for client, collection in (
                (indexed_source["typesense"], f"{name}_memory_ws_acme"),
                (indexed_source["qdrant"], f"{name}_agent_ws_acme"),
            ):
                if client.collection_exists(collection):
                    client.delete_collection(collection)


def test_a_deployment_without_qdrant_drills_sql_and_typesense_only(tmp_path, indexed_source):
    store = LocalStore(tmp_path / "store")
    back_up(store, indexed_source, "ws_initech", indexes=("typesense",))
    assets = ALL_ASSETS[:2]
    assert drill.newest_backup_dates(store, assets) == {"ws_initech": DATE}
    assert drill.newest_backup_dates(store, ALL_ASSETS) == {}

    result = drill.drill_workspace(
        store, "ws_initech", DATE, indexed_source["db"], indexed_source["policy"],
        {"typesense": indexed_source["typesense"]},
    )  # fmt: skip

    assert result.passed and result.problems == [] and "qdrant" not in result.counts
    assert scratch_leftovers(indexed_source) == {"databases": [], "typesense": [], "qdrant": []}


def drill_job(indexed, store_dir, monkeypatch, **env):
    for key, value in {**restore_env(indexed, store_dir), **env}.items():
        monkeypatch.setenv(key, value)
    defs = dg.Definitions.merge(
        dg.Definitions(resources=build_resources()), build_drill_defs({"typesense", "qdrant"})
    )
    return defs.resolve_job_def("restore_drill_job")


@dataclass
class DrillRun:
    result: dg.ExecuteInProcessResult
    tags: dict
    recorded_as: str  # materialization or observation
    metadata: dict
    logs: list[str]
    health_view: dict  # what the backup health report reads back


def run_drill(job, tags=None) -> DrillRun:
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("workspaces", WORKSPACES)
        result = job.execute_in_process(instance=instance, raise_on_error=False, tags=tags)
        key = dg.AssetKey(["monitoring", "restore_drill"])
        [(recorded_as, metadata)] = [
            (kind, record.asset_event.metadata)
            for kind, fetch in (
                ("materialization", instance.fetch_materializations),
                ("observation", instance.fetch_observations),
            )
            for record in fetch(key, limit=5).records
        ]
        return DrillRun(
            result,
            instance.get_run_by_id(result.run_id).tags,
            recorded_as,
            metadata,
            [entry.user_message for entry in instance.all_logs(result.run_id)],
            last_drills(instance),
        )


def test_corrupt_backup_fails_the_drill_run_alerts_once_and_cleans_up(
    tmp_path, indexed_source, monkeypatch, webhook
):
    url, received = webhook
    store = LocalStore(tmp_path / "store")
    back_up(store, indexed_source, "ws_acme")  # the only workspace with a backup
    ref = ArtifactRef("postgres/workspace_dump", DATE, "ws_acme")
    memories = next(
        t["file"]
        for t in store.require_manifest(ref)["tables"]
        if t["table"].endswith("memory_entries")
    )
    flip_one_byte(store, ref, memories)
    before = live_state(indexed_source)
    job = drill_job(indexed_source, tmp_path / "store", monkeypatch, ALERT_WEBHOOK_URL=url)

    run = run_drill(job)

    assert not run.result.success
    failure = next(e for e in run.result.all_events if e.event_type_value == "STEP_FAILURE")
    description = failure.event_specific_data.error.message
    assert "ws_acme" in description and "does not match its manifest" in description
    assert [(p["kind"], p["workspace"]) for p in received] == [("drill_failed", "ws_acme")]
    assert memories in received[0]["details"]["problem"] and memories in received[0]["text"]
    assert run.tags.get(ALERT_SENT_TAG) == "true"
    assert not any("CLEANUP FAILED" in m for m in run.logs)
    assert run.recorded_as == "observation"  # the last materialization stays the last good drill
    assert run.health_view["ws_acme"]["passed"] is False
    [recorded] = run.metadata["results"].value
    assert (recorded["passed"], recorded["met_rto"]) == (False, False)
    assert run.metadata["workspaces_failed"].value == 1 and "rto_seconds_max" not in run.metadata
    assert scratch_leftovers(indexed_source) == {"databases": [], "typesense": [], "qdrant": []}
    assert live_state(indexed_source) == before


def test_rto_miss_alerts_but_the_run_succeeds(
    tmp_path, indexed_source, monkeypatch, webhook, make_database
):
    url, received = webhook
    store = LocalStore(tmp_path / "store")
    back_up(store, indexed_source, "ws_globex")
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text("rto_minutes: 0.0001\n")  # 6 ms: no restore is that fast
    elsewhere = make_database("scratchhost")  # DRILL_DATABASE_URL: the scratch goes there
    job = drill_job(
        indexed_source, tmp_path / "store", monkeypatch,
        ALERT_WEBHOOK_URL=url, BACKUP_POLICY_FILE=str(policy_file),
        DRILL_DATABASE_URL=elsewhere,
    )  # fmt: skip

    run = run_drill(job, tags={WORKSPACES_TAG: "ws_globex"})

    assert run.result.success
    assert any(" on 127.0.0.1:" in m and "/scratchhost_" in m for m in run.logs)
    assert [(p["kind"], p["workspace"]) for p in received] == [("drill_rto_missed", "ws_globex")]
    assert ALERT_SENT_TAG not in run.tags
    assert run.recorded_as == "materialization"
    assert run.health_view["ws_globex"]["met_rto"] is False
    [recorded] = run.metadata["results"].value
    assert (recorded["passed"], recorded["met_rto"]) == (True, False)
    assert recorded["problems"] == []
    assert (
        run.metadata["workspaces_drilled"].value == 1
        and run.metadata["workspaces_failed"].value == 0
    )
    assert run.metadata["rto_seconds_max"].value == run.metadata["rto_seconds_mean"].value > 0.006
    [row] = run.metadata["drills"].records
    assert (row.data["workspace"], row.data["passed"], row.data["met_rto"]) == (
        "ws_globex",
        True,
        False,
    )
    assert scratch_leftovers(indexed_source) == {"databases": [], "typesense": [], "qdrant": []}


def test_rotation_drills_every_workspace_over_the_weeks():
    workspaces = [f"ws_{i:02d}" for i in range(10)]
    first_week = drill.week_index(date(2026, 12, 20))  # crosses a year end on purpose
    weeks = math.ceil(len(workspaces) / 3)
    drilled = [drill.pick_workspaces(workspaces, 3, first_week + w) for w in range(weeks)]
    assert {w for sample in drilled for w in sample} == set(workspaces)
    assert all(len(sample) == 3 for sample in drilled)
    assert drill.pick_workspaces(reversed(workspaces), 3, first_week) == drilled[0]
    assert drill.pick_workspaces(workspaces[:2], 3, 7) == workspaces[:2]
    assert drill.pick_workspaces([], 3, 7) == [] == drill.pick_workspaces(workspaces, 0, 7)
    assert [drill.week_index(date(2026, 12, 28) + timedelta(days=7 * i)) for i in range(3)] == [
        drill.week_index(date(2026, 12, 28)) + i for i in range(3)
    ]


def test_without_createdb_the_drill_fails_with_the_fix_and_drops_nothing(
    tmp_path, pg_cluster, make_database
):
    source = make_database("source")
    role = f"drill_no_createdb_{secrets.token_hex(3)}"
    with psycopg.connect(pg_cluster.url(), autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN NOCREATEDB')
    try:
        as_role = source.replace(f"//{pg_cluster.user}@", f"//{role}@")
        result = drill.drill_workspace(LocalStore(tmp_path), "ws_acme", DATE, as_role, Policy())
        with psycopg.connect(source) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)  # the source is still there
    finally:
        with psycopg.connect(pg_cluster.url(), autocommit=True) as conn:
            conn.execute(f'DROP ROLE "{role}"')
    assert not result.passed and not result.met_rto
    [problem] = result.problems
    assert "permission denied to create database" in problem and "CREATEDB" in problem
