"""An S3 bucket (AWS, MinIO, DigitalOcean Spaces, moto) as the backup store: files stream as
multipart uploads; the manifest is one PUT after every upload completed."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import mmap
import os
import queue
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import BinaryIO

from backup_pipelines.lib.errors import ArtifactNotFound, ConfigError, StoreError
from backup_pipelines.lib.scratch import work_dir
from backup_pipelines.lib.store.base import SMALL_OBJECT_BYTES, BackupStore
from backup_pipelines.lib.store.writer import Sink

# ------------------------------------------------------------------------------------------------
# S3 (AWS, MinIO, DigitalOcean Spaces, moto): endpoint and credentials from the standard
# AWS variables, read by boto3 itself.

S3_PART_SIZE = int(os.environ.get("BACKUP_S3_PART_MB", "8")) << 20
# Memory bound per upload: two part buffers, one uploading while the next fills (issue 16:
# with three bytearray parts, one of them queued, a full dump added 50-63 MB of RSS; with two
# mapped parts, 40 MB at 1x and 4x; bench/README.md, bench_memory.py).
S3_PART_BUFFERS = 2


def s3_part_buffers() -> int:
    """BACKUP_S3_PART_BUFFERS (2 to 16, default 2): parts held per upload. More buffers let
    more parts wait while a slow endpoint catches up, at one part of memory each."""
    text = os.environ.get("BACKUP_S3_PART_BUFFERS", "").strip()
    if not text:
        return S3_PART_BUFFERS
    if not text.isdigit() or not 2 <= int(text) <= 16:
        raise ConfigError(f"BACKUP_S3_PART_BUFFERS={text!r}: a whole number from 2 to 16")
    return int(text)


# Parts up to this size are held in memory; bigger ones (a file past 1,000 parts, ~8.4 GB
# stored at the default 8 MiB) are staged in an unlinked temp file under BACKUP_WORK_DIR, so
# the process's memory stays flat however large the file grows.
S3_MEMORY_PART_BYTES = 16 << 20
S3_MAX_PARTS = 10_000


# ------------------------------------------------------------------------------------------------
# S3 Object Lock: artifact objects (files and manifests; never leases, keep markers or probes,
# whose keys start with "_") are written with a retention mode and a retain-until date, so
# nobody — ransomware, a leaked key, a mistaken retention run — can delete a version before
# then. Needs a bucket created with Object Lock (versioning on); `doctor` checks it.

LOCK_MODES = ("GOVERNANCE", "COMPLIANCE")
DELETE_BATCH = 1000  # keys per DeleteObjects request: S3's limit


class ObjectLocked(StoreError):
    """A delete refused because an object version is under Object Lock retention."""


@dataclass(frozen=True)
class ObjectLock:
    mode: str  # GOVERNANCE or COMPLIANCE
    days: int  # retain-until = write time + days

    def retain_until(self, now: datetime | None = None) -> datetime:
        return (now or datetime.now(UTC)) + timedelta(days=self.days)

    def describe(self) -> str:
        return f"{self.mode} for {self.days} day(s)"


def object_lock_from_env(env: Mapping[str, str] | None = None) -> ObjectLock | None:
    """BACKUP_OBJECT_LOCK_MODE (governance|compliance; empty or off: no lock) and
    BACKUP_OBJECT_LOCK_DAYS (default: the policy's keep_daily_days, the shortest time
    retention keeps any artifact, at least 1)."""
    env = os.environ if env is None else env
    mode = (env.get("BACKUP_OBJECT_LOCK_MODE") or "").strip().upper()
    if mode in ("", "OFF", "NONE"):
        return None
    if mode not in LOCK_MODES:
        raise ConfigError(
            f"BACKUP_OBJECT_LOCK_MODE={mode.lower()!r}: use governance, compliance or off"
        )
    days_text = (env.get("BACKUP_OBJECT_LOCK_DAYS") or "").strip()
    if days_text:
        try:
            days = int(days_text)
        except ValueError:
            days = 0
        if not 1 <= days <= 36500:
            raise ConfigError(
                f"BACKUP_OBJECT_LOCK_DAYS={days_text!r}: a whole number of days from 1 to 36500"
            )
    else:
        from backup_pipelines.lib.policy import load_policy

        days = max(1, load_policy().keep_daily_days)
    return ObjectLock(mode, days)


def is_lockable(key: str) -> bool:
    """Artifact objects are locked; the store's bookkeeping (_leases/, _keep/, _health/) is
    not, since it must be replaced and removed."""
    return not key.startswith("_")


def content_md5(data: bytes) -> str:
    """S3 requires Content-MD5 (or a checksum header) on a write that carries a retention."""
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def s3_part_size(part_number: int) -> int:
    """Parts double in size every 1,000 parts, so a file of any size fits S3's 10,000 parts
    while small and medium files keep small parts (and little memory)."""
    return S3_PART_SIZE << min(part_number // 1000, 12)


class _PartBuffer(io.RawIOBase):
    """One part of a multipart upload, in its own anonymous memory map (or, past
    S3_MEMORY_PART_BYTES, an unlinked temp file), read back as a seekable file (botocore
    hashes, sends and, on a retry, re-sends it from there).

    A map's memory goes back to the system the moment the part is released. A bytearray per
    part did not: after the first freed part glibc raises its mmap threshold, later parts come
    from the heap and freed ones stay resident (measured: +16 MB on a full dump)."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.size = 0
        self._position = 0
        self._map: mmap.mmap | None = None
        self._file = None
        if capacity <= S3_MEMORY_PART_BYTES:
            self._map = mmap.mmap(-1, capacity)
        else:  # on disk (page cache, not this process's memory)
            self._file = tempfile.TemporaryFile(  # noqa: SIM115 (closed in release)
                prefix="s3-part-", dir=work_dir()
            )

    def fill(self, data: memoryview) -> int:
        """Copy as much of `data` as fits; returns how many bytes were taken."""
        taken = min(len(data), self.capacity - self.size)
        if self._map is not None:
            self._map[self.size : self.size + taken] = data[:taken]
        else:
            self._file.seek(self.size)
            self._file.write(data[:taken])
        self.size += taken
        return taken

    @property
    def full(self) -> bool:
        return self.size >= self.capacity

    def content(self) -> bytes:
        self.seek(0)
        return self.read(self.size)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        count = min(len(target), self.size - self._position)
        if self._map is not None:
            target[:count] = self._map[self._position : self._position + count]
        else:
            self._file.seek(self._position)
            count = self._file.readinto(memoryview(target)[:count])
        self._position += count
        return count

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.size}[whence]
        self._position = min(max(0, base + offset), self.size)
        return self._position

    def tell(self) -> int:
        return self._position

    def release(self) -> None:
        if self._map is not None and not self._map.closed:
            self._map.close()
        if self._file is not None:
            self._file.close()  # unlinked already: closing frees the disk
        self.close()


