"""Issue 16 item 1, restore speed: workspace dumps in binary COPY where every column's type
allows it (text otherwise, and old text artifacts still restore), the SQL merge and the index
restores at the same time once the gate passed, and untrusted binary data refused with the
table and artifact named and nothing written. Real PostgreSQL, Typesense, Qdrant stand-in.
No timings here: those are bench/bench_restore_rto.py's."""

from __future__ import annotations

import hashlib
import threading

import psycopg
import pytest
import zstandard

from backup_pipelines.lib.errors import BackupError, PartialRestore
from backup_pipelines.lib.policy import load_policy
from backup_pipelines.lib.postgres import dump as postgres
from backup_pipelines.lib.postgres.ids import sql_ids_from_workspace_dump
from backup_pipelines.lib.postgres.load import load_workspace_dump_into_empty_database
from backup_pipelines.lib.postgres.merge import merge_sql_rows
from backup_pipelines.lib.recovery.workspace_restore import restore_workspace
from backup_pipelines.lib.store import ArtifactRef, LocalStore
from backup_pipelines.lib.typesense.client import TypesenseClient
from backup_pipelines_tests.conftest import WORKSPACES
from backup_pipelines_tests.faults.proxy import TcpProxy
from backup_pipelines_tests.faults.store_faults import tamper, wait_until
from backup_pipelines_tests.helpers import DATE, back_up
from backup_pipelines_tests.pg_checks import fingerprint
from backup_pipelines_tests.recovery.test_restore import lose_workspace_memory

SQL = "postgres/workspace_dump"
WS = "ws_odd"

ODD_SCHEMA = r"""
CREATE TYPE mood AS ENUM ('calm', 'busy');
CREATE DOMAIN positive AS integer CHECK (VALUE > 0);
CREATE TABLE workspaces (workspace_id text PRIMARY KEY);
CREATE TABLE facts (
    id           bigint PRIMARY KEY,
    workspace_id text NOT NULL REFERENCES workspaces,
    body         text,
    doc          jsonb,
    amount       numeric,
    blob         bytea,
    tags         text[],
    vec          real[],
    seen         timestamptz,
    label        varchar(20),
    ok           boolean
);
CREATE TABLE moods (
    id           uuid PRIMARY KEY,
    workspace_id text NOT NULL REFERENCES workspaces,
    mood         mood,
    weight       positive,
    history      mood[]
);
"""
ODD_ROWS = r"""
INSERT INTO workspaces VALUES ('ws_odd'), ('ws_other');
INSERT INTO facts VALUES
 (1, 'ws_odd', E'tab\there\nnew line\\backslash \\N not null', '{"a": [1, "x\ty", null], "b": {"c": 1.5}}',
  123456789012345678901234567890.000000000000000001, '\x00ff5c0a09'::bytea,
  ARRAY['plain', E'quote" and \\ back', NULL, ''], ARRAY[1.5, 'NaN', '-Infinity', 0]::real[],
  '2026-11-21 10:11:12.345678+00', 'short', true),
 (2, 'ws_odd', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (3, 'ws_odd', '', '[]', 'NaN', '', '{}', '{}', 'infinity', '', false),
 (-9007199254740993, 'ws_odd', E'\\x41 \\101 not escapes', '"s"', -0.5, '\x'::bytea,
  ARRAY[E'\n'], ARRAY[3.4e38]::real[], '1970-01-01 00:00+00', E'\t', NULL),
 (4, 'ws_other', 'a neighbour', NULL, 1, NULL, NULL, NULL, NULL, NULL, NULL);
INSERT INTO moods VALUES
 ('00000000-0000-0000-0000-000000000001', 'ws_odd', 'calm', 5, ARRAY['calm', 'busy']::mood[]),
 ('00000000-0000-0000-0000-000000000002', 'ws_odd', NULL, NULL, NULL);
"""
ODD_POLICY = "workspace_tables: [workspaces, facts, moods]\nmemory_table: facts\n"


def table_text(url: str, table: str, workspace: str = WS) -> list[str]:
    """Every row of the workspace as PostgreSQL prints it, sorted."""
    with psycopg.connect(url) as conn:
        return [
            r[0]
            for r in conn.execute(
                f"SELECT t::text FROM {table} t WHERE workspace_id = %s ORDER BY 1", (workspace,)
            )
        ]


