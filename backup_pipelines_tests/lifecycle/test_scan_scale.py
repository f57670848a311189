"""Retention's scan of a local folder, listed a folder at a time (issue 16: 430,000 files for
10,000 workspaces), finds exactly what the one-key-at-a-time scan finds: artifacts,
uncommitted folders, generations, loose files; never the reserved prefixes or folders this
project did not write."""

from __future__ import annotations

import itertools
import os
import threading

import pytest

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


STORE_KEYS = [
    "README.txt",
    "date=2026-11-21/at-the-root",  # a date folder anywhere is listed whole
    "postgres/notes.txt",
    "postgres/workspace_dump/loose",
    f"postgres/workspace_dump/date=2026-11-21/workspace=ws_a/{GEN}/rows.copy.zst",
    "postgres/workspace_dump/date=2026-11-21/workspace=ws_a/manifest.json",
    "postgres/workspace_dump/date=2026-11-21-b/workspace=ws_a/manifest.json",
    "postgres/workspace_dump/date=2026-11-22/workspace=ws_b/manifest.json",
    "postgres/full_dump/date=2026-11-21/manifest.json",
    f"postgres/full_dump/date=2026-11-21/{GEN}/database.dump.zst",
    "mssql/log_backup/date=2026-11-21/window=0015/manifest.json",
    "_catalog/verified/postgres/workspace_dump.json.zst",
    "a/b/c/d/e/f/deeper-than-the-walk",
    "a/b/c/d/e/loose",
]


def test_scale_store_listing_by_date_folders_lists_every_object_once(store, monkeypatch):
    """Retention's listing of the whole store, date folders several at a time, lists exactly
    the objects one listing of the store lists (each once), and the scan built on it finds
    the same artifacts."""
    from backup_pipelines.lib.store import listing

    monkeypatch.setattr(listing, "STORE_LISTING_THREADS", 3)
    monkeypatch.setattr(listing, "LOCAL_LISTING_THREADS", 3)  # the default lists in one thread
    for n, key in enumerate(STORE_KEYS):
        store._put_atomic(key, b"z" * (n + 1))
    one = sorted(listing.iter_objects(store, ""))
    batches = list(listing.iter_store_folders(store))
    assert sorted(o for _folder, objects in batches for o in objects) == one
    assert len(one) == len(STORE_KEYS)
    for folder, objects in batches:  # a batch's folder, when named, holds all its objects
        assert folder is None or {k.rpartition("/")[0] for k, *_ in objects} == {folder}
    assert shape(scan_store(store)) == shape(scan_store(KeyAtATime(store))) != {}


@pytest.mark.parametrize("disk", ["cold", "warm", "unknown"])
def test_a_local_walk_reading_from_disk_lists_the_date_folders_left_with_threads(
    tmp_path, monkeypatch, disk
):
    """Retention's local walk stays in the calling thread while the file system's metadata
    comes from memory; once it reads from disk (here: this thread's reads, as getrusage
    counts them, jump after the first date folder) the date folders left are walked by
    threads. Either way every object is listed once and the scan finds the same artifacts."""
    from backup_pipelines.lib.store import listing

    store = LocalStore(tmp_path / "store")
    for n, key in enumerate(STORE_KEYS):
        store._put_atomic(key, b"z" * (n + 1))
    reads = {"cold": iter(range(0, 1 << 40, 1 << 30)), "warm": itertools.repeat(4096)}
    monkeypatch.setattr(
        listing, "_disk_reads", lambda: next(reads[disk]) if disk in reads else None
    )
    date_folders = listing._walk_to_date_folders(store)[1]  # the folders listed whole
    walked_in: dict[str, str] = {}
    walk = listing.local_stats

    def recording(store, prefix, *args, **kwargs):
        walked_in[prefix] = threading.current_thread().name
        yield from walk(store, prefix, *args, **kwargs)

    monkeypatch.setattr(listing, "local_stats", recording)
    report = listing.WalkReport()
    batches = list(listing.iter_store_folders(store, stats=True, report=report))
    keys = [o[0] for folder, objects in batches if folder is None for o in objects]
    keys += [f"{folder}/{name}" for folder, files in batches if folder for name, _ in files]
    # 6 date folders of STORE_KEYS and one past MAX_WALK_DEPTH, each walked once
    assert set(date_folders) <= set(walked_in) and len(date_folders) == 7
    in_main = [p for p in date_folders if walked_in[p] == threading.current_thread().name]
    if disk == "cold":
        assert in_main == date_folders[:1]  # the first one read from disk: threads after it
        assert report.switched_after == 1 and "4 at a time after the first 1" in report.describe()
    else:
        assert in_main == date_folders
        assert report.switched_after is None and report.describe() == "7 date folders"
    assert report.date_folders == 7
    assert sorted(keys) == sorted(key for key, *_ in listing.iter_objects(store, ""))
    assert len(keys) == len(STORE_KEYS)
    assert shape(scan_store(store)) == shape(scan_store(KeyAtATime(store))) != {}


