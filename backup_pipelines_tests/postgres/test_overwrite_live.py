"""The full restore over the live database is a verified swap, and a failure at any step leaves
the live database exactly as it was: same database (OID), same `pg_dump --schema-only`, same
rows, same database-level settings.

Everything runs on a PostgreSQL 15 cluster of this module's own (prepared transactions are on,
which the shared cluster does not allow), as a non-superuser role `restorer` that owns the live
database, like a production restore role. The schema has two schemas, a partitioned table with
a primary key, a trigger, a view and an enum: the shape on which `pg_restore --clean` used to
damage live.

Failures are injected by real means only, no hook in the code: a pg_restore killed by SIGKILL
(a wrapper in PG_BIN_DIR), a manifest whose counts disagree with the dump, a database setting
the restoring role may not set, a before-command that fails, a superuser session the restoring
role may not end, a database name that collides with the one live is renamed to, a prepared
transaction on the restored database (PostgreSQL refuses to rename it), an after-command that
fails.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from backup_pipelines import cli
from backup_pipelines.devstack.postgres_cluster import PostgresCluster
from backup_pipelines.lib.errors import BackupError, ConfigError
from backup_pipelines.lib.postgres import database_swap as swap
from backup_pipelines.lib.postgres import dump, toc
from backup_pipelines.lib.postgres import full_restore as pg_full
from backup_pipelines.lib.postgres.connection import client_env, pg_bin
from backup_pipelines.lib.recovery.full_restore import FullRestoreRequest, restore_full
from backup_pipelines.lib.store import MANIFEST_NAME, ArtifactRef, LocalStore
from backup_pipelines.lib.streams import iter_decompressed

DATE = "2026-11-21"
FULL = ArtifactRef("postgres/full_dump", DATE)
NOW = datetime(2026, 11, 22, 9, 30, 0, tzinfo=UTC)
SCHEMA = """
CREATE SCHEMA app;
CREATE SCHEMA audit;
CREATE TYPE app.mood AS ENUM ('calm', 'busy', 'angry');
CREATE TABLE app.events (
    id bigint NOT NULL,
    happened_on date NOT NULL,
    mood app.mood NOT NULL DEFAULT 'calm',
    payload text,
    PRIMARY KEY (id, happened_on)
) PARTITION BY RANGE (happened_on);
CREATE TABLE app.events_2026_11 PARTITION OF app.events
    FOR VALUES FROM ('2026-11-01') TO ('2026-12-01');
CREATE TABLE app.events_2026_12 PARTITION OF app.events
    FOR VALUES FROM ('2026-12-01') TO ('2027-01-01');
CREATE INDEX events_by_mood ON app.events (mood);
CREATE TABLE audit.event_log (
    id bigserial PRIMARY KEY,
    event_id bigint NOT NULL,
    mood app.mood,
    logged_at timestamptz NOT NULL DEFAULT '2026-01-01 00:00+00'
);
CREATE FUNCTION audit.log_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit.event_log (event_id, mood) VALUES (NEW.id, NEW.mood);
    RETURN NEW;
END $$;
CREATE TRIGGER events_audit AFTER INSERT ON app.events
    FOR EACH ROW EXECUTE FUNCTION audit.log_event();
CREATE VIEW app.busy_events AS SELECT id, happened_on, payload FROM app.events WHERE mood = 'busy';
INSERT INTO app.events (id, happened_on, mood, payload)
    SELECT n, DATE '2026-11-01' + (n % 60), (ARRAY['calm', 'busy', 'angry']::app.mood[])[1 + n % 3],
           'event ' || n
    FROM generate_series(1, 500) AS n;
