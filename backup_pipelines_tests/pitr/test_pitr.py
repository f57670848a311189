"""Point-in-time recovery with real PostgreSQL 15 + real pgBackRest (local and S3 repository)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import dagster as dg
import psycopg
import pytest

from backup_pipelines.lib import scratch
from backup_pipelines.lib.errors import ConfigError
from backup_pipelines.lib.postgres import pgbackrest, pitr
from backup_pipelines.lib.store import LocalStore
from backup_pipelines.lib.store.lease import LeaseHeld
from backup_pipelines_tests.pitr.conftest import archive_now, checksum, start_archiving_cluster


def _mark(url: str) -> datetime:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT clock_timestamp()").fetchone()[0]


def test_pitr_restore_to_marked_time_gives_exactly_rows_committed_then(archiving):
    url = archiving.url
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO items SELECT g, md5(g::text) FROM generate_series(501, 700) g")
        conn.execute("DELETE FROM items WHERE id % 7 = 0")
    target = _mark(url)
    at_target = checksum(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO items SELECT g, 'late' FROM generate_series(701, 900) g")
        conn.execute("DELETE FROM items WHERE id < 100")
        conn.execute("UPDATE items SET body = 'changed' WHERE id BETWEEN 200 AND 260")
    live_before = checksum(url)
    assert live_before != at_target
    archive_now(url)

    lines = []
    restored = pitr.restore_to_time(
        archiving.pitr_config(),
        target,
        target_dir=archiving.cluster.work_dir("r_marked"),
        log=lines.append,
    )
    try:
        assert checksum(restored.url) == at_target
        assert restored.row_counts["public.items"] == at_target[0]
        assert restored.timeline >= 2  # promoted onto a new timeline
        assert restored.port != archiving.cluster.port
        assert "recovery stopping before commit" in restored.recovery_stop
        with psycopg.connect(restored.url, autocommit=True) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
            assert conn.execute("SHOW archive_mode").fetchone()[0] == "off"  # never pushes WAL
        assert any("DATABASE_URL=" in line for line in lines)
        # The live cluster is untouched and still archiving.
        assert checksum(url) == live_before
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
        archive_now(url)
    finally:
        restored.remove()


def test_pitr_target_outside_window_is_refused_before_anything_is_restored(archiving):
    archive_now(archiving.url)
    window = pitr.reachable_window(archiving.stanza)
    assert window.newest is not None and window.oldest < window.newest
    config = archiving.pitr_config()
    too_early = window.oldest - timedelta(hours=1)
    target_dir = archiving.cluster.work_dir("refused") / "never"
    with pytest.raises(
        pitr.PitrTargetUnreachable, match="before the oldest restorable instant"
    ) as err:
        pitr.restore_to_time(config, too_early, target_dir=target_dir)
    assert window.oldest_backup in str(err.value)
    too_late = datetime.now(UTC) + timedelta(hours=1)
    with pytest.raises(
        pitr.PitrTargetUnreachable, match="after the newest reachable instant"
    ) as err:
        pitr.restore_to_time(config, too_late, target_dir=target_dir)
    # named (the archive may have moved on since `window`: archive_timeout switches WAL)
    assert re.search(r"newest reachable instant \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", str(err.value))
    assert not target_dir.exists()


def test_pitr_restore_in_a_deep_folder_works_and_one_that_cannot_start_fails_at_once(archiving):
    """A data directory too deep for a Unix socket path (107 bytes) still restores: the copy
    runs on TCP only. A copy that cannot start (an address not on this host) fails naming the
    cause as soon as it exits, not when the recovery timeout ends; a port live already listens
    on is refused before anything is restored."""
    archive_now(archiving.url)
    target = _mark(archiving.url)
    archive_now(archiving.url)
    config = archiving.pitr_config()
    deep = archiving.cluster.work_dir("r_deep") / ("d" * 100)
    restored = pitr.restore_to_time(config, target, target_dir=deep)
    try:
        assert len(f"{deep}/.s.PGSQL.{restored.port}") > pitr.SOCKET_PATH_MAX
        assert checksum(restored.url)[0] > 0
    finally:
        restored.remove()

    elsewhere = archiving.cluster.work_dir("r_elsewhere") / "data"
    with pytest.raises(pitr.PitrRestoreError) as failure:
        pitr.restore_to_time(
            config,
            target,
            target_dir=elsewhere,
            listen="192.0.2.1",
            port=pitr.free_port(),
            recovery_timeout=900,
        )
    message = str(failure.value)
    assert f"the restored cluster in {elsewhere} did not start" in message, message
    assert "192.0.2.1" in message and "could not create any TCP/IP sockets" in message
    # The unfinished copy is no result: removed, its server log kept beside it.
    assert not elsewhere.exists()
    kept_log = elsewhere.parent / "data.pitr-restore.log"
    assert "could not create any TCP/IP sockets" in kept_log.read_text()
    given = archiving.cluster.work_dir("r_given")  # the operator's own, empty: emptied again
    with pytest.raises(pitr.PitrRestoreError, match="did not start"):
        pitr.restore_to_time(
            config, target, target_dir=given, listen="192.0.2.1", port=pitr.free_port()
        )
    assert given.is_dir() and list(given.iterdir()) == []

    taken = archiving.cluster.work_dir("r_taken") / "data"
    with pytest.raises(ConfigError, match=f"port {archiving.cluster.port} is already in use"):
        pitr.restore_to_time(config, target, target_dir=taken, port=archiving.cluster.port)
    assert not taken.exists()


def test_pitr_restore_never_takes_another_server_on_its_port_for_the_copy(archiving, tmp_path):
    """The copy's port taken after it was chosen, by a server not in recovery (live): the wait
    for the copy's promotion must not take that server's answer for the copy's."""
    stand_in = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                stdin=subprocess.PIPE)  # fmt: skip
    try:
        data_dir = tmp_path / "data"  # "running": its postmaster.pid names a live process
        data_dir.mkdir()
        (data_dir / "postmaster.pid").write_text(f"{stand_in.pid}\n{data_dir}\n")
        copy = pitr.RestoredCluster(
            data_dir, archiving.cluster.port, archiving.url, datetime.now(UTC), "label"
        )
        with pytest.raises(pitr.PitrRestoreError, match="another server answers on port"):
            pitr._wait_promoted(copy, data_dir / "pitr-restore.log", 120, lambda _line: None)
    finally:
        stand_in.kill()
        stand_in.wait(timeout=30)


