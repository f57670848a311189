"""moto's S3 server in a child process, loaded with a whole store at once, optionally with a
listing that costs what real S3's costs (bench/README.md, bench_scale.py).

Stock moto (5.2) answers each ListObjectsV2 page by scanning every key of the bucket, sorting
the matches and rendering the page through its generic serializer: measured here, ~0.5 s per
page of 1,000 keys once the bucket holds 300,000 keys (and growing with the bucket), where real
S3 answers a page in tens of milliseconds whatever the bucket's size. A benchmark of a client
that lists 10,000 workspaces would then measure moto. With `--indexed`, this server keeps a
sorted index of each bucket's keys (a put adds its name; a deleted name is skipped, and the
index rebuilt once a quarter of it is deleted), answers a page from it by bisection, and
renders the page's XML directly: the same keys, sizes, ETags, modification
times, prefixes, continuation tokens and truncation as stock moto (bench_scale.py compares the
two on the same store before it measures anything), at S3's cost. ListObjectVersions is
answered from the same index (stock moto deep-copies every version of the bucket for each
page): the same versions, delete markers, IsLatest and markers as stock moto, except that a
key-marker given without a version-id-marker lists the keys after it, as S3 does (stock moto
also leaves out the first key at or after it; bench_retention_apply.py never sends one alone).
DeleteObjects with <Quiet>true</Quiet> answers with the errors only, as S3 does. Everything
else (GET, PUT, HEAD, DELETE, multipart) is stock moto.

With `--object-lock` the bucket is created with Object Lock (versioning on), and the loaded
objects carry no retention: artifacts whose retention has run out, which retention may delete.

Loading: `--load DIR --prefix P` puts every file under DIR into the bucket as `P/<path>`,
straight into moto's backend before the server starts listening (HTTP PUTs of 500,000 objects
would take an hour here); files are put in sorted key order, so within an artifact a marker is
never newer than its manifest, as the writer leaves them.

    python bench/scale_moto.py --port P --bucket B [--indexed] [--object-lock]
        [--load DIR --prefix P]

Prints `ready <objects>` when listening; stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import bisect
import logging
import os
import signal
import sys
import threading
import time
import urllib.parse
from xml.sax.saxutils import escape

INDEX_ATTRIBUTE = "_bench_sorted_names"
REMOVED_ATTRIBUTE = "_bench_removed_since_sorted"
OWNER = (
    "<Owner><ID>75aa57f09aa0c8caeab4f8c24e99d10f8e7faeebf76c078efc7c6caea54ba06a</ID>"
    "<DisplayName>webfile</DisplayName></Owner>"
)
_QUIET = threading.local()
HIGHEST = chr(0x10FFFF)


class _Listed:
    """A stored version as one page lists it: its attributes, with its own IsLatest (stock
    moto deep-copies the version for that, which re-reads and re-buffers its content)."""

    def __init__(self, version, is_latest: bool) -> None:
        self._version = version
        self.is_latest = is_latest

    def __getattr__(self, name: str):
        return getattr(self._version, name)


def install_indexed_listing() -> None:
    from moto.s3 import responses, utils
    from moto.s3.models import FakeDeleteMarker, S3Backend

    store_class = utils._VersionedKeyStore
    stock_setlist, stock_pop = store_class.setlist, store_class.pop

    def names_of(store) -> list[str]:
        names = store.__dict__.get(INDEX_ATTRIBUTE)
        if names is None or store.__dict__.get(REMOVED_ATTRIBUTE, 0) > len(names) // 4:
            names = store.__dict__[INDEX_ATTRIBUTE] = sorted(dict.keys(store))
            store.__dict__[REMOVED_ATTRIBUTE] = 0
        return names

    def setlist(self, key, list_):
        added = not dict.__contains__(self, key)
        stock_setlist(self, key, list_)
        names = self.__dict__.get(INDEX_ATTRIBUTE)
        if added and names is not None:
            at = bisect.bisect_left(names, key)
            if at == len(names) or names[at] != key:  # else: removed, and still in the list
                names.insert(at, key)

    def pop(self, key):
        stock_pop(self, key)
        # The name stays in the list: removing it moves the list's tail (~60 us a key at
        # 442,000 keys, most of the server's CPU when retention deletes 10,000 workspaces'
        # artifacts). Listings skip names no longer in the bucket; the list is rebuilt once a
        # quarter of it is gone.
        if INDEX_ATTRIBUTE in self.__dict__:
            self.__dict__[REMOVED_ATTRIBUTE] = self.__dict__.get(REMOVED_ATTRIBUTE, 0) + 1

    store_class.setlist, store_class.pop = setlist, pop

    def list_objects_v2(self, bucket, prefix, delimiter, continuation_token, start_after, max_keys):
        names = names_of(bucket.keys)
        prefix = prefix or ""
        after = (
            self._pagination_tokens.get(continuation_token) if continuation_token else start_after
        )
        at = bisect.bisect_left(names, prefix)
        if after and after >= prefix:
            at = bisect.bisect_right(names, after)
            if delimiter and after.endswith(delimiter):  # a folder ended the last page
                at = bisect.bisect_left(names, after + HIGHEST)
        page: list = []
        while at < len(names) and len(page) <= max_keys and names[at].startswith(prefix):
            name = names[at]
            if not dict.__contains__(bucket.keys, name):  # removed (see pop)
                at += 1
                continue
            rest = name[len(prefix) :]
            if delimiter and delimiter in rest:
                folder = prefix + rest.split(delimiter, 1)[0] + delimiter
                page.append(folder)
                at = bisect.bisect_left(names, folder + HIGHEST)
                continue
            key = bucket.keys[name]
            if not isinstance(key, FakeDeleteMarker):
                page.append(key)
            at += 1
        return self._truncate_result(page, max_keys)

    S3Backend.list_objects_v2 = list_objects_v2
    stock_versions = S3Backend.list_object_versions

    def list_object_versions(self, bucket_name, delimiter=None, key_marker=None, max_keys=1000,
                             prefix="", version_id_marker=None):  # fmt: skip
        if delimiter:
            return stock_versions(self, bucket_name, delimiter, key_marker, max_keys, prefix,
                                  version_id_marker)  # fmt: skip
        bucket = self.get_bucket(bucket_name)
        names = names_of(bucket.keys)
        prefix = prefix or ""
        at = bisect.bisect_left(names, prefix)
        resume = None  # (key, version id) to list after
        if key_marker and version_id_marker:
            at = max(at, bisect.bisect_left(names, key_marker))
            resume = (key_marker, version_id_marker)
        elif key_marker:
            at = max(at, bisect.bisect_right(names, key_marker))
        versions, markers, last = [], [], None
        limit = 1000 if max_keys is None else max_keys
        while at < len(names) and names[at].startswith(prefix):
            name = names[at]
            at += 1
            if not dict.__contains__(bucket.keys, name):  # removed (see pop)
                continue
            entries = list(enumerate(reversed(bucket.keys.getlist(name, []))))  # newest first
            if resume is not None:
                if name == resume[0]:
                    ids = [str(version.version_id) for _index, version in entries]
                    entries = entries[ids.index(resume[1]) + 1 :] if resume[1] in ids else []
                resume = None
            for index, version in entries:
                if len(versions) + len(markers) >= limit:
                    return versions, [], markers, last.name, last.version_id
                item = _Listed(version, index == 0)
                (markers if isinstance(version, FakeDeleteMarker) else versions).append(item)
                last = item
        return versions, [], markers, None, None

    S3Backend.list_object_versions = list_object_versions

    def render_list_object_versions(self):
        query = self._get_querystring(self.request, self.uri)

        def param(name: str):
            value = query.get(name, [None])[0]
            return value.decode("utf-8") if isinstance(value, bytes) else value

        if param("delimiter"):
            return stock_render_versions(self)
        prefix, key_marker = param("prefix") or "", param("key-marker")
        version_marker, encoding = param("version-id-marker"), param("encoding-type")
        max_keys = int(param("max-keys") or 1000)
        versions, _prefixes, markers, next_key, next_version = self.backend.list_object_versions(
            self.bucket_name, key_marker=key_marker, max_keys=max_keys, prefix=prefix,
            version_id_marker=version_marker,
        )  # fmt: skip

        def name(value: str) -> str:
            return escape(urllib.parse.quote(value) if encoding == "url" else value)

        def entry(item) -> tuple:
            version = item.version_id if item.version_id is not None else "null"
            head = (f"<Key>{name(item.name)}</Key><VersionId>{escape(str(version))}</VersionId>"
                    f"<IsLatest>{'true' if item.is_latest else 'false'}</IsLatest>"
                    f"<LastModified>{item.last_modified_ISO8601}</LastModified>")  # fmt: skip
            if isinstance(item._version, FakeDeleteMarker):
                return item.name, f"<DeleteMarker>{head}{OWNER}</DeleteMarker>"
            return item.name, (
                f"<Version>{head}<ETag>{escape(item.etag)}</ETag><Size>{item.size}</Size>"
                f"<StorageClass>{item.storage_class}</StorageClass>{OWNER}</Version>"
            )

        # As S3 sends them: versions and delete markers together, in key order.
        body = [xml for _key, xml in sorted(map(entry, versions + markers), key=lambda e: e[0])]
        parts = [
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<ListVersionsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">',
            f"<Name>{escape(self.bucket_name)}</Name><Prefix>{name(prefix)}</Prefix>",
            f"<KeyMarker>{name(key_marker or '')}</KeyMarker>",
            f"<VersionIdMarker>{escape(version_marker or '')}</VersionIdMarker>",
            f"<MaxKeys>{max_keys}</MaxKeys>",
            f"<IsTruncated>{'true' if next_key is not None else 'false'}</IsTruncated>",
            *body,
        ]
        if next_key is not None:
            parts.append(f"<NextKeyMarker>{name(next_key)}</NextKeyMarker>")
            parts.append(f"<NextVersionIdMarker>{escape(str(next_version))}</NextVersionIdMarker>")
        if encoding:
            parts.append(f"<EncodingType>{escape(encoding)}</EncodingType>")
        parts.append("</ListVersionsResult>")
        return 200, {"Content-Type": "application/xml"}, "".join(parts)

    stock_render_versions = responses.S3Response.list_object_versions
    responses.S3Response.list_object_versions = render_list_object_versions

    # DeleteObjects with <Quiet>true</Quiet>: S3 answers with the errors only; stock moto also
    # lists every deleted key (and spends longer serializing that answer than deleting).
    stock_delete_objects = S3Backend.delete_objects
    stock_delete_keys = responses.S3Response._bucket_response_delete_keys

    def delete_objects(self, *args, **kwargs):
        deleted, errored = stock_delete_objects(self, *args, **kwargs)
        return ([] if getattr(_QUIET, "on", False) else deleted), errored

    def delete_keys(self, *args, **kwargs):
        _QUIET.on = b"<Quiet>true</Quiet>" in (self.body or b"")
        try:
            return stock_delete_keys(self, *args, **kwargs)
        finally:
            _QUIET.on = False

    S3Backend.delete_objects = delete_objects
    responses.S3Response._bucket_response_delete_keys = delete_keys

    def render_list_objects_v2(self):
        bucket = self.backend.get_bucket(self.bucket_name)
        query = self._get_querystring(self.request, self.uri)
        prefix = query.get("prefix", [None])[0]
        if isinstance(prefix, bytes):
            prefix = prefix.decode("utf-8")
        delimiter = self.querystring.get("delimiter", [None])[0]
        token = self.querystring.get("continuation-token", [None])[0]
        max_keys = int(self.querystring.get("max-keys", ["1000"])[0])
        start_after = self.querystring.get("start-after", [None])[0]
        encoding = self.querystring.get("encoding-type", [None])[0]
        page, truncated, next_token = self.backend.list_objects_v2(
            bucket=bucket,
            prefix=prefix,
            delimiter=delimiter,
            continuation_token=token,
            start_after=start_after,
            max_keys=max_keys,
        )

        def name(value: str) -> str:
            return escape(urllib.parse.quote(value) if encoding == "url" else value)

        parts = [
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">',
            f"<Name>{escape(bucket.name)}</Name><Prefix>{name(prefix or '')}</Prefix>",
            f"<MaxKeys>{max_keys}</MaxKeys><KeyCount>{len(page)}</KeyCount>",
            f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>",
        ]
        for item in page:
            if isinstance(item, str):
                continue
            parts.append(
                f"<Contents><Key>{name(item.name)}</Key>"
                f"<LastModified>{item.last_modified_ISO8601}</LastModified>"
                f"<ETag>{escape(item.etag)}</ETag><Size>{item.size}</Size>"
                f"<StorageClass>{item.storage_class}</StorageClass></Contents>"
            )
        if delimiter:
            parts.append(f"<Delimiter>{name(delimiter)}</Delimiter>")
            parts += [
                f"<CommonPrefixes><Prefix>{name(item)}</Prefix></CommonPrefixes>"
                for item in page
                if isinstance(item, str)
            ]
        if encoding:
            parts.append(f"<EncodingType>{escape(encoding)}</EncodingType>")
        if next_token:
            parts.append(f"<NextContinuationToken>{next_token}</NextContinuationToken>")
        if not token and start_after:
            parts.append(f"<StartAfter>{name(start_after)}</StartAfter>")
        parts.append("</ListBucketResult>")
        return 200, {"Content-Type": "application/xml"}, "".join(parts)

    responses.S3Response.list_objects_v2 = render_list_objects_v2


def load_tree(backend, bucket: str, root: str, prefix: str) -> int:
    """Every file under root into the bucket as prefix/<relative path>, in key order."""
    found = []
    for folder, _dirs, files in os.walk(root):
        relative = os.path.relpath(folder, root)
        for file in files:
            key = file if relative == "." else f"{relative}/{file}"
            found.append(key)
    found.sort()
    for key in found:
        with open(os.path.join(root, key), "rb") as handle:
            data = handle.read()
        backend.put_object(bucket, f"{prefix}/{key}" if prefix else key, data,
                           disable_notification=True)  # fmt: skip
    return len(found)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--indexed", action="store_true")
    parser.add_argument("--load")
    parser.add_argument("--prefix", default="")
    parser.add_argument("--object-lock", action="store_true")
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    if args.indexed:
        install_indexed_listing()
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    backend.create_bucket(args.bucket, "us-east-1")
    if args.object_lock:
        backend.put_bucket_versioning(args.bucket, "Enabled")
        backend.put_object_lock_configuration(args.bucket, lock_enabled=True)
    started = time.monotonic()
    loaded = load_tree(backend, args.bucket, args.load, args.prefix) if args.load else 0
    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # the server's threads inherit the mask
    server = ThreadedMotoServer("127.0.0.1", args.port, verbose=False)
    server.start()
    print(f"ready {loaded} {time.monotonic() - started:.1f}", flush=True)
    signal.sigwait(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
