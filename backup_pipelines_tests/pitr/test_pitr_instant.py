"""One instant across stores: a workspace's SQL (real PostgreSQL 15 + real pgBackRest), its
Typesense collection (a real server) and its Qdrant collection (the stand-in) restored to T.

The platform is played by plain SQL and the sample indexer (tests/helpers.index_workspace):
rows change in SQL and their entries in both indexes, as the platform's writer and indexer do.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import dagster as dg
import psycopg
import pytest
from qdrant_client import models

from backup_pipelines.devstack import sample_data
from backup_pipelines.lib.policy import Policy
from backup_pipelines.lib.postgres import pitr
from backup_pipelines.lib.qdrant.client import QdrantHttp
from backup_pipelines.lib.recovery import catch_up, consistency, instant
from backup_pipelines.lib.recovery.workspace_restore import GateRefused, restore_workspace
from backup_pipelines.lib.store import ArtifactRef, LeaseHeld, LeaseOwner, LocalStore, lease_name
from backup_pipelines.lib.typesense.client import TypesenseClient
from backup_pipelines_tests.conftest import SMALL
from backup_pipelines_tests.helpers import back_up, index_workspace
from backup_pipelines_tests.pitr.conftest import archive_now

TABLES = [
    "workspaces",
    "sessions",
    "turns",
    "memory_entries",
    "knowledge_graph_nodes",
    "knowledge_graph_edges",
]
# Seeded rows last changed at least a minute before the artifacts: outside this margin, so the
# catch-up counts are exactly the rows the test changed.
POLICY = Policy(max_clock_skew_seconds=30)
ARTIFACT_DATE = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()


# --------------------------------------------------------------------------------------------
# The platform, and what the test reads back


@pytest.fixture(scope="module")
def platform(archiving, typesense_server, qdrant_url, tmp_path_factory):
    """The archiving cluster with the agent-memory schema, index clients, a backup store."""
    with psycopg.connect(archiving.url, autocommit=True) as conn:
        sample_data.create_schema(conn)
    typesense = TypesenseClient(typesense_server.url, typesense_server.api_key)
    qdrant = QdrantHttp(qdrant_url)
    store_dir = tmp_path_factory.mktemp("instant_store")
    yield {
        "archiving": archiving,
        "db": archiving.url,
        "policy": POLICY,
        "typesense": typesense,
        "qdrant": qdrant,
        "indexes": {"typesense": typesense, "qdrant": qdrant},
        "store": LocalStore(store_dir),
        "store_url": f"file://{store_dir}",
        "env": {
            **archiving.env(),
            "BACKUP_STORE_URL": f"file://{store_dir}",
            "TYPESENSE_URL": typesense_server.url,
            "TYPESENSE_API_KEY": typesense_server.api_key,
            "QDRANT_URL": qdrant_url,
            "BACKUP_WORK_DIR": str(archiving.cluster.work_dir("instant_work")),
        },
    }
    typesense.close()
    qdrant.close()


def seed_and_index(platform, workspace: str) -> None:
    with psycopg.connect(platform["db"], autocommit=True) as conn, conn.transaction():
        sample_data.seed_workspace(conn, workspace, SMALL)
    reindex(platform, workspace)


def reindex(platform, workspace: str, only_ids=None) -> None:
    with psycopg.connect(platform["db"]) as conn:  # the rows are read with a server cursor
        index_workspace(
            conn, workspace, POLICY, platform["typesense"], platform["qdrant"], only_ids
        )


def collections(workspace: str) -> tuple[str, str]:
    return POLICY.typesense_collection_for(workspace), POLICY.qdrant_collections_for(workspace)[0]


def sql_state(url: str, workspace: str) -> dict:
    """Every workspace table's row count and checksum."""
    state = {}
    with psycopg.connect(url, autocommit=True) as conn:
        for table in TABLES:
            state[table] = conn.execute(
                f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
                f"FROM {table} t WHERE workspace_id = %s",
                (workspace,),
            ).fetchone()
    return state


def index_state(platform, workspace: str) -> tuple[list, list]:
    """Every Typesense document and Qdrant point (payload and vector) of the workspace."""
    documents_in, points_in = collections(workspace)
    documents = b"".join(platform["typesense"].stream_export(documents_in))
    points = platform["qdrant"].scroll(points_in)
    return (
        sorted(json.dumps(json.loads(line), sort_keys=True) for line in documents.splitlines()),
        sorted(json.dumps(p, sort_keys=True) for p in points),
    )


