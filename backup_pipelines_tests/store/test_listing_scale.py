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


def s3_store_holding(bucket: str, keys: list[str]):
    import secrets

    from backup_pipelines.lib.store import S3Store

    store = S3Store(bucket, f"run-{secrets.token_hex(4)}")
    for n, key in enumerate(keys):
        store._put_atomic(key, b"y" * (n % 7 + 1))
    return store


DAY = "postgres/workspace_dump/date=2026-11-21/"
TRICKY = [f"{DAY}manifest.json", f"{DAY}a-loose-file", f"{DAY}{GENERATION}/loose.zst"]
for _n in range(12):
    TRICKY += [f"{DAY}workspace=ws_{_n:02d}/manifest.json", f"{DAY}workspace=ws_{_n:02d}/x.zst"]
    TRICKY += [f"{DAY}workspace=ws_{_n:02d}/{GENERATION}/f{m}" for m in range(3)]
    # Names that sort between a folder's name and its "/" ("-" and "." are below "/"), and
    # a workspace whose id starts like a generation folder.
    TRICKY += [f"{DAY}workspace=ws_{_n:02d}-b/manifest.json", f"{DAY}workspace=ws_{_n:02d}.c"]
    TRICKY += [f"{DAY}workspace=g-{_n:02d}/manifest.json"]
TRICKY += [f"{DAY}workspace=ws_00/{GENERATION}/manifest.json"]  # not a committed manifest
TRICKY.append("postgres/workspace_dump/date=2026-11-22/workspace=ws_00/manifest.json")


@pytest.mark.parametrize("prefix", [DAY, "postgres/", ""])
def test_scale_s3_manifest_listing_groups_generation_files_away_and_keeps_every_manifest(
    s3_env, monkeypatch, prefix
):
    store = s3_store_holding(s3_env.bucket, TRICKY)
    every = list(listing.iter_objects(store, prefix))
    entries: list[int] = []
    pages = listing._s3_pages

    def counted(*args, **kwargs):
        for contents, folders in pages(*args, **kwargs):
            entries.append(len(contents) + len(folders))
            yield contents, folders

    monkeypatch.setattr(listing, "_s3_pages", counted)
    manifests = list(listing.iter_manifests(store, prefix))
    # Every manifest but those inside a generation folder (no artifact's manifest).
    outside = [o for o in every if "/g-" not in o[0][len(prefix) :]]
    assert manifests == [o for o in outside if o[0].endswith("/manifest.json")] != []
    assert committed_in(manifests) == committed_in(every)
    assert store.describe() not in listing._FULL_LISTING_ONLY
    # Each artifact's generation files came back as one entry, not one per file.
    assert 0 < sum(entries) < len(every) * 0.8


@pytest.mark.parametrize("server", ["groups at /", "refuses the delimiter", "ignores it"])
def test_scale_s3_manifest_listing_of_a_server_that_does_not_group_as_s3_lists_in_full(
    s3_env, monkeypatch, server
):
    """A server that groups keys otherwise than S3 (here: at "/", which would hide every
    manifest), refuses the delimiter, or ignores it: every manifest is still listed."""
    from botocore.exceptions import ClientError

    store = s3_store_holding(s3_env.bucket, TRICKY)
    expected = [o for o in listing.iter_objects(store, DAY) if o[0].endswith("/manifest.json")]
    original = store.client.list_objects_v2

    def server_side(**arguments):
        if arguments.get("Delimiter") == listing.GENERATION_DELIMITER:
            if server == "refuses the delimiter":
                error = {"Error": {"Code": "NotImplemented", "Message": "only /"}}
                raise ClientError(error, "ListObjectsV2")
            if server == "groups at /":
                arguments["Delimiter"] = "/"
            else:
                del arguments["Delimiter"]
        return original(**arguments)

    monkeypatch.setattr(store.client, "list_objects_v2", server_side)
    monkeypatch.setattr(listing, "_FULL_LISTING_ONLY", set())
    assert list(listing.iter_manifests(store, DAY)) == expected != []
    fell_back = store.describe() in listing._FULL_LISTING_ONLY
    assert fell_back == (server != "ignores it")
    assert list(listing.iter_manifests(store, DAY)) == expected  # and from then on
