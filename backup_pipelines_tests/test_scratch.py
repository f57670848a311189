"""Scratch folders: a process killed without cleanup leaves its folder, the next scratch folder
made in the same work folder removes it, and a live process's folder is never touched.

The owners are real processes holding real locks; the kill is a real SIGKILL."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from backup_pipelines.devstack.postgres_cluster import PostgresCluster
from backup_pipelines.lib import scratch
from backup_pipelines.lib.errors import BackupError

HOLDER = """
import sys
from backup_pipelines.lib.scratch import ScratchFolder
folder = ScratchFolder("held")
(folder.path / "copy.bin").write_bytes(b"x" * 1_000_000)
print(folder.path, flush=True)
sys.stdin.read()  # held until the test closes stdin or kills this process
folder.close()
"""


# A point-in-time restore's scratch cluster: a real PostgreSQL server started (as a daemon, by
# pg_ctl) in a scratch folder of the holder's.
CLUSTER_HOLDER = """
import os, shutil, sys
from backup_pipelines.devstack.postgres_cluster import PostgresCluster
from backup_pipelines.lib.scratch import ScratchFolder
folder = ScratchFolder("instant-cluster")
os.chmod(folder.path, 0o711)
base = folder.path / "pg"
base.mkdir()
if os.geteuid() == 0:
    shutil.chown(base, "postgres")
cluster = PostgresCluster(base_dir=base).start()
print(folder.path, cluster.data_dir, cluster.port, flush=True)
sys.stdin.read()
"""


def start_holder(work, script: str = HOLDER) -> tuple[subprocess.Popen, str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", script],
        env={**os.environ, "BACKUP_WORK_DIR": str(work)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    return holder, holder.stdout.readline().strip()


def ours(work) -> list[str]:
    return sorted(p.name for p in work.iterdir() if p.name.startswith(scratch.PREFIX))


def test_scratch_folder_of_a_killed_process_is_removed_by_the_next_one(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKUP_WORK_DIR", str(tmp_path))
    holder, held = start_holder(tmp_path)
    try:
        assert os.path.isfile(f"{held}/copy.bin"), held
        lines: list[str] = []
        with scratch.ScratchFolder("mine", log=lines.append) as mine:
            assert os.path.isfile(f"{held}/copy.bin"), "a live process's folder was removed"
            assert lines == []
            assert mine.parent == tmp_path and mine.name.startswith(f"{scratch.PREFIX}mine-")
        assert not mine.exists()

        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        assert os.path.isfile(f"{held}/copy.bin"), "a killed process runs no cleanup"
        with scratch.ScratchFolder("next", log=lines.append) as next_one:
            assert not os.path.exists(held)
            assert ours(tmp_path) == [next_one.name]
        assert lines == [
            f"removed the scratch folder {held} (0.00 GB): its process ended without removing it"
        ]
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_scratch_folder_closed_normally_and_held_one_survive_a_sweep(tmp_path):
    holder, held = start_holder(tmp_path)
    try:
        assert scratch.remove_abandoned(tmp_path) == 0
        assert os.path.isdir(held)
    finally:
        holder.stdin.close()  # the holder closes its folder itself
        assert holder.wait(timeout=30) == 0
    assert ours(tmp_path) == []


def test_scratch_sweep_removes_only_old_ownerless_folders_of_its_own_name(tmp_path):
    """A folder of ours without an owner line is being made (or its maker died in that
    instant): kept while young, removed once old. Nothing else in the work folder is ours."""
    young = tmp_path / f"{scratch.PREFIX}young-1"
    old = tmp_path / f"{scratch.PREFIX}old-1"
    for folder in (young, old):
        folder.mkdir()
        (folder / "part").write_bytes(b"y" * 1000)
    (old / scratch.OWNER_FILE).touch()  # created, never locked nor written
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    others = tmp_path / "someone-elses"
    others.mkdir()
    os.utime(others, (hour_ago, hour_ago))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    (tmp_path / f"{scratch.PREFIX}link-1").symlink_to(outside)

    lines: list[str] = []
    assert scratch.remove_abandoned(tmp_path, lines.append) == 1000
    assert lines == [f"removed the scratch folder {old} (0.00 GB): it has no owner"]
    assert young.is_dir() and others.is_dir() and (outside / "keep").read_text() == "keep"


def test_scratch_folder_in_a_missing_work_dir_is_refused_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKUP_WORK_DIR", str(tmp_path / "not-there"))
    with pytest.raises(BackupError, match=r"the work folder .*not-there does not exist"):
        scratch.ScratchFolder("full-restore")


def test_scratch_free_space_check_names_the_folder_and_the_way_out(tmp_path):
    scratch.require_free_space(tmp_path, 1, "a copy", "do something else")
    with pytest.raises(BackupError) as refused:
        scratch.require_free_space(tmp_path, 10**18, "a copy", "do something else")
    message = str(refused.value)
    assert f"a copy needs 1000000000.00 GB in {tmp_path}" in message
    assert "set BACKUP_WORK_DIR" in message and "do something else" in message


def running_in(pid: int) -> str:
    """The working directory of `pid` (" (deleted)" appended once it is removed)."""
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


@pytest.fixture
def enterable_work_dir():
    """A work folder the PostgreSQL server's OS user can enter (pytest's tmp_path is a 0700
    folder of root's)."""
    work = Path(tempfile.mkdtemp(prefix="scratch-test-"))
    work.chmod(0o711)
    yield work
    shutil.rmtree(work, ignore_errors=True)


