"""Restores against the real services: every row, document and point comes back, newer data
is never overwritten, other workspaces are untouched, and an inconsistent pair is refused."""

import json
import os
import signal
import subprocess
import sys
import time

import dagster as dg
import psycopg
import pytest

from backup_pipelines.devstack import sample_data
from backup_pipelines.lib.errors import BackupError
from backup_pipelines.lib.postgres import dump as postgres
from backup_pipelines.lib.recovery.workspace_restore import GateRefused, restore_workspace
from backup_pipelines.lib.store import ArtifactRef, LocalStore
from backup_pipelines_tests.conftest import WORKSPACES
from backup_pipelines_tests.helpers import DATE, back_up, back_up_an_orphan, restore_env
from backup_pipelines_tests.pg_checks import fingerprint


def lose_workspace_memory(indexed, workspace, keep_memory_id=None):
    """What an incident does: rows deleted (children first), both collections dropped."""
    with psycopg.connect(indexed["db"], autocommit=True) as conn:
        for table in ("knowledge_graph_edges", "knowledge_graph_nodes", "turns"):
            conn.execute(f"DELETE FROM {table} WHERE workspace_id = %s", (workspace,))
        conn.execute(
            "DELETE FROM memory_entries WHERE workspace_id = %s AND id IS DISTINCT FROM %s",
            (workspace, keep_memory_id),
        )
        if keep_memory_id is None:
            conn.execute("DELETE FROM sessions WHERE workspace_id = %s", (workspace,))
            conn.execute("DELETE FROM workspaces WHERE workspace_id = %s", (workspace,))
    indexed["typesense"].delete_collection(indexed["policy"].typesense_collection_for(workspace))
    indexed["qdrant"].delete_collection(indexed["policy"].qdrant_collections_for(workspace)[0])


def index_state(indexed, workspace):
    policy = indexed["policy"]
    documents = b"".join(
        indexed["typesense"].stream_export(policy.typesense_collection_for(workspace))
    )
    points = indexed["qdrant"].scroll(policy.qdrant_collections_for(workspace)[0])
    return (
        sorted(json.dumps(json.loads(line), sort_keys=True) for line in documents.splitlines()),
        sorted(json.dumps(p, sort_keys=True) for p in points),
    )


def test_lost_workspace_comes_back_and_newer_rows_keep_their_values(tmp_path, indexed_source):
    store = LocalStore(tmp_path)
    back_up(store, indexed_source, "ws_acme")
    sql_before, index_before = (
        fingerprint(indexed_source["db"], "ws_acme"),
        index_state(indexed_source, "ws_acme"),
    )
    others_before = {w: fingerprint(indexed_source["db"], w) for w in WORKSPACES if w != "ws_acme"}
    with psycopg.connect(indexed_source["db"], autocommit=True) as conn:
        kept_id = conn.execute(
            "SELECT min(id) FROM memory_entries WHERE workspace_id = 'ws_acme'"
        ).fetchone()[0]
        conn.execute(
            "UPDATE memory_entries SET content = 'edited after the backup' WHERE id = %s",
            (kept_id,),
        )
    lose_workspace_memory(indexed_source, "ws_acme", keep_memory_id=kept_id)

    report = restore_workspace(
        store, DATE, "ws_acme", indexed_source["db"], indexed_source["policy"],
        indexed_source["indexes"],
    )  # fmt: skip

    assert report.verdict == "PASS"
    assert report.sql["public.memory_entries"] == {
        "in_backup": 120,
        "inserted": 119,
        "already_present": 1,
    }
    assert (
        report.verification["typesense_search_found_memory"]
        and report.verification["qdrant_search_found_memory"]
    )
    after = fingerprint(indexed_source["db"], "ws_acme")
    assert {t: v for t, v in after.items() if t != "memory_entries"} == {
        t: v for t, v in sql_before.items() if t != "memory_entries"
    }
    with psycopg.connect(indexed_source["db"]) as conn:
        assert (
            conn.execute("SELECT content FROM memory_entries WHERE id = %s", (kept_id,)).fetchone()[
                0
            ]
            == "edited after the backup"
        )
        assert (
            conn.execute(
                "SELECT count(*) FROM memory_entries WHERE workspace_id = 'ws_acme'"
            ).fetchone()[0]
            == 120
        )
    assert index_state(indexed_source, "ws_acme") == index_before
    assert {w: fingerprint(indexed_source["db"], w) for w in others_before} == others_before


