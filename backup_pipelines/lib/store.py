"""The backup store: a local folder or an S3 bucket behind one interface.

Layout (DESIGN "Artifact layout"): one folder per materialized partition,

    <root>/<asset key path>/date=<YYYY-MM-DD>[/workspace=<id>]/manifest.json
    <root>/<asset key path>/date=<YYYY-MM-DD>[/workspace=<id>]/<generation>/<file>

An artifact exists only when its manifest exists. Every write stages its files under a fresh
generation folder and commits by writing manifest.json last, atomically (local: fsync +
rename; S3: a single PUT after every multipart upload completed). A crashed run therefore
leaves files that no manifest names: never read, and replaced cleanly by the next run of
the same partition. Keeping the files in a generation folder (rather than overwriting the
previous artifact's files in place) means the previous complete artifact stays readable
until the very moment the new manifest replaces it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import queue
import secrets
import shutil
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

from backup_pipelines.lib.errors import (
    ArtifactNotFound,
    ChecksumMismatch,
    ConfigError,
    StoreError,
)
from backup_pipelines.lib.workspaces import validate_workspace_id

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT_VERSION = 1
CHUNK = 1 << 20
GENERATION_PREFIX = "g-"


@dataclass(frozen=True, order=True)
class ArtifactRef:
    """Which artifact: an asset key path and a partition (workspace is None for whole-database)."""

    asset: str  # "postgres/workspace_dump"
    date: str  # "YYYY-MM-DD"
    workspace: str | None = None

    def __post_init__(self) -> None:
        datetime.strptime(self.date, "%Y-%m-%d")  # refuses anything but a real date
        if self.workspace is not None:
            validate_workspace_id(self.workspace)
        if not all(part and part.replace("_", "").isalnum() for part in self.asset.split("/")):
            raise ValueError(f"invalid asset key path {self.asset!r}")

    @property
    def folder(self) -> str:
        folder = f"{self.asset}/date={self.date}"
        if self.workspace is not None:
            folder += f"/workspace={self.workspace}"
        return folder

    @property
    def partition(self) -> dict:
        return {"date": self.date, "workspace": self.workspace}

    def __str__(self) -> str:
        return self.folder


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------------------------
# Hashing off the critical path: the writer hands chunks to a thread that hashes them while the
# caller produces the next chunk (hashlib releases the GIL on large buffers).


class _BackgroundHasher:
    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=16)
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self._digest.update(chunk)

    def update(self, chunk: bytes) -> None:
        self._queue.put(chunk)

    def hexdigest(self) -> str:
        self._queue.put(None)
        self._thread.join()
        return self._digest.hexdigest()


class FileWriter(io.RawIOBase):
    """A write-only stream into one file of an artifact; counts bytes and hashes them."""

    def __init__(self, name: str, sink: _Sink, on_progress: Callable[[int], None] | None) -> None:
        self.name_in_artifact = name
        self._sink = sink
        self._hasher = _BackgroundHasher()
        self._on_progress = on_progress
        self.bytes_written = 0
        self.sha256: str | None = None

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        chunk = bytes(data)
        if not chunk:
            return 0
        self._sink.write(chunk)
        self._hasher.update(chunk)
        self.bytes_written += len(chunk)
        if self._on_progress:
            self._on_progress(len(chunk))
        return len(chunk)

    def finish(self) -> dict:
        self._sink.close()
        self.sha256 = self._hasher.hexdigest()
        return {"name": self.name_in_artifact, "bytes": self.bytes_written, "sha256": self.sha256}

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._sink.abort()
        with contextlib.suppress(Exception):
            self._hasher.hexdigest()


class _Sink(ABC):
    @abstractmethod
    def write(self, chunk: bytes) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def abort(self) -> None: ...


class ArtifactWriter:
    """Stage the files of one artifact, then commit by writing its manifest last.

    Use as a context manager: leaving it without commit() (an exception, a failed check)
    removes what was staged, so nothing half-written is ever taken for an artifact.
    """

    def __init__(self, store: BackupStore, ref: ArtifactRef, on_progress=None) -> None:
        self.store = store
        self.ref = ref
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        self.generation = f"{GENERATION_PREFIX}{stamp}-{secrets.token_hex(4)}"
        self._files: list[dict] = []
        self._open: FileWriter | None = None
        self._on_progress = on_progress
        self.committed: dict | None = None

    def _key(self, name: str) -> str:
        return f"{self.ref.folder}/{self.generation}/{name}"

    @contextlib.contextmanager
    def open_file(self, name: str) -> Iterator[FileWriter]:
        if "/" in name or name in {"", ".", "..", MANIFEST_NAME}:
            raise ValueError(f"invalid artifact file name {name!r}")
        if any(f["name"] == name for f in self._files):
            raise ValueError(f"file {name!r} written twice in {self.ref}")
        writer = FileWriter(name, self.store._open_sink(self._key(name)), self._on_progress)
        self._open = writer
        try:
            yield writer
        except BaseException:
            writer.abort()
            raise
        finally:
            self._open = None
        entry = writer.finish()
        entry["path"] = f"{self.generation}/{name}"
        self._files.append(entry)

    def write_bytes(self, name: str, data: bytes) -> dict:
        with self.open_file(name) as handle:
            handle.write(data)
        return self._files[-1]

    @property
    def files(self) -> list[dict]:
        return list(self._files)

    def commit(self, **fields) -> dict:
        """Write manifest.json (the commit point) and drop the previous artifact's files."""
        previous = self.store.read_manifest(self.ref)
        manifest = {
            "format_version": MANIFEST_FORMAT_VERSION,
            "asset": self.ref.asset,
            "partition": self.ref.partition,
            "created_at": utc_now_iso(),
            "generation": self.generation,
            "files": self._files,
            **fields,
        }
        for required in ("captured_at", "counts", "source", "tool"):
            if required not in manifest:
                raise ValueError(f"manifest of {self.ref} lacks {required!r}")
        body = json.dumps(manifest, indent=2, sort_keys=True).encode()
        self.store._put_atomic(f"{self.ref.folder}/{MANIFEST_NAME}", body)
        self.committed = manifest
        if previous and previous.get("generation") != self.generation:
            self.store._delete_prefix(f"{self.ref.folder}/{previous['generation']}/")
        return manifest

    def abort(self) -> None:
        if self._open is not None:
            self._open.abort()
        with contextlib.suppress(Exception):
            self.store._delete_prefix(f"{self.ref.folder}/{self.generation}/")

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.committed is None:
            self.abort()


