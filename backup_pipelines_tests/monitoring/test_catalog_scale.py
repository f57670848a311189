"""The first RPO tick on a store of many workspaces reads the newest manifests several at a
time (rpo.STORE_READERS, a bounded pool): the ages and the captured-at catalog it builds are
those of reading them one after the other, a tampered manifest excluded either way."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from backup_pipelines.lib.monitoring import catalog, rpo
from backup_pipelines.lib.store import MANIFEST_NAME, ArtifactRef

ASSET = "postgres/workspace_dump"
NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
WORKSPACES = [f"ws_{n:03d}" for n in range(40)]


def commit(store, workspace: str, day: str, captured: datetime) -> ArtifactRef:
    ref = ArtifactRef(ASSET, day, workspace)
    with store.begin(ref) as writer:
        writer.write_bytes("rows.copy.zst", b"data")
        writer.commit(
            captured_at=captured.isoformat(), counts={"rows": {}}, source={}, tool={}, tables=[]
        )
    return ref


def first_tick(store, readers: int, monkeypatch) -> tuple[dict, dict]:
    """(newest captured_at per workspace, the catalog's entries) of a tick on a store
    monitoring never looked at, with `readers` manifests read at a time."""
    monkeypatch.setattr(rpo, "STORE_READERS", readers)
    catalog.forget()
    store._delete_prefix(catalog.CATALOG_PREFIX)
    found = rpo.newest_dates(store, ASSET, WORKSPACES, NOW.date(), 3)
    newest = rpo.captured_times(store, ASSET, found, NOW.date())
    entries = dict(catalog.catalog_for(store, ASSET).entries)
    catalog.forget()
    return {w: (n.date, n.captured_at, n.lower_bound) for w, n in newest.items()}, entries


def test_scale_concurrent_manifest_reads_give_the_serial_catalog(store, monkeypatch):
    for n, workspace in enumerate(WORKSPACES):
        for back in (1, 2):
            day = (NOW - timedelta(days=back)).date().isoformat()
            commit(store, workspace, day, NOW - timedelta(days=back, minutes=n))
    tampered = ArtifactRef(ASSET, (NOW - timedelta(days=1)).date().isoformat(), WORKSPACES[7])
    key = f"{tampered.folder}/{MANIFEST_NAME}"
    store._put_atomic(key, store._get(key).replace(b'"captured_at"', b'"captured_at_"'))
    serial = first_tick(store, 1, monkeypatch)
    concurrent = first_tick(store, 16, monkeypatch)
    assert concurrent == serial
    newest, entries = concurrent
    assert WORKSPACES[7] not in newest and len(newest) == len(WORKSPACES) - 1
    assert tampered.folder not in entries and len(entries) == len(WORKSPACES) - 1
    assert newest[WORKSPACES[3]][1] == NOW - timedelta(days=1, minutes=3)
