"""Listing a store fast: what monitoring and retention read on every tick or run.

`BackupStore._list` is correct but costly at scale. On S3, botocore's generic XML parser takes
40-100 ms a page of 1,000 keys on this project's 2-core machines (most of it dateutil parsing
each LastModified); on a local folder, pathlib objects per file cost ~20 us each. A store of
10,000 workspaces holds ~180,000 keys per day, so these costs decide whether a sensor tick
takes 3 s or 30 s. Here the same listings are read with expat (S3) and os.scandir (local):
the same keys, sizes and modification times, for a fraction of the CPU.

    iter_keys(store, prefix)     every (key, size, mtime) under prefix, like BackupStore._list
    iter_objects(store, prefix)  the same with a version tag: S3's ETag, a local file's inode
                                 and mtime in ns (changes whenever the object is rewritten)
    list_folders(store, prefix)  the immediate sub-folders of prefix (S3: Delimiter "/")
    iter_manifests(store, prefix)
                                 iter_objects, but only the manifests (a local folder's
                                 generation folders are not even opened; on S3 each artifact's
                                 generation files come back as one CommonPrefix, unlisted)
    iter_versions(store, prefix) every version and delete marker under prefix in a versioned
                                 S3 bucket (Object Lock), optionally after a given version
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import threading
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Collection, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple
from urllib.parse import unquote_plus

import botocore.handlers

from backup_pipelines.lib.errors import StoreError
from backup_pipelines.lib.store.base import BackupStore
from backup_pipelines.lib.store.local import LocalStore
from backup_pipelines.lib.store.manifest import GENERATION_PREFIX, MANIFEST_NAME, is_generation
from backup_pipelines.lib.store.s3 import S3Store

Listed = tuple[str, int, float]  # key relative to the store, size, modified (epoch seconds)


class ObjectVersion(NamedTuple):
    """One version of an object in a versioned bucket (key relative to the store)."""

    key: str
    version_id: str
    is_latest: bool
    delete_marker: bool


Tagged = tuple[str, int, float, str]  # ... and a tag that changes when the object is rewritten


def iter_keys(store: BackupStore, prefix: str) -> Iterator[Listed]:
    """Every object under `prefix` (a folder path ending with "/", or "" for the whole
    store), as `store._list(prefix)` yields them."""
    for key, size, mtime, _tag in iter_objects(store, prefix):
        yield key, size, mtime


def iter_objects(store: BackupStore, prefix: str) -> Iterator[Tagged]:
    """iter_keys with each object's tag (S3: the ETag; local: inode and mtime in ns; other
    stores: mtime and size)."""
    if isinstance(store, S3Store):
        return _s3_keys(store, prefix)
    if isinstance(store, LocalStore):
        return _local_keys(store, prefix)
    return ((k, s, m, f"{m}:{s}") for k, s, m in store._list(prefix))


# With this delimiter, an S3 listing returns every file inside an artifact's generation
# folders ("<folder>/g-<stamp>/<name>", 1-7 per artifact) as one CommonPrefix per artifact
# folder, and every other object (its manifest) as itself: a date of 10,000 workspace dumps is
# ~20,000 entries (20 pages) instead of ~76,000. It can only leave keys out, never add one;
# no manifest key has "/g-" after its date folder (workspace ids and windows have no "/"), so
# a server grouping as S3 does leaves none out (checked page by page, see _s3_manifest_keys).
GENERATION_DELIMITER = "/" + GENERATION_PREFIX
# S3 error codes of a server that does not take a delimiter other than "/": listed in full.
DELIMITER_REFUSED = ("NotImplemented", "InvalidArgument")
_FULL_LISTING_ONLY: set[str] = set()  # stores (describe()) that refused or misapplied it


def iter_manifests(store: BackupStore, prefix: str) -> Iterator[Tagged]:
    """The objects named like a manifest under `prefix`, as iter_objects lists them (the same
    keys, sizes, times and tags), without the generation files: on a local folder generation
    folders are skipped unopened (a sensor tick over 10,000 workspaces stats 30,000 files
    instead of 300,000); on S3 they are grouped away by the listing (GENERATION_DELIMITER)."""
    if isinstance(store, LocalStore):
        return _local_keys(store, prefix, manifests_only=True)
    if isinstance(store, S3Store):
        listed: Iterator[Tagged] = iter(_s3_manifest_keys(store, prefix))
    else:
        listed = iter_objects(store, prefix)
    return (o for o in listed if o[0].rpartition("/")[2] == MANIFEST_NAME)


# The whole store is listed (retention) as its date folders at once, this many at a time on
# S3, where each is a chain of page requests waiting on the server. The levels above them
# (assets) are walked one folder at a time.
STORE_LISTING_THREADS = 4
# On a local folder whose metadata the page cache holds, the listing is CPU work (scandir,
# lstat and the Python around each): threads only contend for the GIL. Measured on this
# project's 2-core machine, the remembered plan at 10,000 workspaces: 7.4-8.5 s in the calling
# thread, 8.2-10.0 s with 2 threads, 11.9-13.1 s with 4. 1: in the calling thread.
LOCAL_LISTING_THREADS = 1
# Where the metadata must be read from disk (~900 MB of directory blocks and inode tables for
# 10,000 workspaces: a cold cache, a large store), that reading is system time and waits that
# threads spread over the cores: the same plan cold took 34-47 s in one thread, 21-22 s with 4.
# So once a local walk in one thread has read more than COLD_READ_PER_FOLDER bytes from disk
# per folder listed (~5 KB when cold, next to nothing when warm), the date folders left are
# walked LOCAL_COLD_LISTING_THREADS at a time.
LOCAL_COLD_LISTING_THREADS = 4
COLD_READ_PER_FOLDER = 1024
COLD_READ_MIN = 1 << 20
# A deferred folder's listing: opened as a folder, never through a link; folders listed per
# check of this thread's disk reads (and per task once in threads).
_OPEN_FOLDER_NOT_LINK = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
OWN_FILES_CHUNK = 64
DATE_FOLDER = "date="
MAX_WALK_DEPTH = 4  # asset key paths are 2 levels; below this, a folder is listed whole


@dataclass
class WalkReport:
    """How iter_store_folders went, for a plan's log and metadata: how many date folders it
    listed whole, and after how many of them a local walk switched to threads because it was
    reading the file system's metadata from disk (None: it never did)."""

    date_folders: int = 0
    switched_after: int | None = None

    def describe(self) -> str:
        if self.switched_after is None:
            return f"{self.date_folders} date folders"
        return (
            f"{self.date_folders} date folders, {LOCAL_COLD_LISTING_THREADS} at a time after the "
            f"first {self.switched_after} (the file system's metadata was being read from disk)"
        )