def test_restore_twice_adds_nothing_the_second_time(tmp_path, indexed_source):
    store = LocalStore(tmp_path)
    back_up(store, indexed_source, "ws_globex")
    args = (
        store,
        DATE,
        "ws_globex",
        indexed_source["db"],
        indexed_source["policy"],
        indexed_source["indexes"],
    )
    lose_workspace_memory(indexed_source, "ws_globex")
    first = restore_workspace(*args)
    second = restore_workspace(*args)
    assert sum(t["inserted"] for t in first.sql.values()) == 8 + 40 + 120 + 15 + 30 + 1
    assert sum(t["inserted"] for t in second.sql.values()) == 0
    assert second.indexes["typesense"] == {"source": "export", "created": 0, "already_present": 120}
    assert second.indexes["qdrant"] == {"source": "snapshot", "added": 0, "already_present": 120}


def test_restore_into_a_live_database_missing_one_of_its_tables_names_it_and_writes_nothing(
    tmp_path, indexed_source
):
    """A table dropped from live (DROP TABLE by mistake): a workspace restore adds rows to
    live tables and does not recreate one, so it refuses before writing anything, naming the
    table and the restore that does bring it back."""
    store = LocalStore(tmp_path)
    back_up(store, indexed_source, "ws_globex")
    lose_workspace_memory(indexed_source, "ws_globex")
    with psycopg.connect(indexed_source["db"], autocommit=True) as conn:
        conn.execute("DROP TABLE knowledge_graph_edges")
    tables = ["workspaces", "sessions", "turns", "memory_entries", "knowledge_graph_nodes"]

    def row_counts():
        with psycopg.connect(indexed_source["db"]) as conn:
            return [conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables]

    before = row_counts()
    policy = indexed_source["policy"]
    collections = [
        (indexed_source["typesense"], policy.typesense_collection_for("ws_globex")),
        (indexed_source["qdrant"], policy.qdrant_collections_for("ws_globex")[0]),
    ]
    with pytest.raises(BackupError) as refused:
        restore_workspace(
            store, DATE, "ws_globex", indexed_source["db"], indexed_source["policy"],
            indexed_source["indexes"],
        )  # fmt: skip
    message = str(refused.value)
    assert "public.knowledge_graph_edges does not exist in the live database" in message
    assert f"restore full --date {DATE}" in message
    assert row_counts() == before
    assert not any(client.collection_exists(name) for client, name in collections)


def test_inconsistent_pair_fails_the_restore_job_at_the_gate_before_any_write(
    tmp_path, indexed_source, monkeypatch
):
    """SQL taken; then a memory written and indexed; then the indexes taken: the index artifacts
    hold an id the SQL artifact lacks (an orphan) — restoring both would point the index at a
    memory the restored SQL does not have."""
    store = LocalStore(tmp_path)
    back_up(store, indexed_source, "ws_initech", indexes=())
    new_id = back_up_an_orphan(store, indexed_source, "ws_initech")
    lose_workspace_memory(indexed_source, "ws_initech")
    live_before = fingerprint(indexed_source["db"], "ws_initech")

    with pytest.raises(GateRefused, match="orphan"):
        restore_workspace(
            store, DATE, "ws_initech", indexed_source["db"], indexed_source["policy"],
            indexed_source["indexes"],
        )  # fmt: skip

    for key, value in restore_env(indexed_source, tmp_path).items():
        monkeypatch.setenv(key, value)
    from backup_pipelines.definitions import build_definitions

    job = build_definitions().resolve_job_def("workspace_restore_job")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("workspaces", ["ws_initech"])
        result = job.execute_in_process(
            instance=instance, partition_key=f"{DATE}|ws_initech", raise_on_error=False
        )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert failure.step_key == "consistency_gate"
    evidence = failure.event_specific_data.user_failure_data.metadata["evidence"].value
    assert evidence["verdict"] == "FAIL"
    orphans = {i["name"]: [str(x) for x in i["orphan_sample"]] for i in evidence["indexes"]}
    assert orphans == {
        "typesense:memory_ws_initech": [str(new_id)],
        "qdrant:agent_ws_initech": [str(new_id)],
    }
    started = {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}
    assert started == {
        "locate_and_verify_artifacts",
        "consistency_gate",
    }  # nothing after the gate ran
    assert fingerprint(indexed_source["db"], "ws_initech") == live_before
    assert not indexed_source["typesense"].collection_exists("memory_ws_initech")
    assert not indexed_source["qdrant"].collection_exists("agent_ws_initech")