class VerifyingReader(io.RawIOBase):
    """Reads one artifact file and raises ChecksumMismatch at its end if bytes or sha256 differ."""

    def __init__(self, raw: BinaryIO, entry: dict, where: str) -> None:
        self._raw = raw
        self._entry = entry
        self._where = where
        self._digest = hashlib.sha256()
        self._bytes = 0
        self._checked = False

    @property
    def description(self) -> str:
        return f"{self._where}: file {self._entry['name']!r}"

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:

        data = self._raw.read(len(buffer))
        if not data:
            self._check()
            return 0
        self._digest.update(data)
        self._bytes += len(data)
        buffer[: len(data)] = data
        return len(data)

    def _check(self) -> None:
        if self._checked:
            return
        self._checked = True
        expected_bytes, expected_sha = self._entry["bytes"], self._entry["sha256"]
        actual_sha = self._digest.hexdigest()
        if self._bytes != expected_bytes or actual_sha != expected_sha:
            raise ChecksumMismatch(
                f"{self._where}: file {self._entry['name']!r} does not match its manifest "
                f"(expected {expected_bytes} bytes sha256 {expected_sha[:16]}..., read "
                f"{self._bytes} bytes sha256 {actual_sha[:16]}...); the artifact is corrupt — "
                "do not restore from it, use another date"
            )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._raw.close()
        super().close()


def iter_chunks(stream: BinaryIO, size: int = CHUNK) -> Iterator[bytes]:
    while chunk := stream.read(size):
        yield chunk