def test_scratch_sweep_stops_the_postgres_server_a_killed_run_left_running(enterable_work_dir):
    """A run killed while its scratch cluster runs leaves the server up (a daemon) on a copy
    of the database: the next scratch folder stops that server, then removes its files."""
    holder, line = start_holder(enterable_work_dir, CLUSTER_HOLDER)
    held, data_dir, port = line.split() if line else ("", "", "")
    pid = None
    try:
        assert line, "the holder did not start its cluster"
        pid = int(Path(data_dir, "postmaster.pid").read_text().split()[0])
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres") as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        assert scratch._alive(pid), "the server died with the run: nothing left to test"

        lines: list[str] = []
        assert scratch.remove_abandoned(enterable_work_dir, lines.append) > 0
        assert not scratch._alive(pid)
        assert not os.path.exists(held)
        assert lines[0] == f"stopped the PostgreSQL server (pid {pid}) left running in {data_dir}"
        assert lines[1].startswith(f"removed the scratch folder {held} (")
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", connect_timeout=5)
    finally:
        holder.kill()
        holder.wait(timeout=30)
        if pid is not None and scratch._alive(pid) and running_in(pid).startswith(data_dir):
            scratch._signal_and_wait(pid, signal.SIGKILL)  # the sweep failed: stop it here


def test_scratch_sweep_never_signals_a_process_not_running_in_the_data_dir(tmp_path):
    """A stale postmaster.pid naming a live process of someone else (pids are reused): the
    process is left alone, only the files go."""
    bystander = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                 stdin=subprocess.PIPE)  # fmt: skip
    try:
        folder = tmp_path / f"{scratch.PREFIX}instant-cluster-1"
        (folder / "data").mkdir(parents=True)
        (folder / "data" / "postmaster.pid").write_text(f"{bystander.pid}\n{folder}/data\n")
        hour_ago = time.time() - 3600
        os.utime(folder, (hour_ago, hour_ago))
        lines: list[str] = []
        scratch.remove_abandoned(tmp_path, lines.append)
        assert not folder.exists() and bystander.poll() is None
        assert lines == [f"removed the scratch folder {folder} (0.00 GB): it has no owner"]
    finally:
        bystander.kill()
        bystander.wait(timeout=30)


