"""moto's S3 server in a child process, loaded with a whole store at once, optionally with a
listing that costs what real S3's costs (bench/README.md, bench_scale.py).

Stock moto (5.2) answers each ListObjectsV2 page by scanning every key of the bucket, sorting
the matches and rendering the page through its generic serializer: measured here, ~0.5 s per
page of 1,000 keys once the bucket holds 300,000 keys (and growing with the bucket), where real
S3 answers a page in tens of milliseconds whatever the bucket's size. A benchmark of a client
that lists 10,000 workspaces would then measure moto. With `--indexed`, this server keeps a
sorted index of each bucket's keys (updated on every put and delete), answers a page from it
by bisection, and renders the page's XML directly: the same keys, sizes, ETags, modification
times, prefixes, continuation tokens and truncation as stock moto (bench_scale.py compares the
two on the same store before it measures anything), at S3's cost. Everything else (GET, PUT, HEAD, DELETE, multipart) is stock moto.

Loading: `--load DIR --prefix P` puts every file under DIR into the bucket as `P/<path>`,
straight into moto's backend before the server starts listening (HTTP PUTs of 500,000 objects
would take an hour here); files are put in sorted key order, so within an artifact a marker is
never newer than its manifest, as the writer leaves them.

    python bench/scale_moto.py --port P --bucket B [--indexed] [--load DIR --prefix P]

Prints `ready <objects>` when listening; stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import bisect
import logging
import os
import signal
import sys
import time
import urllib.parse
from xml.sax.saxutils import escape

INDEX_ATTRIBUTE = "_bench_sorted_names"
HIGHEST = chr(0x10FFFF)


def install_indexed_listing() -> None:
    from moto.s3 import responses, utils
    from moto.s3.models import FakeDeleteMarker, S3Backend

    store_class = utils._VersionedKeyStore
    stock_setlist, stock_pop = store_class.setlist, store_class.pop

    def names_of(store) -> list[str]:
        names = store.__dict__.get(INDEX_ATTRIBUTE)
        if names is None:
            names = store.__dict__[INDEX_ATTRIBUTE] = sorted(dict.keys(store))
        return names

    def setlist(self, key, list_):
        added = not dict.__contains__(self, key)
        stock_setlist(self, key, list_)
        if added and INDEX_ATTRIBUTE in self.__dict__:
            bisect.insort(self.__dict__[INDEX_ATTRIBUTE], key)

    def pop(self, key):
        stock_pop(self, key)
        names = self.__dict__.get(INDEX_ATTRIBUTE)
        if names is not None:
            at = bisect.bisect_left(names, key)
            if at < len(names) and names[at] == key:
                del names[at]

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
        page: list = []
        while at < len(names) and len(page) <= max_keys and names[at].startswith(prefix):
            name = names[at]
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
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    if args.indexed:
        install_indexed_listing()
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    backend.create_bucket(args.bucket, "us-east-1")
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
