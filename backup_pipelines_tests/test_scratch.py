"""Scratch folders: a process killed without cleanup leaves its folder, the next scratch folder
made in the same work folder removes it, and a live process's folder is never touched.

The owners are real processes holding real locks; the kill is a real SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

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


def start_holder(work) -> tuple[subprocess.Popen, str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER],
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
