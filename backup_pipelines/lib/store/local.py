"""A local folder as the backup store: fsync + atomic rename for the manifest.

Confinement: every key is resolved under the root (`Path.resolve()` + `is_relative_to`) and
refused when it has an empty, `.` or `..` component, is absolute or holds NUL, or resolves
outside the root (a symlink pointing out). Reads open only regular files, with O_NOFOLLOW
(the last component is never a symlink) and O_NONBLOCK (opening a FIFO does not wait for a
writer); a device, FIFO, socket or folder is refused. A symlink swapped into the store
between the resolve check and the open of an intermediate folder is the remaining window;
whoever can do that can also write the store's files.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from backup_pipelines.lib.errors import ArtifactNotFound, ConfigError, StoreError
from backup_pipelines.lib.store.base import SMALL_OBJECT_BYTES, BackupStore
from backup_pipelines.lib.store.manifest import UnsafeObject
from backup_pipelines.lib.store.writer import Sink

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | _NOFOLLOW
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | _NOFOLLOW

# What an operator can do about the usual refusals; the message names store and key already.
_HINTS = {
    errno.ENOSPC: "the store's file system is full: free space there (e.g. backup-pipelines "
    "retention) or point BACKUP_STORE_URL at a larger store, then re-run",
    errno.EDQUOT: "the store's disk quota is exhausted: raise it or free space, then re-run",
    errno.EFBIG: "the file is larger than the store's file system or limits allow",
    errno.EACCES: "the user running this (uid {uid}) may not write or read there: fix the "
    "folder's owner or permissions, or run as the store's owner",
    errno.EPERM: "the user running this (uid {uid}) is not permitted to do that there: fix the "
    "folder's owner or permissions",
    errno.EROFS: "the store's file system is mounted read-only: remount it read-write or point "
    "BACKUP_STORE_URL at a writable store",
    errno.EIO: "the disk reported an I/O error: check the device",
}


class _LocalSink(Sink):
    def __init__(self, store: LocalStore, key: str) -> None:
        self._store = store
        self._key = key
        self._path = store._path(key)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path, _WRITE_FLAGS, 0o644)
        self._handle = os.fdopen(fd, "wb")  # closed in close()/abort()

    def write(self, chunk: bytes) -> None:
        try:
            self._handle.write(chunk)
        except OSError as exc:
            raise self._store._wrap("write", self._key, exc, staged=True) from exc

    def close(self) -> None:
        try:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
        except OSError as exc:
            raise self._store._wrap("write", self._key, exc, staged=True) from exc

    def abort(self) -> None:
        with contextlib.suppress(OSError):  # a full disk may refuse the final flush too
            self._handle.close()
        self._path.unlink(missing_ok=True)


class LocalStore(BackupStore):
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_absolute():
            raise ConfigError(
                f"BACKUP_STORE_URL: a file:// store needs an absolute path, got {root!r}"
            )

    def describe(self) -> str:
        return f"file://{self.root}"

    # -- confinement -----------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        """The path of `key`, refused unless it names something inside the root."""
        parts = key.rstrip("/").split("/")
        if "\x00" in key or key.startswith("/") or any(p in {"", ".", ".."} for p in parts):
            raise UnsafeObject(
                f"backup store {self.describe()}: key {key[:200]!r} is not a plain relative "
                "key; refused (nothing outside the store's folder is ever read or written)"
            )
        path = self.root / key
        root = self.root.resolve()
        if not path.resolve().is_relative_to(root):
            raise UnsafeObject(
                f"backup store {self.describe()}: {key[:200]!r} leads outside the store "
                "(a symbolic link?); refused"
            )
        return path

    def _wrap(self, action: str, key: str, exc: OSError, staged: bool = False) -> StoreError:
        message = (
            f"backup store {self.describe()} refused to {action} {key!r}: {exc.strerror or exc}"
        )
        hint = _HINTS.get(exc.errno or 0)
        if hint:
            message += f" — {hint.format(uid=os.getuid())}"
        if staged:
            message += (
                "; nothing of this artifact was committed (the staged file is removed) and the "
                "previous artifact of this partition, if any, is intact"
            )
        return StoreError(message)

    def _open_regular(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            fd = os.open(path, _READ_FLAGS)
        except FileNotFoundError as exc:
            raise ArtifactNotFound(
                f"backup store {self.describe()}: {key!r} does not exist (missing file)"
            ) from exc
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafeObject(
                    f"backup store {self.describe()}: {key!r} is a symbolic link; the store "
                    "reads only regular files inside its folder"
                ) from exc
            raise self._wrap("read", key, exc) from exc
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise UnsafeObject(
                f"backup store {self.describe()}: {key!r} is not a regular file (a "
                f"{_kind(mode)}); the store reads only regular files — refused"
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")

    # -- backend primitives ----------------------------------------------------------------
    def _open_sink(self, key: str) -> Sink:
        try:
            return _LocalSink(self, key)
        except OSError as exc:
            raise self._wrap("write", key, exc) from exc

    def _write_temp(self, final: Path, data: bytes) -> Path:
        temp = final.with_name(f".{final.name}.{secrets.token_hex(4)}.tmp")
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(temp, "xb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return temp

    def _sync_folder(self, folder: Path) -> None:
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _put_atomic(self, key: str, data: bytes) -> None:
        final = self._path(key)
        temp = None
        try:
            temp = self._write_temp(final, data)
            os.replace(temp, final)
            self._sync_folder(final.parent)
        except OSError as exc:
            if temp is not None:
                temp.unlink(missing_ok=True)
            raise self._wrap("write", key, exc) from exc

    def _get(self, key: str, max_bytes: int = SMALL_OBJECT_BYTES) -> bytes | None:
        try:
            handle = self._open_regular(key)
        except ArtifactNotFound:
            return None
        except StoreError as exc:
            if isinstance(exc.__cause__, NotADirectoryError):
                return None
            raise
        try:
            with handle:
                return handle.read(max_bytes + 1)
        except OSError as exc:
            raise self._wrap("read", key, exc) from exc

    def _open_read(self, key: str) -> BinaryIO:
        return self._open_regular(key)

    def _list(self, prefix: str) -> Iterator[tuple[str, int, float]]:
        base = self._path(prefix) if prefix else self.root
        try:
            if not base.is_dir():
                return
        except OSError as exc:
            raise self._wrap("list", prefix or "/", exc) from exc

        def refuse(exc: OSError) -> None:
            if isinstance(exc, FileNotFoundError):
                return  # removed while listing (a clean-up, an aborted write): nothing to list
            raise self._wrap("list", Path(exc.filename or base).as_posix(), exc) from exc

        for dirpath, _dirs, names in os.walk(base, onerror=refuse):  # never follows symlinks
            for name in names:
                path = Path(dirpath) / name
                with contextlib.suppress(FileNotFoundError):
                    # lstat: a symlink or special file is listed as itself (and refused when
                    # read), so a damaged artifact shows up instead of vanishing from view.
                    info = path.lstat()
                    yield path.relative_to(self.root).as_posix(), info.st_size, info.st_mtime

    def _delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix.rstrip("/"))
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        except OSError as exc:
            raise self._wrap("delete", prefix, exc) from exc

    def _remove_empty_folders(self, prefix: str) -> None:
        path = self._path(prefix.rstrip("/"))
        while path != self.root and self.root in path.parents:
            try:
                path.rmdir()
            except FileNotFoundError:
                pass  # already gone: its parent may still be empty
            except OSError:
                return  # not empty: neither are its parents
            path = path.parent

    # -- conditional writes (leases) -------------------------------------------------------
    # Creation is exclusive by a hard link of a fully written temp file: like O_CREAT|O_EXCL
    # (exactly one of several racing creators succeeds, on local file systems and NFS) and the
    # object is never seen half-written. Changes to an existing object are compare-and-swap:
    # under an flock of a per-key lock file, re-read, compare its version (sha256 of the
    # bytes, the local ETag) and os.replace; a crashed process's flock is released by the kernel.
    def _create_exclusive(self, key: str, data: bytes) -> str | None:
        final = self._path(key)
        try:
            temp = self._write_temp(final, data)
            try:
                os.link(temp, final)
            except FileExistsError:
                return None
            finally:
                temp.unlink(missing_ok=True)
            self._sync_folder(final.parent)
        except OSError as exc:
            raise self._wrap("create", key, exc) from exc
        return _version(data)

    def _read_versioned(self, key: str, max_bytes: int) -> tuple[bytes, str] | None:
        body = self._get(key, max_bytes)
        return None if body is None else (body, _version(body))

    @contextlib.contextmanager
    def _key_lock(self, key: str):
        path = self._path(key)
        lock_path = path.with_name(f".{path.name}.lock")  # never deleted: others may hold it
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise self._wrap("lock", key, exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def _replace_if(self, key: str, data: bytes, version: str) -> str | None:
        with self._key_lock(key):
            current = self._read_versioned(key, len(data) + SMALL_OBJECT_BYTES)
            if current is None or current[1] != version:
                return None
            self._put_atomic(key, data)
        return _version(data)

    def _delete_if(self, key: str, version: str) -> bool:
        with self._key_lock(key):
            current = self._read_versioned(key, SMALL_OBJECT_BYTES)
            if current is None or current[1] != version:
                return False
            try:
                self._path(key).unlink()
            except FileNotFoundError:
                return False
            except OSError as exc:
                raise self._wrap("delete", key, exc) from exc
        return True


def _version(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "folder"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISLNK, "symbolic link"),
    ):
        if test(mode):
            return name
    return "special file"