"""


# --------------------------------------------------------------------------------------------
# A cluster of this module's own, the backed-up database, and a fresh live database per test


@pytest.fixture(scope="module")
def cluster():
    """PostgreSQL with prepared transactions enabled (a restart: not the shared cluster)."""
    with PostgresCluster() as server:
        with psycopg.connect(server.url(), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET max_prepared_transactions = 4")
            conn.execute("CREATE ROLE restorer LOGIN CREATEDB")
            conn.execute("CREATE ROLE reader LOGIN")
        log = str(server.data_dir / "server.log")
        server._run([pg_bin("pg_ctl"), "-D", str(server.data_dir), "-w", "-l", log, "restart"])
        yield server


def url_of(cluster, database: str, user: str = "restorer") -> str:
    return f"postgresql://{user}@127.0.0.1:{cluster.port}/{database}"


@pytest.fixture(scope="module")
def backed_up(cluster, tmp_path_factory):
    """The database as it was at the backup (a template for each test's live database) and
    its full dump in a store."""
    name = "memory_template"
    with psycopg.connect(url_of(cluster, "postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    with psycopg.connect(url_of(cluster, name), autocommit=True) as conn:
        conn.execute(SCHEMA)
    store = LocalStore(tmp_path_factory.mktemp("overwrite-live") / "store")
    with store.begin(FULL) as writer:
        writer.commit(**dump.dump_full_database(url_of(cluster, name), writer))
    return {
        "template": name,
        "store_root": store.root,
        "state": schema_and_rows(url_of(cluster, name)),
    }


@pytest.fixture
def store(backed_up, tmp_path):
    """A copy of the store per test (some tests tamper with the manifest)."""
    import shutil

    root = tmp_path / "store"
    shutil.copytree(backed_up["store_root"], root)
    return LocalStore(root)


@pytest.fixture
def live(cluster, backed_up):
    """A live database made from the backed-up one, owned by `restorer`, with database-level
    grants, a setting and a comment, then changed after the backup (rows added and deleted):
    the state a restore must either replace entirely or not touch at all."""
    name = f"memory_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(url_of(cluster, "postgres", "postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {backed_up['template']} OWNER restorer")
    url = url_of(cluster, name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"REVOKE CONNECT ON DATABASE {name} FROM PUBLIC")
        conn.execute(f"GRANT CONNECT ON DATABASE {name} TO reader, restorer")
        conn.execute(f'ALTER DATABASE {name} SET search_path = "$user", app, public')
        conn.execute(f"COMMENT ON DATABASE {name} IS 'agent memory (production)'")
        conn.execute(
            "INSERT INTO app.events (id, happened_on, mood, payload) "
            "VALUES (9001, '2026-12-05', 'angry', 'written after the backup')"
        )
        conn.execute("DELETE FROM app.events WHERE id <= 50")
    yield {"name": name, "url": url}
    _drop_family(cluster, name)


def _drop_family(cluster, name: str) -> None:
    """Every database the test made from `name` (live, restored, kept, colliding)."""
    admin = url_of(cluster, "postgres", "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", (name + "%",)
            )
        ]
        for gid, database in conn.execute(
            "SELECT gid, database FROM pg_prepared_xacts WHERE database LIKE %s", (name + "%",)
        ).fetchall():
            with psycopg.connect(url_of(cluster, database, "postgres"), autocommit=True) as db:
                db.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))
        for database in names:
            conn.execute(
                sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(database))
            )
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(database)))


# --------------------------------------------------------------------------------------------
# What "exactly as it was" means


def schema_and_rows(url: str) -> dict:
    """`pg_dump --schema-only` (minus the random \\restrict key of recent pg_dump) and, per
    table, the row count and an md5 of every row's text, sorted."""
    done = subprocess.run(
        [pg_bin("pg_dump"), "--schema-only", "--no-password"],
        env=client_env(url),
        capture_output=True,
        text=True,
        check=True,
    )
    schema = "\n".join(
        line
        for line in done.stdout.splitlines()
        if not line.startswith(("\\restrict", "\\unrestrict"))
    )
    rows = {}
    with psycopg.connect(url) as conn:
        tables = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p') AND n.nspname IN ('app', 'audit') ORDER BY 1, 2"
        ).fetchall()
        for schema_name, table in tables:
            query = sql.SQL(
                "SELECT count(*), coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '') FROM {} t"
            ).format(sql.Identifier(schema_name, table))
            rows[f"{schema_name}.{table}"] = tuple(conn.execute(query).fetchone())
    return {"schema": schema, "rows": rows}