@pytest.fixture
def odd(make_database, tmp_path):
    url = make_database("odd")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(ODD_SCHEMA)
        conn.execute(ODD_ROWS)
    (tmp_path / "policy.yaml").write_text(ODD_POLICY)
    return {"db": url, "policy": load_policy(tmp_path / "policy.yaml")}


def dumped(store, env, workspace=WS, binary=True, date=DATE) -> tuple[ArtifactRef, dict]:
    ref = ArtifactRef(SQL, date, workspace)
    with store.begin(ref) as writer:
        fields = postgres.dump_workspace(env["db"], workspace, env["policy"], writer, binary=binary)
        writer.commit(**fields)
    return ref, store.require_manifest(ref)


def without_ids_files(manifest: dict) -> dict:
    """The manifest as if the dump had written no ids files: the gate walks the binary rows."""
    tables = [
        {k: v for k, v in t.items() if k not in ("ids_file", "ids_column")}
        for t in manifest["tables"]
    ]
    return {**manifest, "tables": tables}


def formats(manifest: dict) -> dict[str, str]:
    return {t["table"]: t["copy_format"] for t in manifest["tables"]}


def test_restore_speed_binary_dump_round_trip_of_an_operators_odd_types(
    odd, tmp_path, make_database
):
    store = LocalStore(tmp_path / "store")
    ref, manifest = dumped(store, odd)
    text_ref, text_manifest = dumped(store, odd, binary=False, date="2026-11-20")
    before = {t: table_text(odd["db"], t) for t in ("facts", "moods")}

    # enum, domain and an enum array have no OID the same in every database: text
    assert formats(manifest) == {
        "public.workspaces": "binary",
        "public.facts": "binary",
        "public.moods": "text",
    }
    assert set(formats(text_manifest).values()) == {"text"}
    facts = next(t for t in manifest["tables"] if t["table"] == "public.facts")
    assert facts["rows"] == 4 and facts["column_types"][:3] == ["int8", "text", "text"]
    assert isinstance(facts["server_major"], int)
    assert (facts["ids_file"], facts["ids_column"]) == ("public.facts.ids.zst", "id")
    text_ids = sql_ids_from_workspace_dump(store, text_ref, text_manifest, "public.facts")
    from_ids_file = sql_ids_from_workspace_dump(store, ref, manifest, "public.facts")
    walked = sql_ids_from_workspace_dump(store, ref, without_ids_files(manifest), "public.facts")
    for ids in (text_ids, from_ids_file, walked):
        assert sorted(ids.ids.tolist()) == [-9007199254740993, 1, 2, 3]
    moods = sql_ids_from_workspace_dump(store, text_ref, text_manifest, "public.moods")
    assert sorted(moods.ids.tolist()) == [
        b"00000000-0000-0000-0000-000000000001",
        b"00000000-0000-0000-0000-000000000002",
    ]

    # merged back into the live database after a loss: every value as it was
    for artifact, artifact_manifest in ((ref, manifest), (text_ref, text_manifest)):
        with psycopg.connect(odd["db"], autocommit=True) as conn:
            conn.execute("DELETE FROM moods WHERE workspace_id = %s", (WS,))
            conn.execute("DELETE FROM facts WHERE workspace_id = %s", (WS,))
        report = merge_sql_rows(odd["db"], store, artifact, artifact_manifest)
        assert report["public.facts"]["inserted"] == 4
        assert {t: table_text(odd["db"], t) for t in ("facts", "moods")} == before
    assert table_text(odd["db"], "facts", "ws_other") == ['(4,ws_other,"a neighbour",,1,,,,,,)']

    # and loaded into a fresh database (other type OIDs): the binary tables come back equal
    (tmp_path / "builtin.yaml").write_text("workspace_tables: [workspaces, facts]\n")
    builtin = {"db": odd["db"], "policy": load_policy(tmp_path / "builtin.yaml")}
    fresh_ref, _ = dumped(store, builtin, date="2026-11-19")
    fresh = make_database("odd_fresh")
    loaded = load_workspace_dump_into_empty_database(store, fresh_ref, fresh)
    assert loaded == {"public.workspaces": 1, "public.facts": 4}
    assert table_text(fresh, "facts") == before["facts"]


