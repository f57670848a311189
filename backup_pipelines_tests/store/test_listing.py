"""The fast listing (lib/store/listing.py) lists exactly what BackupStore._list lists, on both
back ends: keys, sizes, times; S3 pages past the first, keys that need escaping, sub-folders;
and a tag that changes when an object is rewritten."""

from __future__ import annotations

import secrets
from urllib.parse import unquote_plus

import pytest

from backup_pipelines.lib.errors import StoreError
from backup_pipelines.lib.store import S3Store, listing, make_s3_client

KEYS = [
    "postgres/workspace_dump/date=2026-11-21/workspace=ws_a/manifest.json",
    "postgres/workspace_dump/date=2026-11-21/workspace=ws_a/g-20261122T011500-0000abcd/x.zst",
    "postgres/workspace_dump/date=2026-11-21/workspace=ws_b/manifest.json",
    "postgres/workspace_dump/date=2026-11-20/workspace=ws_a/manifest.json",
    "postgres/full_dump/date=2026-11-21/manifest.json",
    "_keep/2026-11-21/ws_a.json",
    "odd/a b+c&d%e=f<g>.txt",
    "odd/date=1%3D=\u00e9+%253D.txt",  # a literal "%3D" and "%253D" in a key
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


@pytest.mark.parametrize(
    "encoded",
    ["date%3D2026", "a%3da", "%253D", "a+b", "a%2Bb", "%C3%A9%3D", "%3D%3D", "plain", "%", "%3"],
)
def test_url_decoding_shortcut_matches_unquote_plus(encoded):
    assert listing._url_decoded(encoded) == unquote_plus(encoded)


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


ERROR_IN_A_200 = (
    b"<Error><Code>InternalError</Code><Message>We encountered an internal error.</Message></Error>"
)
# A listing without S3's namespace: its keys are not where the fast parse looks.
NO_NAMESPACE = (
    b"<ListBucketResult><Contents><Key>a/manifest.json</Key><Size>1</Size>"
    b"<LastModified>2026-11-21T00:00:00.000Z</LastModified><ETag>x</ETag></Contents>"
    b"<IsTruncated>false</IsTruncated></ListBucketResult>"
)
A_LISTING = (
    b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Contents>'
    b"<Key>a/manifest.json</Key><Size>1</Size><LastModified>2026-11-21T00:00:00.000Z"
    b"</LastModified><ETag>&quot;x&quot;</ETag></Contents><IsTruncated>false</IsTruncated>"
    b"</ListBucketResult>"
)


def operation(name: str):
    """botocore's own model of an S3 operation."""
    return S3Store("test-backups", "p").client.meta.service_model.operation_model(name)


def before_parse(events, name: str, body: bytes, fast: bool = True) -> tuple[dict, dict]:
    """What a client's before-parse handlers make of a 200 answer to `name` with `body`
    (`fast`: during one of the fast listing's own calls)."""
    response = {"status_code": 200, "body": body, "headers": {}}
    custom: dict = {}
    listing._FAST.active = fast
    try:
        events.emit(
            f"before-parse.s3.{name}",
            operation_model=operation(name),
            response_dict=response,
            customized_response_dict=custom,
        )
    finally:
        listing._FAST.active = False
    return response, custom


@pytest.mark.parametrize(
    "body, status",
    [(ERROR_IN_A_200, 500), (NO_NAMESPACE, 200)],
    ids=["error-in-a-200", "no-namespace"],
)
def test_fast_parse_leaves_a_page_it_does_not_know_to_botocore(s3_env, body, status):
    """Left as it came for botocore's parser, after botocore's own check: an <Error> in a 200
    becomes a 500, which botocore retries and then raises."""
    client = S3Store("test-backups", "p").client
    listing._install_hooks(client.meta.events)
    response, custom = before_parse(client.meta.events, "ListObjectsV2", body)
    assert custom == {} and response["body"] == body
    assert response["status_code"] == status


def test_a_listing_page_is_parsed_once_and_every_other_answer_still_checked(s3_env, monkeypatch):
    """botocore's check for an <Error> in a 200 parses the whole body: skipped for a page the
    fast parse reads (it is a listing), run for everything else on the store's client."""
    client = S3Store("test-backups", "p").client
    listing._install_hooks(client.meta.events)
    import botocore.handlers

    checked = []
    parse = botocore.handlers._looks_like_special_case_error  # the check's whole-body parse

    def counting(status_code, body):
        checked.append(body)
        return parse(status_code, body)

    monkeypatch.setattr(botocore.handlers, "_looks_like_special_case_error", counting)
    events = client.meta.events

    response, custom = before_parse(events, "ListObjectsV2", A_LISTING)
    assert checked == [] and response["body"] == listing._EMPTY_RESULT
    assert custom["FastListing"][0][0][0] == "a/manifest.json"

    response, custom = before_parse(events, "ListObjectsV2", ERROR_IN_A_200)
    assert checked == [ERROR_IN_A_200] and response["status_code"] == 500

    response, _ = before_parse(events, "CopyObject", ERROR_IN_A_200)
    assert len(checked) == 2 and response["status_code"] == 500

    response, custom = before_parse(events, "ListObjectsV2", ERROR_IN_A_200, fast=False)
    assert len(checked) == 3 and response["status_code"] == 500 and custom == {}


def botocore_versions(store: S3Store, prefix: str) -> list[tuple]:
    """Every version under `prefix` as botocore parses them (a client without our hooks)."""
    found = []
    pages = make_s3_client().get_paginator("list_object_versions")
    for page in pages.paginate(Bucket=store.bucket, Prefix=store._full(prefix)):
        for marker, items in ((False, page.get("Versions")), (True, page.get("DeleteMarkers"))):
            found += [(i["Key"], i["VersionId"], i["IsLatest"], marker) for i in items or []]
    return sorted(found)


def test_fast_version_listing_lists_what_botocore_parses(s3_env, monkeypatch):
    """In a versioned bucket: every version and delete marker, with the keys that need
    escaping, across pages (S3's key and version-id markers), and from a given version on."""
    monkeypatch.setattr(listing, "VERSIONS_PAGE", 4)  # pages end mid-key and on markers too
    bucket = f"versions-{secrets.token_hex(4)}"
    make_s3_client().create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    store = S3Store(bucket, "p")
    many = [f"many/date=2026-11-21/workspace=ws_{n:04d}/manifest.json" for n in range(10)]
    fill(store, KEYS + many)
    store._put_atomic(KEYS[0], b"again")  # a second version
    store.client.delete_object(Bucket=bucket, Key=store._full(KEYS[6]))  # a delete marker

    for prefix in ("", "odd/", "postgres/", "missing/"):
        listed = list(listing.iter_versions(store, prefix))
        assert sorted((store._full(v.key), *v[1:]) for v in listed) == botocore_versions(
            store, prefix
        )
        assert [v.key for v in listed] == sorted(v.key for v in listed)  # in key order
    every = list(listing.iter_versions(store, ""))
    assert len(every) == len(KEYS) + len(many) + 2
    for after in every[::3]:  # what a run of folders relies on: every version of a later key
        rest = list(listing.iter_versions(store, "", after=(after.key, after.version_id)))
        later = {(v.key, v.version_id) for v in every if v.key > after.key}
        assert later <= {(v.key, v.version_id) for v in rest}
        assert after not in rest and all(v.key >= after.key for v in rest)


def test_version_listing_trusts_no_key_outside_its_prefix_and_stops_when_it_does_not_advance(
    s3_env, monkeypatch
):
    """A server that answers with keys outside the prefix asked for (retention deletes what
    this lists), or with the same page markers again (paging forever): the foreign keys are
    dropped, and the repeat is an error naming the store."""
    bucket = f"versions-{secrets.token_hex(4)}"
    make_s3_client().create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    store = S3Store(bucket, "p")
    fill(store, KEYS)
    answer = store.client.list_object_versions

    def with_a_stranger(**kwargs):
        page = answer(**kwargs)
        found = page["FastVersions"][0]
        found.append(found[0]._replace(key="p/elsewhere/manifest.json"))
        found.append(found[0]._replace(key="other-prefix/odd/x"))
        return page

    monkeypatch.setattr(store.client, "list_object_versions", with_a_stranger)
    listed = list(listing.iter_versions(store, "odd/"))
    assert sorted(v.key for v in listed) == sorted(k for k in KEYS if k.startswith("odd/"))

    def stuck(**kwargs):
        page = answer(**kwargs)
        found, _truncated, _key, _version = page["FastVersions"]
        page["FastVersions"] = (found, True, "p/odd/a", "v1")
        return page

    monkeypatch.setattr(store.client, "list_object_versions", stuck)
    with pytest.raises(
        StoreError, match=r"s3://versions-.*/p: the listing of versions .* not advance"
    ):
        list(listing.iter_versions(store, "odd/"))


def test_listing_trusts_no_key_outside_its_prefix_and_stops_when_it_does_not_advance(
    s3_env, monkeypatch
):
    """ListObjectsV2, as the fast listing and as the store's own (which deletes follow): a
    server naming keys and folders outside the prefix asked for, or sending the same
    continuation token again, lists nothing foreign and never pages forever."""
    bucket = f"listing-{secrets.token_hex(4)}"
    make_s3_client().create_bucket(Bucket=bucket)
    store = S3Store(bucket, "p")
    fill(store, KEYS)
    answer = store.client.list_objects_v2
    inside = sorted(k for k in KEYS if k.startswith("odd/"))
    top_folders = listing.list_folders(store, "")

    def with_strangers(**kwargs):
        page = answer(**kwargs)
        if "FastListing" in page:
            contents, folders = page["FastListing"][:2]
            contents.append(("p/elsewhere/manifest.json", 1, 0.0, "x"))
            contents.append(("other-prefix/odd/x", 1, 0.0, "x"))
            folders.append("other-prefix/folder/")
        else:  # the store's own listing, parsed by botocore
            page.setdefault("Contents", []).append({**page["Contents"][0], "Key": "p/else/x"})
        return page

    monkeypatch.setattr(store.client, "list_objects_v2", with_strangers)
    assert sorted(k for k, _s, _m in listing.iter_keys(store, "odd/")) == inside
    assert listing.list_folders(store, "") == top_folders == ["_keep", "odd", "postgres"]
    assert sorted(k for k, _s, _m in store._list("odd/")) == inside

    # Unfinished uploads are aborted by retention: another store's are never listed as ours.
    store.client.create_multipart_upload(Bucket=bucket, Key="p/odd/unfinished")
    uploads = store.client.list_multipart_uploads

    def with_a_foreign_upload(**kwargs):
        page = uploads(**kwargs)
        page["Uploads"].append({**page["Uploads"][0], "Key": "other-prefix/odd/unfinished"})
        return page

    monkeypatch.setattr(store.client, "list_multipart_uploads", with_a_foreign_upload)
    assert [key for key, _id, _at in store.incomplete_uploads()] == ["p/odd/unfinished"]

    def stuck(ContinuationToken=None, **kwargs):  # botocore's argument name
        page = answer(**kwargs)  # the first page again, whatever the token
        contents, folders, _truncated, _token = page["FastListing"]
        page["FastListing"] = (contents, folders, True, "the-same-token")
        return page

    monkeypatch.setattr(store.client, "list_objects_v2", stuck)
    with pytest.raises(StoreError, match=r"s3://listing-.*/p: the listing under .* not advance"):
        list(listing.iter_keys(store, "odd/"))


def test_deleting_the_versions_of_a_prefix_never_deletes_a_version_listed_outside_it(
    s3_env, monkeypatch
):
    """A server ignoring Prefix in ListObjectVersions: deleting one folder's versions (what
    a locked bucket's delete does) leaves every other folder's versions alone."""
    bucket = f"versions-{secrets.token_hex(4)}"
    make_s3_client().create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    store = S3Store(bucket, "p")
    fill(store, KEYS)
    other = "p/postgres/full_dump/date=2026-11-21/manifest.json"
    (kept,) = store.client.list_object_versions(Bucket=bucket, Prefix=other)["Versions"]
    answer = store.client.list_object_versions

    def with_a_stranger(**kwargs):
        page = answer(**kwargs)
        page.setdefault("Versions", []).append({**kept, "Key": other})
        return page

    monkeypatch.setattr(store.client, "list_object_versions", with_a_stranger)
    store._delete_versions("odd/")
    monkeypatch.undo()
    left = store.client.list_object_versions(Bucket=bucket, Prefix="p/")
    assert [v["Key"] for v in left.get("Versions", [])] == sorted(
        f"p/{k}" for k in KEYS if not k.startswith("odd/")
    )


MARKERS = {"ContinuationToken", "KeyMarker", "VersionIdMarker", "UploadIdMarker"}


def test_every_s3_listing_stops_when_the_server_cycles_its_continuation_tokens(s3_env, monkeypatch):
    """A server whose tokens go round (A, B, A, ...): each token differs from the one just
    sent, so a check against the last one (botocore's paginator) pages forever, listing, and
    deleting, the same keys again. Every listing of the store, fast or through botocore,
    fails naming the store; none sends more than a handful of requests."""
    bucket = f"cycling-{secrets.token_hex(4)}"
    client = make_s3_client()
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    store = S3Store(bucket, "p")
    fill(store, KEYS)
    client.create_multipart_upload(Bucket=bucket, Key="p/odd/unfinished")

    def cycling(method, build):
        calls = []

        def answer(**kwargs):
            calls.append(kwargs)
            assert len(calls) < 20, "paged forever"
            first = {k: v for k, v in kwargs.items() if k not in MARKERS}  # the first page again
            return build(method(**first), ("A", "B")[len(calls) % 2])

        return answer, calls

    def fast_keys(page, token):
        contents, folders, _truncated, _token = page["FastListing"]
        page["FastListing"] = (contents, folders, True, token)
        return page

    def fast_versions(page, token):
        page["FastVersions"] = (page["FastVersions"][0], True, f"p/odd/{token}", token)
        return page

    def botocore_page(**markers):
        def build(page, token):
            return {**page, "IsTruncated": True, **{k: v + token for k, v in markers.items()}}

        return build

    listings = [
        ("list_objects_v2", fast_keys, lambda: list(listing.iter_keys(store, "odd/"))),
        ("list_object_versions", fast_versions, lambda: list(listing.iter_versions(store, ""))),
        (
            "list_objects_v2",
            botocore_page(NextContinuationToken="t"),
            lambda: list(store._list("")),
        ),
        (
            "list_object_versions",
            botocore_page(NextKeyMarker="p/odd/", NextVersionIdMarker="v"),
            lambda: store._delete_versions("odd/"),
        ),
        (
            "list_multipart_uploads",
            botocore_page(NextKeyMarker="p/odd/", NextUploadIdMarker="u"),
            lambda: list(store.incomplete_uploads()),
        ),
    ]
    for method, build, run in listings:
        answer, calls = cycling(getattr(store.client, method), build)
        monkeypatch.setattr(store.client, method, answer)
        with pytest.raises(StoreError, match=r"s3://cycling-.*/p: the listing .* not advance"):
            run()
        assert len(calls) == 3, (method, len(calls))
        monkeypatch.undo()
    left = client.list_object_versions(Bucket=bucket, Prefix="p/odd/")
    assert len(left.get("Versions", [])) == 2  # nothing deleted by the cycling listing
