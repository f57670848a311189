"""The fast listing (lib/store/listing.py) lists exactly what BackupStore._list lists, on both
back ends: keys, sizes, times; S3 pages past the first, keys that need escaping, sub-folders;
and a tag that changes when an object is rewritten."""

from __future__ import annotations

import pytest

from backup_pipelines.lib.errors import StoreError
from backup_pipelines.lib.store import S3Store, listing

KEYS = [
    "postgres/workspace_dump/date=2026-11-21/workspace=ws_a/manifest.json",
    "postgres/workspace_dump/date=2026-11-21/workspace=ws_a/g-20261122T011500-0000abcd/x.zst",
    "postgres/workspace_dump/date=2026-11-21/workspace=ws_b/manifest.json",
    "postgres/workspace_dump/date=2026-11-20/workspace=ws_a/manifest.json",
    "postgres/full_dump/date=2026-11-21/manifest.json",
    "_keep/2026-11-21/ws_a.json",
    "odd/a b+c&d%e=f<g>.txt",
]


def fill(store, keys=KEYS) -> None:
    for n, key in enumerate(keys):
        store._put_atomic(key, b"x" * n)


@pytest.mark.parametrize(
    "prefix",
    ["", "postgres/", "postgres/workspace_dump/date=2026-11-21/", "odd/", "missing/"],
)
def test_fast_listing_lists_what_the_store_lists(store, prefix):
    fill(store)
    assert sorted(listing.iter_keys(store, prefix)) == sorted(store._list(prefix))
    tagged = list(listing.iter_objects(store, prefix))
    assert all(tag for _k, _s, _m, tag in tagged)


def test_fast_listing_folders(store):
    fill(store)
    assert listing.list_folders(store, "postgres/workspace_dump/") == [
        "date=2026-11-20",
        "date=2026-11-21",
    ]
    assert listing.list_folders(store, "postgres/workspace_dump/date=2026-11-21/") == [
        "workspace=ws_a",
        "workspace=ws_b",
    ]
    assert listing.list_folders(store, "missing/") == []


def test_fast_listing_reads_every_page(store):
    keys = [f"many/date=2026-11-21/workspace=ws_{n:04d}/manifest.json" for n in range(1100)]
    fill(store, keys)
    listed = list(listing.iter_keys(store, "many/"))
    assert len(listed) == 1100 and sorted(k for k, _s, _m in listed) == sorted(keys)
    assert len(listing.list_folders(store, "many/date=2026-11-21/")) == 1100


def test_the_tag_changes_when_an_object_is_rewritten(store):
    key = "postgres/full_dump/date=2026-11-21/manifest.json"
    store._put_atomic(key, b'{"a": 1}')
    ((_k, _s, _m, first),) = listing.iter_objects(store, "postgres/")
    store._put_atomic(key, b'{"a": 2}')  # same size, possibly the same second
    ((_k, _s, _m, second),) = listing.iter_objects(store, "postgres/")
    assert first != second


def test_a_refused_listing_is_a_store_error_naming_the_store(s3_env):
    with pytest.raises(StoreError, match="s3://no-such-bucket-here"):
        list(listing.iter_keys(S3Store("no-such-bucket-here", "x"), ""))


def test_fast_listing_shows_symlinks_and_special_files_as_the_local_store_does(tmp_path):
    """A symlink or FIFO where a file should be is listed as itself (and refused when read),
    never followed: the same as LocalStore._list, so damage shows up."""
    import os

    from backup_pipelines.lib.store import LocalStore

    local_store = LocalStore(tmp_path / "store")
    fill(local_store)
    folder = local_store.root / "postgres/workspace_dump/date=2026-11-21/workspace=ws_c"
    folder.mkdir(parents=True)
    os.symlink("/etc/passwd", folder / "manifest.json")
    os.mkfifo(folder / "x.fifo")
    os.symlink("/etc", local_store.root / "postgres/workspace_dump/date=2026-11-19")
    for prefix in ("", "postgres/workspace_dump/date=2026-11-21/"):
        assert sorted(listing.iter_keys(local_store, prefix)) == sorted(local_store._list(prefix))
    keys = {key for key, _s, _m in listing.iter_keys(local_store, "")}
    assert f"{folder.relative_to(local_store.root)}/manifest.json" in keys
    assert not any(key.startswith("postgres/workspace_dump/date=2026-11-19/") for key in keys)


@pytest.mark.parametrize(
    "body",
    [
        b"<Error><Code>InternalError</Code><Message>We encountered an internal error.</Message>"
        b"</Error>",
        # A listing without S3's namespace: its keys are not where the fast parse looks.
        b"<ListBucketResult><Contents><Key>a/manifest.json</Key><Size>1</Size>"
        b"<LastModified>2026-11-21T00:00:00.000Z</LastModified><ETag>x</ETag></Contents>"
        b"<IsTruncated>false</IsTruncated></ListBucketResult>",
    ],
    ids=["error-in-a-200", "no-namespace"],
)
def test_fast_parse_leaves_a_page_it_does_not_know_to_botocore(body):
    response = {"status_code": 200, "body": body, "headers": {}}
    custom: dict = {}
    listing._FAST.active = True
    try:
        listing._fast_parse_hook(response_dict=response, customized_response_dict=custom)
    finally:
        listing._FAST.active = False
    assert custom == {} and response["body"] == body