def cut_file(store: LocalStore, ref: ArtifactRef, name: str, change) -> None:
    """Rewrite one table file's plaintext with `change` and re-sign the manifest, as a writer
    that wrote damaged data (not bit rot: the checksums agree) would have left it."""
    manifest = store.require_manifest(ref)
    entry = next(f for f in manifest["files"] if f["name"] == name)
    key = f"{ref.folder}/{entry['path']}"
    with store._open_read(key) as handle:
        plain = zstandard.ZstdDecompressor().decompressobj().decompress(handle.read())
    data = zstandard.ZstdCompressor().compress(change(plain))
    sink = store._open_sink(key)
    sink.write(data)
    sink.close()

    def resign(raw: dict) -> None:
        for item in raw["files"]:
            if item["name"] == name:
                item["bytes"], item["sha256"] = len(data), hashlib.sha256(data).hexdigest()

    tamper(store, ref, resign)


def index_collections_exist(env, workspace) -> list[bool]:
    policy = env["policy"]
    return [
        env["typesense"].collection_exists(policy.typesense_collection_for(workspace)),
        env["qdrant"].collection_exists(policy.qdrant_collections_for(workspace)[0]),
    ]


def test_restore_speed_truncated_binary_artifact_refused_with_nothing_changed(
    tmp_path, indexed_source
):
    store = LocalStore(tmp_path)
    back_up(store, indexed_source, "ws_acme")
    ref = ArtifactRef(SQL, DATE, "ws_acme")
    manifest = store.require_manifest(ref)
    assert formats(manifest)["public.memory_entries"] == "binary"
    lose_workspace_memory(indexed_source, "ws_acme")
    lost = {w: fingerprint(indexed_source["db"], w) for w in WORKSPACES}

    # the server reads the cut stream: the merge's one transaction is rolled back
    cut_file(store, ref, "public.memory_entries.copy.zst", lambda plain: plain[:-1000])
    manifest = store.require_manifest(ref)
    with pytest.raises(BackupError) as merged:
        merge_sql_rows(indexed_source["db"], store, ref, manifest)
    assert "public.memory_entries" in str(merged.value) and str(ref) in str(merged.value)
    assert "damaged" in str(merged.value)
    assert {w: fingerprint(indexed_source["db"], w) for w in WORKSPACES} == lost

    # the gate, walking the binary rows (no ids file), refuses the cut stream too
    with pytest.raises(ValueError, match=r"public\.memory_entries.*damaged.*cut stream"):
        sql_ids_from_workspace_dump(store, ref, without_ids_files(manifest))
    # a whole restore: staged while the gate reads the ids, refused before any write
    with pytest.raises(BackupError, match=r"public\.memory_entries.*ws_acme.*damaged.*nothing"):
        restore_workspace(
            store, DATE, "ws_acme", indexed_source["db"], indexed_source["policy"],
            indexed_source["indexes"],
        )  # fmt: skip
    assert {w: fingerprint(indexed_source["db"], w) for w in WORKSPACES} == lost

    # a small table's file, cut: refused before the SQL merge inserts or any index starts
    back_up(store, indexed_source, "ws_globex")
    lose_workspace_memory(indexed_source, "ws_globex")
    globex = ArtifactRef(SQL, DATE, "ws_globex")
    cut_file(store, globex, "public.sessions.copy.zst", lambda plain: plain[:-7])
    lost = {w: fingerprint(indexed_source["db"], w) for w in WORKSPACES}
    with pytest.raises(BackupError, match=r"public\.sessions.*ws_globex.*damaged.*nothing"):
        restore_workspace(
            store, DATE, "ws_globex", indexed_source["db"], indexed_source["policy"],
            indexed_source["indexes"],
        )  # fmt: skip
    assert {w: fingerprint(indexed_source["db"], w) for w in WORKSPACES} == lost
    assert index_collections_exist(indexed_source, "ws_globex") == [False, False]
    assert index_collections_exist(indexed_source, "ws_acme") == [False, False]


def test_restore_speed_old_text_artifact_restores_through_the_gate(tmp_path, indexed_source):
    store = LocalStore(tmp_path)
    env = indexed_source
    back_up(store, env, "ws_acme", sql=False)
    dumped(store, env, "ws_acme", binary=False)  # as every artifact before binary COPY
    manifest = store.require_manifest(ArtifactRef(SQL, DATE, "ws_acme"))
    assert set(formats(manifest).values()) == {"text"}
    before = fingerprint(env["db"], "ws_acme")
    lose_workspace_memory(env, "ws_acme")

    report = restore_workspace(store, DATE, "ws_acme", env["db"], env["policy"], env["indexes"])

    assert report.verdict == "PASS"
    assert report.verification["problems"] == []
    assert fingerprint(env["db"], "ws_acme") == before
    assert {"sql_branch", "typesense_branch", "qdrant_branch"} <= set(report.seconds)


