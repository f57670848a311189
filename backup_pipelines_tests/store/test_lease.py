"""Leases held in the store: the primitive the backups and restores take, against the local
folder and the S3 endpoint, with real processes racing and crashing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from backup_pipelines import cli
from backup_pipelines.devstack.ports import LOOPBACK, free_port, wait_for_port
from backup_pipelines.lib.lifecycle.scan import scan_store
from backup_pipelines.lib.store import (
    WHOLE_DATABASE_LEASE,
    LeaseHeld,
    LeaseLost,
    LeaseOwner,
    LocalStore,
    S3Store,
    lease_name,
)
from backup_pipelines.lib.store.lease import lease_key
from backup_pipelines_tests.faults.store_faults import store_url, wait_until, write_workspace_dump

NAME = lease_name("ws_acme")

# A racer: ready once imported and connected, then one acquisition per "go" line on stdin.
RACER = """
import sys
from backup_pipelines.lib.store import LeaseHeld, LeaseOwner, store_from_url
url, name, who = sys.argv[1:4]
store = store_from_url(url)
store.read_lease(name)  # connect before the race
print("READY", flush=True)
for line in sys.stdin:
    try:
        lease = store.acquire_lease(name, LeaseOwner(who, "backup"), 60)
        print("WON", lease.token, flush=True)
    except LeaseHeld as exc:
        print("HELD", str(exc).replace(chr(10), " "), flush=True)
"""

# A holder that never lets go on its own: it is killed, as a crashed run would be.
HOLDER = """
import sys, time
from backup_pipelines.lib.store import store_from_url
store = store_from_url(sys.argv[1])
with store.lease("ws_acme", "restore", owner="crashing holder", ttl=float(sys.argv[2])):
    print("HOLDING", flush=True)
    time.sleep(3600)
"""


def spawn(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream:
                stream.close()


def owner(who: str = "test", purpose: str = "backup") -> LeaseOwner:
    return LeaseOwner(who, purpose)


# moto's threaded server checks If-None-Match and then stores in two steps, so two requests
# interleaved between them can both succeed (measured: 4 rounds in 100 with 6 racers had two
# winners); AWS S3 evaluates the condition atomically. The race therefore runs against moto
# serving one request at a time, which is what S3 guarantees for a conditional write.
SERIAL_MOTO = """
import sys
from werkzeug.serving import run_simple
from moto.server import DomainDispatcherApplication, create_backend_app
run_simple(sys.argv[1], int(sys.argv[2]), DomainDispatcherApplication(create_backend_app),
           threaded=False, use_reloader=False)
"""


@pytest.fixture
def serial_s3(s3_server, monkeypatch):
    """An S3 store on a moto that serves one request at a time (see SERIAL_MOTO)."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", SERIAL_MOTO, LOOPBACK, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **s3_server.env},
    )
    try:
        wait_for_port(port, timeout=30)
        for key, value in s3_server.env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://{LOOPBACK}:{port}")
        store = S3Store("serial-bucket", "leases")
        store.client.create_bucket(Bucket="serial-bucket")
        yield store
    finally:
        stop([server])


@pytest.fixture(params=["local", "s3"])
def race_store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    return request.getfixturevalue("serial_s3")


