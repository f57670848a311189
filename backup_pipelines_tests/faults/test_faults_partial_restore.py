"""A restore that stops part-way (issue 10, "Partial restores"): an operator schema where one
row becomes an entry an index refuses — a Typesense document whose `labels` array holds a NULL
(the collection's field is string[]), a Qdrant point whose vector has 7 dimensions instead of
8. The platform's own indexer was refused the same row, so the index artifacts lack it and the
gate asks for a rebuild from SQL. Before: SQL committed, the import stopped at the refused
document, the message named neither store's state, and a rerun failed on the same document.
Now every other entry goes in, the error names the refused id and each store's state, a rerun
(both modes) finishes what is missing, and `skip_refused` skips the refused entries only when
the operator says so, reporting them by id. Real PostgreSQL, Typesense, Qdrant stand-in."""

from __future__ import annotations

import json
import random
import struct
import uuid

import dagster as dg
import psycopg
import pytest

from backup_pipelines import cli
from backup_pipelines.lib.engines import Mode
from backup_pipelines.lib.errors import EntriesRefused, PartialRestore, Refusals
from backup_pipelines.lib.policy import load_policy
from backup_pipelines.lib.postgres.memory_rows import iter_index_rows
from backup_pipelines.lib.qdrant.client import QdrantHttp
from backup_pipelines.lib.qdrant.points import index_into_qdrant
from backup_pipelines.lib.qdrant.restore import MAX_REFUSED_POINTS, upsert_missing_points
from backup_pipelines.lib.recovery.workspace_restore import restore_workspace
from backup_pipelines.lib.store import LocalStore
from backup_pipelines.lib.typesense.client import TypesenseClient
from backup_pipelines.lib.typesense.documents import index_into_typesense
from backup_pipelines_tests.helpers import DATE, back_up, restore_env

pytestmark = pytest.mark.faults

WS = "ws_north"
GOOD = 20
DIM = 8
COLLECTION = f"notes_{WS}"
REFUSED_ID = uuid.UUID(int=999)  # sorts after the good rows: a rebuild sizes Qdrant by the first

SCHEMA = """
CREATE TABLE workspaces (workspace_id text PRIMARY KEY, label text NOT NULL);
CREATE TABLE notes (
    note_id      uuid PRIMARY KEY,
    workspace_id text NOT NULL REFERENCES workspaces (workspace_id),
    body         text NOT NULL,
    labels       text[] NOT NULL DEFAULT '{}',
    vec          bytea NOT NULL,
    written_at   timestamptz NOT NULL
);
"""

POLICY = """
workspace_tables: [workspaces, notes]
memory_table: notes
typesense_collection: "notes_{workspace}"
qdrant_collections: ["notes_{workspace}"]
indexes:
  typesense:
    id_column: note_id
    text_columns: [body]
    probe_column: written_at
    default_sorting_field: written_at
    fields:
      - {column: body, type: string}
      - {column: labels, type: "string[]"}
      - {column: written_at, type: int64}
  qdrant:
    id_column: note_id
    vector_column: vec
    vector_encoding: float32le
    probe_column: written_at
    fields: [written_at]
"""


def packed(values: list[float]) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def vector(seed: int, dim: int = DIM) -> list[float]:
    """A vector of its own direction (a cosine search tells them apart)."""
    chance = random.Random(seed)
    return [chance.uniform(-1, 1) for _ in range(dim)]


@pytest.fixture
def notes(make_database, typesense_server, qdrant_url, tmp_path):
    """The operator's database with GOOD notes of WS, indexed in both engines by its mapping."""
    url = make_database("notes")
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(POLICY)
    env = {
        "db": url,
        "policy": load_policy(policy_file),
        "policy_file": policy_file,
        "typesense": TypesenseClient(typesense_server.url, typesense_server.api_key),
        "qdrant": QdrantHttp(qdrant_url),
        "typesense_url": typesense_server.url,
        "typesense_api_key": typesense_server.api_key,
        "qdrant_url": qdrant_url,
    }
    env["indexes"] = {"typesense": env["typesense"], "qdrant": env["qdrant"]}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute("INSERT INTO workspaces VALUES (%s, 'North')", (WS,))
        for i in range(GOOD):
            conn.execute(
                "INSERT INTO notes VALUES (%s, %s, %s, %s, %s, "
                "timestamptz '2026-11-01 00:00+00' + %s * interval '1 minute')",
                (uuid.UUID(int=i + 1), WS, f"note {i}: the plan", ["plan"], packed(vector(i)), i),
            )  # fmt: skip
    index_rows(env)
    yield env
    for client in (env["typesense"], env["qdrant"]):
        if client.collection_exists(COLLECTION):
            client.delete_collection(COLLECTION)
        client.close()