def database_row(cluster, name: str) -> dict | None:
    """What pg_database and friends say about a database: identity and connection settings."""
    with psycopg.connect(url_of(cluster, "postgres", "postgres")) as conn:
        row = conn.execute(
            """
            SELECT d.oid, pg_get_userbyid(d.datdba), d.datallowconn, d.datconnlimit,
                   (SELECT array_agg(x::text ORDER BY x::text) FROM unnest(d.datacl) x),
                   shobj_description(d.oid, 'pg_database'),
                   (SELECT s.setconfig FROM pg_db_role_setting s
                     WHERE s.setdatabase = d.oid AND s.setrole = 0)
            FROM pg_database d WHERE d.datname = %s
            """,
            (name,),
        ).fetchone()
    if row is None:
        return None
    keys = ("oid", "owner", "allow_connections", "connection_limit", "acl", "comment", "settings")
    return dict(zip(keys, row, strict=True))


def state_of(cluster, live) -> dict:
    return {"database": database_row(cluster, live["name"]), **schema_and_rows(live["url"])}


def databases_like(cluster, name: str) -> set[str]:
    with psycopg.connect(url_of(cluster, "postgres", "postgres")) as conn:
        return {
            r[0]
            for r in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", (name + "%",)
            )
        }


def overwrite(store, live, **options) -> dict:
    request = FullRestoreRequest(DATE, overwrite_live=True, **options)
    return restore_full(store, request, live["url"], now=NOW, log=print)


def script(tmp_path, name: str, body: str) -> str:
    """A before/after command: this Python file, run with the interpreter running the tests."""
    path = tmp_path / f"{name}.py"
    path.write_text(body)
    return f"{sys.executable} {path}"


# --------------------------------------------------------------------------------------------
# The swap


def test_overwrite_live_restores_verifies_and_swaps(cluster, backed_up, store, live, tmp_path):
    before = state_of(cluster, live)
    staging = pg_full.staging_name(live["name"], DATE)
    steps = tmp_path / "steps.log"
    # The before-command records what it saw: the restored database already verified.
    stop = script(
        tmp_path,
        "stop_writers",
        f"import psycopg\n"
        f"with psycopg.connect({url_of(cluster, 'postgres')!r}) as c:\n"
        f"    note = c.execute(\"SELECT shobj_description(oid, 'pg_database') FROM pg_database "
        f'WHERE datname = %s", ({staging!r},)).fetchone()[0]\n'
        f"open({str(steps)!r}, 'a').write('stop ' + note + '\\n')\n",
    )
    start = script(tmp_path, "start_writers", f"open({str(steps)!r}, 'a').write('start\\n')\n")
    held = psycopg.connect(live["url"], autocommit=True)  # an application session on live

    result = overwrite(store, live, commands_before=[stop], commands_after=[start])

    previous = swap.previous_name(live["name"], NOW)
    assert result["database"] == live["name"] and result["previous_database"] == previous
    assert result["restored_as"] == staging and result["live_tables_not_in_backup"] == []
    assert result["rows"]["app.events"] == 500 and result["rows"]["audit.event_log"] == 500
    assert result["objects"]["missing"] == []
    assert {"TABLE", "TRIGGER", "VIEW", "TYPE", "CONSTRAINT", "INDEX", "SCHEMA"} <= set(
        result["objects"]["by_kind"]
    )
    # The live name now holds exactly the backup; the previous live database is kept, intact.
    after = state_of(cluster, live)
    assert (after["schema"], after["rows"]) == (
        backed_up["state"]["schema"],
        backed_up["state"]["rows"],
    )
    kept = {"url": url_of(cluster, previous), "name": previous}
    assert state_of(cluster, kept) == {**before, "database": database_row(cluster, previous)}
    assert database_row(cluster, previous)["oid"] == before["database"]["oid"]
    # The restored database took over live's owner, grants, setting and comment (not our marker).
    new = after["database"]
    assert new["oid"] != before["database"]["oid"]
    assert {
        k: new[k]
        for k in ("owner", "allow_connections", "connection_limit", "acl", "comment", "settings")
    } == {
        k: before["database"][k]
        for k in ("owner", "allow_connections", "connection_limit", "acl", "comment", "settings")
    }
    assert steps.read_text().splitlines() == [
        "stop " + pg_full.marker_text(DATE, pg_full.State.VERIFIED),
        "start",
    ]
    with pytest.raises(psycopg.OperationalError):  # its session was ended for the swap
        held.execute("SELECT 1")
    held.close()
    assert databases_like(cluster, live["name"]) == {live["name"], previous}


