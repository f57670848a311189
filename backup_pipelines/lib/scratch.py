"""Scratch folders on local disk, under BACKUP_WORK_DIR (default: the system temp dir).

A scratch folder can hold as much as a database: the decompressed dump pg_restore -j reads, a
Qdrant snapshot, WAL for a point in time. A process killed by SIGKILL or the OOM killer runs no
cleanup, and the rerun an operator starts next made a new folder beside the old one, so each
kill left a database-sized copy behind until the disk was full.

So every scratch folder is held by its process: an flock on a file inside it, which the kernel
releases when the process dies however it dies. Making a scratch folder first removes every
folder of ours whose lock is free: its owner is gone. A live folder is never touched, whoever
owns it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from backup_pipelines.lib.errors import BackupError

Log = Callable[[str], None]

PREFIX = "backup-pipelines-scratch-"
OWNER_FILE = ".owner"
UNLOCKED = "unlocked"  # written by an owner whose file system refused the lock
# A folder with no owner line yet is being made (microseconds between mkdtemp and the lock);
# only one this old is taken for the debris of a process killed in that instant.
UNOWNED_GRACE_SECONDS = 600.0

_logger = logging.getLogger(__name__)


def work_dir() -> Path:
    return Path(os.environ.get("BACKUP_WORK_DIR") or tempfile.gettempdir())


class ScratchFolder:
    """A new folder under `parent` (default: work_dir()), removed by close() or at the end of
    a with block, and by the next ScratchFolder anyone makes there if this process dies first."""

    def __init__(self, kind: str, parent: str | os.PathLike | None = None, log: Log | None = None):
        root = Path(parent) if parent is not None else work_dir()
        if not root.is_dir():
            raise BackupError(
                f"the work folder {root} does not exist: create it or set BACKUP_WORK_DIR "
                "to a folder on a disk with room for this run's scratch copy"
            )
        remove_abandoned(root, log)
        self.path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{kind}-", dir=root))
        self._owner = os.open(self.path / OWNER_FILE, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._owner, fcntl.LOCK_EX)
            held = ""
        except OSError:  # a file system without locks: never swept, as before this module
            held = f" {UNLOCKED}"
        # Written under the lock: a sweeper that gets the lock and reads this line knows the
        # owner held it once and has let go.
        os.write(self._owner, f"pid {os.getpid()}{held}\n".encode())

    def close(self) -> None:
        if self._owner < 0:
            return
        try:
            shutil.rmtree(self.path, ignore_errors=True)  # still locked: nobody else removes it
        finally:
            os.close(self._owner)
            self._owner = -1

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc_info) -> None:
        self.close()


def remove_abandoned(root: Path, log: Log | None = None) -> int:
    """Remove every scratch folder under `root` whose owner is gone; returns the bytes freed.
    Only folders of this OS user are looked at: in a shared temp dir anyone can make a folder
    with this name, and what is in it must not steer what this user deletes or stops."""
    folders = _own_entries(root, lambda name: name.startswith(PREFIX), folders=True)
    return sum(_remove_if_abandoned(folder, log) for folder in folders)


def _own_entries(root: Path, named: Callable[[str], bool], folders: bool) -> list[Path]:
    """The folders (or regular files) directly under `root` whose name `named` accepts and
    that belong to this OS user, never through a symbolic link."""
    try:
        entries = [e for e in os.scandir(root) if named(e.name)]
    except OSError:
        return []
    found = []
    for entry in entries:
        try:
            kind = entry.is_dir if folders else entry.is_file
            if kind(follow_symlinks=False) and (
                entry.stat(follow_symlinks=False).st_uid == os.geteuid()
            ):
                found.append(Path(entry.path))
        except OSError:
            continue
    return found


def _remove_if_abandoned(folder: Path, log: Log | None) -> int:
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK  # never a FIFO's wait
    try:
        owner = os.open(folder / OWNER_FILE, flags)
    except FileNotFoundError:
        return _remove_if_old(folder, log)
    except OSError:
        return 0
    try:
        if not stat.S_ISREG(os.fstat(owner).st_mode):
            return 0
        try:
            fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return 0  # its process is alive (or locks do not work here: nothing is known)
        line = os.read(owner, 64)
        if not line:
            return _remove_if_old(folder, log)
        if UNLOCKED.encode() in line:
            return 0
        return _remove(folder, "its process ended without removing it", log)
    finally:
        os.close(owner)


def _remove_if_old(folder: Path, log: Log | None) -> int:
    try:
        age = time.time() - folder.stat().st_mtime
    except OSError:
        return 0
    if age < UNOWNED_GRACE_SECONDS:
        return 0
    return _remove(folder, "it has no owner", log)


def _remove(folder: Path, why: str, log: Log | None) -> int:
    _stop_postgres_servers(folder, log or _logger.warning)
    size = _size_of(folder)
    shutil.rmtree(folder, ignore_errors=True)
    if folder.exists():
        return 0
    message = f"removed the scratch folder {folder} ({size / 1e9:.2f} GB): {why}"
    (log or _logger.warning)(message)
    return size


def _size_of(folder: Path) -> int:
    total = 0
    for parent, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):  # removed meanwhile
                total += os.lstat(os.path.join(parent, name)).st_size
    return total


# --------------------------------------------------------------------------------------------
# A directory a run fills that is not scratch: the operator's result, once the run verifies it
# (a point-in-time copy of a cluster). Until then a killed run leaves a cluster-sized copy, and a
# server running on it, that nobody may take for a result; and two runs into one directory
# would write over each other.

CLAIM_SUFFIX = ".unfinished"


class DirectoryClaim:
    """`<target>.unfinished` beside `target`, locked by the run filling it and removed by
    release() once the result is verified (or the unfinished copy removed). A later run that
    finds such a file with its lock free knows the run died first: the copy is no result. It
    stops a PostgreSQL server left running there and removes the copy (or empties it, if the
    directory was the operator's own, empty one), and does the same for every such claim
    beside it. A claim whose lock is held is a live run: refused, naming its pid."""

    def __init__(self, target: Path, log: Log):
        self.target = target
        self.path = target.parent / f"{target.name}{CLAIM_SUFFIX}"
        self._log = log
        self._fd = -1

    def acquire(self) -> None:
        remove_unfinished(self.target.parent, self._log, keep=self.path)
        try:
            fd = _lock_claim(self.path)
        except OSError as exc:  # no locks on this file system, or no write access beside
            self._log(f"{self.target}: no claim beside it ({exc}); a killed run is not cleaned")
            return
        if fd is None:
            raise BackupError(
                f"another run ({_claim_line(self.path) or 'pid unknown'}) is writing to "
                f"{self.target}: wait for it to finish, or choose another target directory"
            )
        if os.fstat(fd).st_uid != os.geteuid():  # made by someone else: says nothing to us
            os.close(fd)
            self._log(f"{self.path} belongs to another user: left alone, and no claim taken")
            return
        self._fd = fd
        _clear_unfinished(self.target, os.read(fd, 128).decode(errors="replace"), self._log)

    def record(self, made: bool) -> None:
        """Written before the run writes into target: how a later run clears it (a new
        directory is removed, the operator's own is emptied)."""
        if self._fd < 0:
            return
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"pid {os.getpid()} {'made' if made else 'given'}\n".encode(), 0)

    def release(self) -> None:
        if self._fd < 0:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # while still locked: no one else can have taken it
        self.abandon()

    def abandon(self) -> None:
        """Let go without removing the claim: the next run clears what this one could not."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _lock_claim(path: Path) -> int | None:
    """The claim file, locked by this process, or None when a live run holds it."""
    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError:
            os.close(fd)
            raise
        # Its last holder may have unlinked it between our open and our lock: then the lock is
        # on a file nobody else sees, and the path is taken again.
        try:
            current = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            current = None
        if current is not None and current.st_ino == os.fstat(fd).st_ino:
            return fd
        os.close(fd)


def _claim_line(path: Path) -> str:
    with contextlib.suppress(OSError), open(path, opener=_regular_file_opener) as claim:
        return _holder(claim.readline(128))
    return ""


def _holder(line: str) -> str:
    """ "pid N" of a claim's line "pid N made|given"."""
    return line.strip().rsplit(" ", 1)[0]


def _clear_unfinished(target: Path, line: str, log: Log) -> int:
    """What a dead run left in `target`, per its claim's line ("pid N made|given"); a claim
    with no line died before it wrote anything into target."""
    if not line.strip() or not target.is_dir() or target.is_symlink():
        return 0
    _stop_postgres_servers(target, log, depth=0)
    size = _size_of(target)
    remove_or_empty(target, made=line.split()[-1] == "made")
    log(
        f"removed the unfinished copy in {target} ({size / 1e9:.2f} GB) that a run "
        f"({_holder(line)}) left when it ended before verifying it"
    )
    return size


def remove_or_empty(target: Path, made: bool) -> None:
    """A directory a run made goes; the operator's own (given empty) is emptied again."""
    if made:
        shutil.rmtree(target, ignore_errors=True)
        return
    for entry in list(target.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def remove_unfinished(parent: Path, log: Log, keep: Path | None = None) -> int:
    """Clear every directory under `parent` whose run died before verifying it (its claim's
    lock free), except `keep`'s; returns the bytes freed. Only this OS user's claims are
    looked at."""
    freed = 0
    for path in _own_entries(parent, lambda name: name.endswith(CLAIM_SUFFIX), folders=False):
        if path == keep:
            continue
        try:
            fd = _lock_claim(path)
        except OSError:
            continue
        if fd is None:
            continue  # a live run
        try:
            target = parent / path.name[: -len(CLAIM_SUFFIX)]
            line = os.read(fd, 128).decode(errors="replace")
            freed += _clear_unfinished(target, line, log)
            if not line.strip() or not target.exists() or not any(target.iterdir()):
                path.unlink(missing_ok=True)  # else kept: the next run tries again
        except OSError as exc:
            log(f"the unfinished copy of {path} could not be cleared: {exc}")
        finally:
            os.close(fd)
    return freed


def sweep_work_dir(log: Log) -> int:
    """What killed runs left in the work folder (scratch folders, unfinished point-in-time
    copies), removed now rather than by the next run that happens to make a scratch folder
    there, which on a machine that restores rarely may be never; returns the bytes freed."""
    root = work_dir()
    if not root.is_dir():
        return 0
    return remove_abandoned(root, log) + remove_unfinished(root, log)


def require_free_space(root: Path, needed: int, what: str, instead: str) -> None:
    """Refuse before writing `needed` bytes under `root` when its disk has less free: the
    operator hears it now, not after an hour of writing. `instead` says what else to do."""
    free = shutil.disk_usage(root).free
    if needed > free:
        raise BackupError(
            f"{what} needs {needed / 1e9:.2f} GB in {root}, whose disk has {free / 1e9:.2f} GB "
            f"free: set BACKUP_WORK_DIR to a folder on a larger disk, or {instead}"
        )


# A scratch PostgreSQL cluster (the copy at T a point-in-time workspace restore reads) outlives
# the run that started it: its server is a daemon, not a child. It is stopped before its files
# are removed, and only when the process named in its postmaster.pid is running in that very
# data directory (PostgreSQL's postmaster makes its data directory its working directory), so
# a reused pid is never signalled.
SERVER_STOP_SECONDS = 30.0


def _stop_postgres_servers(folder: Path, log: Log, depth: int = 2) -> None:
    for data_dir in _folders_within(folder, depth=depth):
        pid = _postmaster_running_in(data_dir)
        if pid is None:
            continue
        stopped = _signal_and_wait(pid, signal.SIGQUIT) or _signal_and_wait(pid, signal.SIGKILL)
        outcome = "stopped" if stopped else "could not stop"
        log(f"{outcome} the PostgreSQL server (pid {pid}) left running in {data_dir}")


def _folders_within(folder: Path, depth: int) -> list[Path]:
    """`folder` and its sub-folders `depth` levels down, never through a symbolic link (one
    could lead to a live cluster's data directory)."""
    found, level = [folder], [folder]
    for _ in range(depth):
        below = []
        for parent in level:
            with contextlib.suppress(OSError), os.scandir(parent) as entries:
                below += [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)]
        found += below
        level = below
    return found


def _postmaster_running_in(data_dir: Path) -> int | None:
    try:
        with open(data_dir / "postmaster.pid", opener=_regular_file_opener) as pid_file:
            pid = int(pid_file.readline())
        running_in = os.readlink(f"/proc/{pid}/cwd")
    except (OSError, ValueError):
        return None
    return pid if pid > 1 and running_in == os.path.realpath(data_dir) and _alive(pid) else None


def _regular_file_opener(path: str, flags: int) -> int:
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path} is not a regular file")
    return fd


def _signal_and_wait(pid: int, signal_number: int) -> bool:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal_number)
    deadline = time.monotonic() + SERVER_STOP_SECONDS
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _alive(pid: int) -> bool:
    """Running, not a zombie: an orphaned server's parent is whatever reaps orphans here,
    which in a container may be slow to, or never, reap it."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")
