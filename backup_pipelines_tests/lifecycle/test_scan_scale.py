"""Retention's scan of a local folder, listed a folder at a time (issue 16: 430,000 files for
10,000 workspaces), finds exactly what the one-key-at-a-time scan finds: artifacts,
uncommitted folders, generations, loose files; never the reserved prefixes or folders this
project did not write."""

from __future__ import annotations

import os

from backup_pipelines.lib.lifecycle.scan import scan_store
from backup_pipelines.lib.store import ArtifactRef, LocalStore

GEN = "g-20261122T011500-0000abcd"
ORPHAN = "g-20261121T011500-0000beef"


class KeyAtATime:
    """The same folder seen only through `_list` (the generic path of the listing)."""

    def __init__(self, store: LocalStore) -> None:
        self._list = store._list


def shape(folders) -> dict:
    return {
        ref: (
            f.has_manifest,
            f.bytes,
            {name: (g.bytes, g.newest_mtime) for name, g in f.generations.items()},
            sorted(f.loose),
            sorted((key, size) for key, size, _tag in f.objects),
        )
        for ref, f in folders.items()
    }


def test_scale_local_scan_by_folder_finds_what_the_scan_by_key_finds(tmp_path):
    store = LocalStore(tmp_path / "store")
    ref = ArtifactRef("postgres/workspace_dump", "2026-11-21", "ws_a")
    with store.begin(ref) as writer:
        writer.write_bytes("rows.copy.zst", b"data")
        writer.commit(captured_at="2026-11-21T00:30:00Z", counts={}, source={}, tool={}, tables=[])
    base = "postgres/workspace_dump/date=2026-11-21"
    extra = {
        f"{base}/workspace=ws_a/{ORPHAN}/rows.copy.zst": b"old",  # a crashed run's generation
        f"{base}/workspace=ws_a/stray.tmp": b"t",  # a loose file
        f"{base}/workspace=ws_b/{GEN}/rows.copy.zst": b"uncommitted",
        f"{base}/workspace=ws_c/not-a-generation/x": b"x",  # not named as the writer names
        "postgres/workspace_dump/date=2026-3-1/workspace=ws_a/manifest.json": b"{}",  # bad date
        "mssql/log_backup/date=2026-11-21/window=0015/manifest.json": b"{}",
        f"mssql/log_backup/date=2026-11-21/window=0015/{GEN}/log.trn": b"log",
        "postgres/full_dump/date=2026-11-21/manifest.json": b"{}",
        "_keep/2026-11-21/ws_a.json": b"{}",
        "_catalog/verified/postgres/workspace_dump.json.zst": b"z",
        "_leases/ws_a.json": b"{}",
        "README.txt": b"hello",
    }
    for key, data in extra.items():
        store._put_atomic(key, data)
    os.symlink("/etc", store.root / base / "workspace=ws_a" / "linked")
    by_folder = scan_store(store)
    assert shape(by_folder) == shape(scan_store(KeyAtATime(store)))
    assert {r.folder for r in by_folder} == {
        f"{base}/workspace=ws_a",
        f"{base}/workspace=ws_b",
        "mssql/log_backup/date=2026-11-21/window=0015",
        "postgres/full_dump/date=2026-11-21",
    }
    assert len(by_folder[ref].generations) == 2  # the committed one and the orphan
    assert ORPHAN in by_folder[ref].generations and by_folder[ref].has_manifest