def test_overwrite_live_over_a_live_database_that_gained_a_table(
    cluster, backed_up, store, live, monkeypatch, capsys
):
    """Was: the data came back, then `differs from the dump's counts: {}`. Now only the dump's
    tables are compared, and the report names the live tables the backup did not have."""
    with psycopg.connect(live["url"], autocommit=True) as conn:
        conn.execute("CREATE TABLE audit.added_later (id int PRIMARY KEY)")
        conn.execute("INSERT INTO audit.added_later SELECT generate_series(1, 7)")
    monkeypatch.setenv("DATABASE_URL", live["url"])
    monkeypatch.setenv("BACKUP_STORE_URL", f"file://{store.root}")

    assert cli.main(["restore", "full", "--date", DATE, "--overwrite-live"]) == 0

    out = capsys.readouterr().out
    report = json.loads(out[out.index("{\n") : out.rindex("\n}") + 2])
    assert report["live_tables_not_in_backup"] == ["audit.added_later"]
    previous = report["previous_database"]
    assert re.fullmatch(re.escape(live["name"]) + r"_before_restore_\d{8}T\d{6}Z", previous)
    assert f"backup-pipelines release-database {previous}" in out
    assert schema_and_rows(live["url"])["rows"] == backed_up["state"]["rows"]
    with psycopg.connect(url_of(cluster, previous)) as conn:
        assert conn.execute("SELECT count(*) FROM audit.added_later").fetchone()[0] == 7

    # The kept database is dropped only by name, and nothing else is.
    assert cli.main(["release-database", live["name"]]) == 1
    assert cli.main(["release-database", "memory_template"]) == 1
    assert "release-database drops nothing else" in capsys.readouterr().err
    assert cli.main(["release-database", previous]) == 0
    assert databases_like(cluster, live["name"]) == {live["name"]}


# --------------------------------------------------------------------------------------------
# A failure at any step leaves live exactly as it was