def test_full_restore_into_new_database_equals_source(tmp_path, indexed_source):
    from backup_pipelines.lib.postgres.full_restore import restore_full_database

    store = LocalStore(tmp_path)
    ref = ArtifactRef("postgres/full_dump", DATE)
    with store.begin(ref) as writer:
        writer.commit(**postgres.dump_full_database(indexed_source["db"], writer))
    result = restore_full_database(store, DATE, indexed_source["db"], jobs=2)
    target = indexed_source["db"].rsplit("/", 1)[0] + "/" + result["database"]
    try:
        assert fingerprint(target) == fingerprint(indexed_source["db"])
        with psycopg.connect(target) as a, psycopg.connect(indexed_source["db"]) as b:
            schema = "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2"
            assert a.execute(schema).fetchall() == b.execute(schema).fetchall()
        with pytest.raises(Exception, match="already exists"):
            restore_full_database(
                store, DATE, indexed_source["db"], target_database=result["database"]
            )
    finally:
        with psycopg.connect(
            indexed_source["db"].rsplit("/", 1)[0] + "/postgres", autocommit=True
        ) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{result["database"]}" WITH (FORCE)')


def cli(args, env, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "backup_pipelines.cli", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def test_cli_restores_a_workspace_with_dagster_gone(tmp_path, indexed_source):
    """DAGSTER_HOME is an empty folder: the command reads only the store and the environment."""
    store = LocalStore(tmp_path / "store")
    back_up(store, indexed_source, "ws_globex")
    before = (
        fingerprint(indexed_source["db"], "ws_globex"),
        index_state(indexed_source, "ws_globex"),
    )
    lose_workspace_memory(indexed_source, "ws_globex")
    empty_home = tmp_path / "dagster_home"
    empty_home.mkdir()
    env = {**restore_env(indexed_source, tmp_path / "store"), "DAGSTER_HOME": str(empty_home)}

    process = cli(["restore", "workspace", "--date", DATE, "--workspace", "ws_globex"], env)
    output = process.communicate(timeout=300)[0]

    assert process.returncode == 0, output
    assert (
        fingerprint(indexed_source["db"], "ws_globex"),
        index_state(indexed_source, "ws_globex"),
    ) == before
    assert list(empty_home.iterdir()) == []
    assert indexed_source["typesense_api_key"] not in output
    verify = cli(["verify", "--workspace", "ws_globex"], env)
    assert verify.wait(timeout=60) == 0 and "3 of 3 artifacts verified" in verify.stdout.read()
    listing = cli(["list", "--workspace", "ws_globex", "--verdicts"], env).communicate(timeout=60)[
        0
    ]
    assert (
        "postgres/workspace_dump" in listing
        and "PASS: postgres:public.memory_entries 120 ids" in listing
    )
    doctor = cli(["doctor"], env)
    report = doctor.communicate(timeout=60)[0]
    assert doctor.returncode == 0, report
    assert "ok   postgres" in report and "ok   typesense" in report and "ok   qdrant" in report


def test_restore_killed_midway_then_run_again_completes_without_duplicates(
    tmp_path, indexed_source
):
    big = "ws_big"
    with psycopg.connect(indexed_source["db"], autocommit=True) as conn:
        sample_data.seed_workspace(
            conn,
            big,
            sample_data.Scale(
                sessions=50,
                turns_per_session=40,
                memories=30000,
                nodes=10,
                edges=10,
                embedding_dim=384,
            ),
        )
    store = LocalStore(tmp_path / "store")
    back_up(store, indexed_source, big, indexes=())
    before = fingerprint(indexed_source["db"], big)
    with psycopg.connect(indexed_source["db"], autocommit=True) as conn:
        for table in ("knowledge_graph_edges", "knowledge_graph_nodes", "turns", "memory_entries"):
            conn.execute(f"DELETE FROM {table} WHERE workspace_id = %s", (big,))
    env = {**restore_env(indexed_source, tmp_path / "store"), "TYPESENSE_URL": "", "QDRANT_URL": ""}

    process = cli(
        ["restore", "workspace", "--date", DATE, "--workspace", big], env, start_new_session=True
    )
    deadline = time.monotonic() + 120
    with psycopg.connect(indexed_source["db"], autocommit=True) as conn:
        # The memory rows being COPYed: straight into the live table (none of the workspace's
        # are live) or into its staging table.
        query = "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'COPY%memory_entries%' AND state = 'active' AND pid <> pg_backend_pid()"
        while (
            conn.execute(query).fetchone()[0] == 0
            and process.poll() is None
            and time.monotonic() < deadline
        ):
            time.sleep(0.02)
        assert process.poll() is None, (
            "the restore finished before it could be killed; make the workspace bigger"
        )
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        # The server rolls the transaction back when it notices the client is gone.
        while conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE (query ILIKE '%restore_stage_%' OR query ILIKE 'COPY%memory_entries%') AND pid <> pg_backend_pid()"
        ).fetchone()[0]:
            time.sleep(0.05)
        assert (
            conn.execute(
                "SELECT count(*) FROM memory_entries WHERE workspace_id = %s", (big,)
            ).fetchone()[0]
            == 0
        )
        assert (
            conn.execute(
                "SELECT count(*) FROM pg_class WHERE relname LIKE 'restore_stage_%'"
            ).fetchone()[0]
            == 0
        )

    rerun = cli(["restore", "workspace", "--date", DATE, "--workspace", big], env)
    output = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, output
    assert fingerprint(indexed_source["db"], big) == before
    with psycopg.connect(indexed_source["db"]) as conn:
        assert (
            conn.execute(
                "SELECT count(*) FROM pg_class WHERE relname LIKE 'restore_stage_%'"
            ).fetchone()[0]
            == 0
        )
        assert conn.execute(
            "SELECT count(*), count(DISTINCT id) FROM memory_entries WHERE workspace_id = %s",
            (big,),
        ).fetchone() == (30000, 30000)