def memory_ids(url: str, workspace: str) -> list[int]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT id FROM memory_entries WHERE workspace_id = %s ORDER BY id", (workspace,)
        )
        return [r[0] for r in rows]


def change(platform, workspace: str, insert: int, update: list[int], delete: list[int]) -> list:
    """What the platform does: rows inserted, updated and deleted in SQL (a turn too), and
    their entries written or removed in both indexes. Returns the inserted ids."""
    with psycopg.connect(platform["db"], autocommit=True) as conn:
        inserted = [
            r[0]
            for r in conn.execute(
                """INSERT INTO memory_entries (workspace_id, session_id, kind, content, importance,
                       embedding, created_at, updated_at)
                   SELECT %(ws)s, (SELECT min(id) FROM sessions WHERE workspace_id = %(ws)s),
                          'fact', 'new memory ' || g, 0.5, sample_embedding(16, g),
                          clock_timestamp(), clock_timestamp()
                   FROM generate_series(1, %(n)s) g RETURNING id""",
                {"ws": workspace, "n": insert},
            )
        ]
        conn.execute(
            "INSERT INTO turns (workspace_id, session_id, seq, role, content, tokens, created_at) "
            "SELECT %(ws)s, min(id), 99, 'user', 'a later turn', 3, clock_timestamp() "
            "FROM sessions WHERE workspace_id = %(ws)s",
            {"ws": workspace},
        )
        conn.execute(
            "UPDATE memory_entries SET content = content || ' (edited)', importance = 0.99, "
            "embedding = sample_embedding(16, id), updated_at = clock_timestamp() "
            "WHERE id = ANY(%s)",
            (update,),
        )
        conn.execute("DELETE FROM memory_entries WHERE id = ANY(%s)", (delete,))
    reindex(platform, workspace, only_ids=set(inserted) | set(update))
    documents_in, points_in = collections(workspace)
    for identifier in delete:
        platform["typesense"].http.request(
            "DELETE",
            f"/collections/{documents_in}/documents/{identifier}",
            "delete document",
        )
    platform["qdrant"].api.delete(
        points_in, points_selector=models.PointIdsList(points=delete), wait=True
    )
    return inserted


def mark(url: str) -> datetime:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT clock_timestamp()").fetchone()[0]


def wait_until_after(moment: datetime, url: str, timeout: float = 10) -> None:
    """Qdrant's snapshot times are whole seconds: wait until the database clock is past the
    second of `moment`, so that T is surely after the artifacts."""
    deadline = time.monotonic() + timeout
    while mark(url) <= moment + timedelta(seconds=1):
        assert time.monotonic() < deadline
        time.sleep(0.05)


def lose(platform, workspace: str) -> None:
    """The incident: the workspace's rows deleted (children first), both collections dropped."""
    with psycopg.connect(platform["db"], autocommit=True) as conn:
        for table in reversed(TABLES):
            conn.execute(f"DELETE FROM {table} WHERE workspace_id = %s", (workspace,))
    documents_in, points_in = collections(workspace)
    platform["typesense"].delete_collection(documents_in)
    platform["qdrant"].delete_collection(points_in)


def artifact_captured_at(platform, workspace: str) -> datetime:
    manifests = [
        platform["store"].require_manifest(ArtifactRef(asset, ARTIFACT_DATE, workspace))
        for asset in ("typesense/collection_export", "qdrant/collection_snapshot")
    ]
    return max(datetime.fromisoformat(m["captured_at"]) for m in manifests)


def store_listing(platform) -> list:
    return sorted(str(ref) for ref in platform["store"].list_artifacts())


def lease_holder(platform, workspace: str | None) -> tuple[str, str] | None:
    """(purpose, who) of the store lease of `workspace` (None: the whole database), if held."""
    lease = platform["store"].read_lease(lease_name(workspace))
    return None if lease is None else (lease.record.owner.purpose, lease.record.owner.who)


def daily_restore_verdict(platform, date: str, workspace: str) -> str:
    """What the daily restore of that date's partition says (its dry run: nothing written):
    the gate's verdict, FAIL being a refusal."""
    try:
        report = restore_workspace(
            platform["store"], date, workspace, platform["db"], POLICY, platform["indexes"],
            dry_run=True,
        )  # fmt: skip
    except GateRefused as refused:
        return refused.verdict.outcome.value
    return report.verdict


def work_dir_entries(platform) -> list:
    from pathlib import Path

    return sorted(p.name for p in Path(platform["env"]["BACKUP_WORK_DIR"]).iterdir())