def iter_store_folders(
    store: BackupStore,
    stats: bool = False,
    report: WalkReport | None = None,
    defer_generations: bool | Callable[[list[str]], Collection[str]] = False,
) -> Iterator[tuple[str | None, list | None]]:
    """Every object of the store, as iter_objects(store, "") lists them, in batches (not in
    that order): (the folder all of the batch's objects are directly in, or None, objects).
    The objects outside date folders come first, then each date folder's (a local folder's
    one folder at a time), STORE_LISTING_THREADS (S3) or LOCAL_LISTING_THREADS date folders
    listed at once (LOCAL_COLD_LISTING_THREADS once a local walk reads from disk). With
    `stats`, a local folder's batches inside date folders are local_stats' (name, lstat)
    pairs: no key or tag string is made for the 400,000 files of 10,000 workspaces, only for
    those a caller asks for (scan.Folder.objects); with `defer_generations` as well, a local
    generation folder is not opened but named, as the batch (its folder, None), for the
    caller to list if it needs it (list_own_files): in every date folder, or (a callable
    given every date folder listed whole) in those it returns."""
    if not isinstance(store, LocalStore | S3Store):
        yield None, list(iter_objects(store, ""))
        return
    loose, whole = _walk_to_date_folders(store)
    if report is not None:
        report.date_folders = len(whole)
    yield None, loose
    threads = STORE_LISTING_THREADS
    if isinstance(store, LocalStore):
        walk = local_folders
        if stats:
            deferred = _deferred_in(whole, defer_generations)

            def walk(store: LocalStore, prefix: str):
                return local_stats(store, prefix, defer_generations=prefix in deferred)

        threads = LOCAL_LISTING_THREADS
        if threads <= 1:
            walked = len(whole)
            whole = yield from _walk_until_cold(store, walk, whole)
            threads = LOCAL_COLD_LISTING_THREADS
            if not whole:
                return
            if report is not None:
                report.switched_after = walked - len(whole)

        def list_whole(prefix: str) -> list[tuple[str | None, list]]:
            return list(walk(store, prefix))
    else:

        def list_whole(prefix: str) -> list[tuple[str | None, list]]:
            return [(None, list(_s3_keys(store, prefix)))]

    with ThreadPoolExecutor(threads) as pool:
        for batches in pool.map(list_whole, whole):
            yield from batches


