"""listing.iter_manifests (issue 16: a sensor tick over 10,000 workspaces): the manifests a
full listing shows, the same committed artifacts, without opening a local folder's
generation folders."""

from __future__ import annotations

import pytest

from backup_pipelines.lib.monitoring.catalog import committed_in
from backup_pipelines.lib.store import listing

GENERATION = "g-20261122T011500-0000abcd"
KEYS = [
    "postgres/workspace_dump/date=2026-11-21/workspace=ws_a/manifest.json",
    f"postgres/workspace_dump/date=2026-11-21/workspace=ws_a/{GENERATION}/x.zst",
    # A file named like a manifest inside a generation folder is no artifact's manifest.
    f"postgres/workspace_dump/date=2026-11-21/workspace=ws_a/{GENERATION}/manifest.json",
    f"postgres/workspace_dump/date=2026-11-21/workspace=ws_b/{GENERATION}/x.zst",  # uncommitted
    "postgres/workspace_dump/date=2026-11-21/workspace=ws_c/manifest.json",
    "mssql/log_backup/date=2026-11-21/window=0015/manifest.json",
    f"mssql/log_backup/date=2026-11-21/window=0015/{GENERATION}/log.trn",
    "postgres/full_dump/date=2026-11-21/manifest.json",
    f"postgres/full_dump/date=2026-11-21/{GENERATION}/database.dump.zst",
]


@pytest.mark.parametrize("prefix", ["", "postgres/workspace_dump/date=2026-11-21/", "mssql/"])
def test_scale_manifest_listing_finds_the_committed_artifacts_a_full_listing_finds(store, prefix):
    for n, key in enumerate(KEYS):
        store._put_atomic(key, b"x" * (n + 1))
    every = list(listing.iter_objects(store, prefix))
    manifests = list(listing.iter_manifests(store, prefix))
    assert committed_in(manifests) == committed_in(every) != {}
    assert {k for k, *_ in manifests} <= {k for k, *_ in every}
    assert all(k.endswith("/manifest.json") for k, *_ in manifests)
    assert {(k, s, t) for k, s, _m, t in manifests} <= {(k, s, t) for k, s, _m, t in every}