# --------------------------------------------------------------------------------------------
# Tests


def test_pitr_instant_catch_up_rule_on_ids():
    ids = catch_up.id_keys
    at_t = ids([1, 2, 3, 4, 5, 6])  # 6 inserted after the artifact, 3 changed since
    artifact = ids([1, 2, 3, 4, 5, 9])  # 9 deleted by T
    lost = catch_up.catch_up(at_t, ids([3]), artifact, indexed=ids([]), live=ids([]))
    assert lost.upsert.tolist() == [3, 6] and lost.delete.tolist() == [9]
    assert lost.from_artifact.tolist() == [1, 2, 3, 4, 5, 9] and len(lost.kept_live) == 0
    # Live kept rows 1 and 2 (2 changed after T, with its entry) and has 7 (newer than T, its
    # entry lost); the index also holds 5 (its row lost) and an orphan 8.
    live = catch_up.catch_up(
        at_t,
        ids([3]),
        artifact,
        indexed=ids([1, 2, 5, 8]),
        live=ids([1, 2, 7]),
        live_changed=ids([2, 7]),
    )
    assert live.restored_rows.tolist() == [3, 4, 5, 6]
    assert live.upsert.tolist() == [3, 5, 6, 7]  # 5: the live entry of a restored row is stale
    assert live.delete.tolist() == [8, 9] and live.kept_live.tolist() == [1, 2]
    # uuid ids (text) against integers: compared as canonical text, like the gate does
    mixed = catch_up.catch_up(ids(["a1", "b2"]), ids([]), ids(["b2", "c3"]), ids([]))
    assert catch_up.id_values(mixed.upsert) == ["a1"]
    assert catch_up.id_values(mixed.delete) == ["c3"]