def test_scratch_folder_on_a_file_system_without_locks_is_made_and_never_swept(
    tmp_path, monkeypatch
):
    """Where flock is refused (some network or FUSE file systems) a scratch folder is still
    made; with no lock to tell a live owner from a dead one, no sweep removes it."""

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    with monkeypatch.context() as patched:
        patched.setattr(scratch.fcntl, "flock", no_locks)
        folder = scratch.ScratchFolder("nolocks", parent=tmp_path)
    hour_ago = time.time() - 3600
    os.utime(folder.path, (hour_ago, hour_ago))
    assert scratch.remove_abandoned(tmp_path) == 0 and folder.path.is_dir()
    folder.close()
    assert not folder.path.exists()


def test_scratch_sweep_follows_no_link_to_a_running_server_and_skips_other_users_folders(
    tmp_path,
):
    """An abandoned folder of ours holding a symbolic link to a running cluster's data
    directory (the live one, say): the link goes, the server runs on, its files stay. A
    folder of our name made by another OS user is not ours to judge."""
    with PostgresCluster() as live:
        abandoned = tmp_path / f"{scratch.PREFIX}instant-cluster-linked"
        abandoned.mkdir()
        (abandoned / scratch.OWNER_FILE).write_text("pid 1\n")  # no lock held: owner gone
        (abandoned / "data").symlink_to(live.data_dir)
        (abandoned / "deeper").mkdir()
        (abandoned / "deeper" / "data").symlink_to(live.data_dir)
        foreign = tmp_path / f"{scratch.PREFIX}someone-else"
        foreign.mkdir()
        (foreign / scratch.OWNER_FILE).write_text("pid 1\n")
        if os.geteuid() == 0:
            os.chown(foreign, 65534, 65534)  # nobody's
        else:  # a folder another user made, as far as this user can tell
            foreign.chmod(0o000)

        lines: list[str] = []
        scratch.remove_abandoned(tmp_path, lines.append)
        assert not abandoned.exists() and foreign.is_dir()
        assert lines == [
            f"removed the scratch folder {abandoned} (0.00 GB): "
            "its process ended without removing it"
        ]
        assert (live.data_dir / "postmaster.pid").is_file()
        with psycopg.connect(live.url(), connect_timeout=10) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_scratch_unfinished_claim_never_follows_a_link_or_another_users_claim(tmp_path):
    """Dead claims (no process holds their lock) are cleared only for this user's claims and
    never through a symbolic link; a claim with no line (its run died before writing anything)
    is dropped and its directory, the operator's, left as it is."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("an operator's file")
    parent = tmp_path / "parent"
    parent.mkdir()
    (parent / "linked").symlink_to(elsewhere)
    (parent / f"linked{scratch.CLAIM_SUFFIX}").write_text("pid 1 given\n")
    theirs = parent / "theirs"
    theirs.mkdir()
    (theirs / "PG_VERSION").write_text("15\n")
    (parent / f"theirs{scratch.CLAIM_SUFFIX}").write_text("pid 1 made\n")
    os.chown(parent / f"theirs{scratch.CLAIM_SUFFIX}", 65534, 65534)
    silent = parent / "silent"
    silent.mkdir()
    (silent / "data").write_text("untouched")
    (parent / f"silent{scratch.CLAIM_SUFFIX}").write_text("")
    dead = parent / "dead"
    (dead / "base").mkdir(parents=True)
    (dead / "base" / "1").write_bytes(b"x" * 1000)
    (parent / f"dead{scratch.CLAIM_SUFFIX}").write_text("pid 1 made\n")

    lines: list[str] = []
    scratch.remove_unfinished(parent, lines.append)
    assert (elsewhere / "keep").read_text() == "an operator's file"
    assert (theirs / "PG_VERSION").exists()
    assert (silent / "data").read_text() == "untouched"
    assert not (parent / f"silent{scratch.CLAIM_SUFFIX}").exists()
    assert not dead.exists() and not (parent / f"dead{scratch.CLAIM_SUFFIX}").exists()
    assert lines == [
        f"removed the unfinished copy in {dead} (0.00 GB) that a run (pid 1) left when it ended "
        "before verifying it"
    ]

    lines.clear()
    # Restoring into `theirs`: its claim is another user's, so it clears nothing there.
    claim = scratch.DirectoryClaim(theirs, lines.append)
    claim.acquire()
    assert (theirs / "PG_VERSION").exists()
    assert lines.pop() == (
        f"{parent / 'theirs'}{scratch.CLAIM_SUFFIX} belongs to another user: left alone, "
        "and no claim taken"
    )
    claim.release()
    assert (parent / f"theirs{scratch.CLAIM_SUFFIX}").exists()


def leftovers_of_killed_runs(tmp_path, monkeypatch) -> tuple[Path, str, Path]:
    """A work folder holding a SIGKILLed run's scratch folder (1 MB) and a killed PITR
    restore's unfinished copy (0.5 MB, its claim file beside it), and a retention policy."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("BACKUP_WORK_DIR", str(work))
    holder, held = start_holder(work)
    holder.kill()
    holder.wait(timeout=30)
    copy = work / "pitr_20261201T000000"
    (copy / "base").mkdir(parents=True)
    (copy / "base" / "1").write_bytes(b"x" * 500_000)
    (work / f"pitr_20261201T000000{scratch.CLAIM_SUFFIX}").write_text("pid 1 made\n")
    (tmp_path / "policy.yaml").write_text("keep_daily_days: 2\n")
    return work, held, copy