def test_restore_speed_parallel_index_failure_is_reported_as_partial(tmp_path, indexed_source):
    """The SQL merge and both index restores run at once: Typesense failing (a wrong key) does
    not stop the others, and PartialRestore states each store."""
    env = indexed_source
    store = LocalStore(tmp_path)
    back_up(store, env, "ws_acme")
    before = fingerprint(env["db"], "ws_acme")
    lose_workspace_memory(env, "ws_acme")
    wrong_key = TypesenseClient(env["typesense_url"], "not-the-key")
    try:
        with pytest.raises(PartialRestore) as raised:
            restore_workspace(
                store, DATE, "ws_acme", env["db"], env["policy"],
                {"typesense": wrong_key, "qdrant": env["qdrant"]},
            )  # fmt: skip
    finally:
        wrong_key.close()

    states = raised.value.states
    assert states["sql"]["state"] == "committed" and states["sql"]["rows_inserted"] > 0
    assert states["typesense"]["state"] == "failed" and "401" in states["typesense"]["error"]
    assert (states["qdrant"]["state"], states["qdrant"]["entries"]) == ("done", 120)
    assert "not-the-key" not in str(raised.value)
    assert fingerprint(env["db"], "ws_acme") == before


def test_restore_speed_value_the_server_refuses_is_refused_before_any_write(
    tmp_path, indexed_source
):
    """Invalid UTF-8 in a binary text field (the framing is sound, so only the server finds
    it): the SQL rows are staged while the gate runs, so the refusal comes before the SQL
    merge inserts anything or any index is touched."""
    env = indexed_source
    store = LocalStore(tmp_path)
    back_up(store, env, "ws_acme")
    with psycopg.connect(env["db"]) as conn:
        content = conn.execute(
            "SELECT content FROM memory_entries WHERE workspace_id = 'ws_acme' LIMIT 1"
        ).fetchone()[0]
    lose_workspace_memory(env, "ws_acme")
    lost = {w: fingerprint(env["db"], w) for w in WORKSPACES}
    needle = content.encode()
    cut_file(
        store, ArtifactRef(SQL, DATE, "ws_acme"), "public.memory_entries.copy.zst",
        lambda plain: plain.replace(needle, b"\xff" + needle[1:], 1),
    )  # fmt: skip

    with pytest.raises(BackupError, match=r"public\.memory_entries.*ws_acme.*damaged.*nothing"):
        restore_workspace(store, DATE, "ws_acme", env["db"], env["policy"], env["indexes"])

    assert {w: fingerprint(env["db"], w) for w in WORKSPACES} == lost
    assert index_collections_exist(env, "ws_acme") == [False, False]


def test_restore_speed_sql_session_lost_before_its_commit_is_reported_as_partial(
    tmp_path, indexed_source
):
    """Every backed-up row is in and checked, the indexes are being restored, and the SQL
    session is lost before its commit (terminated while it waits to move the id sequence past
    the restored rows: another session holds that sequence): the SQL transaction is gone, and
    PartialRestore says so and what each index holds. (A row the live schema refuses stops a
    restore before any index is written: test_faults_schema.)"""
    env = indexed_source
    store = LocalStore(tmp_path)
    back_up(store, env, "ws_acme")
    lose_workspace_memory(env, "ws_acme")
    lost = fingerprint(env["db"], "ws_acme")
    killed: list = []
    with (
        psycopg.connect(env["db"]) as holder,  # holds the sequence until its rollback
        psycopg.connect(env["db"], autocommit=True) as watcher,
    ):
        sequence = holder.execute(
            "SELECT pg_get_serial_sequence('public.memory_entries', 'id')"
        ).fetchone()[0]
        holder.execute(f"ALTER SEQUENCE {sequence} CACHE 1")

        def terminate_the_waiting_session() -> None:
            pid = wait_until(
                lambda: watcher.execute(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE %s AND pid <> pg_backend_pid()",
                    ("%setval%",),
                ).fetchone(),
                120,
                "the restore's SQL session waiting for the id sequence",
            )[0]
            killed.append(watcher.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone())
            holder.rollback()

        killer = threading.Thread(target=terminate_the_waiting_session, daemon=True)
        killer.start()
        try:
            with pytest.raises(PartialRestore) as raised:
                restore_workspace(store, DATE, "ws_acme", env["db"], env["policy"], env["indexes"])
        finally:
            killer.join(timeout=150)

    assert killed == [(True,)]
    states = raised.value.states
    assert states["sql"]["state"] == "failed" and states["sql"]["rolled_back"] is True
    assert (states["typesense"]["state"], states["typesense"]["entries"]) == ("done", 120)
    assert (states["qdrant"]["state"], states["qdrant"]["entries"]) == ("done", 120)
    assert "SQL: FAILED, rolled back" in str(raised.value)
    assert fingerprint(env["db"], "ws_acme") == lost