@pytest.mark.parametrize(
    ("log_text", "said"),
    [
        ("LOG:  could not create any TCP/IP sockets\nLOG:  database system is shut down\n",
         "did not start"),
        ("LOG:  starting point-in-time recovery to 2026-12-01 13:05:00+00\n"
         "FATAL:  recovery ended before configured recovery target was reached\n",
         "stopped during recovery"),
    ],
)  # fmt: skip
def test_pitr_copy_that_exits_is_named_by_its_log_not_by_a_glimpse_of_its_pid(
    tmp_path, log_text, said
):
    """A server refused at start (its address, its socket) writes its postmaster.pid before
    it gives up. The wait that happens to see that file must still say the copy did not
    start; only a server whose log shows recovery under way stopped during recovery."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                              stdin=subprocess.PIPE)  # fmt: skip
    data_dir = tmp_path / "copy"
    data_dir.mkdir()
    (data_dir / "postmaster.pid").write_text(f"{server.pid}\n{data_dir}\n")
    log_file = data_dir / "pitr-restore.log"
    log_file.write_text(log_text)
    copy = pitr.RestoredCluster(
        data_dir, port, f"postgresql://postgres@127.0.0.1:{port}/postgres", datetime.now(UTC), "l"
    )
    outcome: dict = {}

    def wait() -> None:
        try:
            pitr._wait_promoted(copy, log_file, 120, lambda _line: None)
        except pitr.PitrRestoreError as exc:
            outcome["error"] = str(exc)

    waiting = threading.Thread(target=wait, daemon=True)
    try:
        waiting.start()
        listener.settimeout(60)
        listener.accept()[0].close()  # it saw the pid file and tried to connect
        server.kill()
        server.wait(timeout=30)
        listener.close()
        waiting.join(60)
        assert not waiting.is_alive()
        assert f"the restored cluster in {data_dir} {said}" in outcome["error"]
    finally:
        server.kill()
        listener.close()


# A `restore pitr` that stops for good right after it started the copy's server: the parent
# SIGKILLs it there, as the OOM killer or an operator's kill -9 would.
KILLED_RESTORE = """
import sys, time
from datetime import datetime
from backup_pipelines.lib.postgres import pitr