def test_scratch_daily_retention_run_sweeps_what_killed_runs_left(tmp_path, monkeypatch):
    """The work folder of a machine that never makes another scratch folder: the daily
    retention run removes a killed run's scratch folder and unfinished copy (not a dry run)."""
    import dagster as dg

    from backup_pipelines.defs import lifecycle
    from backup_pipelines.defs.resources import BackupStoreResource, PolicyResource

    work, held, copy = leftovers_of_killed_runs(tmp_path, monkeypatch)
    resources = {
        "backup_store": BackupStoreResource(url=f"file://{tmp_path / 'store'}"),
        "policy": PolicyResource(policy_file=str(tmp_path / "policy.yaml")),
    }

    def run(tags):
        result = lifecycle.retention_job.execute_in_process(
            resources=resources, instance=dg.DagsterInstance.ephemeral(), tags=tags
        )
        assert result.success
        (output,) = [e for e in result.all_node_events if e.is_successful_output]
        return output.event_specific_data.metadata

    dry = run({lifecycle.DRY_RUN_TAG: "true"})
    assert "work_dir_freed_bytes" not in dry
    assert os.path.isfile(f"{held}/copy.bin") and copy.exists()  # a dry run removes nothing
    applied = run({})
    assert not os.path.exists(held) and not copy.exists()
    assert list(work.iterdir()) == []
    assert applied["work_dir_freed_bytes"].value >= 1_500_000


def test_scratch_retention_command_sweeps_what_killed_runs_left(tmp_path, monkeypatch, capsys):
    """`backup-pipelines retention` sweeps the work folder as the daily run does, and names
    what it freed; `--dry-run` removes nothing."""
    from backup_pipelines import cli

    work, held, copy = leftovers_of_killed_runs(tmp_path, monkeypatch)
    monkeypatch.setenv("BACKUP_STORE_URL", f"file://{tmp_path / 'store'}")
    monkeypatch.setenv("BACKUP_POLICY_FILE", str(tmp_path / "policy.yaml"))
    monkeypatch.delenv("BACKUP_COPY_STORE_URL", raising=False)

    assert cli.main(["retention", "--dry-run"]) == 0
    assert "work folder" not in capsys.readouterr().out
    assert os.path.isfile(f"{held}/copy.bin") and copy.exists()  # a dry run removes nothing
    assert cli.main(["retention"]) == 0
    out = capsys.readouterr().out
    assert not os.path.exists(held) and not copy.exists()
    assert list(work.iterdir()) == []
    (line,) = [x for x in out.splitlines() if x.startswith("work folder ")]
    freed = int(line.split(": ", 1)[1].split(" bytes freed", 1)[0].replace(",", ""))
    assert line.startswith(f"work folder {work}: ") and freed >= 1_500_000, line