def write_artifacts(store: LocalStore, count: int) -> list[ArtifactRef]:
    refs = [ArtifactRef("postgres/workspace_dump", "2026-11-21", f"ws_{n}") for n in range(count)]
    for ref in refs:
        with store.begin(ref) as writer:
            writer.write_bytes("rows.copy.zst", b"data")
            writer.commit(
                captured_at="2026-11-21T00:30:00Z", counts={}, source={}, tool={}, tables=[]
            )
    return refs


@pytest.mark.parametrize("disk", ["cold", "warm"])
def test_deferred_generation_folders_listed_at_once_switch_to_threads_when_cold(
    tmp_path, monkeypatch, disk
):
    """The scan names a local artifact's generation folders without opening them; listed
    later for many artifacts at once (what a plan needs), they are listed in the calling
    thread while the metadata comes from memory and by threads once it comes from disk
    (getrusage faked to jump after the first folder), each once, and the folders then hold
    what a scan listing every file finds."""
    from backup_pipelines.lib.lifecycle import scan
    from backup_pipelines.lib.store import listing

    store = LocalStore(tmp_path / "store")
    write_artifacts(store, 40)
    folders = scan_store(store)
    assert len(folders) == 40 and all(len(f._deferred) == 1 for f in folders.values())
    reads = {"cold": iter(range(0, 1 << 40, 1 << 30)), "warm": itertools.repeat(4096)}[disk]
    monkeypatch.setattr(listing, "_disk_reads", lambda: next(reads))
    monkeypatch.setattr(listing, "OWN_FILES_CHUNK", 4)  # reads checked every 4 folders
    opened: list[tuple[str, str]] = []
    own_files = listing._own_files_unlinked

    def recording(store, folder, *args, **kwargs):
        opened.append((folder, threading.current_thread().name))
        return own_files(store, folder, *args, **kwargs)

    monkeypatch.setattr(listing, "_own_files_unlinked", recording)
    report = listing.WalkReport()
    assert scan.list_deferred(folders.values(), report) == 40
    assert len({folder for folder, _thread in opened}) == len(opened) == 40
    in_main = [f for f, thread in opened if thread == threading.current_thread().name]
    assert report.switched_after == (4 if disk == "cold" else None)
    assert len(in_main) == (4 if disk == "cold" else 40)
    assert all(not f._deferred for f in folders.values())
    assert shape(folders) == shape(scan_store(KeyAtATime(store)))
    assert len(opened) == 40  # nothing listed twice when asked for again


def test_a_generation_folder_gone_or_linked_after_the_walk_lists_nothing(tmp_path):
    """Between the walk and the listing of a deferred generation folder, a commit may drop it
    and someone may put a link in its place: the one lists no files, the other is not
    followed (its target's files are never counted as the artifact's)."""
    store = LocalStore(tmp_path / "store")
    gone, linked, kept = write_artifacts(store, 3)
    folders = scan_store(store)
    generation = {ref: next(iter(folders[ref]._deferred)) for ref in (gone, linked, kept)}
    for ref in (gone, linked):
        path = store.root / generation[ref]
        for file in path.iterdir():
            file.unlink()
        path.rmdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "rows.copy.zst").write_bytes(b"not the artifact's")
    os.symlink(outside, store.root / generation[linked])
    for ref in (gone, linked):
        assert folders[ref].generations == {}
        assert [key.rpartition("/")[2] for key, _s, _t in folders[ref].objects] == ["manifest.json"]
    assert list(folders[kept].generations) == [generation[kept].rpartition("/")[2]]
    assert folders[kept].bytes == folders[gone].bytes + len(b"data")
