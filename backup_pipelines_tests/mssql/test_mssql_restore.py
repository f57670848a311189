"""The product's SQL Server backups and restores, end to end through pyodbc + FreeTDS against the
stand-in (or a real server with MSSQL_TEST_CONNECTION_STRING): a day's chain, a restore to a
time between two logs, broken chains refused by name, ChangeBackupType, damaged files."""

from __future__ import annotations

import re

import pytest

from backup_pipelines.lib.errors import BackupError, ChecksumMismatch
from backup_pipelines.lib.mssql import backup, restore
from backup_pipelines.lib.mssql.backupset import Kind
from backup_pipelines.lib.mssql.chain import ChainBroken
from backup_pipelines.lib.mssql.connection import connected, query, quote_name, run
from backup_pipelines.lib.store import LocalStore
from backup_pipelines_tests.helpers import flip_one_byte
from backup_pipelines_tests.mssql.helpers import wait_until_server_time_passes
from backup_pipelines_tests.mssql.platform import (
    add_episodes,
    back_up,
    create_platform,
    rows,
    server_now,
)


@pytest.fixture
def platform(mssql_connection_string, mssql_databases, mssql_dirs, tmp_path):
    """A fresh platform database with two agents, a store and the shared backup folder."""
    database = mssql_databases.create("agents")
    create_platform(mssql_connection_string, database, ["a1", "a2"])
    backups, _data = mssql_dirs
    return {
        "cs": mssql_connection_string,
        "db": database,
        "store": LocalStore(tmp_path / "store"),
        "folders": backup.Folders(str(backups), backups),
        "names": mssql_databases,
    }


def tick(platform) -> None:
    """Let the server's clock move past now, so commits and targets have distinct instants."""
    with connected(platform["cs"], "master") as conn:
        wait_until_server_time_passes(conn, server_now(platform["cs"]).replace(tzinfo=None), 20)


def next_second(platform, manifest: dict) -> None:
    """Wait until the server's clock is a whole second past the backup's end: a Qdrant
    snapshot's creation time is whole seconds, and the agent restore stops there."""
    from datetime import datetime

    finished = datetime.fromisoformat(manifest["header"]["finished_at"].replace("Z", "+00:00"))
    with connected(platform["cs"], "master") as conn:
        wait_until_server_time_passes(conn, finished.replace(tzinfo=None), 1000)


def take(platform, kind: Kind, **kwargs):
    return back_up(
        platform["cs"], platform["db"], platform["store"], kind, platform["folders"], **kwargs
    )


def test_mssql_day_of_backups_restores_exactly_the_rows_committed_at_t(platform):
    cs, db = platform["cs"], platform["db"]
    add_episodes(cs, db, "a1", 3)
    full = take(platform, Kind.FULL)
    add_episodes(cs, db, "a1", 2)
    take(platform, Kind.LOG)
    diff = take(platform, Kind.DIFF)
    add_episodes(cs, db, "a2", 2)
    take(platform, Kind.LOG)
    add_episodes(cs, db, "a1", 1)
    tick(platform)
    target = server_now(cs)
    expected = rows(cs, db)
    tick(platform)
    later = add_episodes(cs, db, "a2", 3)
    with connected(cs, db) as conn:
        query(conn, "SELECT 1 AS x")  # the connection is fine; now change committed rows
    take(platform, Kind.LOG)
    assert full["header"]["type"] == "full" and diff["header"]["type"] == "diff"
    assert diff["header"]["database_backup_lsn"] == full["header"]["checkpoint_lsn"]

    name = platform["names"].name("restored")
    result = restore.restore_database(
        cs, platform["store"], db, target, platform["folders"], target_database=name
    )

    assert rows(cs, name) == expected
    assert all(e not in [r[0] for r in rows(cs, name)["episodes"]] for e in later)
    assert result["restored_to"] == target.isoformat()
    plan = "\n".join(result["plan"])
    assert "full" in plan and "diff" in plan and "STOPAT" in plan
    # The live database is untouched by a restore under a new name.
    assert len(rows(cs, db)["episodes"]) == len(expected["episodes"]) + 3