def log(line):
    print(line, flush=True)
    if line.startswith("started the copy"):
        time.sleep(3600)

target = datetime.fromisoformat(sys.argv[1])
pitr.restore_to_time(pitr.PitrConfig.from_env(), target, target_dir=sys.argv[2], log=log)
"""


def _start_killable_restore(
    archiving, target: datetime, target_dir
) -> tuple[subprocess.Popen, int]:
    """A restore into target_dir, alive and holding its copy's server; (process, server pid)."""
    env = {**os.environ, **archiving.env()}
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_RESTORE, target.isoformat(), str(target_dir)],
        env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    for line in child.stdout:
        if line.startswith("started the copy"):
            break
    else:
        pytest.fail(f"the restore ended before it started its copy (exit {child.wait(30)})")
    deadline = time.monotonic() + 60  # pg_ctl -W returns before the server writes its pid file
    while (pid := scratch._postmaster_running_in(target_dir)) is None:
        assert time.monotonic() < deadline, f"no server came up in {target_dir}"
        time.sleep(0.05)
    return child, pid


def test_pitr_restore_killed_midway_is_cleared_by_the_next_and_never_run_twice_at_once(archiving):
    """A restore SIGKILLed after starting its copy leaves a cluster-sized copy and a running
    server. While it runs, a second restore into the same directory is refused, naming it.
    Once it is dead, the rerun of the same command stops that server, clears the copy and
    restores; a restore into another directory beside it clears a killed one there too."""
    archive_now(archiving.url)
    target = _mark(archiving.url)
    at_target = checksum(archiving.url)
    archive_now(archiving.url)
    config = archiving.pitr_config()
    parent = archiving.cluster.work_dir("r_killed")
    first, second, third = parent / "first", parent / "second", parent / "third"
    servers: list[int] = []
    try:
        child, server = _start_killable_restore(archiving, target, first)
        servers.append(server)
        with pytest.raises(ConfigError) as refused:
            pitr.restore_to_time(config, target, target_dir=first)
        assert f"another run (pid {child.pid}) is writing to {first}" in str(refused.value)
        assert scratch._alive(server) and (first / "PG_VERSION").exists()  # untouched
        child.kill()
        child.wait(timeout=30)
        assert scratch._alive(server), "the server died with the run: nothing left to test"
        assert (parent / f"first{scratch.CLAIM_SUFFIX}").exists()

        lines: list[str] = []
        restored = pitr.restore_to_time(config, target, target_dir=first, log=lines.append)
        try:
            assert not scratch._alive(server)
            assert f"stopped the PostgreSQL server (pid {server}) left running in {first}" in lines
            assert any(
                line.startswith(f"removed the unfinished copy in {first} (")
                and f"(pid {child.pid})" in line
                for line in lines
            ), lines
            assert checksum(restored.url) == at_target
            assert not (parent / f"first{scratch.CLAIM_SUFFIX}").exists()  # verified: a result
        finally:
            restored.remove()

        child, server = _start_killable_restore(archiving, target, second)
        servers.append(server)
        child.kill()
        child.wait(timeout=30)
        restored = pitr.restore_to_time(config, target, target_dir=third)
        try:
            assert not second.exists() and not scratch._alive(server)
            assert sorted(p.name for p in parent.iterdir()) == ["third"]
        finally:
            restored.remove()
    finally:
        for pid in servers:
            if scratch._alive(pid):
                scratch._signal_and_wait(pid, signal.SIGKILL)