def test_lease_race_between_processes_has_exactly_one_winner(race_store):
    store = race_store
    racers = [spawn(RACER, store_url(store), NAME, f"racer-{n}") for n in range(4)]
    try:
        for racer in racers:
            assert racer.stdout.readline().strip() == "READY", racer.stderr.read()
        for round_ in range(4):
            if round_ % 2:  # a crashed holder's expired lease: racing to take it over
                stale = store.acquire_lease(NAME, owner("stale holder"), ttl=1)
                wait_until(lambda: store.read_lease(NAME).expired(), 10, "the lease to expire")
            for racer in racers:  # as close together as pipes allow
                racer.stdin.write("go\n")
                racer.stdin.flush()
            answers = [racer.stdout.readline().strip() for racer in racers]
            winners = [n for n, answer in enumerate(answers) if answer.startswith("WON")]
            assert len(winners) == 1, answers
            held = store.read_lease(NAME)
            assert held.record.owner.who == f"racer-{winners[0]}"
            assert held.token == answers[winners[0]].split()[1]
            for answer in answers:
                if answer.startswith("HELD"):
                    assert f"racer-{winners[0]}" in answer and "backup" in answer
                    assert "backup-pipelines lease break --workspace ws_acme" in answer
            assert store.break_lease(NAME).token == held.token
            if round_ % 2:
                assert held.token != stale.token
    finally:
        stop(racers)


def test_lease_of_a_crashed_holder_expires_and_is_taken_over(store):
    holder = spawn(HOLDER, store_url(store), "2")
    try:
        assert holder.stdout.readline().strip() == "HOLDING", holder.stderr.read()
        with pytest.raises(LeaseHeld) as raised:
            store.acquire_lease(NAME, owner("next run"))
        message = str(raised.value)
        assert "crashing holder" in message and f"pid {holder.pid}" in message
        assert "restore" in message and "since" in message and "until" in message
        holder.send_signal(signal.SIGKILL)
        holder.wait()

        def taken() -> object:
            try:
                return store.acquire_lease(NAME, owner("next run"))
            except LeaseHeld:
                return None

        lease = wait_until(taken, 30, "the crashed holder's lease to expire")
        assert store.read_lease(NAME).record.owner.who == "next run"
        assert store.release_lease(lease)
    finally:
        stop([holder])


def test_lease_expired_is_taken_over_and_the_old_holder_learns_it(store):
    first = store.acquire_lease(NAME, owner("first"), ttl=1)
    wait_until(lambda: store.read_lease(NAME).expired(), 10, "the lease to expire")
    second = store.acquire_lease(NAME, owner("second", "restore"))
    assert second.token != first.token
    with pytest.raises(LeaseLost, match="now held for restore by second"):
        store.renew_lease(first)
    assert store.release_lease(first) is False  # never removes the new holder's lease
    assert store.read_lease(NAME).token == second.token


def test_lease_renew_pushes_expiry_and_keeps_others_out(store):
    lease = store.acquire_lease(NAME, owner(), ttl=5)
    renewed = store.renew_lease(lease, ttl=120)
    assert renewed.record.expires > lease.record.expires + 100
    assert renewed.token == lease.token and renewed.version != lease.version
    with pytest.raises(LeaseHeld):
        store.acquire_lease(NAME, owner("other"))
    with pytest.raises(LeaseLost):
        store.renew_lease(lease)  # the version before the renewal is not the lease any more
    assert store.release_lease(renewed)


def test_lease_release_lets_the_next_one_in(store):
    lease = store.acquire_lease(NAME, owner())
    assert store.release_lease(lease) is True
    assert store.read_lease(NAME) is None
    assert store.release_lease(lease) is False
    assert store.acquire_lease(NAME, owner("next")).record.owner.who == "next"


def test_lease_context_renews_in_background_and_releases_on_exception(store):
    work = store.lease("ws_acme", "backup", owner="dagster run 1234", ttl=1.5)
    with pytest.raises(RuntimeError, match="work failed"), work as held:
        first = store.read_lease(NAME).record
        wait_until(
            lambda: store.read_lease(NAME).record.renewed_at != first.renewed_at,
            10,
            "a renewal by the heartbeat",
        )
        wait_until(lambda: time.time() > first.expires + 0.5, 10, "the first expiry to pass")
        with pytest.raises(LeaseHeld, match="held for backup by dagster run 1234"):
            store.acquire_lease(NAME, owner("intruder"))
        held.ensure_held()
        raise RuntimeError("work failed")
    assert store.read_lease(NAME) is None


