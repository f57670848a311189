"""PostgreSQL hung or stopped in the middle of a dump or a restore, through a TCP proxy in
front of the real server: every operation ends within a bound computed from the configured
timeouts, with an error naming PostgreSQL, the operation and how long it waited."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg import sql

from backup_pipelines.lib.errors import ServiceStalled, SourceError
from backup_pipelines.lib.policy import Policy
from backup_pipelines.lib.postgres import dump, full_restore
from backup_pipelines.lib.postgres import load as pg_load
from backup_pipelines.lib.postgres.connection import connect
from backup_pipelines.lib.store import ArtifactRef, LocalStore
from backup_pipelines_tests.faults.proxy import TcpProxy, outcome_within

pytestmark = pytest.mark.faults

STALL = 2.0
CONNECT = 2.0
# Nothing moved for STALL, then a probe connection gets CONNECT to connect and CONNECT to
# answer; the watchdog looks every second; killing and unwinding take a few more seconds.
STALL_BOUND = STALL + 2 * CONNECT + 1 + 20


@pytest.fixture(autouse=True)
def short_timeouts(monkeypatch):
    monkeypatch.setenv("BACKUP_STALL_SECONDS", str(STALL))
    monkeypatch.setenv("BACKUP_CONNECT_TIMEOUT", str(CONNECT))


@pytest.fixture
def local_store(tmp_path):
    return LocalStore(tmp_path / "store")


@pytest.fixture
def proxy_for():
    """proxy_for(url) -> (proxy, url through it); every proxy is closed after the test."""
    proxies = []

    def make(url: str):
        proxy = TcpProxy.in_front_of(url)
        proxies.append(proxy)
        return proxy, proxy.url_for(url)

    yield make
    for proxy in proxies:
        proxy.close()


def full_dump(store, url, date):
    ref = ArtifactRef("postgres/full_dump", date)
    with store.begin(ref) as writer:
        writer.commit(**dump.dump_full_database(url, writer))
    return ref


def workspace_dump(store, url, date, workspace="ws_acme"):
    ref = ArtifactRef("postgres/workspace_dump", date, workspace)
    with store.begin(ref) as writer:
        writer.commit(**dump.dump_workspace(url, workspace, Policy(), writer))
    return ref


def bytes_to_clients_of_a_clean_run(proxy_for, url, run) -> int:
    proxy, through = proxy_for(url)
    run(through)
    return proxy.bytes_to_clients


def assert_names_a_stall(error, operation: str) -> None:
    assert isinstance(error, ServiceStalled), repr(error)
    message = str(error)
    assert message.startswith("PostgreSQL stalled during"), message
    assert operation in message
    assert f"nothing moved for {STALL:g} s (BACKUP_STALL_SECONDS)" in message
    assert f"did not answer a new connection within {CONNECT:g} s" in message


def test_full_dump_with_postgres_hung_mid_dump_fails_named_within_the_bound(
    local_store, source_db, proxy_for
):
    clean = bytes_to_clients_of_a_clean_run(
        proxy_for, source_db, lambda url: full_dump(local_store, url, "2026-11-20")
    )
    proxy, through = proxy_for(source_db)
    proxy.hang_after(clean // 2)

    error = outcome_within(STALL_BOUND, full_dump, local_store, through, "2026-11-21")

    assert_names_a_stall(error, "the full dump of 127.0.0.1:")
    assert proxy.mode == "hung"  # it did hang mid-dump, not before or after
    assert local_store.read_manifest(ArtifactRef("postgres/full_dump", "2026-11-21")) is None


def test_workspace_dump_with_postgres_hung_mid_copy_fails_named_within_the_bound(
    local_store, source_db, proxy_for
):
    clean = bytes_to_clients_of_a_clean_run(
        proxy_for, source_db, lambda url: workspace_dump(local_store, url, "2026-11-20")
    )
    proxy, through = proxy_for(source_db)
    proxy.hang_after(clean // 2)

    error = outcome_within(STALL_BOUND, workspace_dump, local_store, through, "2026-11-21")

    assert_names_a_stall(error, "the dump of workspace ws_acme from 127.0.0.1:")
    ref = ArtifactRef("postgres/workspace_dump", "2026-11-21", "ws_acme")
    assert local_store.read_manifest(ref) is None


def test_postgres_stopped_mid_dump_fails_at_once_naming_pg_dump(local_store, source_db, proxy_for):
    clean = bytes_to_clients_of_a_clean_run(
        proxy_for, source_db, lambda url: full_dump(local_store, url, "2026-11-20")
    )
    proxy, through = proxy_for(source_db)
    proxy.stop_after(clean // 2)

    # A closed connection needs no watchdog: bounded by the unwinding alone.
    error = outcome_within(20, full_dump, local_store, through, "2026-11-21")

    assert isinstance(error, SourceError), repr(error)
    assert not isinstance(error, ServiceStalled)
    assert "pg_dump of 127.0.0.1:" in str(error) or "PostgreSQL" in str(error), str(error)
    assert local_store.read_manifest(ArtifactRef("postgres/full_dump", "2026-11-21")) is None


def test_connect_to_hung_postgres_times_out_naming_the_wait(source_db, proxy_for):
    proxy, through = proxy_for(source_db)
    proxy.hang()

    error = outcome_within(2 * CONNECT + 10, connect, through)

    assert isinstance(error, SourceError), repr(error)
    message = str(error)
    assert message.startswith(f"cannot connect to PostgreSQL 127.0.0.1:{proxy.port}/"), message
    assert f"after {CONNECT:g} s (BACKUP_CONNECT_TIMEOUT)" in message


def test_restore_into_postgres_hung_mid_load_fails_named_within_the_bound(
    local_store, source_db, make_database, proxy_for
):
    ref = workspace_dump(local_store, source_db, "2026-11-21")
    clean_target = make_database("restored")
    proxy, through = proxy_for(clean_target)
    pg_load.load_workspace_dump_into_empty_database(local_store, ref, through)
    clean = proxy.bytes_to_server

    proxy, through = proxy_for(make_database("restored"))
    proxy.hang_after(to_server=clean // 2)
    error = outcome_within(
        STALL_BOUND, pg_load.load_workspace_dump_into_empty_database, local_store, ref, through
    )

    assert isinstance(error, ServiceStalled), repr(error)
    assert proxy.mode == "hung"
    assert "ws_acme" in str(error) and "stalled during" in str(error)


def test_psql_to_a_hung_postgres_times_out_naming_the_wait(
    local_store, source_db, make_database, proxy_for
):
    ref = workspace_dump(local_store, source_db, "2026-11-21")
    manifest = local_store.require_manifest(ref)
    proxy, through = proxy_for(make_database("restored"))
    proxy.hang()

    error = outcome_within(
        2 * CONNECT + 10, pg_load.apply_schema, local_store, ref, manifest, through
    )

    message = str(error)
    assert f"applying the DDL of {ref} into PostgreSQL 127.0.0.1:{proxy.port}/" in message
    assert f"timeout expired (after {CONNECT:g} s, BACKUP_CONNECT_TIMEOUT)" in message


def test_pg_restore_into_postgres_hung_near_its_end_fails_named_within_the_bound(
    local_store, source_db, make_database, proxy_for
):
    """Hung once nearly all was sent: pg_restore has read all of its input and waits on the
    server alone; the probe finds the server silent."""
    full_dump(local_store, source_db, "2026-11-21")
    ref = ArtifactRef("postgres/full_dump", "2026-11-21")
    proxy, through = proxy_for(make_database("restored"))
    pg_load.pg_restore_full_dump(local_store, ref, through)
    clean = proxy.bytes_to_server

    proxy, through = proxy_for(make_database("restored"))
    proxy.hang_after(to_server=clean - 200)
    error = outcome_within(STALL_BOUND, pg_load.pg_restore_full_dump, local_store, ref, through)

    assert proxy.mode == "hung"
    assert_names_a_stall(error, f"pg_restore of {ref} into 127.0.0.1:{proxy.port}/")


def test_pg_restore_into_hung_postgres_fails_named_within_the_bound(
    local_store, source_db, make_database, proxy_for
):
    full_dump(local_store, source_db, "2026-11-21")
    ref = ArtifactRef("postgres/full_dump", "2026-11-21")
    proxy, through = proxy_for(make_database("restored"))
    proxy.hang_after(to_server=64 << 10)

    error = outcome_within(STALL_BOUND, pg_load.pg_restore_full_dump, local_store, ref, through)

    assert_names_a_stall(error, f"pg_restore of {ref} into 127.0.0.1:{proxy.port}/")


@pytest.mark.parametrize("jobs", [1, 2], ids=["streamed", "parallel"])
def test_full_restore_into_a_new_database_with_postgres_hung_fails_named_then_resumes(
    local_store, source_db, pg_cluster, proxy_for, jobs
):
    """The production path (a new database, pg_restore streamed or -j from a file), the
    server hung mid-restore: pg_restore and its workers are killed within the bound, the
    error names the section and the database, and once the server is back a rerun with
    resume restores every row."""
    full_dump(local_store, source_db, "2026-11-21")
    ref = ArtifactRef("postgres/full_dump", "2026-11-21")
    clean_target = f"restored_clean_{uuid.uuid4().hex[:8]}"
    target = f"restored_hung_{uuid.uuid4().hex[:8]}"
    try:
        clean_proxy, through = proxy_for(pg_cluster.url())
        clean = full_restore.restore_full_database(
            local_store, "2026-11-21", through, clean_target, jobs=jobs
        )
        proxy, through = proxy_for(pg_cluster.url())
        proxy.hang_after(to_server=clean_proxy.bytes_to_server // 2)

        error = outcome_within(
            STALL_BOUND,
            full_restore.restore_full_database,
            local_store,
            "2026-11-21",
            through,
            target,
            jobs=jobs,
        )

        assert proxy.mode == "hung"
        assert_names_a_stall(error, f"of {ref} into 127.0.0.1:{proxy.port}/{target}")
        assert "pg_restore --section=" in str(error)
        proxy.close()
        resumed = full_restore.restore_full_database(
            local_store, "2026-11-21", pg_cluster.url(), target, jobs=jobs, resume=True
        )
        assert resumed["rows"] == clean["rows"] and sum(clean["rows"].values()) > 0
    finally:
        with psycopg.connect(pg_cluster.url(), autocommit=True) as conn:
            for name in (clean_target, target):
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)))  # fmt: skip


def test_a_busy_postgres_that_answers_is_waited_on_not_abandoned(
    local_store, source_db, make_database
):
    """No byte moves for longer than the stall time while the server works (a trigger that
    sleeps), but the server answers the probe: the load is waited on and completes."""
    ref = workspace_dump(local_store, source_db, "2026-11-21")
    manifest = local_store.require_manifest(ref)
    entry = next(e for e in manifest["tables"] if e["table"] == "public.workspaces")
    target = make_database("busy")
    pg_load.apply_schema(local_store, ref, manifest, target)
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN PERFORM pg_sleep({2 * STALL + 1}); RETURN NEW; END $$"
        )
        conn.execute(
            "CREATE TRIGGER slow BEFORE INSERT ON workspaces FOR EACH ROW EXECUTE FUNCTION slow()"
        )

    with connect(target) as conn:
        target_table = sql.Identifier("public", "workspaces")
        loaded = pg_load.copy_table_in(conn, local_store, ref, manifest, entry, target_table)
        conn.commit()

    assert loaded == entry["rows"] == 1