def test_pgbackrest_diff_and_incr_backups_and_physical_backup_asset_metadata(
    archiving, monkeypatch
):
    from backup_pipelines.defs import pitr as pitr_defs
    from backup_pipelines.defs.resources import PolicyResource

    diff = archiving.stanza.backup("diff")
    incr = archiving.stanza.backup("incr")
    info = archiving.stanza.info()
    full = next(b for b in info.backups if b.type == "full")
    assert diff.type == "diff" and diff.prior == full.label
    assert incr.type == "incr" and incr.prior == diff.label
    assert incr.archive_start <= incr.archive_stop and incr.lsn_start and incr.lsn_stop
    assert info.archive_min <= info.archive_max and info.ok

    for key, value in archiving.env().items():
        monkeypatch.setenv(key, value)
    result = dg.materialize(
        [pitr_defs.physical_backup],
        resources={"pitr_stanza": pitr_defs.PitrResource(), "policy": PolicyResource()},
        run_config={"ops": {"postgres__physical_backup": {"config": {"type": "diff"}}}},
    )
    assert result.success
    metadata = result.asset_materializations_for_node("postgres__physical_backup")[0].metadata
    assert metadata["type"].value == "diff"
    for key in (
        "label",
        "size_bytes",
        "repo_size_bytes",
        "repository_total_bytes",
        "wal_start",
        "wal_stop",
        "lsn_start",
        "lsn_stop",
    ):
        assert metadata[key].value not in ("", None, 0), key


def test_pitr_auto_backup_type_is_full_on_the_weekday_else_diff(archiving):
    from backup_pipelines.defs.pitr import choose_backup_type
    from backup_pipelines.lib.policy import Policy

    info = archiving.stanza.info()
    sunday, monday = datetime(2026, 12, 6, tzinfo=UTC), datetime(2026, 12, 7, tzinfo=UTC)
    assert choose_backup_type("auto", Policy(), info, sunday) == "full"
    assert choose_backup_type("auto", Policy(), info, monday) == "diff"
    assert (
        choose_backup_type("auto", Policy(physical_full_weekday="monday"), info, monday) == "full"
    )
    empty = pgbackrest.StanzaInfo("x", 0, "ok", None, None, [])
    assert choose_backup_type("auto", Policy(), empty, monday) == "full"


def test_pitr_wal_rpo_alert_fires_once_and_recovers_once(
    archiving, alert_receiver, monkeypatch, tmp_path
):
    from backup_pipelines.defs import pitr as pitr_defs
    from backup_pipelines.defs.resources import PolicyResource

    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text("wal_rpo_minutes: 0.05\n")  # 3 s, so the test need not wait 5 minutes
    for key, value in archiving.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("BACKUP_POLICY_FILE", str(policy_file))
    resources = {"pitr_stanza": pitr_defs.PitrResource(), "policy": PolicyResource()}
    cursor = None

    def tick():
        nonlocal cursor
        with dg.build_sensor_context(cursor=cursor, resources=resources) as context:
            result = pitr_defs.wal_rpo_sensor(context)
        cursor = result.cursor
        return result.asset_events[0]

    url = archiving.url
    archive_now(url)
    assert tick().passed
    with psycopg.connect(url, autocommit=True) as conn:
        failed_before = conn.execute("SELECT failed_count FROM pg_stat_archiver").fetchone()[0]
        conn.execute("ALTER SYSTEM SET archive_command = '/bin/false'")
        conn.execute("SELECT pg_reload_conf()")
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO items SELECT g, 'unarchived' FROM generate_series(5001, 5100) g"
            )
            conn.execute("SELECT pg_switch_wal()")
        deadline = time.monotonic() + 60
        while True:
            state = pitr.wal_rpo(url, 3.0)
            if state.failed_count > failed_before and state.late:
                break
            assert time.monotonic() < deadline, state.to_dict()
            time.sleep(0.2)
        assert state.failing
        check = tick()
        assert not check.passed and "archive_command failing" in check.description
        tick()
        assert [a["kind"] for a in alert_receiver.webhook] == ["rpo_breach"]
        assert alert_receiver.webhook[0]["asset"] == "postgres/wal_archive"
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM RESET archive_command")
            conn.execute("SELECT pg_reload_conf()")
    deadline = time.monotonic() + 90
    while pitr.wal_rpo(url, 3.0).late:
        assert time.monotonic() < deadline, pitr.wal_rpo(url, 3.0).to_dict()
        time.sleep(0.2)
    assert tick().passed
    tick()
    assert [a["kind"] for a in alert_receiver.webhook] == ["rpo_breach", "rpo_recovered"]
    # The health report's row of the WAL archive
    from backup_pipelines.lib.policy import load_policy

    (row,) = pitr_defs.health_rows(load_policy())
    assert row["workspace"] == "(WAL archive)" and row["rpo"] == "OK"