def test_full_restore_job_restores_database_then_missing_indexes_with_runbook_steps(
    tmp_path, indexed_source, monkeypatch
):
    store = LocalStore(tmp_path / "store")
    ref = ArtifactRef("postgres/full_dump", DATE)
    with store.begin(ref) as writer:
        writer.commit(**postgres.dump_full_database(indexed_source["db"], writer))
    back_up(store, indexed_source, "ws_acme", sql=False)
    index_before = index_state(indexed_source, "ws_acme")
    indexed_source["typesense"].delete_collection("memory_ws_acme")
    indexed_source["qdrant"].delete_collection("agent_ws_acme")
    for key, value in restore_env(indexed_source, tmp_path / "store").items():
        monkeypatch.setenv(key, value)
    marker = tmp_path / "steps.log"
    step = f"{sys.executable} -c \"import sys; open('{marker}', 'a').write(sys.argv[1] + chr(10))\""
    config = {
        "ops": {
            "restore_full": {
                "config": {
                    "target_database": "agent_restored_by_job",
                    "commands_before": [f"{step} stop-gateway"],
                    "commands_after": [f"{step} migrate", f"{step} start-gateway"],
                }
            }
        }
    }
    from backup_pipelines.definitions import build_definitions

    job = build_definitions().resolve_job_def("full_restore_job")
    target = indexed_source["db"].rsplit("/", 1)[0] + "/agent_restored_by_job"
    try:
        with dg.instance_for_test() as instance:
            result = job.execute_in_process(
                instance=instance, partition_key=DATE, run_config=config
            )
        assert result.success
        [materialization] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
        metadata = materialization.event_specific_data.metadata
        assert set(metadata["health"].value) == {"postgres", "typesense", "qdrant"}
        assert marker.read_text().split() == ["stop-gateway", "migrate", "start-gateway"]
        assert fingerprint(target) == fingerprint(indexed_source["db"])
        assert index_state(indexed_source, "ws_acme") == index_before
    finally:
        with psycopg.connect(
            indexed_source["db"].rsplit("/", 1)[0] + "/postgres", autocommit=True
        ) as conn:
            conn.execute('DROP DATABASE IF EXISTS "agent_restored_by_job" WITH (FORCE)')


def test_stale_index_is_rebuilt_from_the_restored_sql_rows(tmp_path, indexed_source):
    """The index artifacts lack a memory the SQL dump has (REBUILD_INDEX): SQL is restored and
    both indexes are rebuilt from it, so the memory the stale index missed is searchable again."""
    store = LocalStore(tmp_path)
    with psycopg.connect(indexed_source["db"]) as conn:
        stale_id = conn.execute(
            "SELECT max(id) FROM memory_entries WHERE workspace_id = 'ws_acme'"
        ).fetchone()[0]
    indexed_source["typesense"].http.request(
        "DELETE", f"/collections/memory_ws_acme/documents/{stale_id}", "delete"
    )
    indexed_source["qdrant"].http.request(
        "POST",
        "/collections/agent_ws_acme/points/delete",
        "delete",
        params={"wait": "true"},
        json={"points": [stale_id]},
    )
    back_up(store, indexed_source, "ws_acme")
    lose_workspace_memory(indexed_source, "ws_acme")

    report = restore_workspace(
        store, DATE, "ws_acme", indexed_source["db"], indexed_source["policy"],
        indexed_source["indexes"],
    )  # fmt: skip

    assert report.verdict == "REBUILD_INDEX"
    assert report.indexes["typesense"] == {"source": "sql", "created": 120, "already_present": 0}
    assert report.indexes["qdrant"] == {"source": "sql", "added": 120, "already_present": 0}
    assert indexed_source["typesense"].num_documents("memory_ws_acme") == 120
    assert stale_id in indexed_source["qdrant"].existing_ids("agent_ws_acme", [stale_id])