def _deferred_in(
    folders: list[str], defer: bool | Callable[[list[str]], Collection[str]]
) -> Collection[str]:
    if callable(defer):
        return set(defer(folders))
    return set(folders) if defer else ()


def _walk_until_cold(
    store: LocalStore, walk, prefixes: list
) -> Generator[tuple[str | None, list], None, list]:
    """Walks `prefixes` (what `walk` takes: a date folder, a chunk of folders) one after the
    other in this thread while their metadata comes from memory; returns those left once the
    walk reads from disk (COLD_READ_PER_FOLDER a batch walked)."""
    started = _disk_reads()
    folders = 0
    for index, prefix in enumerate(prefixes):
        for batch in walk(store, prefix):
            folders += 1
            yield batch
        if started is not None:
            read = _disk_reads() - started
            if read > max(COLD_READ_MIN, COLD_READ_PER_FOLDER * folders):
                return prefixes[index + 1 :]
    return []


def _disk_reads() -> int | None:
    """Bytes this thread has read from disk (Linux: its getrusage), or None where unknown."""
    who = getattr(resource, "RUSAGE_THREAD", None)  # not on macOS: never switches there
    if who is None:
        return None
    return resource.getrusage(who).ru_inblock * 512


def _walk_to_date_folders(store: BackupStore) -> tuple[list[Tagged], list[str]]:
    """(the objects found walking down from the store's root, the folders to list whole):
    folders are walked level by level until a date folder (or MAX_WALK_DEPTH); every object
    lies either in a walked folder or under a folder listed whole."""
    loose: list[Tagged] = []
    whole: list[str] = []
    level = [""]
    for depth in range(MAX_WALK_DEPTH + 1):
        below: list[str] = []
        for prefix in level:
            objects, folders = _one_level(store, prefix)
            loose += objects
            for name in folders:
                if name.startswith(DATE_FOLDER) or depth == MAX_WALK_DEPTH:
                    whole.append(f"{prefix}{name}/")
                else:
                    below.append(f"{prefix}{name}/")
        level = below
        if not level:
            break
    return loose, whole


def _one_level(store: BackupStore, prefix: str) -> tuple[list[Tagged], list[str]]:
    """The objects directly in `prefix` and the names of its sub-folders."""
    if isinstance(store, S3Store):
        strip = len(store.prefix) + 1 if store.prefix else 0
        base = len(store._full(prefix))
        objects: list[Tagged] = []
        names: list[str] = []
        for contents, folders in _s3_pages(store, prefix, "/"):
            objects += [(key[strip:], size, mtime, tag) for key, size, mtime, tag in contents]
            names += [folder[base:].rstrip("/") for folder in folders]
        return objects, names
    found = next(local_folders(store, prefix, descend=False), None)
    return (found[1] if found else []), _local_folders(store, prefix)


def list_folders(store: BackupStore, prefix: str) -> list[str]:
    """Names of the immediate sub-folders of `prefix` ("a/b/" -> ["date=...", ...])."""
    if isinstance(store, S3Store):
        return _s3_folders(store, prefix)
    if isinstance(store, LocalStore):
        return _local_folders(store, prefix)
    names = set()
    for key, _size, _mtime in store._list(prefix):
        rest = key[len(prefix) :]
        if "/" in rest:
            names.add(rest.split("/", 1)[0])
    return sorted(names)


# --------------------------------------------------------------------------------------------
# Local folder: os.scandir, symlinks never followed (as LocalStore._list)


def _local_keys(store: LocalStore, prefix: str, manifests_only: bool = False) -> Iterator[Tagged]:
    for _folder, objects in local_folders(store, prefix, manifests_only):
        yield from objects


def local_folders(
    store: LocalStore, prefix: str, manifests_only: bool = False, descend: bool = True
) -> Iterator[tuple[str, list[Tagged]]]:
    """Each folder under `prefix` (relative to the store, "" for its root) with the objects
    directly in it, as iter_objects lists them (one batch a folder); not `descend`: only
    `prefix` itself."""
    for folder, files in local_stats(store, prefix, manifests_only, descend):
        yield folder, [tagged(folder, name, stat) for name, stat in files]