def test_pitr_instant_workspace_restored_to_t_equals_sql_and_both_indexes_at_t(
    platform, monkeypatch, capsys
):
    from backup_pipelines import cli

    workspace, bystander = "ws_pitr_lost", "ws_pitr_bystander"
    seed_and_index(platform, workspace)
    seed_and_index(platform, bystander)
    back_up(platform["store"], platform, workspace, date=ARTIFACT_DATE)
    ids = memory_ids(platform["db"], workspace)
    # After the artifacts and before T: 5 inserted, 5 updated, 5 deleted (SQL and indexes)
    inserted = change(platform, workspace, 5, update=ids[10:15], delete=ids[20:25])
    wait_until_after(artifact_captured_at(platform, workspace), platform["db"])
    sql_at_t, index_at_t = sql_state(platform["db"], workspace), index_state(platform, workspace)
    bystander_sql, bystander_index = (
        sql_state(platform["db"], bystander),
        index_state(platform, bystander),
    )
    # The daily partition's SQL dump taken again at T: its index artifacts are older than its
    # SQL, which is what the daily restore of that date has to work with
    back_up(platform["store"], platform, workspace, date=ARTIFACT_DATE, indexes=())
    target = mark(platform["db"])
    # After T: more of each, then the workspace is lost
    change(platform, workspace, 3, update=ids[30:33] + inserted[:1], delete=ids[40:43])
    archive_now(platform["db"])
    lose(platform, workspace)
    for key, value in platform["env"].items():
        monkeypatch.setenv(key, value)
    policy_file = platform["archiving"].cluster.work_dir("instant_policy") / "policy.yaml"
    policy_file.write_text("max_clock_skew_seconds: 30\n")
    monkeypatch.setenv("BACKUP_POLICY_FILE", str(policy_file))
    listing, work = store_listing(platform), work_dir_entries(platform)

    # Dry run (command line): the plan, and nothing written
    code = cli.main(
        ["restore", "workspace", "--to", target.isoformat(), "--workspace", workspace, "--dry-run"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    plan = json.JSONDecoder().raw_decode(out, out.index("\n{") + 1)[0]["plan"]
    backup_label = platform["archiving"].stanza.info().oldest_backup.label
    assert f"physical backup {backup_label} (full" in out and "WAL from 0000" in out
    assert plan["physical_backup"]["label"] == backup_label and plan["wal"]["to"]
    (ws_plan,) = plan["workspaces"]
    assert ws_plan["sql"]["public.memory_entries"]["inserted"] == len(ids)  # 120 + 5 - 5
    for engine, collection in zip(("typesense", "qdrant"), collections(workspace), strict=True):
        index = ws_plan["indexes"][engine]
        asset = (
            "typesense/collection_export" if engine == "typesense" else "qdrant/collection_snapshot"
        )
        assert index["artifact"].endswith(f"{asset}/date={ARTIFACT_DATE}/workspace={workspace}")
        assert index["captured_at"] and index["entries"] == len(ids)
        assert index["upsert"] == 10 and index["delete"] == 5  # changed or new, gone by T
        assert index["from_artifact"] == len(ids) and not index["collection_exists"]
        assert f"{collection}: from " in out
    gate_alone = ws_plan["artifacts_alone_vs_sql_at_target"]["verdict"]
    assert gate_alone in ("FAIL", "REBUILD_INDEX")
    assert store_listing(platform) == listing and work_dir_entries(platform) == work
    assert sql_state(platform["db"], workspace)["memory_entries"][0] == 0
    assert not platform["typesense"].collection_exists(collections(workspace)[0])
    assert not platform["qdrant"].collection_exists(collections(workspace)[1])

    # The daily restore of that partition (SQL at T, the older index artifacts): refused by
    # its gate (FAIL) or a REBUILD of both indexes, never a PASS; the plan said the same
    daily = daily_restore_verdict(platform, ARTIFACT_DATE, workspace)
    assert daily in ("FAIL", "REBUILD_INDEX") and daily == gate_alone
    assert store_listing(platform) == listing
    assert sql_state(platform["db"], workspace)["memory_entries"][0] == 0

    # The restore (Dagster job, the instant as a run tag)
    from backup_pipelines.definitions import build_definitions

    job = build_definitions().resolve_job_def("instant_restore_job")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("workspaces", [workspace])
        run = job.execute_in_process(
            instance=instance, partition_key=workspace, tags={"pitr/to": target.isoformat()}
        )
    assert run.success
    (output,) = [
        e
        for e in run.events_for_node("restore_workspace_to_instant")
        if e.event_type_value == "STEP_OUTPUT"
    ]
    metadata = output.step_output_data.metadata
    assert metadata["gate_after"].value == {workspace: "PASS"}
    assert metadata["dry_run"].value is False
    assert sql_state(platform["db"], workspace) == sql_at_t
    assert index_state(platform, workspace) == index_at_t
    assert sql_state(platform["db"], bystander) == bystander_sql
    assert index_state(platform, bystander) == bystander_index
    assert work_dir_entries(platform) == work  # scratch cluster and temporary dump removed
    assert lease_holder(platform, workspace) is None  # the run's lease released


def test_pitr_instant_merge_keeps_rows_and_entries_newer_than_t(platform):
    workspace = "ws_pitr_partial"
    seed_and_index(platform, workspace)
    back_up(platform["store"], platform, workspace, date=ARTIFACT_DATE)
    ids = memory_ids(platform["db"], workspace)
    inserted_before = change(platform, workspace, 2, update=ids[:2], delete=ids[2:4])
    wait_until_after(artifact_captured_at(platform, workspace), platform["db"])
    target = mark(platform["db"])
    # After T: a new row, a kept row updated; then a bug deletes older rows and their entries
    newer = change(platform, workspace, 1, update=ids[5:6], delete=[])
    lost = ids[10:20] + inserted_before
    with psycopg.connect(platform["db"], autocommit=True) as conn:
        conn.execute("DELETE FROM memory_entries WHERE id = ANY(%s)", (lost,))
    documents_in, points_in = collections(workspace)
    for identifier in lost:
        platform["typesense"].http.request(
            "DELETE", f"/collections/{documents_in}/documents/{identifier}", "delete"
        )
    platform["qdrant"].api.delete(points_in, points_selector=models.PointIdsList(points=lost))
    archive_now(platform["db"])
    newer_docs = {
        str(i): platform["typesense"].http.json(
            "GET", f"/collections/{documents_in}/documents/{i}", "get"
        )
        for i in newer + ids[5:6]
    }

    before = (memory_ids(platform["db"], workspace), index_state(platform, workspace))
    shown: list[tuple[str, tuple | None]] = []

    def log(line: str) -> None:
        """A plan line (indented) is recorded with the live state and the lease holder at
        the moment it is shown."""
        plan_line = line.startswith(("  workspace", "    "))
        state = (
            (memory_ids(platform["db"], workspace), index_state(platform, workspace))
            if plan_line
            else None
        )
        shown.append((line, (state, lease_holder(platform, workspace)) if plan_line else None))

    result = instant.restore_workspaces_to(
        platform["archiving"].pitr_config(),
        platform["store"],
        target,
        [workspace],
        platform["db"],
        POLICY,
        platform["indexes"],
        log=log,
        lease_owner="the instant test",
    )
    assert not result.failed, result.to_dict()
    # The plan (SQL, both indexes) was shown before anything was written, all of it while the
    # workspace's lease was held by this restore; the writes were logged after it
    lines = [line for line, _ in shown]
    plan_at = [i for i, (_, seen) in enumerate(shown) if seen]
    assert any(lines[i].startswith("    SQL: ") for i in plan_at)
    merged = next(i for i, x in enumerate(lines) if x.startswith("public.memory_entries: "))
    assert max(plan_at) < merged
    for collection in collections(workspace):
        assert any(f" {collection}: from " in lines[i] for i in plan_at)
        caught_up = next(
            i for i, x in enumerate(lines) if x.startswith(f"{workspace}: ") and collection in x
        )
        assert max(plan_at) < caught_up
    assert all(shown[i][1] == (before, ("restore", "the instant test")) for i in plan_at)
    assert lease_holder(platform, workspace) is None
    (done,) = result.results
    assert done.gate.outcome is consistency.Outcome.PASS
    assert done.sql["public.memory_entries"]["inserted"] == len(lost)
    # The lost rows are back with their entries at T; the rows newer than T and their entries
    # stay as live had them; the ids present are exactly those of live SQL.
    live_ids = memory_ids(platform["db"], workspace)
    assert set(lost) <= set(live_ids) and set(newer) <= set(live_ids)
    for i in newer + ids[5:6]:
        document = platform["typesense"].http.json(
            "GET", f"/collections/{documents_in}/documents/{i}", "get"
        )
        assert document == newer_docs[str(i)]
    documents, points = index_state(platform, workspace)
    assert sorted(int(json.loads(d)["id"]) for d in documents) == live_ids
    assert sorted(json.loads(p)["id"] for p in points) == live_ids
    plan = result.plan.workspaces[0].to_dict()["indexes"]["typesense"]
    assert plan["live_entries_kept"] == len(live_ids) - len(lost)
    # Only the lost rows new since the artifact are re-derived; the others come from it
    assert plan["upsert"] == len(inserted_before) and plan["delete"] == 2  # ids[2:4], gone by T


def test_pitr_instant_target_outside_window_is_refused_before_anything_is_written(platform):
    archive_now(platform["db"])
    window = pitr.reachable_window(platform["archiving"].stanza)
    work = work_dir_entries(platform)
    listing = store_listing(platform)
    for target, named in (
        (window.oldest - timedelta(hours=1), "before the oldest restorable instant"),
        (datetime.now(UTC) + timedelta(hours=1), "after the newest reachable instant"),
    ):
        with pytest.raises(pitr.PitrTargetUnreachable, match=named):
            instant.restore_workspaces_to(
                platform["archiving"].pitr_config(),
                platform["store"],
                target,
                ["ws_pitr_never"],
                platform["db"],
                POLICY,
                platform["indexes"],
            )
    assert work_dir_entries(platform) == work and store_listing(platform) == listing


def test_pitr_instant_busy_workspace_or_database_is_refused_naming_the_lease_holder(platform):
    archive_now(platform["db"])
    target = mark(platform["db"])
    archive_now(platform["db"])
    store, config = platform["store"], platform["archiving"].pitr_config()
    work, listing = work_dir_entries(platform), store_listing(platform)
    workspace = "ws_pitr_busy"
    backup = store.acquire_lease(lease_name(workspace), LeaseOwner("nightly backup", "backup"))
    try:
        result = instant.restore_workspaces_to(
            config, store, target, [workspace], platform["db"], POLICY, platform["indexes"]
        )
        (refused,) = result.failed
        assert refused.workspace == workspace and not result.plan.workspaces
        assert "busy" in refused.error and "held for backup by nightly backup" in refused.error
        assert lease_holder(platform, workspace) == ("backup", "nightly backup")
    finally:
        store.release_lease(backup)
    database = store.acquire_lease(lease_name(None), LeaseOwner("a full restore", "restore"))
    try:
        with pytest.raises(LeaseHeld, match="held for restore by a full restore"):
            instant.restore_platform_to(config, store, target, POLICY, platform["indexes"])
    finally:
        store.release_lease(database)
    assert work_dir_entries(platform) == work and store_listing(platform) == listing


def test_pitr_instant_platform_cluster_and_indexes_restored_to_t(platform):
    workspace = "ws_pitr_platform"
    seed_and_index(platform, workspace)
    back_up(platform["store"], platform, workspace, date=ARTIFACT_DATE)
    ids = memory_ids(platform["db"], workspace)
    change(platform, workspace, 2, update=ids[:2], delete=ids[2:4])
    wait_until_after(artifact_captured_at(platform, workspace), platform["db"])
    sql_at_t, index_at_t = sql_state(platform["db"], workspace), index_state(platform, workspace)
    target = mark(platform["db"])
    change(platform, workspace, 1, update=ids[5:6], delete=ids[6:7])
    archive_now(platform["db"])
    live_sql, live_index = sql_state(platform["db"], workspace), index_state(platform, workspace)
    config, work = platform["archiving"].pitr_config(), work_dir_entries(platform)

    lines: list[str] = []
    dry = instant.restore_platform_to(
        config, platform["store"], target, POLICY, platform["indexes"], dry_run=True,
        log=lines.append,
    )  # fmt: skip
    plan = next(w for w in dry.plan.workspaces if w.workspace == workspace).to_dict()
    for engine in ("typesense", "qdrant"):
        # 2 inserted + 2 updated before T re-derived; deleted: 2 gone by T, 1 inserted after T
        assert plan["indexes"][engine]["upsert"] == 4
        assert plan["indexes"][engine]["delete"] == 3
    assert any(line.startswith("plan: restore platform") for line in lines)
    assert sql_state(platform["db"], workspace) == live_sql
    assert index_state(platform, workspace) == live_index
    assert work_dir_entries(platform) == work

    copy = platform["archiving"].cluster.work_dir("platform_copy")
    holders: list = []
    result = instant.restore_platform_to(
        config, platform["store"], target, POLICY, platform["indexes"], target_dir=copy,
        log=lambda line: holders.append((line, lease_holder(platform, None))),
    )  # fmt: skip
    try:
        # After the plan's header (backup, WAL), everything runs under the database's lease
        header = ("plan: restore platform", "  physical backup")
        working = [holder for line, holder in holders if not line.startswith(header)]
        assert len(working) > 5 and all(h and h[0] == "restore" for h in working)
        assert lease_holder(platform, None) is None
        assert not result.failed, result.to_dict()
        assert workspace in {r.workspace for r in result.results}
        assert all(r.gate.outcome is consistency.Outcome.PASS for r in result.results)
        assert sql_state(result.restored.url, workspace) == sql_at_t
        assert index_state(platform, workspace) == index_at_t
        assert sql_state(platform["db"], workspace) == live_sql  # live SQL untouched
    finally:
        result.restored.remove()


def test_pitr_instant_engine_catch_up_operations(platform):
    """upsert_rows, entry_ids and delete_ids of both engines against the real servers, with
    ids a Typesense filter cannot quote (a backtick) deleted one by one."""
    from backup_pipelines.lib.engines import index_engine

    now = datetime.now(UTC)

    def row(identifier, text):
        return {
            "id": identifier, "workspace_id": "ws_pitr_ops", "session_id": None, "kind": "fact",
            "content": text, "importance": 0.5, "created_at": now, "updated_at": now,
            "embedding": [0.1, 0.2, 0.3, 0.4],
        }  # fmt: skip

    cases = {
        "typesense": ("instant_ops_documents", ["plain-1", "tick`2", "plain-3"], "absent-9"),
        "qdrant": ("instant_ops_points", [11, 12, 13], 99),
    }
    for name, (collection, identifiers, absent) in cases.items():
        engine, client = index_engine(name), platform["indexes"][name]
        mapping = POLICY.index_mapping(name)
        try:
            assert len(engine.entry_ids(client, collection)) == 0  # no collection yet
            rows = iter([row(i, f"memory {i}") for i in identifiers])
            assert engine.upsert_rows(client, collection, rows, mapping) == 3
            engine.upsert_rows(client, collection, iter([row(identifiers[0], "edited")]), mapping)
            held = catch_up.id_values(engine.entry_ids(client, collection))
            assert sorted(map(str, held)) == sorted(map(str, identifiers))
            assert engine.delete_ids(client, collection, [*identifiers[1:], absent]) == 3
            assert catch_up.id_values(engine.entry_ids(client, collection)) == identifiers[:1]
            assert engine.count(client, collection) == 1
        finally:
            if client.collection_exists(collection):
                client.delete_collection(collection)