def test_mssql_missing_log_is_refused_before_anything_is_restored(platform):
    cs, db, store = platform["cs"], platform["db"], platform["store"]
    take(platform, Kind.FULL)
    add_episodes(cs, db, "a1", 2)
    lost = take(platform, Kind.LOG)
    add_episodes(cs, db, "a1", 2)
    take(platform, Kind.LOG)
    ref = next(
        r for r in store.list_artifacts("mssql/log_backup") if store.require_manifest(r) == lost
    )
    store.delete_artifact(ref)
    name = platform["names"].name("restored")
    gap = f"no log backup holds LSN [0-9]+ to {lost['header']['last_lsn']}"
    with pytest.raises(ChainBroken, match=gap):
        restore.restore_database(
            cs, store, db, server_now(cs), platform["folders"], target_database=name
        )
    # "latest" is the newest instant before the gap, and the plan says so first.
    plan, _catalog = restore.plan(store, None, db)
    assert plan.logs == [] and re.search(gap, plan.notes[0]) and "LATEST IS NOT" in plan.notes[0]
    with connected(cs, "master") as conn:
        assert not query(conn, "SELECT name FROM sys.databases WHERE name = ?", name)


def test_mssql_foreign_full_makes_the_next_diff_a_full_and_says_so(platform):
    cs, db = platform["cs"], platform["db"]
    take(platform, Kind.FULL)
    add_episodes(cs, db, "a1", 1)
    # A full taken outside this project (a DBA's ad-hoc backup) moves the differential base.
    outside, _ = platform["folders"].pair("adhoc_full.bak")
    with connected(cs, "master") as conn:
        from backup_pipelines.lib.mssql.connection import run

        run(conn, backup.backup_statement(Kind.FULL, db, outside))
    diff = take(platform, Kind.DIFF)
    assert diff["header"]["type"] == "full"
    assert diff["tool"]["requested"] == "diff" and "not in this store" in diff["tool"]["reason"]
    add_episodes(cs, db, "a1", 1)
    diff = take(platform, Kind.DIFF)
    assert diff["header"]["type"] == "diff" and diff["tool"]["reason"] == ""


def test_mssql_log_is_skipped_in_simple_recovery_and_before_the_first_full(
    platform, mssql_databases
):
    simple = mssql_databases.create("simple", recovery="SIMPLE")
    store, folders = platform["store"], platform["folders"]
    messages: list[str] = []
    assert back_up(platform["cs"], simple, store, Kind.LOG, folders, log=messages.append) is None
    assert any("SIMPLE recovery" in m for m in messages)
    messages.clear()
    assert take(platform, Kind.LOG, log=messages.append) is None
    assert any("no full backup exists yet" in m for m in messages)
    assert not list(store.list_artifacts("mssql/log_backup"))


def test_mssql_flipped_byte_fails_verification_and_the_restore_refuses(platform):
    cs, db, store = platform["cs"], platform["db"], platform["store"]
    full = take(platform, Kind.FULL)
    ref = next(iter(store.list_artifacts("mssql/full_backup")))
    assert store.verify(ref).ok
    assert any(
        "valid" in m for m in backup.verify_stored_backup(cs, store, ref, full, platform["folders"])
    )
    flip_one_byte(store, ref, backup.BACKUP_FILE, offset=4000)
    assert not store.verify(ref).ok
    name = platform["names"].name("restored")
    with pytest.raises(ChecksumMismatch):
        restore.restore_database(cs, store, db, None, platform["folders"], target_database=name)
    with connected(cs, "master") as conn:
        assert not query(conn, "SELECT name FROM sys.databases WHERE name = ?", name)
    assert not list(platform["folders"].local.glob("restore_*.bak"))  # nothing left behind


def test_mssql_restore_over_an_existing_database_needs_the_explicit_option(platform):
    cs, db = platform["cs"], platform["db"]
    add_episodes(cs, db, "a1", 2)
    take(platform, Kind.FULL)
    before = rows(cs, db)
    add_episodes(cs, db, "a1", 2)
    take(platform, Kind.LOG)
    with pytest.raises(BackupError, match="already exists"):
        restore.restore_database(
            cs, platform["store"], db, None, platform["folders"], target_database=db
        )
    first_log_target = restore.plan(platform["store"], None, db)[0].full.finished_at
    restore.restore_database(
        cs, platform["store"], db, first_log_target, platform["folders"], overwrite_live=True
    )
    assert rows(cs, db) == before
    with connected(cs, "master") as conn:
        state = query(
            conn, "SELECT state_desc, user_access_desc FROM sys.databases WHERE name = ?", db
        )
    assert state == [{"state_desc": "ONLINE", "user_access_desc": "MULTI_USER"}]