LocalListed = tuple[str, os.stat_result]  # a file's name in its folder, its lstat


def tagged(folder: str, name: str, stat: os.stat_result) -> Tagged:
    """A local file as iter_objects lists it: key, size, mtime, tag (inode and mtime in ns)."""
    key = f"{folder}/{name}" if folder else name
    return key, stat.st_size, stat.st_mtime, f"{stat.st_ino}:{stat.st_mtime_ns}"


def local_stats(
    store: LocalStore,
    prefix: str,
    manifests_only: bool = False,
    descend: bool = True,
    defer_generations: bool = False,
) -> Iterator[tuple[str, list[LocalListed] | None]]:
    """Each folder under `prefix` that holds files, with each file's name and lstat (one
    batch a folder: retention's scan of 430,000 files then parses 170,000 folder names once
    each, not once per file, and makes no key or tag string it does not need).
    `defer_generations`: a generation folder is not opened but yielded as (its folder, None)."""
    root = str(store.root)
    # store._path: the store's own check that a key stays inside its folder
    start = str(store._path(prefix.strip("/"))) if prefix.strip("/") else root
    if not os.path.isdir(start) or os.path.islink(start):
        return
    base_len = len(root) + 1
    stack = [start]
    while stack:
        folder = stack.pop()
        files, below = _own_files(store, folder, base_len, manifests_only)
        for name in below if descend else ():
            if defer_generations and is_generation(name):
                yield f"{folder[base_len:]}/{name}", None
            elif not (manifests_only and is_generation(name)):
                stack.append(f"{folder}/{name}")
        if files:
            yield folder[base_len:], files