class _S3MultipartSink(Sink):
    """Streams a file as a multipart upload; a part uploads on a worker while the next fills,
    and a third waits for a free buffer. Memory: two parts of the configured size (parts
    grow past 1,000 parts, see s3_part_size, and are then staged on disk instead)."""

    def __init__(self, store: S3Store, key: str) -> None:
        self._store = store
        self._key = key
        self._buffer: _PartBuffer | None = None
        buffers = s3_part_buffers()
        self._free_buffers = threading.BoundedSemaphore(buffers)
        self._parts: list[dict] = []
        self._parts_queued = 0
        self._upload_id: str | None = None
        self._pending: queue.Queue = queue.Queue(maxsize=buffers)
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
            try:
                if self._error is None:
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
            finally:
                self._release(body)

    def _flush_part(self) -> None:
        if self._upload_id is None:
            self._start()
        self._parts_queued += 1
        number = self._parts_queued
        if number > S3_MAX_PARTS:
            raise StoreError(f"{self._key}: more than {S3_MAX_PARTS} multipart parts")
        body, self._buffer = self._buffer, None  # handed over, not copied
        self._pending.put((number, body))
        self._raise_if_failed()

    def _release(self, buffer: _PartBuffer) -> None:
        buffer.release()
        self._free_buffers.release()

    def _new_buffer(self) -> _PartBuffer:
        # Waits while both buffers are taken: the previous part is still uploading.
        self._free_buffers.acquire()
        try:
            return _PartBuffer(s3_part_size(self._parts_queued + 1))
        except BaseException:
            self._free_buffers.release()
            raise

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def write(self, chunk: bytes) -> None:
        data = memoryview(chunk)
        while data:
            if self._buffer is None:
                self._raise_if_failed()
                self._buffer = self._new_buffer()
            data = data[self._buffer.fill(data) :]
            if self._buffer.full:
                self._flush_part()

    def _drain(self) -> None:
        if self._worker is not None:
            self._pending.put(None)
            self._worker.join()
            self._worker = None

    def close(self) -> None:
        if self._upload_id is None:  # small file: one PUT, no multipart
            content = self._buffer.content() if self._buffer else b""
            self._discard_buffer()
            self._store._put_atomic(self._key, content)
            return
        if self._buffer is not None and self._buffer.size:
            self._flush_part()
        self._discard_buffer()
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
        self._store._lock_after_upload(self._key)

    def _discard_buffer(self) -> None:
        if self._buffer is not None:
            self._release(self._buffer)
            self._buffer = None

    def abort(self) -> None:
        self._error = self._error or StoreError("aborted")
        self._discard_buffer()
        self._drain()
        if self._upload_id is not None:
            with contextlib.suppress(Exception):
                self._store.client.abort_multipart_upload(
                    Bucket=self._store.bucket,
                    Key=self._store._full(self._key),
                    UploadId=self._upload_id,
                )


