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


def test_scale_split_listing_lists_exactly_what_one_listing_lists(s3_env, monkeypatch):
    import secrets

    from backup_pipelines.lib.store import S3Store

    monkeypatch.setattr(listing, "MIN_FOLDERS_PER_RANGE", 3)
    store = S3Store(s3_env.bucket, f"run-{secrets.token_hex(4)}")
    day = "postgres/workspace_dump/date=2026-11-21/"
    keys = [f"{day}manifest.json", f"{day}a-loose-file"]  # keys beside the sub-folders
    for n in range(30):
        keys += [f"{day}workspace=ws_{n:02d}/manifest.json", f"{day}workspace=ws_{n:02d}/x.zst"]
        # Names that sort between a folder's name and its "/": "-" and "." are below "/".
        keys += [f"{day}workspace=ws_{n:02d}-b/manifest.json", f"{day}workspace=ws_{n:02d}.c"]
    keys += [f"{day}workspace=ws_{n:02d}/{GENERATION}/f{m}" for n in (0, 29) for m in range(3)]
    keys.append("postgres/workspace_dump/date=2026-11-22/workspace=ws_00/manifest.json")
    for n, key in enumerate(keys):
        store._put_atomic(key, b"y" * (n % 7 + 1))
    one = list(listing.iter_objects(store, day))
    split = list(listing._s3_split_keys(store, day))
    assert split == one and len(one) == len(keys) - 1
    manifests = list(listing.iter_manifests(store, day, split=True))
    assert manifests == [o for o in one if o[0].endswith("/manifest.json")]