def test_pitr_cli_info_and_restore(archiving, monkeypatch, capsys):
    from backup_pipelines import cli

    for key, value in archiving.env().items():
        monkeypatch.setenv(key, value)
    archive_now(archiving.url)
    assert cli.main(["pitr", "info"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["stanza"] == "agent" and report["backups"]
    assert report["reachable"]["newest"] and not report["wal_rpo"]["late"], json.dumps(
        report["wal_rpo"]
    )
    target = _mark(archiving.url)
    expected = checksum(archiving.url)
    with psycopg.connect(archiving.url, autocommit=True) as conn:
        conn.execute("DELETE FROM items WHERE id > 300")
    archive_now(archiving.url)
    target_dir = archiving.cluster.work_dir("cli_restore")
    code = cli.main(
        ["restore", "pitr", "--to", target.isoformat(), "--target-dir", str(target_dir)]
    )
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{") : out.rindex("}") + 1])
    restored = pitr.RestoredCluster(
        target_dir,
        summary["port"],
        f"postgresql://postgres@127.0.0.1:{summary['port']}/postgres",
        target,
        summary["backup_label"],
        os_user=archiving.stanza.os_user,
    )
    try:
        assert code == 0
        assert checksum(restored.url) == expected
    finally:
        restored.remove()
    assert (
        cli.main(
            ["restore", "pitr", "--to", "2001-01-01 00:00:00+00", "--target-dir", str(target_dir)]
        )
        == 1
    )
    assert "before the oldest restorable instant" in capsys.readouterr().err


def test_pgbackrest_s3_repository_behind_stunnel_backs_up_and_restores():
    from backup_pipelines.devstack.s3_server import S3Server

    with S3Server(bucket="pgbackrest-test", tls=True) as s3:
        env = {
            **s3.env,
            "AWS_ENDPOINT_URL_S3": s3.tls_endpoint,
            "PGBACKREST_S3_URI_STYLE": "path",
            "PGBACKREST_S3_VERIFY_TLS": "n",
        }
        repo = pgbackrest.Repository.from_url("s3://pgbackrest-test/cluster-a", env)
        assert repo.type == "s3" and repo.port == s3.tls_port
        archiving = start_archiving_cluster(repo, repo.secrets())
        restored = None
        try:
            url = archiving.url
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("CREATE TABLE items (id int PRIMARY KEY, body text NOT NULL)")
                conn.execute(
                    "INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 300) g"
                )
            archiving.stanza.backup("full")
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("INSERT INTO items SELECT g, 'after' FROM generate_series(301, 400) g")
            target = _mark(url)
            expected = checksum(url)
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("TRUNCATE items")
            archive_now(url)
            objects = s3.client().list_objects_v2(Bucket="pgbackrest-test", Prefix="cluster-a/")
            assert objects.get("KeyCount", 0) > 0  # the repository really is in the bucket
            with pitr.scratch_cluster_at(
                archiving.pitr_config(), target, target_dir=archiving.cluster.work_dir("r_s3")
            ) as restored:
                assert checksum(restored.url) == expected
            assert not restored.data_dir.exists()  # stopped and removed after the block
            restored = None
            config_text = archiving.config_path.read_text()
            assert (archiving.config_path.stat().st_mode & 0o777) == 0o600  # it holds the S3 keys
            assert "repo1-type=s3" in config_text
        finally:
            if restored:
                restored.remove()
            archiving.cluster.stop()


def _items_backed_up(archiving, rows: int) -> str:
    """A fresh archiving cluster's `items` table of `rows` rows, in a full backup; its URL."""
    url = archiving.url
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, body text NOT NULL)")
        conn.execute(
            "INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, %s) g", [rows]
        )
    archiving.stanza.backup("full")
    return url


def test_pitr_overwrite_live_is_a_verified_swap_and_archiving_resumes_never_beside_a_restore():
    archiving = start_archiving_cluster()
    try:
        url = _items_backed_up(archiving, 200)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO items SELECT g, 'kept' FROM generate_series(201, 250) g")
        target = _mark(url)
        expected = checksum(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DELETE FROM items WHERE id > 20")  # the incident
        archive_now(url)
        live_dir = archiving.cluster.data_dir
        # Another operator's workspace restore writes into live: the swap is refused first.
        leases = LocalStore(archiving.cluster.work_dir("leases"))
        with leases.restore_lease("ws_a", "operator-b"), pytest.raises(LeaseHeld) as busy:
            pitr.restore_to_time(
                archiving.pitr_config(), target, overwrite_live=True, leases=leases
            )
        assert "operator-b" in str(busy.value)
        assert [p.name for p in live_dir.parent.iterdir() if p.name.startswith(live_dir.name)] == [
            live_dir.name
        ]  # no copy begun beside live
        assert leases.list_leases() == []
        lines = []
        restored = pitr.restore_to_time(
            archiving.pitr_config(), target, overwrite_live=True, log=lines.append, leases=leases
        )
        assert restored.overwrote_live and restored.data_dir == live_dir
        assert leases.list_leases() == []  # held for the restore, released after it
        assert restored.port == archiving.cluster.port
        assert checksum(url) == expected  # the live URL now serves the data at T
        asides = list(live_dir.parent.glob(f"{live_dir.name}.before-pitr-*"))
        assert len(asides) == 1 and (asides[0] / "PG_VERSION").exists()
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SHOW archive_mode").fetchone()[0] == "on"
        archive_now(url)  # the new primary archives into the same stanza
        with pytest.raises(pitr.BackupError):
            restored.remove()  # never deletes the live directory
    finally:
        archiving.cluster.stop()


def _postmaster_pid(data_dir) -> int:
    return int((data_dir / "postmaster.pid").read_text().splitlines()[0])


def _wait_gone(pid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}"), f"process {pid} still alive"


@pytest.mark.parametrize("down", ["stopped", "crashed", "missing"])
def test_pitr_overwrite_live_when_live_is_down_restores_into_its_place(down):
    """The usual reason to restore over live: the live cluster is already down (stopped by
    the operator, or crashed with its pid file left). The swap must not need to stop it. A
    live directory that is gone is refused before anything is written, naming it."""
    archiving = start_archiving_cluster()
    live_dir = archiving.cluster.data_dir
    # As a swap killed between its two renames leaves it: live's directory put aside
    moved = live_dir.parent / f"{live_dir.name}.before-pitr-20261205T000000"
    try:
        url = _items_backed_up(archiving, 100)
        oldest = pitr.reachable_window(archiving.stanza, archiving.stanza.info()).oldest
        while _mark(url) <= oldest:  # the backup's end is in whole seconds
            time.sleep(0.05)
        target = _mark(url)
        expected = checksum(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DELETE FROM items WHERE id > 10")  # the incident
        archive_now(url)
        pid = _postmaster_pid(live_dir)
        if down == "crashed":
            os.kill(pid, signal.SIGKILL)
        else:  # a clean shutdown: no pid file left
            pitr._pg_ctl(
                ["stop", "-D", str(live_dir), "-m", "fast", "-w"], archiving.stanza.os_user, 60
            )
        _wait_gone(pid)
        if down == "missing":
            live_dir.rename(moved)
            with pytest.raises(ConfigError) as refused:
                pitr.restore_to_time(archiving.pitr_config(), target, overwrite_live=True)
            assert str(live_dir) in str(refused.value)
            assert f"interrupted swap: {moved.name} " in str(refused.value)
            beside = [p.name for p in live_dir.parent.iterdir() if p.name.startswith(live_dir.name)]
            assert beside == [moved.name]  # no copy begun beside where live was
            return
        lines: list[str] = []
        restored = pitr.restore_to_time(
            archiving.pitr_config(), target, overwrite_live=True, log=lines.append
        )
        assert restored.overwrote_live and restored.data_dir == live_dir
        assert restored.port == archiving.cluster.port
        assert checksum(url) == expected  # live's own URL serves the data at T again
        assert any("was not running" in line for line in lines), lines
        asides = list(live_dir.parent.glob(f"{live_dir.name}.before-pitr-*"))
        assert len(asides) == 1 and (asides[0] / "PG_VERSION").exists()
        assert not list(live_dir.parent.glob(f"{live_dir.name}.pitr-*[0-9]"))  # no copy left
    finally:
        if moved.exists() and not live_dir.exists():
            moved.rename(live_dir)
        archiving.cluster.stop()


def test_pgbackrest_cli_setup_writes_config_creates_stanza_or_names_missing_settings(
    pg_cluster, monkeypatch, capsys
):
    from backup_pipelines import cli
    from backup_pipelines.devstack.postgres_cluster import PostgresCluster

    # A cluster without WAL archiving: setup names what postgresql.conf still needs.
    scratch = pg_cluster.work_dir("pitr_setup_plain")
    monkeypatch.setenv("DATABASE_URL", pg_cluster.url())
    monkeypatch.setenv("PGBACKREST_REPO_URL", f"file://{scratch}/repo")
    monkeypatch.setenv("PGBACKREST_CONFIG", str(scratch / "pgbackrest.conf"))
    monkeypatch.setenv("PGBACKREST_PG_DATA", str(pg_cluster.data_dir))
    monkeypatch.setenv("PGBACKREST_PG_SOCKET", str(pg_cluster.data_dir))
    assert cli.main(["pitr", "setup"]) == 1
    out = capsys.readouterr().out
    assert "archive_mode = on (now off; needs a restart)" in out  # wal_level is replica by default
    assert f"--config={scratch / 'pgbackrest.conf'} --stanza=main archive-push %p" in out

    # A cluster whose archive_command points at the configuration setup writes.
    cluster = PostgresCluster()
    state = cluster.work_dir("pgbackrest")
    config_path = state / "pgbackrest.conf"
    cluster.settings = {
        "wal_level": "replica",
        "archive_mode": "on",
        "archive_command": pgbackrest.archive_command(config_path, "main"),
    }
    with cluster:
        monkeypatch.setenv("DATABASE_URL", cluster.url())
        monkeypatch.setenv("PGBACKREST_REPO_URL", f"file://{state}/repo")
        monkeypatch.setenv("PGBACKREST_CONFIG", str(config_path))
        monkeypatch.setenv("PGBACKREST_PG_DATA", str(cluster.data_dir))
        monkeypatch.setenv("PGBACKREST_PG_SOCKET", str(cluster.data_dir))
        assert cli.main(["pitr", "setup"]) == 0
        assert "created and checked" in capsys.readouterr().out
        text = config_path.read_text()
        assert "repo1-retention-full-type=time" in text and "repo1-retention-full=7" in text
        assert f"pg1-port={cluster.port}" in text
        assert cli.main(["pitr", "backup"]) == 0  # no full yet: auto makes a full one
        assert '"type": "full"' in capsys.readouterr().out