class S3Store(BackupStore):
    def __init__(
        self, bucket: str, prefix: str = "", client=None, object_lock: ObjectLock | None = None
    ) -> None:
        if len(bucket) < 3:
            raise ConfigError(
                f"BACKUP_STORE_URL: S3 bucket name {bucket!r} is too short (3+ characters)"
            )
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client or make_s3_client()
        self.object_lock = object_lock

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, action: str, key: str, function, *, allowed: tuple[str, ...] = (), **kwargs):
        """One S3 request; every failure is a StoreError naming the store, the action and the
        key. Error codes in `allowed` are returned (as the code string) instead of raised."""
        from botocore.exceptions import ClientError

        try:
            return function(**kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "?"))
            if code in allowed:
                return code
            raise self._failure(action, key, exc) from exc
        except Exception as exc:
            raise self._failure(action, key, exc) from exc

    def _failure(self, action: str, key: str, exc: Exception) -> StoreError:
        """A StoreError for a failed request: refused (an S3 error answer) or unreachable."""
        from botocore.exceptions import ClientError

        from backup_pipelines.lib.store.s3_client import StoreUnreachable

        if isinstance(exc, StoreUnreachable):
            return StoreError(
                f"backup store {self.describe()} unreachable while trying to {action} {key!r}: "
                f"{exc} — check that the S3 endpoint is up and reachable, then retry"
            )
        if isinstance(exc, StoreError):
            return exc
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            return StoreError(
                f"backup store {self.describe()} refused to {action} {key!r}: "
                f"{error.get('Code', '?')} {error.get('Message', '')}".rstrip()
            )
        return StoreError(
            f"backup store {self.describe()} unreachable while trying to {action} {key!r}: "
            f"{exc} — check that the S3 endpoint is up and reachable (AWS_ENDPOINT_URL_S3), "
            "then retry"
        )

    def _open_sink(self, key: str) -> Sink:
        return _S3MultipartSink(self, key)

    def _put_atomic(self, key: str, data: bytes) -> None:
        self._call(
            "write", key, self.client.put_object, Bucket=self.bucket, Key=self._full(key),
            Body=data, **self._lock_arguments(key, data),
        )  # fmt: skip

    # -- Object Lock ------------------------------------------------------------------------
    def _lock_arguments(self, key: str, data: bytes) -> dict:
        if self.object_lock is None or not is_lockable(key):
            return {}
        return {
            "ObjectLockMode": self.object_lock.mode,
            "ObjectLockRetainUntilDate": self.object_lock.retain_until(),
            "ContentMD5": content_md5(data),
        }

    def _lock_after_upload(self, key: str) -> None:
        """A multipart upload's object gets its retention once complete (one request; setting
        it at creation needs checksums on every part)."""
        if self.object_lock is None or not is_lockable(key):
            return
        self._call(
            "set the Object Lock retention of", key, self.client.put_object_retention,
            Bucket=self.bucket, Key=self._full(key),
            Retention={
                "Mode": self.object_lock.mode,
                "RetainUntilDate": self.object_lock.retain_until(),
            },
        )  # fmt: skip

    def retained_until(self, prefix: str) -> dict[str, datetime]:
        """Current objects under `prefix` still under Object Lock retention: key -> until."""
        now = datetime.now(UTC)
        locked: dict[str, datetime] = {}
        for key, _size, _mtime in list(self._list(prefix)):
            until = self.retain_until_of(key)
            if until is not None and until > now:
                locked[key] = until
        return locked

    def lock_settings(self) -> dict:
        """The bucket's versioning and Object Lock configuration, as S3 reports them."""
        versioning = self._call(
            "read the versioning of", "", self.client.get_bucket_versioning, Bucket=self.bucket
        )
        lock = self._call(
            "read the Object Lock configuration of", "",
            self.client.get_object_lock_configuration, Bucket=self.bucket,
            allowed=("ObjectLockConfigurationNotFoundError", "404"),
        )  # fmt: skip
        config = {} if isinstance(lock, str) else lock.get("ObjectLockConfiguration", {})
        return {
            "versioning": versioning.get("Status") or "Off",
            "object_lock": config.get("ObjectLockEnabled") or "Off",
            "default_retention": (config.get("Rule") or {}).get("DefaultRetention"),
        }

    def _get(self, key: str, max_bytes: int = SMALL_OBJECT_BYTES) -> bytes | None:
        found = self._read_versioned(key, max_bytes)
        return None if found is None else found[0]

    def _read_body(self, key: str, body, max_bytes: int) -> bytes:
        try:
            with contextlib.closing(body):
                return body.read(max_bytes + 1)
        except Exception as exc:  # botocore/urllib3 errors of a dropped connection
            raise self._failure("read", key, exc) from exc

    def _open_read(self, key: str) -> BinaryIO:
        answer = self._call(
            "read", key, self.client.get_object, allowed=self._ABSENT,
            Bucket=self.bucket, Key=self._full(key),
        )  # fmt: skip
        if isinstance(answer, str):
            raise ArtifactNotFound(
                f"backup store {self.describe()}: {key!r} does not exist (missing file)"
            )
        return answer["Body"]

    def _list(self, prefix: str) -> Iterator[tuple[str, int, float]]:
        paginator = self.client.get_paginator("list_objects_v2")
        strip = len(self.prefix) + 1 if self.prefix else 0
        full = self._full(prefix)
        try:
            # botocore's paginator stops when a token repeats; a key outside the prefix (a
            # server ignoring it) is never taken for one inside: deletes follow this listing.
            pages = paginator.paginate(Bucket=self.bucket, Prefix=full)
            for page in pages_that_advance(pages, _next_token, self.describe(), prefix):
                for item in page.get("Contents", []):
                    if item["Key"].startswith(full):
                        yield item["Key"][strip:], item["Size"], item["LastModified"].timestamp()
        except Exception as exc:
            raise self._failure("list", prefix, exc) from exc

    def _delete_prefix(self, prefix: str) -> None:
        if self.object_lock is not None and is_lockable(prefix):
            self._delete_versions(prefix)
            return
        failed = self.delete_keys([key for key, _size, _mtime in self._list(prefix)])
        if failed:
            key, why = next(iter(failed.items()))
            raise StoreError(
                f"backup store {self.describe()}: {len(failed)} object(s) under {prefix!r} "
                f"not deleted, e.g. {key!r}: {why}"
            )

    def _delete_versions(self, prefix: str) -> None:
        """With Object Lock, a delete removes versions (a plain delete would only hide them
        behind a delete marker): S3 refuses those still retained, and so does this, naming
        them and until when."""
        paginator = self.client.get_paginator("list_object_versions")
        strip = len(self.prefix) + 1 if self.prefix else 0
        full = self._full(prefix)
        batch: list[dict] = []
        try:
            pages = paginator.paginate(Bucket=self.bucket, Prefix=full)
            for page in pages_that_advance(pages, _next_markers, self.describe(), prefix):
                for item in page.get("Versions", []) + page.get("DeleteMarkers", []):
                    if item["Key"].startswith(full):  # as _list: only what was asked for
                        batch.append({"Key": item["Key"], "VersionId": item["VersionId"]})
        except Exception as exc:
            raise self._failure("list the versions under", prefix, exc) from exc
        refused: list[str] = []
        for start in range(0, len(batch), DELETE_BATCH):
            answer = self._call(
                "delete", prefix, self.client.delete_objects, Bucket=self.bucket,
                Delete={"Objects": batch[start : start + DELETE_BATCH]},
            )  # fmt: skip
            refused += [e.get("Key", "?")[strip:] for e in answer.get("Errors") or []]
        if refused:
            until = self.retained_until(prefix)
            latest = max(until.values()).isoformat(timespec="seconds") if until else "unknown"
            raise ObjectLocked(
                f"backup store {self.describe()} refused to delete {len(refused)} object "
                f"version(s) under {prefix!r} (e.g. {refused[0]!r}): under Object Lock "
                f"retention until {latest}; they stay until then"
            )

    def delete_keys(self, keys: list[str]) -> dict[str, str]:
        """Delete exactly these objects (keys relative to the store), 1,000 a request, as
        DeleteObjects allows: retention's deletions of many artifacts at once, instead of a
        listing and a delete for every folder of every artifact. Returns the keys not
        deleted, each with why: those S3 refused, and every key of a request that failed
        (whether S3 acted on it is then unknown). A key already gone counts as deleted.
        In a versioned bucket (Object Lock) this only hides the current versions behind
        delete markers: there, delete_versions (listing.iter_versions lists them)."""
        return self._delete_objects([(key, None) for key in keys])

    def delete_versions(self, versions: list[tuple[str, str]]) -> dict[str, str]:
        """delete_keys for object versions, (key, version id): what frees the space in a
        versioned bucket. S3 refuses each version still under Object Lock retention (and this
        names its key); the others go. Returns the keys of which some version was not
        deleted, each with why."""
        return self._delete_objects(versions)

    def _delete_objects(self, objects: list[tuple[str, str | None]]) -> dict[str, str]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        failed: dict[str, str] = {}
        for start in range(0, len(objects), DELETE_BATCH):
            batch = objects[start : start + DELETE_BATCH]
            entries = [
                {"Key": self._full(key)} | ({"VersionId": version} if version else {})
                for key, version in batch
            ]
            try:
                answer = self._call(
                    "delete", f"{len(batch)} objects from {batch[0][0]!r} on",
                    self.client.delete_objects, Bucket=self.bucket,
                    Delete={"Objects": entries, "Quiet": True},
                )  # fmt: skip
            except StoreError as exc:
                failed.update(dict.fromkeys((key for key, _version in batch), str(exc)))
                continue
            for error in answer.get("Errors") or []:
                key = str(error.get("Key", ""))[strip:]
                failed[key] = f"S3 refused: {error.get('Code')} {error.get('Message', '')}".strip()
        return failed

    def retain_until_of(self, key: str) -> datetime | None:
        """The Object Lock retain-until of `key`'s current version (None: not locked, or
        no such key)."""
        answer = self._call(
            "read the retention of", key, self.client.head_object, allowed=self._ABSENT,
            Bucket=self.bucket, Key=self._full(key),
        )  # fmt: skip
        return None if isinstance(answer, str) else answer.get("ObjectLockRetainUntilDate")

    def incomplete_uploads(self) -> Iterator[tuple[str, str, float]]:
        """Multipart uploads never completed (crashed runs): (key, upload id, started epoch)."""
        paginator = self.client.get_paginator("list_multipart_uploads")
        full = self._full("")
        try:
            pages = paginator.paginate(Bucket=self.bucket, Prefix=full)
            for page in pages_that_advance(pages, _next_upload, self.describe(), ""):
                for upload in page.get("Uploads", []):
                    if upload["Key"].startswith(full):  # another store's uploads are not ours
                        yield upload["Key"], upload["UploadId"], upload["Initiated"].timestamp()
        except Exception as exc:
            raise self._failure("list unfinished uploads under", "", exc) from exc

    def upload_last_part_time(self, key: str, upload_id: str) -> float | None:
        """When the newest part of an unfinished upload arrived (epoch seconds), None without
        parts: an upload still receiving parts is in flight, however long ago it started."""
        paginator = self.client.get_paginator("list_parts")
        newest = None
        pages = paginator.paginate(Bucket=self.bucket, Key=self._full(key), UploadId=upload_id)
        try:
            for page in pages_that_advance(pages, _next_part, self.describe(), key):
                for part in page.get("Parts", []):
                    moment = part["LastModified"].timestamp()
                    newest = moment if newest is None else max(newest, moment)
        except Exception as exc:
            raise self._failure("list the parts of", key, exc) from exc
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

    # -- conditional writes (leases) -------------------------------------------------------
    # S3 conditional writes: If-None-Match: * creates only if absent, If-Match: <ETag>
    # replaces or deletes only the version read. 412 PreconditionFailed (and 409
    # ConditionalRequestConflict, AWS's answer to concurrent conditional writes) mean
    # "someone else got there first".
    _LOST_RACE = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")
    _ABSENT = ("NoSuchKey", "404")

    def _create_exclusive(self, key: str, data: bytes) -> str | None:
        answer = self._call(
            "create", key, self.client.put_object, allowed=self._LOST_RACE,
            Bucket=self.bucket, Key=self._full(key), Body=data, IfNoneMatch="*",
        )  # fmt: skip
        return None if isinstance(answer, str) else answer["ETag"]

    def _read_versioned(self, key: str, max_bytes: int) -> tuple[bytes, str] | None:
        answer = self._call(
            "read", key, self.client.get_object, allowed=self._ABSENT,
            Bucket=self.bucket, Key=self._full(key),
        )  # fmt: skip
        if isinstance(answer, str):
            return None
        return self._read_body(key, answer["Body"], max_bytes), answer["ETag"]

    def _replace_if(self, key: str, data: bytes, version: str) -> str | None:
        answer = self._call(
            "replace", key, self.client.put_object, allowed=self._LOST_RACE + self._ABSENT,
            Bucket=self.bucket, Key=self._full(key), Body=data, IfMatch=version,
        )  # fmt: skip
        return None if isinstance(answer, str) else answer["ETag"]

    def _delete_if(self, key: str, version: str) -> bool:
        answer = self._call(
            "delete", key, self.client.delete_object, allowed=self._LOST_RACE + self._ABSENT,
            Bucket=self.bucket, Key=self._full(key), IfMatch=version,
        )  # fmt: skip
        return not isinstance(answer, str)