def pg_restore_killed_after_the_schema(tmp_path, kill_parent: bool = False) -> str:
    """A PG_BIN_DIR whose pg_restore creates the schema, then dies by SIGKILL as it starts
    on the data (and, with kill_parent, kills the command that started it first)."""
    folder = tmp_path / "killed_bin"
    folder.mkdir()
    wrapper = folder / "pg_restore"
    wrapper.write_text(
        "#!/bin/sh\n"
        'case " $* " in *" --section=data "*)\n'
        + ("  kill -KILL $PPID\n" if kill_parent else "")
        + "  kill -KILL $$;;\n"
        "esac\n"
        f'exec "{pg_bin("pg_restore")}" "$@"\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return str(folder)


def set_superuser_only_setting(cluster, live) -> None:
    with psycopg.connect(url_of(cluster, "postgres", "postgres"), autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {live['name']} SET log_statement = 'all'")


def tamper_counts(store) -> None:
    manifest = store.require_manifest(FULL)
    manifest["counts"]["rows"]["app.events"] += 1
    store._put_atomic(f"{FULL.folder}/{MANIFEST_NAME}", json.dumps(manifest).encode())


def hold_superuser_session(cluster, live):
    return psycopg.connect(url_of(cluster, live["name"], "postgres"), autocommit=True)


PREPARE = """import sys, psycopg
c = psycopg.connect(sys.argv[1], autocommit=True)
c.execute("BEGIN")
c.execute("LOCK TABLE audit.event_log IN ACCESS SHARE MODE")
c.execute("PREPARE TRANSACTION 'held_by_test'")
"""

# step -> (what the error says, is the verified restored database kept for --resume?)
STEPS = {
    "restore": ("killed by signal 9", False),
    "verify": ("does not match the dump: 1 tables differ", False),
    "adopt_attributes": ("permission denied to set parameter", True),
    "before_commands": ("before restore command", True),
    "end_sessions": ("cannot end session", True),
    "rename_live": ("already exists", True),
    "rename_restored": ("There is 1 prepared transaction using the database", True),
    "after_commands": ("the swap was undone", False),
}


@pytest.mark.parametrize("step", list(STEPS))
def test_overwrite_live_failure_at_each_step_leaves_live_exactly_as_it_was(
    cluster, store, live, tmp_path, monkeypatch, step
):
    staging = pg_full.staging_name(live["name"], DATE)
    options: dict = {}
    held = None
    if step == "restore":
        monkeypatch.setenv("PG_BIN_DIR", pg_restore_killed_after_the_schema(tmp_path))
    elif step == "verify":
        tamper_counts(store)
    elif step == "adopt_attributes":
        set_superuser_only_setting(cluster, live)
    elif step == "before_commands":
        options["commands_before"] = [script(tmp_path, "fails", "raise SystemExit(3)\n")]
    elif step == "end_sessions":
        held = hold_superuser_session(cluster, live)
    elif step == "rename_live":
        with psycopg.connect(url_of(cluster, "postgres"), autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {}").format(
                    sql.Identifier(swap.previous_name(live["name"], NOW))
                )
            )
    elif step == "rename_restored":
        prepare = script(tmp_path, "prepare", PREPARE)
        options["commands_before"] = [f"{prepare} {url_of(cluster, staging)}"]
    elif step == "after_commands":
        options["commands_after"] = [script(tmp_path, "fails", "raise SystemExit(4)\n")]
    before = state_of(cluster, live)

    with pytest.raises(BackupError) as failure:
        overwrite(store, live, **options)

    message, kept = STEPS[step]
    assert message in str(failure.value), str(failure.value)
    if held is not None:
        assert held.execute("SELECT 1").fetchone() == (1,)  # never ended: not ours to end
        held.close()
    assert state_of(cluster, live) == before
    assert database_row(cluster, live["name"])["allow_connections"] is True
    others = databases_like(cluster, live["name"]) - {live["name"]}
    if step == "rename_live":
        others.discard(swap.previous_name(live["name"], NOW))
    assert others == ({staging} if kept else set())
    if kept:
        assert "rerun with resume" in str(failure.value)
        with psycopg.connect(url_of(cluster, "postgres")) as conn:
            assert pg_full.read_marker(conn, staging)["state"] == "verified"
    if step in {
        "before_commands",
        "end_sessions",
        "rename_live",
        "rename_restored",
        "after_commands",
    }:
        assert "start them again" in str(failure.value)


def test_overwrite_live_resume_swaps_in_the_kept_restore_without_restoring_again(
    cluster, backed_up, store, live, tmp_path, monkeypatch
):
    fails = script(tmp_path, "fails", "raise SystemExit(3)\n")
    with pytest.raises(BackupError, match="failed at the before-commands"):
        overwrite(store, live, commands_before=[fails])
    with pytest.raises(BackupError, match="rerun with --resume"):
        overwrite(store, live)
    # A pg_restore that would die proves the resumed run does not restore again.
    monkeypatch.setenv("PG_BIN_DIR", pg_restore_killed_after_the_schema(tmp_path))

    result = overwrite(store, live, resume=True)

    assert result["resumed_from"] == "verified"
    assert schema_and_rows(live["url"])["rows"] == backed_up["state"]["rows"]
    assert databases_like(cluster, live["name"]) == {live["name"], result["previous_database"]}


def test_overwrite_live_conflicting_options_are_refused(cluster, store, live, monkeypatch, capsys):
    with pytest.raises(ConfigError, match="contradict"):
        FullRestoreRequest(DATE, target_database="elsewhere", overwrite_live=True).check()
    monkeypatch.setenv("DATABASE_URL", live["url"])
    monkeypatch.setenv("BACKUP_STORE_URL", f"file://{store.root}")
    before = state_of(cluster, live)
    argv = ["restore", "full", "--date", DATE, "--overwrite-live", "--target-database", "elsewhere"]
    assert cli.main(argv) == 2
    assert (
        "--overwrite-live and --target-database 'elsewhere' contradict" in capsys.readouterr().err
    )
    target = live["name"]
    assert cli.main(["restore", "full", "--date", DATE, "--target-database", target]) == 1
    assert "is the live database" in capsys.readouterr().err
    assert cli.main(["restore", "full", "--date", DATE, "--target-database", "x" * 64]) == 2
    assert "at most 63 bytes" in capsys.readouterr().err
    assert state_of(cluster, live) == before
    assert databases_like(cluster, live["name"]) == {live["name"]}


def test_overwrite_live_job_reports_the_kept_database_and_restores_after_drop_database(
    cluster, store, live, monkeypatch
):
    from backup_pipelines.definitions import build_definitions

    for key in ("TYPESENSE_URL", "TYPESENSE_API_KEY", "QDRANT_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("DATABASE_URL", live["url"])
    monkeypatch.setenv("BACKUP_STORE_URL", f"file://{store.root}")
    job = build_definitions().resolve_job_def("full_restore_job")

    def run(config: dict):
        with dg.instance_for_test() as instance:
            return job.execute_in_process(
                instance=instance,
                partition_key=DATE,
                run_config={"ops": {"restore_full": {"config": config}}},
                raise_on_error=False,
            )

    refused = run({"overwrite_live": True, "target_database": "elsewhere"})
    assert not refused.success
    failure = next(e for e in refused.all_events if e.event_type_value == "STEP_FAILURE")
    assert "contradict" in failure.event_specific_data.error.message

    result = run({"overwrite_live": True})
    assert result.success
    output = next(e for e in result.all_events if e.event_type_value == "STEP_OUTPUT")
    metadata = output.event_specific_data.metadata
    previous = metadata["previous_database"].value
    assert previous.startswith(live["name"] + "_before_restore_")
    assert metadata["release_with"].value == f"backup-pipelines release-database {previous}"
    assert metadata["database"].value == live["name"]
    assert metadata["health"].value == {"postgres": metadata["health"].value["postgres"]}
    assert databases_like(cluster, live["name"]) == {live["name"], previous}

    # After DROP DATABASE of live, into a new database: its health check asks the restored
    # database, not the dropped one.
    with psycopg.connect(url_of(cluster, "postgres", "postgres"), autocommit=True) as conn:
        for name in (live["name"], previous):
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
    result = run({})
    assert result.success
    output = next(e for e in result.all_events if e.event_type_value == "STEP_OUTPUT")
    metadata = output.event_specific_data.metadata
    assert metadata["database"].value == pg_full.default_target(live["name"], DATE)
    assert set(metadata["health"].value) == {"postgres"}
    assert "previous_database" not in metadata


# --------------------------------------------------------------------------------------------
# Into a new database: a failure leaves nothing behind; a killed run is resumed when asked


@pytest.mark.parametrize("jobs", [1, 2], ids=["streamed", "parallel"])
def test_new_database_restore_that_fails_is_removed_and_a_rerun_works(
    cluster, backed_up, store, live, tmp_path, monkeypatch, jobs
):
    target = pg_full.default_target(live["name"], DATE)
    monkeypatch.setenv("PG_BIN_DIR", pg_restore_killed_after_the_schema(tmp_path))
    with pytest.raises(BackupError, match="killed by signal 9"):
        pg_full.restore_full_database(store, DATE, live["url"], jobs=jobs)
    assert target not in databases_like(cluster, live["name"])
    monkeypatch.delenv("PG_BIN_DIR")

    result = pg_full.restore_full_database(store, DATE, live["url"], jobs=jobs)

    assert result["database"] == target and result["resumed_from"] is None
    assert schema_and_rows(url_of(cluster, target))["rows"] == backed_up["state"]["rows"]


def test_new_database_restore_killed_midway_resumes_only_when_asked_and_removes_its_scratch(
    cluster, backed_up, store, live, tmp_path
):
    """The command itself is killed (no cleanup runs): the database it left is marked; a rerun
    says so and asks for --resume, which restores it afresh (its pg_restore never finished).
    The killed run's decompressed dump (pg_restore -j reads a file) is removed by the resume."""
    target = pg_full.default_target(live["name"], DATE)
    work = tmp_path / "work"
    work.mkdir()
    env = {
        **os.environ,
        "DATABASE_URL": live["url"],
        "BACKUP_STORE_URL": f"file://{store.root}",
        "BACKUP_WORK_DIR": str(work),
    }
    command = [sys.executable, "-m", "backup_pipelines.cli", "restore", "full", "--date", DATE]
    killed = subprocess.run(
        command,
        env={**env, "PG_BIN_DIR": pg_restore_killed_after_the_schema(tmp_path, kill_parent=True)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr
    with psycopg.connect(url_of(cluster, "postgres")) as conn:
        assert pg_full.read_marker(conn, target) == {"date": DATE, "state": "created"}
    (left,) = work.iterdir()
    assert (left / "database.dump").stat().st_size > 0

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 1
    assert "never finished (created); rerun with --resume" in rerun.stderr

    resumed = subprocess.run(
        [*command, "--resume"], env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "restoring it afresh" in resumed.stdout
    assert f"removed the scratch folder {left}" in resumed.stdout
    assert list(work.iterdir()) == []
    assert schema_and_rows(url_of(cluster, target))["rows"] == backed_up["state"]["rows"]


def test_new_database_restore_in_parallel_refuses_a_scratch_disk_without_room_for_the_dump(
    cluster, store, live, tmp_path, monkeypatch
):
    """pg_restore -j reads a decompressed copy: when the work folder's disk cannot hold the
    dump's uncompressed size (from its manifest), the restore stops before writing anything
    and says how to go on; one job streams the dump and needs no room."""
    monkeypatch.setenv("BACKUP_WORK_DIR", str(tmp_path))
    manifest = store.require_manifest(FULL)
    manifest["tool"]["uncompressed_bytes"] = 10**18
    store._put_atomic(f"{FULL.folder}/{MANIFEST_NAME}", json.dumps(manifest).encode())
    target = pg_full.default_target(live["name"], DATE)
    with pytest.raises(BackupError) as refused:
        pg_full.restore_full_database(store, DATE, live["url"], jobs=2)
    message = str(refused.value)
    assert f"decompressing {FULL} for pg_restore -j 2 needs 1000000000.00 GB in " in message
    assert "restore with --jobs 1" in message
    assert target not in databases_like(cluster, live["name"])
    assert [p for p in tmp_path.iterdir() if p.name.startswith("backup-pipelines-")] == []

    result = pg_full.restore_full_database(store, DATE, live["url"], jobs=1)
    assert result["database"] == target and result["rows"]


def test_new_database_restore_never_touches_a_database_it_did_not_create(cluster, store, live):
    with psycopg.connect(url_of(cluster, "postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {live['name']}_mine")
    for resume in (False, True):
        with pytest.raises(BackupError, match="was not created by backup-pipelines"):
            pg_full.restore_full_database(
                store, DATE, live["url"], target_database=f"{live['name']}_mine", resume=resume
            )
    assert f"{live['name']}_mine" in databases_like(cluster, live["name"])


@pytest.mark.parametrize("jobs", [1, 2], ids=["streamed", "parallel"])
def test_new_database_restore_equals_the_dump_streamed_or_parallel(
    cluster, backed_up, store, live, jobs
):
    """One job streams the dump into pg_restore (no scratch copy); more decompress it to disk
    for pg_restore -j. Both restore every row and object (the partitioned table's audit trigger
    fires on no restored row) and verify against the dump's own table of contents."""
    result = pg_full.restore_full_database(store, DATE, live["url"], jobs=jobs)
    try:
        assert schema_and_rows(url_of(cluster, result["database"])) == backed_up["state"]
        assert result["objects"]["missing"] == [] and result["objects"]["objects_checked"] > 0
    finally:
        with psycopg.connect(url_of(cluster, "postgres"), autocommit=True) as conn:
            swap.drop_database(conn, result["database"])


def test_overwrite_live_verification_names_a_missing_object(cluster, store, live, tmp_path):
    """The object check: every entry of the dump's table of contents must exist."""
    result = pg_full.restore_full_database(store, DATE, live["url"])
    target_url = url_of(cluster, result["database"])
    with psycopg.connect(target_url, autocommit=True) as conn:
        conn.execute("DROP TRIGGER events_audit ON app.events")
        conn.execute("DROP VIEW app.busy_events")
    local = tmp_path / "database.dump"
    manifest = store.require_manifest(FULL)
    with store.open_file(FULL, manifest, dump.FULL_DUMP_FILE) as reader, open(local, "wb") as out:
        for chunk in iter_decompressed(reader):
            out.write(chunk)
    with pytest.raises(BackupError) as failure:
        pg_full.verify_restored_database(
            target_url, result["database"], toc.read_toc(str(local)), manifest["counts"]["rows"]
        )
    assert "2 objects of the dump are missing" in str(failure.value)
    assert "TRIGGER app events events_audit" in str(failure.value)
    assert "VIEW app busy_events" in str(failure.value)


# --------------------------------------------------------------------------------------------
# Names


@pytest.mark.parametrize(
    ("overwrite_live", "locale"),
    [(False, "recorded"), (True, "recorded"), (False, "tampered")],
    ids=["new_database", "overwrite_live", "tampered_locale"],
)
def test_full_restore_after_the_live_database_was_dropped(
    cluster, backed_up, store, live, overwrite_live, locale
):
    """The classic disaster, DROP DATABASE: both restores still work. A new database is
    created with the encoding and locale the backup recorded; over live, there is nothing to
    swap or keep: the database is restored and verified under the live name itself. A
    manifest whose locale is not plain text gets the server's defaults, said in the log."""
    if locale == "tampered":
        manifest = store.require_manifest(FULL)
        manifest["source"]["locale"] = {"encoding": ["UTF8"], "collate": "C", "ctype": 7}
        store._put_atomic(f"{FULL.folder}/{MANIFEST_NAME}", json.dumps(manifest).encode())
    with psycopg.connect(url_of(cluster, "postgres", "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(live["name"])))
    lines: list[str] = []
    result = restore_full(
        store, FullRestoreRequest(DATE, overwrite_live=overwrite_live), live["url"], now=NOW,
        log=lines.append,
    )  # fmt: skip
    name = live["name"] if overwrite_live else pg_full.default_target(live["name"], DATE)
    assert databases_like(cluster, live["name"]) == {name}  # nothing else made or kept
    assert schema_and_rows(url_of(cluster, name)) == backed_up["state"]
    said = "the server's default encoding" if locale == "tampered" else "the backup's locale ("
    assert any(f"{live['name']!r} does not exist" in x and said in x for x in lines), lines
    with psycopg.connect(url_of(cluster, "postgres", "postgres")) as conn:
        encoding, comment = conn.execute(
            "SELECT pg_encoding_to_char(encoding), shobj_description(oid, 'pg_database') "
            "FROM pg_database WHERE datname = %s",
            (name,),
        ).fetchone()
        template = conn.execute(
            "SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = %s",
            (backed_up["template"],),
        ).fetchone()[0]
    assert encoding == template
    if overwrite_live:
        assert result["database"] == live["name"] and result["previous_database"] is None
        assert comment is None  # live, not a restore in progress: no marker left
        assert database_row(cluster, name)["owner"] == "restorer"
        # A run of this path killed after its pg_restore leaves the live name marked: the
        # rerun with resume continues into it, and never swaps it out as if it were live.
        pg_full.set_marker(live["url"], name, DATE, pg_full.State.RESTORED)
        lines.clear()
        request = FullRestoreRequest(DATE, overwrite_live=True, resume=True)
        restore_full(store, request, live["url"], now=NOW, log=lines.append)
        assert any(line.startswith(f"resuming into {name!r}") for line in lines), lines
        assert databases_like(cluster, live["name"]) == {name}
        assert schema_and_rows(url_of(cluster, name)) == backed_up["state"]


def test_overwrite_live_derived_names_fit_in_63_bytes():
    long_name = "é" * 31  # 62 bytes
    previous = swap.previous_name(long_name, NOW)
    assert len(previous.encode()) <= 63 and previous.endswith("_before_restore_20261122T093000Z")
    assert swap.PREVIOUS_NAME.fullmatch(previous)
    other = swap.previous_name("é" * 30 + "a", NOW)
    assert other != previous and len(other.encode()) <= 63
    staging = pg_full.staging_name("m" * 63, DATE)
    assert len(staging.encode()) <= 63 and staging.endswith("_restoring_20261121")
    assert swap.derived_name("short", "_x") == "short_x"
    with pytest.raises(ConfigError, match="at most 63 bytes"):
        swap.validate_database_name("n" * 64)
