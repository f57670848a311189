"""Issue 16 item 1 in the product's path: the Dagster restore job writes SQL and the indexes at
the same time when the gate allows it (and not under REBUILD_INDEX), once every SQL row is in
and checked, and the SQL merge writes a lost table's rows once (straight into the live table)
without ever overwriting or touching another workspace. Order is read from the run's own log events; nothing here is timed."""

import dagster as dg
import psycopg

from backup_pipelines.lib.postgres.merge import merge_sql_rows
from backup_pipelines.lib.store import ArtifactRef, LocalStore, lease_name
from backup_pipelines_tests.conftest import WORKSPACES
from backup_pipelines_tests.helpers import DATE, back_up, restore_env
from backup_pipelines_tests.pg_checks import fingerprint
from backup_pipelines_tests.recovery.test_restore import index_state, lose_workspace_memory

WS = "ws_globex"
STORES = ("sql", "typesense", "qdrant")
STEP = "restore_sql_and_indexes"


def run_restore_job(tmp_path, indexed, monkeypatch):
    """The Dagster restore job of (DATE, WS) as operators run it; returns the result and the
    run's log events (message -> timestamp)."""
    for key, value in restore_env(indexed, tmp_path / "store").items():
        monkeypatch.setenv(key, value)
    from backup_pipelines.definitions import build_definitions

    job = build_definitions().resolve_job_def("workspace_restore_job")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("workspaces", [WS])
        result = job.execute_in_process(
            instance=instance, partition_key=f"{DATE}|{WS}", raise_on_error=False
        )
        logged = {
            e.user_message: e.timestamp
            for e in instance.all_logs(result.run_id)
            if e.dagster_event is None  # context.log lines, not Dagster's own events
        }
    return result, logged


def moment(logged: dict[str, float], store: str, what: str) -> float:
    """When the run log says `store` started or ended (`what`: "started" / "ended")."""
    return next(t for m, t in logged.items() if m.startswith(f"{store}: {what}"))


def output_metadata(result, step: str) -> dict:
    [output] = [e for e in result.all_events if e.is_successful_output and e.step_key == step]
    return output.event_specific_data.metadata


def test_restore_speed_dagster_job_writes_sql_and_indexes_at_once(
    tmp_path, indexed_source, monkeypatch
):
    store = LocalStore(tmp_path / "store")
    back_up(store, indexed_source, WS)
    sql_before, index_before = (
        fingerprint(indexed_source["db"], WS),
        index_state(indexed_source, WS),
    )
    others = {w: fingerprint(indexed_source["db"], w) for w in WORKSPACES if w != WS}
    lose_workspace_memory(indexed_source, WS)

    result, logged = run_restore_job(tmp_path, indexed_source, monkeypatch)

    assert result.success
    started = [e.step_key for e in result.all_events if e.event_type_value == "STEP_START"]
    assert started == ["locate_and_verify_artifacts", "consistency_gate", STEP, "verify_restored"]
    # The SQL rows were in and checked before any index was written; then the SQL commit and
    # both indexes began at once (the commit alone may end before an index step logs its start).
    for index in ("typesense", "qdrant"):
        assert moment(logged, "sql_staging", "ended") <= moment(logged, index, "started")
        for one in STORES:
            assert moment(logged, one, "started") <= moment(logged, index, "ended"), (one, index)
    metadata = output_metadata(result, STEP)
    assert metadata["stores_written"].value == (
        "SQL rows in and checked first, then the SQL commit and every index at the same time"
    )
    assert metadata["rows_inserted"].value == 8 + 40 + 120 + 15 + 30 + 1
    assert metadata["rows_already_present"].value == 0
    tables = {r.data["table"]: r.data for r in metadata["tables"].value.records}
    assert tables["public.memory_entries"]["inserted"] == 120
    assert metadata["typesense"].value == {"source": "export", "upserted": 120}
    assert metadata["qdrant"].value["source"] == "snapshot"
    assert set(metadata["seconds_per_store"].value) == {"sql_staging", *STORES}
    assert fingerprint(indexed_source["db"], WS) == sql_before
    assert index_state(indexed_source, WS) == index_before
    assert {w: fingerprint(indexed_source["db"], w) for w in others} == others
    assert store.read_lease(lease_name(WS)) is None  # verify_restored gave it back