def _next_token(page: dict) -> str | None:
    return page.get("NextContinuationToken") if page.get("IsTruncated") else None


def _next_markers(page: dict) -> tuple[str, str] | None:
    if not page.get("IsTruncated"):
        return None
    return page.get("NextKeyMarker") or "", page.get("NextVersionIdMarker") or ""


def _next_upload(page: dict) -> tuple[str, str] | None:
    if not page.get("IsTruncated"):
        return None
    return page.get("NextKeyMarker") or "", page.get("NextUploadIdMarker") or ""


def _next_part(page: dict) -> int | None:
    return page.get("NextPartNumberMarker") if page.get("IsTruncated") else None


def pages_that_advance(pages, token_of, describe: str, prefix: str) -> Iterator[dict]:
    """botocore's paginator stops only when a token comes straight back; a server cycling
    its tokens (A, B, A, ...) would be listed, and its keys deleted, forever. Every token of
    one listing must be new."""
    seen: set = set()
    for page in pages:
        yield page
        token = token_of(page)
        if token is None or token == ("", ""):
            continue
        if token in seen:
            raise StoreError(
                f"backup store {describe}: the listing under {prefix!r} does not advance (the "
                f"server sent a continuation token it had sent before); check the S3 endpoint"
            )
        seen.add(token)