def test_lease_broken_while_held_is_reported_lost_at_the_end(store):
    with pytest.raises(LeaseLost, match="lost"), store.lease("ws_acme", "restore", ttl=1.5) as held:
        assert store.break_lease(NAME) is not None
        wait_until(lambda: held.lost, 10, "the heartbeat to notice the broken lease")
        with pytest.raises(LeaseLost):
            held.ensure_held()


def test_lease_of_the_whole_database_and_per_workspace_are_apart(store):
    with store.lease(None, "backup") as whole, store.lease("ws_acme", "restore") as one:
        assert whole.name == WHOLE_DATABASE_LEASE and one.name == NAME
        assert [lease.name for lease in store.list_leases()] == [WHOLE_DATABASE_LEASE, NAME]
    assert store.list_leases() == []


def test_lease_unreadable_is_held_until_broken(store):
    store._put_atomic(lease_key(NAME), b"garbage, not a lease")
    with pytest.raises(LeaseHeld, match=r"unreadable.*lease break --workspace ws_acme"):
        store.acquire_lease(NAME, owner())
    assert store.break_lease(NAME).record is None
    assert store.acquire_lease(NAME, owner()).record.owner.who == "test"


def test_lease_refuses_bad_names_ttls_and_purposes(store):
    with pytest.raises(ValueError, match="invalid workspace id"):
        lease_name("../x")
    with pytest.raises(ValueError, match="invalid lease name"):
        store.acquire_lease("workspace=../../x", owner())
    with pytest.raises(ValueError, match="ttl"):
        store.acquire_lease(NAME, owner(), ttl=0)
    with pytest.raises(ValueError, match="purpose"):
        store.acquire_lease(NAME, owner(purpose="anything"))


def test_lease_store_honours_conditional_writes(store):
    assert store.check_conditional_writes() is True
    assert store.list_leases() == []  # the probe is gone, and never listed as a lease


def test_lease_objects_are_not_artifacts_nor_leftovers(store):
    write_workspace_dump(store)
    held = store.acquire_lease(NAME, owner())
    assert [ref.folder for ref in store.list_artifacts()] == [
        "postgres/workspace_dump/date=2026-11-21/workspace=ws_acme"
    ]
    assert all(not ref.folder.startswith("_leases") for ref in scan_store(store))
    assert store.release_lease(held)


def test_lease_cli_list_and_break(store, monkeypatch, capsys):
    monkeypatch.setenv("BACKUP_STORE_URL", store_url(store))
    store.acquire_lease(NAME, LeaseOwner("alice (command line)", "restore"), ttl=600)
    assert cli.main(["lease", "list"]) == 0
    listed = capsys.readouterr().out
    assert "workspace=ws_acme" in listed and "held" in listed and "alice" in listed
    assert cli.main(["lease", "break", "--workspace", "ws_acme"]) == 2
    assert "--force" in capsys.readouterr().err
    assert store.read_lease(NAME) is not None
    assert cli.main(["lease", "break", "--workspace", "ws_acme", "--force"]) == 0
    assert "broke lease workspace=ws_acme: held for restore by alice" in capsys.readouterr().out
    assert store.read_lease(NAME) is None
    assert cli.main(["lease", "break", "--database"]) == 0
    assert "nothing to break" in capsys.readouterr().out
    assert cli.main(["lease", "break", "--workspace", "../x"]) == 2


def test_lease_expired_can_be_broken_without_force(store, monkeypatch, capsys):
    monkeypatch.setenv("BACKUP_STORE_URL", store_url(store))
    store.acquire_lease(NAME, owner(), ttl=1)
    wait_until(lambda: store.read_lease(NAME).expired(), 10, "the lease to expire")
    assert cli.main(["lease", "list"]) == 0
    assert "expired" in capsys.readouterr().out
    assert cli.main(["lease", "break", "--workspace", "ws_acme"]) == 0
    assert store.read_lease(NAME) is None
