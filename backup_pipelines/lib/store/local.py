"""A local folder as the backup store: fsync + atomic rename for the manifest."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from backup_pipelines.lib.errors import ConfigError, StoreError
from backup_pipelines.lib.store.base import BackupStore
from backup_pipelines.lib.store.writer import Sink


class _LocalSink(Sink):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._handle = open(path, "wb")  # noqa: SIM115 - closed in close()/abort()

    def write(self, chunk: bytes) -> None:
        self._handle.write(chunk)

    def close(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()

    def abort(self) -> None:
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

    def _path(self, key: str) -> Path:
        return self.root / key

    def _wrap(self, action: str, key: str, exc: OSError) -> StoreError:
        return StoreError(
            f"backup store {self.describe()} refused to {action} {key!r}: {exc.strerror or exc}"
        )

    def _open_sink(self, key: str) -> Sink:
        try:
            return _LocalSink(self._path(key))
        except OSError as exc:
            raise self._wrap("write", key, exc) from exc

    def _put_atomic(self, key: str, data: bytes) -> None:
        final = self._path(key)
        temp = final.with_name(f".{final.name}.{secrets.token_hex(4)}.tmp")
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            with open(temp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, final)
            dir_fd = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise self._wrap("write", key, exc) from exc

    def _get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise self._wrap("read", key, exc) from exc

    def _open_read(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except OSError as exc:
            raise self._wrap("read", key, exc) from exc

    def _list(self, prefix: str) -> Iterator[tuple[str, int, float]]:
        base = self._path(prefix) if prefix else self.root
        if not base.exists():
            return
        for dirpath, _dirs, names in os.walk(base):
            for name in names:
                path = Path(dirpath) / name
                with contextlib.suppress(FileNotFoundError):
                    stat = path.stat()
                    yield path.relative_to(self.root).as_posix(), stat.st_size, stat.st_mtime

    def _delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix.rstrip("/"))
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

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