def _own_files(
    store: LocalStore,
    folder: str | int,
    base_len: int,
    manifests_only: bool = False,
    path: str = "",
) -> tuple[list[LocalListed], list[str]]:
    """The files directly in `folder` (an absolute path, or an open folder's descriptor and
    its `path`) with their lstat, and the names of its sub-folders (never a linked one)."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return [], []  # removed since it was seen (a commit dropping a generation)
    except OSError as exc:
        where = (folder if isinstance(folder, str) else path)[base_len:]
        raise _refused(store, where, exc) from exc
    files: list[LocalListed] = []
    below: list[str] = []
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            below.append(entry.name)
            continue
        if manifests_only and entry.name != MANIFEST_NAME:
            continue
        if entry.is_symlink() and entry.is_dir():
            continue  # as os.walk in LocalStore._list: a linked folder is neither walked nor listed
        # As LocalStore._list: a symlink or special file is listed as itself (lstat) and
        # refused when read, so a damaged artifact shows up instead of vanishing.
        try:
            files.append((entry.name, entry.stat(follow_symlinks=False)))
        except FileNotFoundError:
            continue
    return files, below


def _refused(store: LocalStore, folder: str, exc: OSError) -> StoreError:
    return StoreError(
        f"backup store {store.describe()} refused to list {folder!r}: {exc.strerror or exc}"
    )


def list_own_files(
    store: LocalStore, folders: list[str], report: WalkReport | None = None
) -> Iterator[tuple[str, list[LocalListed]]]:
    """(folder, its files with their lstat) for each of `folders` (relative to the store, as
    a walk with `defer_generations` named them; one that is gone, or is now a link, lists no
    files), OWN_FILES_CHUNK at a time: in this thread while their metadata comes from
    memory, then LOCAL_COLD_LISTING_THREADS chunks at once (as iter_store_folders). Each is
    opened without following a link, not through LocalStore._path (whose resolve costs ~10
    lstat calls a folder): these paths come from a walk that never follows one."""
    root = str(store.root)
    base_len = len(root) + 1
    chunks = [folders[i : i + OWN_FILES_CHUNK] for i in range(0, len(folders), OWN_FILES_CHUNK)]

    def own(_store: LocalStore, chunk: list[str]) -> list[tuple[str, list[LocalListed]]]:
        return [
            (folder, _own_files_unlinked(store, f"{root}/{folder}", base_len)) for folder in chunk
        ]

    left = yield from _walk_until_cold(store, own, chunks)
    if not left:
        return
    if report is not None:
        report.switched_after = (len(chunks) - len(left)) * OWN_FILES_CHUNK
    with ThreadPoolExecutor(LOCAL_COLD_LISTING_THREADS) as pool:
        for batches in pool.map(lambda chunk: own(store, chunk), left):
            yield from batches


def _own_files_unlinked(store: LocalStore, folder: str, base_len: int) -> list[LocalListed]:
    """_own_files of a folder that must not be a link (O_NOFOLLOW: no lstat of its own)."""
    try:
        handle = os.open(folder, _OPEN_FOLDER_NOT_LINK)
    except (FileNotFoundError, NotADirectoryError):
        return []  # removed since it was seen (a commit dropping a generation)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return []  # a link put in its place since the walk: not followed
        raise _refused(store, folder[base_len:], exc) from exc
    try:
        return _own_files(store, handle, base_len, path=folder)[0]
    finally:
        os.close(handle)


def _local_folders(store: LocalStore, prefix: str) -> list[str]:
    folder = str(store._path(prefix.strip("/"))) if prefix.strip("/") else str(store.root)
    try:
        return sorted(e.name for e in os.scandir(folder) if e.is_dir(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return []


# --------------------------------------------------------------------------------------------
# S3: the store's own client and request path (credentials, endpoint, retries, errors), with
# the ListObjectsV2 body read by expat in a `before-parse` hook, so that botocore's parser is
# handed an empty result. The hook acts only on calls made from here (a thread-local flag).

_S3 = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_FAST = threading.local()
_HOOK_ID = "backup-pipelines-fast-list"
_CHECK_ID = "backup-pipelines-200-check"
_EMPTY_RESULT = b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"/>'
_EMPTY_VERSIONS = b'<ListVersionsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"/>'
_FAST_OPERATIONS = ("ListObjectsV2", "ListObjectVersions")


def _fast_parse_hook(
    response_dict=None, customized_response_dict=None, operation_model=None, **_kwargs
) -> None:
    if not getattr(_FAST, "active", False) or response_dict is None:
        return
    if response_dict.get("status_code") != 200:
        return  # errors go through botocore's parser (ClientError with code and message)
    versions = getattr(operation_model, "name", "") == "ListObjectVersions"
    expected = f"{_S3}ListVersionsResult" if versions else f"{_S3}ListBucketResult"
    root = None
    if customized_response_dict is not None:
        with contextlib.suppress(ElementTree.ParseError):
            root = ElementTree.fromstring(response_dict["body"])
    if root is None or root.tag != expected:
        # Not XML, an <Error> in a 200, or a listing without S3's namespace (whose keys the
        # lookups below would read as empty): botocore's own check (skipped for this page,
        # see _install_hooks) and parser decide what it is.
        if _botocore_200_check is not None:
            _botocore_200_check(operation_model=operation_model, response_dict=response_dict)
        return
    # botocore asks for url-encoded keys (EncodingType=url) and decodes them in its parser.
    encoded = (root.findtext(f"{_S3}EncodingType") or "").lower() == "url"
    name = _url_decoded if encoded else str
    if versions:
        customized_response_dict["FastVersions"] = _read_versions(root, name)
        response_dict["body"] = _EMPTY_VERSIONS
        return
    contents: list[Tagged] = []
    folders: list[str] = []
    truncated, token = False, None
    for element in root:
        tag = element.tag.removeprefix(_S3)
        if tag == "Contents":
            key = name(element.findtext(f"{_S3}Key") or "")
            size = int(element.findtext(f"{_S3}Size") or 0)
            moment = (element.findtext(f"{_S3}LastModified") or "").replace("Z", "+00:00")
            tag = (element.findtext(f"{_S3}ETag") or "").strip('"')
            contents.append((key, size, datetime.fromisoformat(moment).timestamp(), tag))
        elif tag == "CommonPrefixes":
            folders.append(name(element.findtext(f"{_S3}Prefix") or ""))
        elif tag == "IsTruncated":
            truncated = (element.text or "").strip().lower() == "true"
        elif tag == "NextContinuationToken":
            token = element.text
    customized_response_dict["FastListing"] = (contents, folders, truncated, token)
    response_dict["body"] = _EMPTY_RESULT


def _read_versions(root, name: Callable[[str], str]) -> tuple:
    """A ListObjectVersions page: ([ObjectVersion with full keys], truncated, next key marker,
    next version-id marker)."""
    found: list[ObjectVersion] = []
    truncated, next_key, next_version = False, None, None
    for element in root:
        tag = element.tag.removeprefix(_S3)
        if tag in ("Version", "DeleteMarker"):
            found.append(
                ObjectVersion(
                    name(element.findtext(f"{_S3}Key") or ""),
                    element.findtext(f"{_S3}VersionId") or "",
                    (element.findtext(f"{_S3}IsLatest") or "").strip().lower() == "true",
                    tag == "DeleteMarker",
                )
            )
        elif tag == "IsTruncated":
            truncated = (element.text or "").strip().lower() == "true"
        elif tag == "NextKeyMarker":
            next_key = name(element.text or "")
        elif tag == "NextVersionIdMarker":
            next_version = element.text
    return found, truncated, next_key, next_version


def _url_decoded(key: str) -> str:
    """unquote_plus(key), which cost as much as the page's XML parse: the product's keys have
    nothing to decode but the "=" of their folder names (date=, workspace=)."""
    plain = key.replace("%3D", "=")
    return unquote_plus(key) if "%" in plain or "+" in plain else plain


# botocore parses every 200 answer of S3 whole, looking for an <Error> body (S3 may send one
# with a 200), in a handler that runs before any of ours: a second parse of each listing page,
# ~40% of the client's time for a page of 1,000 keys. For the pages _fast_parse_hook reads, the
# hook runs that check itself, and only where the page is not a listing.
_botocore_200_check = getattr(botocore.handlers, "_handle_200_error", None)


def _checked_unless_fast_listing(operation_model=None, response_dict=None, **kwargs) -> None:
    if getattr(_FAST, "active", False) and getattr(operation_model, "name", "") in _FAST_OPERATIONS:
        return
    _botocore_200_check(operation_model=operation_model, response_dict=response_dict, **kwargs)


def _install_hooks(events) -> None:
    """On one client's events (each client has its own)."""
    if _botocore_200_check is not None:
        events.unregister("before-parse.s3.*", _botocore_200_check)
        events.register_first(
            "before-parse.s3.*", _checked_unless_fast_listing, unique_id=_CHECK_ID
        )
    for operation in _FAST_OPERATIONS:
        events.register(
            f"before-parse.s3.{operation}", _fast_parse_hook, unique_id=f"{_HOOK_ID}-{operation}"
        )