# psycopg's COMMIT: a simple-query message (type, length, text, NUL).
COMMIT_MESSAGE = b"Q\x00\x00\x00\x0bCOMMIT\x00"


def test_restore_speed_sql_connection_lost_at_commit_is_reported_as_unknown(
    tmp_path, indexed_source
):
    """The network drops the restore's SQL connection right after its COMMIT reached the
    server (a proxy forwards it, passes no answer back and closes every connection): the
    server reads the COMMIT before it sees the connection close, so it usually commits; the
    client cannot know. PartialRestore says the commit's outcome is
    unknown, not "rolled back", and the same restore run again finishes."""
    env = indexed_source
    store = LocalStore(tmp_path)
    back_up(store, env, "ws_acme")
    restored = fingerprint(env["db"], "ws_acme")
    lose_workspace_memory(env, "ws_acme")

    def the_merge_commits(state: dict, chunk: bytes) -> bool:
        state["copied"] = state.get("copied") or b"COPY " in chunk  # the merge's connection
        return state["copied"] and COMMIT_MESSAGE in chunk

    with TcpProxy.in_front_of(env["db"]) as proxy:
        proxy.stop_once_sent(the_merge_commits)
        with pytest.raises(PartialRestore) as raised:
            restore_workspace(
                store, DATE, "ws_acme", proxy.url_for(env["db"]), env["policy"], env["indexes"]
            )

    assert proxy.mode == "stopped"
    states = raised.value.states
    assert states["sql"]["state"] == "failed" and states["sql"]["rolled_back"] is False
    assert states["sql"]["commit"] == "unknown"
    assert "CommitOutcomeUnknown" in states["sql"]["error"]
    assert (states["typesense"]["state"], states["typesense"]["entries"]) == ("done", 120)
    assert (states["qdrant"]["state"], states["qdrant"]["entries"]) == ("done", 120)
    sql_line = str(raised.value).split("SQL: ", 1)[1].split("\n", 1)[0]
    assert sql_line.startswith("FAILED at its commit, outcome unknown")
    assert "rolled back" not in sql_line
    report = restore_workspace(store, DATE, "ws_acme", env["db"], env["policy"], env["indexes"])
    assert report.verification["problems"] == []
    assert fingerprint(env["db"], "ws_acme") == restored


def test_restore_speed_binary_from_another_major_version_is_refused(odd, tmp_path):
    """PostgreSQL does not promise binary COPY across major versions: a binary table dumped
    by another major version than the target's is refused before anything is written."""
    store = LocalStore(tmp_path / "store")
    ref, _manifest = dumped(store, odd)

    def from_another_major(raw: dict) -> None:
        for table in raw["tables"]:
            if table.get("copy_format") == "binary":
                table["server_major"] = table["server_major"] - 1

    tamper(store, ref, from_another_major)
    manifest = store.require_manifest(ref)
    with psycopg.connect(odd["db"], autocommit=True) as conn:
        conn.execute("DELETE FROM moods WHERE workspace_id = %s", (WS,))
        conn.execute("DELETE FROM facts WHERE workspace_id = %s", (WS,))
    lost = {t: table_text(odd["db"], t) for t in ("workspaces", "facts", "moods")}

    with pytest.raises(BackupError, match=r"public\.facts \(PostgreSQL \d+\).*major") as refused:
        merge_sql_rows(odd["db"], store, ref, manifest)

    assert "Nothing was written" in str(refused.value)
    assert {t: table_text(odd["db"], t) for t in ("workspaces", "facts", "moods")} == lost