def make_s3_client():
    """A boto3 S3 client whose calls cannot hang and whose failures name S3, the operation,
    the key and the wait, never a secret (lib/store/s3_client.py)."""
    from backup_pipelines.lib.store.s3_client import bounded_s3_client

    return bounded_s3_client()


def lock_problems(settings: dict, object_lock: ObjectLock | None) -> list[str]:
    """Where the bucket's versioning and Object Lock (`S3Store.lock_settings`) disagree with
    the configuration (BACKUP_OBJECT_LOCK_MODE); empty when they match."""
    problems = []
    default = settings.get("default_retention") or {}
    if object_lock is not None:
        if settings.get("object_lock") != "Enabled":
            problems.append(
                f"BACKUP_OBJECT_LOCK_MODE={object_lock.mode.lower()} but the bucket has no "
                "Object Lock: nothing would be locked and every write would fail; create the "
                "bucket with Object Lock enabled (it cannot be turned on for an existing bucket "
                "on every provider) or unset BACKUP_OBJECT_LOCK_MODE"
            )
        if settings.get("versioning") != "Enabled":
            problems.append(
                f"bucket versioning is {settings.get('versioning')}, Object Lock needs it Enabled"
            )
        if default and default.get("Mode") and default.get("Mode") != object_lock.mode:
            problems.append(
                f"the bucket's default retention is {default.get('Mode')}, the configuration "
                f"says {object_lock.mode}: new objects get {object_lock.mode}, older ones "
                "keep theirs"
            )
    elif default:
        problems.append(
            f"the bucket locks every new object by default ({default.get('Mode')}, "
            f"{default.get('Days') or default.get('Years')} "
            f"{'days' if default.get('Days') else 'years'}) but BACKUP_OBJECT_LOCK_MODE is "
            "unset: retention's deletes would only hide locked versions behind delete "
            "markers; set BACKUP_OBJECT_LOCK_MODE (and _DAYS) to match"
        )
    return problems