@pytest.mark.parametrize("overwrite_live", [False, True], ids=["new_database", "overwrite_live"])
def test_mssql_restore_after_drop_database_places_files_in_the_server_default(
    platform, overwrite_live
):
    """DROP DATABASE took live's files with it: the restored files go to the server's
    default data folder (SERVERPROPERTY('InstanceDefaultDataPath')), under a new name or
    under the live name itself."""
    cs, db = platform["cs"], platform["db"]
    add_episodes(cs, db, "a1", 2)
    take(platform, Kind.FULL)
    add_episodes(cs, db, "a2", 1)
    take(platform, Kind.LOG)
    expected = rows(cs, db)
    with connected(cs, "master") as conn:
        run(conn, f"DROP DATABASE {quote_name(db)}")
    name = db if overwrite_live else platform["names"].name("after_drop")
    lines: list[str] = []
    restore.restore_database(
        cs, platform["store"], db, None, platform["folders"],
        target_database=None if overwrite_live else name, overwrite_live=overwrite_live,
        log=lines.append,
    )  # fmt: skip
    assert rows(cs, name) == expected
    assert any("default data folder" in line for line in lines), lines


# ---------------------------------------------------------------------------------------------
# One agent across SQL Server and Qdrant


@pytest.fixture
def qdrant(qdrant_url):
    import os

    from backup_pipelines.lib.qdrant.client import QdrantHttp

    client = QdrantHttp(qdrant_url, os.environ.get("QDRANT_API_KEY"))
    yield client
    client.close()


def index_episodes(qdrant, agent: str, ids: list[int]) -> None:
    """The platform's indexer: one point per episode, id = episode id."""
    collection = f"agent_{agent}"
    if not qdrant.collection_exists(collection):
        qdrant.create_collection(collection, size=4, distance="Cosine")
    points = [
        {
            "id": i,
            "vector": [float(i % 7) + 1, 1.0, 0.5, float(i % 3)],
            "payload": {"agent_id": agent},
        }
        for i in ids
    ]
    qdrant.upsert_points(collection, points)


def snapshot_agent(store, qdrant, agent: str, date: str) -> dict:
    from backup_pipelines.lib.qdrant.snapshot import snapshot_qdrant_collections
    from backup_pipelines.lib.store import ArtifactRef

    ref = ArtifactRef("qdrant/collection_snapshot", date, agent)
    with store.begin(ref) as writer:
        fields = snapshot_qdrant_collections(
            qdrant, qdrant.http.base_url, [f"agent_{agent}"], writer
        )
        return writer.commit(**fields)


def test_mssql_agent_restore_at_the_qdrant_snapshot_instant(platform, qdrant):
    from backup_pipelines.lib.engines import index_engine
    from backup_pipelines.lib.mssql import agent
    from backup_pipelines.lib.policy import Policy
    from backup_pipelines.lib.recovery.consistency import Outcome, evaluate

    cs, db, store = platform["cs"], platform["db"], platform["store"]
    for name in ("agent_a1", "agent_a2"):
        if qdrant.collection_exists(name):
            qdrant.delete_collection(name)
    index_episodes(qdrant, "a1", add_episodes(cs, db, "a1", 5))
    index_episodes(qdrant, "a2", add_episodes(cs, db, "a2", 3))
    full = take(platform, Kind.FULL)
    next_second(platform, full)
    snapshot_agent(store, qdrant, "a1", "2026-12-01")
    at_snapshot = rows(cs, db, "a1")
    tick(platform)
    index_episodes(qdrant, "a1", add_episodes(cs, db, "a1", 2))  # after the snapshot
    take(platform, Kind.LOG)
    # Restoring SQL to "latest" would not agree with the snapshot: two episodes it lacks.
    latest = restore.restore_database(
        cs, store, db, None, platform["folders"], target_database=platform["names"].name("latest")
    )
    engine = index_engine("qdrant")
    ref = next(iter(store.list_artifacts("qdrant/collection_snapshot")))
    snapshot_side = engine.ids(store, ref, store.require_manifest(ref), "agent_a1")
    with connected(cs, "master") as conn:
        from backup_pipelines.lib.ids import Side

        sql_side = Side(
            "sql",
            latest["restored_to"],
            agent.vector_ids(conn, latest["database"], agent.AgentSchema(), "a1"),
        )
    assert evaluate(sql_side, [snapshot_side], 900).outcome is not Outcome.PASS

    # The incident: agent a1's memory lost in SQL and Qdrant; meanwhile the platform goes on.
    with connected(cs, db) as conn:
        from backup_pipelines.lib.mssql.connection import run

        run(conn, "DELETE FROM dbo.procedures WHERE agent_id = 'a1'")
        run(conn, "DELETE FROM dbo.episodes WHERE agent_id = 'a1'")
    qdrant.delete_collection("agent_a1")
    newer = add_episodes(cs, db, "a1", 1)  # written after the incident: must be kept
    other_before = rows(cs, db, "a2")

    report = agent.restore_agent(
        cs, store, db, "a1", "2026-12-01", platform["folders"], engine, qdrant, Policy()
    )

    assert report.verdict == "PASS"
    restored = rows(cs, db, "a1")
    assert set(at_snapshot["episodes"]) <= set(restored["episodes"])
    assert {r[0] for r in restored["episodes"]} == {r[0] for r in at_snapshot["episodes"]} | set(
        newer
    )
    assert rows(cs, db, "a2") == other_before
    assert qdrant.count("agent_a1") == len(at_snapshot["episodes"])
    assert report.rows["episodes"]["inserted"] == len(at_snapshot["episodes"])
    with connected(cs, "master") as conn:  # the scratch database is gone
        assert not query(
            conn, "SELECT name FROM sys.databases WHERE name = ?", report.scratch_database
        )