def _s3_pages(
    store: S3Store, prefix: str, delimiter: str | None, refused: tuple[str, ...] = ()
) -> Iterator[tuple]:
    """Each page's (contents, common prefixes); an S3 error whose code is in `refused` raises
    _DelimiterNotApplied."""
    _install_hooks(store.client.meta.events)
    full = store._full(prefix)
    arguments = {"Bucket": store.bucket, "Prefix": full, "MaxKeys": 1000}
    if delimiter:
        arguments["Delimiter"] = delimiter
    sent: set[str] = set()
    while True:
        _FAST.active = True
        try:
            answer = store._call(
                "list", prefix, store.client.list_objects_v2, allowed=refused, **arguments
            )
        finally:
            _FAST.active = False
        if isinstance(answer, str):
            raise _DelimiterNotApplied(f"{delimiter!r} refused: {answer}")
        if "FastListing" in answer:
            contents, folders, truncated, token = answer["FastListing"]
        else:  # parsed by botocore
            contents = [
                (i["Key"], i["Size"], i["LastModified"].timestamp(), i.get("ETag", "").strip('"'))
                for i in answer.get("Contents", [])
            ]
            folders = [p["Prefix"] for p in answer.get("CommonPrefixes", [])]
            truncated, token = answer.get("IsTruncated"), answer.get("NextContinuationToken")
        # What is listed here is read, restored and deleted: a server (or proxy) ignoring
        # Prefix must not name other folders' objects.
        if any(not item[0].startswith(full) for item in contents):
            contents = [item for item in contents if item[0].startswith(full)]
        if any(not folder.startswith(full) for folder in folders):
            folders = [folder for folder in folders if folder.startswith(full)]
        yield contents, folders
        if not truncated or not token:
            return
        if token in sent:  # straight back, or a cycle (A, B, A, ...): it would never end
            raise StoreError(
                f"backup store {store.describe()}: the listing under {prefix!r} does not advance "
                "(the server sent a continuation token it had sent before); check the S3 endpoint"
            )
        sent.add(token)
        arguments["ContinuationToken"] = token


VERSIONS_PAGE = 1000  # versions a ListObjectVersions page (S3's most)