def index_rows(env: dict) -> None:
    """What the operator's platform does: index every row by its mapping."""
    policy = env["policy"]
    with psycopg.connect(env["db"]) as conn:
        for name, index_into in (
            ("typesense", index_into_typesense),
            ("qdrant", index_into_qdrant),
        ):
            mapping = policy.index_mapping(name)
            rows = iter_index_rows(conn, WS, mapping, policy.schema)
            index_into(env[name], COLLECTION, rows, mapping)


def add_refused_note(env: dict, labels: list, vector: list[float]) -> str:
    """The newest note, which the platform's indexer could not index either (so the index
    artifacts lack it: the gate says REBUILD_INDEX and the restore rebuilds from SQL)."""
    with psycopg.connect(env["db"], autocommit=True) as conn:
        conn.execute(
            "INSERT INTO notes VALUES (%s, %s, 'the refused note', %s, %s, "
            "timestamptz '2026-11-02 00:00+00')",
            (REFUSED_ID, WS, labels, packed(vector)),
        )
    return str(REFUSED_ID)


def backed_up_then_lost(env: dict, tmp_path) -> LocalStore:
    store = LocalStore(tmp_path / "store")
    back_up(store, env, WS)
    with psycopg.connect(env["db"], autocommit=True) as conn:
        conn.execute("DELETE FROM notes WHERE workspace_id = %s", (WS,))
    env["typesense"].delete_collection(COLLECTION)
    env["qdrant"].delete_collection(COLLECTION)
    return store


def live_notes(env: dict) -> int:
    with psycopg.connect(env["db"]) as conn:
        return conn.execute("SELECT count(*) FROM notes WHERE workspace_id = %s", (WS,)).fetchone()[
            0
        ]


def restore(env: dict, store, **options):
    return restore_workspace(store, DATE, WS, env["db"], env["policy"], env["indexes"], **options)


def stopped(env: dict, store, **options) -> PartialRestore:
    with pytest.raises(PartialRestore) as raised:
        restore(env, store, **options)
    return raised.value