@dataclass
class VerifyResult:
    ref: ArtifactRef
    ok: bool
    files: int
    bytes: int
    problems: list[str]
    seconds: float


class BackupStore(ABC):
    """Operations shared by both backends; the backends only move bytes by key."""

    # -- backend primitives ------------------------------------------------------------------
    @abstractmethod
    def describe(self) -> str:
        """Where the store is, with no secret in it."""

    @abstractmethod
    def _open_sink(self, key: str) -> _Sink: ...

    @abstractmethod
    def _put_atomic(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def _get(self, key: str) -> bytes | None: ...

    @abstractmethod
    def _open_read(self, key: str) -> BinaryIO: ...

    @abstractmethod
    def _list(self, prefix: str) -> Iterator[tuple[str, int, float]]:
        """(key, size, modified epoch seconds) under prefix."""

    @abstractmethod
    def _delete_prefix(self, prefix: str) -> None: ...

    def check_writable(self) -> None:
        """Fail early, naming the store, when it refuses writes."""
        key = f"_health/probe-{secrets.token_hex(4)}"
        self._put_atomic(key, b"ok")
        self._delete_prefix(key)

    # -- artifacts -------------------------------------------------------------------------
    def begin(self, ref: ArtifactRef, on_progress=None) -> ArtifactWriter:
        return ArtifactWriter(self, ref, on_progress)

    def location(self, ref: ArtifactRef) -> str:
        return f"{self.describe().rstrip('/')}/{ref.folder}"

    def read_manifest(self, ref: ArtifactRef) -> dict | None:
        body = self._get(f"{ref.folder}/{MANIFEST_NAME}")
        if body is None:
            return None
        try:
            manifest = json.loads(body)
        except ValueError as exc:
            raise StoreError(
                f"{self.location(ref)}: manifest.json is not valid JSON ({exc})"
            ) from exc
        if manifest.get("format_version") != MANIFEST_FORMAT_VERSION:
            raise StoreError(
                f"{self.location(ref)}: manifest format_version "
                f"{manifest.get('format_version')!r} is not supported (expected "
                f"{MANIFEST_FORMAT_VERSION})"
            )
        return manifest

    def require_manifest(self, ref: ArtifactRef) -> dict:
        manifest = self.read_manifest(ref)
        if manifest is None:
            raise ArtifactNotFound(f"no complete artifact at {self.location(ref)} (no manifest)")
        return manifest

    def open_file(self, ref: ArtifactRef, manifest: dict, name: str) -> VerifyingReader:
        entry = next((f for f in manifest["files"] if f["name"] == name), None)
        if entry is None:
            raise ArtifactNotFound(f"{self.location(ref)}: the manifest lists no file {name!r}")
        raw = self._open_read(f"{ref.folder}/{entry['path']}")
        return VerifyingReader(raw, entry, self.location(ref))

    def verify(self, ref: ArtifactRef) -> VerifyResult:
        """Re-read every file of the artifact and check size and sha256 against the manifest."""
        started = time.monotonic()
        problems: list[str] = []
        manifest = self.read_manifest(ref)
        if manifest is None:
            return VerifyResult(ref, False, 0, 0, [f"no manifest at {self.location(ref)}"], 0.0)
        total = 0
        for entry in manifest["files"]:
            try:
                with self.open_file(ref, manifest, entry["name"]) as reader:
                    for chunk in iter_chunks(reader):
                        total += len(chunk)
            except (ChecksumMismatch, StoreError) as exc:
                problems.append(str(exc))
            except (FileNotFoundError, KeyError) as exc:
                problems.append(f"{self.location(ref)}: file {entry['name']!r} is missing ({exc})")
        return VerifyResult(
            ref, not problems, len(manifest["files"]), total, problems, time.monotonic() - started
        )

    def list_artifacts(self, asset: str | None = None) -> Iterator[ArtifactRef]:
        """Every committed artifact (those with a manifest), optionally of one asset."""
        for key, _size, _mtime in self._list(f"{asset}/" if asset else ""):
            if not key.endswith("/" + MANIFEST_NAME):
                continue
            ref = parse_artifact_folder(key[: -len(MANIFEST_NAME) - 1])
            if ref is not None:
                yield ref

    def delete_artifact(self, ref: ArtifactRef) -> None:
        """Remove the manifest first, so a half-deleted artifact is never taken for complete."""
        self._delete_prefix(f"{ref.folder}/{MANIFEST_NAME}")
        self._delete_prefix(f"{ref.folder}/")

    def _remove_empty_folders(self, prefix: str) -> None:
        """Drop `prefix` and its parents while empty, after deletes. Object stores have no
        folders, so this does nothing there; the local store overrides it."""
        return None


def parse_artifact_folder(folder: str) -> ArtifactRef | None:
    parts = folder.split("/")
    workspace = None
    if parts and parts[-1].startswith("workspace="):
        workspace = parts.pop()[len("workspace=") :]
    if not parts or not parts[-1].startswith("date="):
        return None
    date = parts.pop()[len("date=") :]
    try:
        return ArtifactRef("/".join(parts), date, workspace)
    except ValueError:
        return None


# ------------------------------------------------------------------------------------------------
# Local folder


class _LocalSink(_Sink):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._handle = open(path, "wb")  # noqa: SIM115 - closed in close()/abort()

    def write(self, chunk: bytes) -> None:
        self._handle.write(chunk)

    def close(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()

    def abort(self) -> None:
        self._handle.close()
        self._path.unlink(missing_ok=True)


class LocalStore(BackupStore):
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_absolute():
            raise ConfigError(
                f"BACKUP_STORE_URL: a file:// store needs an absolute path, got {root!r}"
            )

    def describe(self) -> str:
        return f"file://{self.root}"

    def _path(self, key: str) -> Path:
        return self.root / key

    def _wrap(self, action: str, key: str, exc: OSError) -> StoreError:
        return StoreError(
            f"backup store {self.describe()} refused to {action} {key!r}: {exc.strerror or exc}"
        )

    def _open_sink(self, key: str) -> _Sink:
        try:
            return _LocalSink(self._path(key))
        except OSError as exc:
            raise self._wrap("write", key, exc) from exc

    def _put_atomic(self, key: str, data: bytes) -> None:
        final = self._path(key)
        temp = final.with_name(f".{final.name}.{secrets.token_hex(4)}.tmp")
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            with open(temp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, final)
            dir_fd = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise self._wrap("write", key, exc) from exc

    def _get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise self._wrap("read", key, exc) from exc

    def _open_read(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except OSError as exc:
            raise self._wrap("read", key, exc) from exc

    def _list(self, prefix: str) -> Iterator[tuple[str, int, float]]:
        base = self._path(prefix) if prefix else self.root
        if not base.exists():
            return
        for dirpath, _dirs, names in os.walk(base):
            for name in names:
                path = Path(dirpath) / name
                with contextlib.suppress(FileNotFoundError):
                    stat = path.stat()
                    yield path.relative_to(self.root).as_posix(), stat.st_size, stat.st_mtime

    def _delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix.rstrip("/"))
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def _remove_empty_folders(self, prefix: str) -> None:
        path = self._path(prefix.rstrip("/"))
        while path != self.root and self.root in path.parents:
            try:
                path.rmdir()
            except FileNotFoundError:
                pass  # already gone: its parent may still be empty
            except OSError:
                return  # not empty: neither are its parents
            path = path.parent


# ------------------------------------------------------------------------------------------------
# S3 (AWS, MinIO, DigitalOcean Spaces, moto): endpoint and credentials from the standard
# AWS variables, read by boto3 itself.

S3_PART_SIZE = int(os.environ.get("BACKUP_S3_PART_MB", "8")) << 20
# Memory bound per upload: one part uploading, one queued, one filling. Measured: 16 MiB parts
# and two in flight put a Dagster + boto3 backup process at ~240 MB peak RSS.
S3_PARTS_IN_FLIGHT = 1
S3_MAX_PARTS = 10_000


def s3_part_size(part_number: int) -> int:
    """Parts double in size every 1,000 parts, so a file of any size fits S3's 10,000 parts
    while small and medium files keep small parts (and little memory)."""
    return S3_PART_SIZE << min(part_number // 1000, 12)


class _S3MultipartSink(_Sink):
    """Streams a file as a multipart upload; parts upload on a worker while the next fills."""

    def __init__(self, store: S3Store, key: str) -> None:
        self._store = store
        self._key = key
        self._buffer = bytearray()
        self._parts: list[dict] = []
        self._parts_queued = 0
        self._upload_id: str | None = None
        self._pending: queue.Queue = queue.Queue(maxsize=S3_PARTS_IN_FLIGHT)
        self._error: BaseException | None = None
        self._worker: threading.Thread | None = None

    def _start(self) -> None:
        created = self._store._call(
            "start upload of",
            self._key,
            self._store.client.create_multipart_upload,
            Bucket=self._store.bucket,
            Key=self._store._full(self._key),
        )
        self._upload_id = created["UploadId"]
        self._worker = threading.Thread(target=self._upload_parts, name="s3-parts", daemon=True)
        self._worker.start()

    def _upload_parts(self) -> None:
        while (item := self._pending.get()) is not None:
            number, body = item
            if self._error is not None:
                continue
            try:
                answer = self._store._call(
                    "upload part of",
                    self._key,
                    self._store.client.upload_part,
                    Bucket=self._store.bucket,
                    Key=self._store._full(self._key),
                    UploadId=self._upload_id,
                    PartNumber=number,
                    Body=body,
                )
                self._parts.append({"PartNumber": number, "ETag": answer["ETag"]})
            except BaseException as exc:  # surfaced to the writer thread on its next write
                self._error = exc

    def _flush_part(self) -> None:
        if self._upload_id is None:
            self._start()
        self._parts_queued += 1
        number = self._parts_queued
        if number > S3_MAX_PARTS:
            raise StoreError(f"{self._key}: more than {S3_MAX_PARTS} multipart parts")
        body, self._buffer = self._buffer, bytearray()  # handed over, not copied
        self._pending.put((number, body))
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def write(self, chunk: bytes) -> None:
        self._buffer += chunk
        if len(self._buffer) >= s3_part_size(self._parts_queued + 1):
            self._flush_part()

    def _drain(self) -> None:
        if self._worker is not None:
            self._pending.put(None)
            self._worker.join()
            self._worker = None

    def close(self) -> None:
        if self._upload_id is None:  # small file: one PUT, no multipart
            self._store._call(
                "write",
                self._key,
                self._store.client.put_object,
                Bucket=self._store.bucket,
                Key=self._store._full(self._key),
                Body=bytes(self._buffer),
            )
            return
        if self._buffer:
            self._flush_part()
        self._drain()
        self._raise_if_failed()
        self._store._call(
            "complete upload of",
            self._key,
            self._store.client.complete_multipart_upload,
            Bucket=self._store.bucket,
            Key=self._store._full(self._key),
            UploadId=self._upload_id,
            MultipartUpload={"Parts": sorted(self._parts, key=lambda p: p["PartNumber"])},
        )

    def abort(self) -> None:
        self._error = self._error or StoreError("aborted")
        self._drain()
        if self._upload_id is not None:
            with contextlib.suppress(Exception):
                self._store.client.abort_multipart_upload(
                    Bucket=self._store.bucket,
                    Key=self._store._full(self._key),
                    UploadId=self._upload_id,
                )


class S3Store(BackupStore):
    def __init__(self, bucket: str, prefix: str = "", client=None) -> None:
        if len(bucket) < 3:
            raise ConfigError(
                f"BACKUP_STORE_URL: S3 bucket name {bucket!r} is too short (3+ characters)"
            )
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client or make_s3_client()

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, action: str, key: str, function, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return function(**kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise StoreError(
                f"backup store {self.describe()} refused to {action} {key!r}: "
                f"{error.get('Code', '?')} {error.get('Message', '')}".rstrip()
            ) from exc
        except BotoCoreError as exc:
            raise StoreError(
                f"backup store {self.describe()} unreachable while trying to {action} {key!r}: {exc}"
            ) from exc

    def _open_sink(self, key: str) -> _Sink:
        return _S3MultipartSink(self, key)

    def _put_atomic(self, key: str, data: bytes) -> None:
        self._call(
            "write", key, self.client.put_object, Bucket=self.bucket, Key=self._full(key), Body=data
        )

    def _get(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self._full(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                return None
            raise StoreError(
                f"backup store {self.describe()} refused to read {key!r}: {exc}"
            ) from exc
        return answer["Body"].read()

    def _open_read(self, key: str) -> BinaryIO:
        answer = self._call(
            "read", key, self.client.get_object, Bucket=self.bucket, Key=self._full(key)
        )
        return answer["Body"]

    def _list(self, prefix: str) -> Iterator[tuple[str, int, float]]:
        paginator = self.client.get_paginator("list_objects_v2")
        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._full(prefix)):
                for item in page.get("Contents", []):
                    yield item["Key"][strip:], item["Size"], item["LastModified"].timestamp()
        except Exception as exc:
            raise StoreError(
                f"backup store {self.describe()} refused to list {prefix!r}: {exc}"
            ) from exc

    def _delete_prefix(self, prefix: str) -> None:
        batch: list[dict] = []
        for key, _size, _mtime in list(self._list(prefix)):
            batch.append({"Key": self._full(key)})
            if len(batch) == 1000:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch})
                batch = []
        if batch:
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch})

    def incomplete_uploads(self) -> Iterator[tuple[str, str, float]]:
        """Multipart uploads never completed (crashed runs): (key, upload id, started epoch)."""
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._full("")):
            for upload in page.get("Uploads", []):
                yield upload["Key"], upload["UploadId"], upload["Initiated"].timestamp()

    def upload_last_part_time(self, key: str, upload_id: str) -> float | None:
        """When the newest part of an unfinished upload arrived (epoch seconds), None without
        parts: an upload still receiving parts is in flight, however long ago it started."""
        paginator = self.client.get_paginator("list_parts")
        newest = None
        pages = paginator.paginate(Bucket=self.bucket, Key=self._full(key), UploadId=upload_id)
        for page in pages:
            for part in page.get("Parts", []):
                moment = part["LastModified"].timestamp()
                newest = moment if newest is None else max(newest, moment)
        return newest

    def abort_upload(self, key: str, upload_id: str) -> None:
        """Abort one multipart upload (key relative to the store, as `_list` yields keys);
        S3 keeps an unfinished upload's parts, and bills them, until it is aborted."""
        self._call(
            "abort upload of",
            key,
            self.client.abort_multipart_upload,
            Bucket=self.bucket,
            Key=self._full(key),
            UploadId=upload_id,
        )


def make_s3_client():
    import boto3
    from botocore.config import Config

    # boto3 1.36+ sends CRC checksum headers that several S3-compatible stores reject; our
    # own sha256 in the manifest is the integrity check that matters.
    config = Config(
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"max_attempts": 5, "mode": "standard"},
        max_pool_connections=8,
    )
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return boto3.client("s3", endpoint_url=endpoint or None, config=config)


DEFAULT_LOCAL_STORE = Path.home() / ".local/share/backup_pipelines/store"


def store_from_url(url: str | None) -> BackupStore:
    """`file:///abs/dir` or `s3://bucket/prefix`; empty means the default local folder."""
    if not url:
        return LocalStore(DEFAULT_LOCAL_STORE)
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(
                f"BACKUP_STORE_URL: file URL must be file:///absolute/path, got {url!r}"
            )
        return LocalStore(parsed.path)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigError(
                "BACKUP_STORE_URL: s3:// URL needs a bucket, e.g. s3://backups/agent-memory"
            )
        return S3Store(parsed.netloc, parsed.path)
    raise ConfigError(
        f"BACKUP_STORE_URL: unsupported scheme {parsed.scheme!r}; use file:///absolute/dir or s3://bucket/prefix"
    )