def iter_versions(
    store: S3Store, prefix: str, after: tuple[str, str] | None = None
) -> Iterator[ObjectVersion]:
    """Every version and delete marker under `prefix` (keys relative to the store), in key
    order; with `after` (key, version id), those S3 lists after it (its key and version-id
    markers): every version of each later key, and of that key those older than it. Pages
    are requested as they are consumed: a caller that stops early sends no more."""
    _install_hooks(store.client.meta.events)
    strip = len(store.prefix) + 1 if store.prefix else 0
    full = store._full(prefix)
    arguments = {"Bucket": store.bucket, "Prefix": full, "MaxKeys": VERSIONS_PAGE}
    if after is not None:
        arguments["KeyMarker"], arguments["VersionIdMarker"] = store._full(after[0]), after[1]
    sent: set[tuple[str, str]] = set()
    while True:
        _FAST.active = True
        try:
            page = store._call(
                "list the versions under", prefix, store.client.list_object_versions, **arguments
            )
        finally:
            _FAST.active = False
        if "FastVersions" in page:
            found, truncated, next_key, next_version = page["FastVersions"]
        else:  # parsed by botocore: versions and delete markers in two lists
            found = list(_botocore_versions(page))
            truncated = page.get("IsTruncated")
            next_key, next_version = page.get("NextKeyMarker"), page.get("NextVersionIdMarker")
        # In key order: callers stop at the first key past what they want. (moto sends a page's
        # delete markers after its versions; S3 by key, newest first.)
        for version in sorted(found, key=lambda version: version.key):
            if version.key.startswith(full):  # a server ignoring Prefix must not name others
                yield version._replace(key=version.key[strip:])
        if not truncated or not next_key:
            return
        markers = (next_key, next_version or "")
        if markers in sent:
            raise StoreError(
                f"backup store {store.describe()}: the listing of versions under {prefix!r} does "
                f"not advance (the server sent markers it had sent before, {next_key!r}); check "
                "the S3 endpoint"
            )
        sent.add(markers)
        arguments["KeyMarker"], arguments["VersionIdMarker"] = markers


def _botocore_versions(page: dict) -> Iterator[ObjectVersion]:
    for marker, items in ((False, page.get("Versions")), (True, page.get("DeleteMarkers"))):
        for item in items or []:
            yield ObjectVersion(item["Key"], item["VersionId"], item.get("IsLatest", False), marker)


def _s3_keys(store: S3Store, prefix: str) -> Iterator[Tagged]:
    strip = len(store.prefix) + 1 if store.prefix else 0
    for contents, _folders in _s3_pages(store, prefix, None):
        for key, size, mtime, tag in contents:
            yield key[strip:], size, mtime, tag


class _DelimiterNotApplied(Exception):
    """The server refused GENERATION_DELIMITER or grouped keys otherwise than S3 does."""


def _s3_manifest_keys(store: S3Store, prefix: str) -> list[Tagged]:
    """Every object under `prefix` outside a generation folder (each manifest, loose files),
    from a listing with GENERATION_DELIMITER; the full listing where the server does not
    group keys by it exactly as S3 does."""
    if store.describe() not in _FULL_LISTING_ONLY:
        try:
            return _s3_delimited_keys(store, prefix)
        except _DelimiterNotApplied:
            _FULL_LISTING_ONLY.add(store.describe())
    return list(_s3_keys(store, prefix))


def _s3_delimited_keys(store: S3Store, prefix: str) -> list[Tagged]:
    full = store._full(prefix)
    strip = len(store.prefix) + 1 if store.prefix else 0
    found: list[Tagged] = []
    pages = _s3_pages(store, prefix, GENERATION_DELIMITER, refused=DELIMITER_REFUSED)
    for contents, folders in pages:
        for folder in folders:
            # S3 groups a key at the first "/g-" after the prefix: a CommonPrefix is the
            # prefix, then text without "/g-", then "/g-". Anything else could be hiding a
            # manifest (a server grouping at "/" would hide them all): listed in full instead.
            rest = folder[len(full) :] if folder.startswith(full) else ""
            if rest.find(GENERATION_DELIMITER) != len(rest) - len(GENERATION_DELIMITER):
                raise _DelimiterNotApplied(folder)
        found += [(key[strip:], size, mtime, tag) for key, size, mtime, tag in contents]
    return found


def _s3_folders(store: S3Store, prefix: str) -> list[str]:
    base = len(store._full(prefix))
    names = []
    for _contents, folders in _s3_pages(store, prefix, "/"):
        names += [folder[base:].rstrip("/") for folder in folders]
    return sorted(names)