def test_mssql_cli_restore_plans_from_the_store_alone(platform, monkeypatch, capsys):
    from backup_pipelines import cli

    cs, db, store = platform["cs"], platform["db"], platform["store"]
    add_episodes(cs, db, "a1", 2)
    take(platform, Kind.FULL)
    add_episodes(cs, db, "a1", 1)
    take(platform, Kind.LOG)
    expected = rows(cs, db)
    monkeypatch.setenv("MSSQL_CONNECTION_STRING", cs.replace("DATABASE=master", f"DATABASE={db}"))
    monkeypatch.setenv("MSSQL_BACKUP_DIR", platform["folders"].server)
    monkeypatch.setenv("BACKUP_STORE_URL", f"file://{store.root}")
    printed = []
    assert cli.main(["restore", "mssql", "--dry-run"]) == 0
    printed.append(capsys.readouterr())
    assert "WITH NORECOVERY" in printed[-1].out and '"dry_run": true' in printed[-1].out
    name = platform["names"].name("cli")
    assert cli.main(["restore", "mssql", "--to", "latest", "--target-database", name]) == 0
    printed.append(capsys.readouterr())
    assert rows(cs, name) == expected
    assert cli.main(["restore", "mssql", "--to", "2026-12-01 13:05"]) == 1
    printed.append(capsys.readouterr())
    assert "has no time zone" in printed[-1].err
    password = re.search(r"PWD=\{([^}]*)\}", cs).group(1)
    assert all(password not in p.out + p.err for p in printed)  # never printed


def test_mssql_agent_restore_and_a_restore_over_live_never_run_beside_another(platform):
    """Two operators at once: an agent restore is refused while another restore of that agent
    runs, or a restore over the whole live database; a restore over live is refused while an
    agent restore writes into it. Each refusal names the holder and writes nothing."""
    from backup_pipelines.lib.engines import index_engine
    from backup_pipelines.lib.mssql import agent
    from backup_pipelines.lib.policy import Policy
    from backup_pipelines.lib.store.lease import LeaseHeld

    cs, db, store = platform["cs"], platform["db"], platform["store"]
    take(platform, Kind.FULL)
    before = rows(cs, db)

    def databases() -> set[str]:
        with connected(cs, "master") as conn:
            return {r["name"] for r in query(conn, "SELECT name FROM sys.databases")}

    existing = databases()

    def restore_agent_a1():
        # Refused before anything is read: no snapshot of a1 is even needed.
        return agent.restore_agent(
            cs, store, db, "a1", "2026-12-01", platform["folders"], index_engine("qdrant"),
            None, Policy(), lease_owner="operator-b",
        )  # fmt: skip

    with store.lease("a1", "restore", "operator-a"):
        with pytest.raises(LeaseHeld, match=r"workspace a1 is busy: .*operator-a"):
            restore_agent_a1()
        with pytest.raises(LeaseHeld, match=r"operator-a"):
            restore.restore_database(
                cs, store, db, None, platform["folders"], overwrite_live=True,
                lease_owner="operator-b",
            )  # fmt: skip
    with store.lease(None, "restore", "operator-a"), pytest.raises(LeaseHeld, match="operator-a"):
        restore_agent_a1()
    assert rows(cs, db) == before and databases() == existing
    assert store.list_leases() == []  # the refused ones hold nothing afterwards