def test_restore_speed_dagster_job_rebuilds_indexes_only_after_the_sql_commit(
    tmp_path, indexed_source, monkeypatch
):
    """A memory the index artifacts lack (REBUILD_INDEX): the indexes are rebuilt from the
    restored SQL rows, so neither index step may start before the SQL merge ended."""
    with psycopg.connect(indexed_source["db"]) as conn:
        stale_id = conn.execute(
            "SELECT max(id) FROM memory_entries WHERE workspace_id = %s", (WS,)
        ).fetchone()[0]
    policy = indexed_source["policy"]
    indexed_source["typesense"].http.request(
        "DELETE", f"/collections/{policy.typesense_collection_for(WS)}/documents/{stale_id}", "x"
    )
    indexed_source["qdrant"].http.request(
        "POST", f"/collections/{policy.qdrant_collections_for(WS)[0]}/points/delete", "delete",
        params={"wait": "true"}, json={"points": [stale_id]},
    )  # fmt: skip
    back_up(LocalStore(tmp_path / "store"), indexed_source, WS)
    lose_workspace_memory(indexed_source, WS)

    result, logged = run_restore_job(tmp_path, indexed_source, monkeypatch)

    assert result.success
    gate = output_metadata(result, "consistency_gate")
    assert gate["verdict"].value == "REBUILD_INDEX"
    for index in ("typesense", "qdrant"):
        assert moment(logged, index, "started") >= moment(logged, "sql", "ended")
    metadata = output_metadata(result, STEP)
    assert metadata["stores_written"].value.startswith("SQL first")
    assert metadata["typesense"].value == {"source": "sql", "created": 120, "already_present": 0}
    assert metadata["qdrant"].value == {"source": "sql", "added": 120, "already_present": 0}
    assert stale_id in indexed_source["qdrant"].existing_ids(
        policy.qdrant_collections_for(WS)[0], [stale_id]
    )


def merge(indexed, store, messages: list[str]) -> dict:
    ref = ArtifactRef("postgres/workspace_dump", DATE, WS)
    return merge_sql_rows(
        indexed["db"], store, ref, store.require_manifest(ref), log=messages.append
    )


def test_restore_speed_lost_tables_are_copied_straight_into_the_live_tables(
    tmp_path, indexed_source
):
    """A table holding none of the workspace's rows gets them by one COPY (each row written
    once, no staging table); a table still holding some of them is staged and merged, and the
    live row keeps its newer value."""
    store = LocalStore(tmp_path)
    back_up(store, indexed_source, WS, indexes=())
    before = fingerprint(indexed_source["db"], WS)
    others = {w: fingerprint(indexed_source["db"], w) for w in WORKSPACES if w != WS}
    with psycopg.connect(indexed_source["db"], autocommit=True) as conn:
        for table in ("knowledge_graph_edges", "knowledge_graph_nodes", "turns", "memory_entries"):
            conn.execute(f"DELETE FROM {table} WHERE workspace_id = %s", (WS,))
        conn.execute(  # sessions: one lost, the others still live
            "DELETE FROM sessions WHERE id = (SELECT min(id) FROM sessions WHERE workspace_id = %s)",
            (WS,),
        )

    messages: list[str] = []
    report = merge(indexed_source, store, messages)

    straight = {m.split(":")[0] for m in messages if "straight in" in m}
    assert straight == {
        f"public.{t}"
        for t in ("turns", "memory_entries", "knowledge_graph_nodes", "knowledge_graph_edges")
    }
    assert report["public.memory_entries"] == {
        "in_backup": 120,
        "inserted": 120,
        "already_present": 0,
    }
    assert report["public.sessions"]["inserted"] == 1
    assert (
        report["public.sessions"]["already_present"] == report["public.sessions"]["in_backup"] - 1
    )
    assert report["public.workspaces"] == {"in_backup": 1, "inserted": 0, "already_present": 1}
    assert fingerprint(indexed_source["db"], WS) == before
    assert {w: fingerprint(indexed_source["db"], w) for w in others} == others


def test_restore_speed_key_held_by_another_workspace_is_never_overwritten(tmp_path, indexed_source):
    """A backed-up row's key now belongs to another workspace's row: the straight COPY is
    refused by the server and undone (nothing of it left), the table is staged and merged as
    before (the key counts as present), and the other workspace's row keeps its values."""
    store = LocalStore(tmp_path)
    back_up(store, indexed_source, WS, indexes=())
    with psycopg.connect(indexed_source["db"], autocommit=True) as conn:
        taken = conn.execute(  # a backed-up memory's id, soon another workspace's
            "SELECT max(id) FROM memory_entries WHERE workspace_id = %s", (WS,)
        ).fetchone()[0]
        for table in ("knowledge_graph_edges", "knowledge_graph_nodes", "turns", "memory_entries"):
            conn.execute(f"DELETE FROM {table} WHERE workspace_id = %s", (WS,))
        conn.execute(
            "INSERT INTO memory_entries (id, workspace_id, kind, content, importance, embedding, "
            "created_at, updated_at) SELECT %s, workspace_id, 'fact', 'another workspace', 0.5, "
            "embedding, now(), now() FROM memory_entries WHERE workspace_id = 'ws_acme' LIMIT 1",
            (taken,),
        )
    acme = fingerprint(indexed_source["db"], "ws_acme")

    messages: list[str] = []
    report = merge(indexed_source, store, messages)

    assert any(m.startswith("public.memory_entries: not copied straight in") for m in messages)
    assert report["public.memory_entries"] == {
        "in_backup": 120,
        "inserted": 119,
        "already_present": 1,
    }
    assert fingerprint(indexed_source["db"], "ws_acme") == acme
    with psycopg.connect(indexed_source["db"]) as conn:
        assert (
            conn.execute(
                "SELECT count(*) FROM memory_entries WHERE workspace_id = %s", (WS,)
            ).fetchone()[0]
            == 119
        )
        assert conn.execute(
            "SELECT workspace_id, content FROM memory_entries WHERE id = %s", (taken,)
        ).fetchone() == ("ws_acme", "another workspace")
