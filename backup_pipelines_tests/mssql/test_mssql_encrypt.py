"""SQL Server backup files encrypted in the store: SQL Server reads a file path, so the restore
decrypts while it streams each file into the shared folder it already copies to (no extra
copy); the bucket holds only ciphertext, and a missing key is named before anything is
restored."""

from __future__ import annotations

import pytest

from backup_pipelines.lib.mssql import backup, restore
from backup_pipelines.lib.mssql.backupset import Kind
from backup_pipelines.lib.mssql.connection import connected, query
from backup_pipelines.lib.store import cipher
from backup_pipelines.lib.store.cipher import KeyMissing
from backup_pipelines_tests.mssql.platform import add_episodes, rows
from backup_pipelines_tests.mssql.test_mssql_restore import platform, take  # noqa: F401

KEY = cipher.new_key()


def test_mssql_encrypt_backups_are_ciphertext_and_restore_with_the_key(platform, monkeypatch):  # noqa: F811
    monkeypatch.setenv("BACKUP_ENCRYPTION_KEYS", f"mssql-k1:{KEY}")
    monkeypatch.setenv("BACKUP_ENCRYPTION_KEY_ID", "mssql-k1")
    cs, db, store = platform["cs"], platform["db"], platform["store"]
    add_episodes(cs, db, "a1", 3)
    take(platform, Kind.FULL)
    add_episodes(cs, db, "a2", 2)
    take(platform, Kind.LOG)
    expected = rows(cs, db)

    for asset in ("mssql/full_backup", "mssql/log_backup"):
        ref = next(iter(store.list_artifacts(asset)))
        manifest = store.require_manifest(ref)
        entry = store.file_entry(ref, manifest, backup.BACKUP_FILE)
        assert entry["encryption"]["key_id"] == "mssql-k1"
        with store._open_read(store.file_key(ref, manifest, backup.BACKUP_FILE)) as raw:
            assert raw.read(len(cipher.MAGIC)) == cipher.MAGIC
        assert store.verify(ref).ok

    monkeypatch.delenv("BACKUP_ENCRYPTION_KEYS")
    monkeypatch.delenv("BACKUP_ENCRYPTION_KEY_ID")
    missing = platform["names"].name("nokey")
    with pytest.raises(KeyMissing, match="mssql-k1"):
        restore.restore_database(cs, store, db, None, platform["folders"], target_database=missing)
    with connected(cs, "master") as conn:
        assert not query(conn, "SELECT name FROM sys.databases WHERE name = ?", missing)
    assert not list(platform["folders"].local.glob("restore_*.bak"))

    monkeypatch.setenv("BACKUP_ENCRYPTION_KEYS", f"mssql-k1:{KEY}")
    name = platform["names"].name("restored")
    restore.restore_database(cs, store, db, None, platform["folders"], target_database=name)
    assert rows(cs, name) == expected
    assert not list(platform["folders"].local.glob("restore_*.bak"))  # nothing left behind
