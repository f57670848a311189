"""The store named by BACKUP_STORE_URL."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from backup_pipelines.lib.errors import ConfigError
from backup_pipelines.lib.store.base import BackupStore
from backup_pipelines.lib.store.local import LocalStore
from backup_pipelines.lib.store.s3 import S3Store, object_lock_from_env

DEFAULT_LOCAL_STORE = Path.home() / ".local/share/backup_pipelines/store"


def store_from_url(url: str | None, variable: str = "BACKUP_STORE_URL") -> BackupStore:
    """`file:///abs/dir` or `s3://bucket/prefix`; empty means the default local folder.
    S3 stores lock new artifact objects when BACKUP_OBJECT_LOCK_MODE says so."""
    if not url:
        return LocalStore(DEFAULT_LOCAL_STORE)
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(f"{variable}: file URL must be file:///absolute/path, got {url!r}")
        return LocalStore(parsed.path)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigError(
                f"{variable}: s3:// URL needs a bucket, e.g. s3://backups/agent-memory"
            )
        return S3Store(parsed.netloc, parsed.path, object_lock=object_lock_from_env())
    raise ConfigError(
        f"{variable}: unsupported scheme {parsed.scheme!r}; use file:///absolute/dir or s3://bucket/prefix"
    )