def run_cli(env, tmp_path, monkeypatch, capsys, *extra: str) -> tuple[int, str, str]:
    for key, value in restore_env(env, tmp_path / "store").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("BACKUP_POLICY_FILE", str(env["policy_file"]))
    code = cli.main(["restore", "workspace", "--date", DATE, "--workspace", WS, *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def printed_report(out: str) -> dict:
    """The JSON report the command prints between its log lines."""
    lines = out.splitlines()
    start = lines.index("{")
    end = max(i for i, line in enumerate(lines) if line == "}")
    return json.loads("\n".join(lines[start : end + 1]))


# ---------------------------------------------------------------------------------------------


def test_partial_restore_typesense_refused_document_names_id_and_each_store(
    tmp_path, notes, monkeypatch, capsys
):
    refused = add_refused_note(notes, ["plan", None], vector(999))
    store = backed_up_then_lost(notes, tmp_path)

    failure = stopped(notes, store)

    states = failure.states
    assert states["sql"] == {
        "state": "committed",
        "rows_inserted": GOOD + 1,
        "rows_already_present": 1,
    }
    typesense = states["typesense"]
    assert (typesense["state"], typesense["entries"], typesense["expected"]) == (
        "refused",
        GOOD,
        GOOD + 1,
    )
    assert typesense["refused"]["count"] == 1
    [entry] = typesense["refused"]["entries"]
    assert entry["id"] == refused and "Field `labels` must be an array of string" in entry["error"]
    assert (states["qdrant"]["state"], states["qdrant"]["entries"]) == ("done", GOOD + 1)
    message = str(failure)
    assert f"restore of {DATE}|{WS} (merge) stopped part-way" in message
    assert f"SQL: committed ({GOOD + 1} rows inserted, 1 already present)" in message
    assert (
        f"Typesense {COLLECTION}: 1 entry refused: id '{refused}': code 400: Field `labels`"
        in message
    )
    assert f"({GOOD} of the {GOOD + 1} backed-up entries now; every other entry is in)" in message
    assert f"Qdrant {COLLECTION}: done ({GOOD + 1} entries)" in message
    assert "Run the same restore again once the cause is fixed" in message
    assert "--skip-refused" in message and "restore/skip_refused=true" in message
    assert live_notes(notes) == GOOD + 1  # SQL committed, and said so

    # The same command again, without the switch: the same clear failure, nothing doubled.
    code, out, err = run_cli(notes, tmp_path, monkeypatch, capsys)
    assert code == 1
    assert f"restore of {DATE}|{WS} FAILED: restore of {DATE}|{WS} (merge) stopped part-way" in err
    assert f"SQL: committed (0 rows inserted, {GOOD + 2} already present)" in err
    assert f"1 entry refused: id '{refused}'" in err and "Traceback" not in err
    assert f"Qdrant {COLLECTION}: done ({GOOD + 1} entries)" in err

    # The operator says skip: the restore completes and reports the skipped id.
    code, out, err = run_cli(notes, tmp_path, monkeypatch, capsys, "--skip-refused")
    assert code == 0, err
    report = printed_report(out)
    skipped = report["indexes"]["typesense"]["refused_skipped"]
    assert skipped["count"] == 1 and skipped["entries"][0]["id"] == refused
    assert report["indexes"]["typesense"]["already_present"] == GOOD
    assert report["verification"]["problems"] == []
    assert report["verification"]["typesense_entries"] == GOOD
    # the refused note is the newest: the search probe says it was skipped, not "not found"
    assert "typesense_search_skipped" in report["verification"]
    assert report["verification"]["qdrant_search_found_memory"] is True
    assert f"WARNING: Typesense collection {COLLECTION}: 1 entry refused: id '{refused}'" in out
    assert live_notes(notes) == GOOD + 1


def test_partial_restore_qdrant_refused_point_is_isolated_and_named(tmp_path, notes):
    """Qdrant refuses the whole batch of 21 for the one 7-dimension vector: the batch is split
    until the refused point stands alone, and the 20 others go in."""
    refused = add_refused_note(notes, ["plan"], vector(999, DIM - 1))
    store = backed_up_then_lost(notes, tmp_path)

    failure = stopped(notes, store)

    qdrant = failure.states["qdrant"]
    assert (qdrant["state"], qdrant["entries"], qdrant["expected"]) == ("refused", GOOD, GOOD + 1)
    [entry] = qdrant["refused"]["entries"]
    assert entry["id"] == refused
    assert "Vector dimension error: expected dim: 8, got 7" in entry["error"]
    assert failure.states["typesense"]["state"] == "done"
    assert failure.states["typesense"]["entries"] == GOOD + 1
    message = str(failure)
    assert f"Qdrant {COLLECTION}: 1 entry refused: id '{refused}'" in message
    assert f"Typesense {COLLECTION}: done ({GOOD + 1} entries)" in message

    again = stopped(notes, store)
    assert again.states["sql"]["rows_inserted"] == 0
    assert again.states["qdrant"]["refused"]["entries"] == qdrant["refused"]["entries"]

    report = restore(notes, store, skip_refused=True)
    assert report.indexes["qdrant"]["refused_skipped"]["entries"][0]["id"] == refused
    assert (
        report.indexes["qdrant"]["added"] == 0
        and report.indexes["qdrant"]["already_present"] == GOOD
    )
    assert report.verification["qdrant_entries"] == GOOD
    assert report.verification["problems"] == []


def test_partial_restore_replace_mode_rerun_completes_once_the_row_is_fixed(tmp_path, notes):
    refused = add_refused_note(notes, ["plan", None], vector(999))
    store = backed_up_then_lost(notes, tmp_path)

    failure = stopped(notes, store, mode=Mode.REPLACE)

    assert failure.states["typesense"]["refused"]["entries"][0]["id"] == refused
    assert "(replace) stopped part-way" in str(failure)
    assert "replace mode imports every backed-up index entry again" in str(failure)
    with psycopg.connect(notes["db"], autocommit=True) as conn:  # the operator fixes the row
        conn.execute("UPDATE notes SET labels = '{plan}' WHERE note_id = %s", (REFUSED_ID,))

    report = restore(notes, store, mode=Mode.REPLACE)

    assert sum(t["inserted"] for t in report.sql.values()) == 0
    assert report.indexes["typesense"] == {"source": "sql", "upserted": GOOD + 1}
    assert report.verification["typesense_entries"] == GOOD + 1
    assert report.verification["typesense_search_found_memory"] is True


def test_partial_restore_failed_index_says_so_and_the_rerun_finishes(tmp_path, notes):
    """Not a refusal but a failure (Typesense answers 401 to a wrong key): the other index is
    still restored, the state says FAILED with the error, and once the key is right the same
    restore finishes the rest."""
    store = backed_up_then_lost(notes, tmp_path)
    wrong_key = TypesenseClient(notes["typesense_url"], "not-the-key")
    try:
        with pytest.raises(PartialRestore) as raised:
            restore_workspace(
                store, DATE, WS, notes["db"], notes["policy"],
                {"typesense": wrong_key, "qdrant": notes["qdrant"]},
            )  # fmt: skip
    finally:
        wrong_key.close()

    states = raised.value.states
    assert states["typesense"]["state"] == "failed" and "401" in states["typesense"]["error"]
    assert str(states["typesense"]["entries"]).startswith("unknown")
    assert (states["qdrant"]["state"], states["qdrant"]["entries"]) == ("done", GOOD)
    assert f"Typesense {COLLECTION}: FAILED" in str(raised.value)
    assert "--skip-refused" not in str(raised.value)  # nothing was refused
    assert "not-the-key" not in str(raised.value)

    report = restore(notes, store)

    assert sum(t["inserted"] for t in report.sql.values()) == 0
    assert report.indexes["typesense"]["upserted"] == GOOD  # the collection was missing
    assert report.indexes["qdrant"]["already_present"] == GOOD
    assert report.verification["problems"] == []


def test_partial_restore_interrupted_logs_each_store_and_stops(tmp_path, notes):
    """Ctrl-C (or a cancelled run) while the first index is restored: the interrupt goes on up
    (it is not turned into an ordinary failure), after the log said where each store stands."""
    add_refused_note(notes, ["plan", None], vector(999))
    store = backed_up_then_lost(notes, tmp_path)
    (tmp_path / "reindex.yaml").write_text(
        POLICY.replace("    id_column: note_id\n    text_columns", "    rebuild_command: [\"true\"]\n"
                       "    id_column: note_id\n    text_columns", 1)
    )  # fmt: skip
    logged: list[str] = []

    def log_then_interrupt(line: str) -> None:
        logged.append(line)
        if line.startswith("rebuilding "):  # the reindexer is about to start: Ctrl-C
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        restore_workspace(
            store, DATE, WS, notes["db"], load_policy(tmp_path / "reindex.yaml"), notes["indexes"],
            log=log_then_interrupt,
        )  # fmt: skip

    [state] = [line for line in logged if "stopped part-way" in line]
    assert f"SQL: committed ({GOOD + 1} rows inserted, 1 already present)" in state
    assert f"Typesense {COLLECTION}: FAILED" in state and "KeyboardInterrupt" in state
    assert f"Qdrant {COLLECTION}: not started" in state
    assert not notes["qdrant"].collection_exists(COLLECTION)


def test_partial_restore_qdrant_isolation_is_bounded(qdrant_url):
    """Every point refused (a collection of the wrong size): isolation stops after
    MAX_REFUSED_POINTS refused points with an error that says why, instead of splitting on."""
    collection = f"refusals_{uuid.uuid4().hex[:8]}"
    with QdrantHttp(qdrant_url) as client:
        client.create_collection(collection, size=DIM)
        try:
            points = [
                {"id": i + 1, "vector": [1.0] * (DIM + 1), "payload": {}}
                for i in range(MAX_REFUSED_POINTS + 50)
            ]
            refused = Refusals("Qdrant", collection)
            with pytest.raises(EntriesRefused, match=f"more than {MAX_REFUSED_POINTS} points"):
                upsert_missing_points(client, collection, points, False, refused=refused)
            assert refused.count == MAX_REFUSED_POINTS + 1
            assert client.count(collection) == 0
        finally:
            client.delete_collection(collection)


def test_partial_restore_dagster_job_reports_each_store_in_the_failure_metadata(
    tmp_path, notes, monkeypatch
):
    from backup_pipelines.definitions import build_definitions

    refused = add_refused_note(notes, ["plan", None], vector(999))
    backed_up_then_lost(notes, tmp_path)
    for key, value in restore_env(notes, tmp_path / "store").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("BACKUP_POLICY_FILE", str(notes["policy_file"]))
    job = build_definitions().resolve_job_def("workspace_restore_job")

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("workspaces", [WS])

        def run(tags: dict | None = None):
            return job.execute_in_process(
                instance=instance, partition_key=f"{DATE}|{WS}", raise_on_error=False, tags=tags
            )

        def failure_of(result):
            return next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")

        first = run()
        assert not first.success
        failure = failure_of(first)
        assert failure.step_key == "restore_sql_and_indexes"
        data = failure.event_specific_data.user_failure_data
        stores = data.metadata["stores"].value
        assert stores["sql"]["state"] == "committed" and stores["sql"]["rows_inserted"] == GOOD + 1
        assert stores["typesense"]["state"] == "refused"
        assert stores["typesense"]["refused"]["entries"][0]["id"] == refused
        assert stores["qdrant"]["state"] == "done"
        assert f"1 entry refused: id '{refused}'" in data.description
        assert "restore/skip_refused=true" in data.description

        wrong = run({"restore/skip_refused": "maybe"})
        assert failure_of(wrong).step_key == "consistency_gate"  # refused before any write
        assert "restore/skip_refused='maybe' is not true or false" in str(
            failure_of(wrong).event_specific_data.error.message
        )

        skipping = run({"restore/skip_refused": "true"})
        assert skipping.success
        done = skipping.output_for_node("restore_sql_and_indexes")["indexes"]
        assert done["typesense"]["refused_skipped"]["entries"][0]["id"] == refused
        assert done["qdrant"]["already_present"] == GOOD + 1
    assert live_notes(notes) == GOOD + 1
