"""Leases: mutual exclusion of backups and restores of one partition, held in the store itself,
so it holds whoever starts the work (a Dagster run, the command line, a script) and whether or
not Dagster's daemon and its run queue are up.

A lease is one small JSON object, `_leases/workspace=<id>.json` (or `_leases/_database.json`
for whole-database work), recording who holds it (what, host, pid), for what (backup,
restore, ...), since when and until when. Every change is conditional on the version last
read, so of several racing processes exactly one wins:

- acquire: create only if absent — S3 `PutObject` with `If-None-Match: *`; a local folder
  an exclusive hard link of a fully written file (O_EXCL semantics, never seen half-written);
- an expired lease is taken over conditionally on the version read — S3 `If-Match` on its
  ETag; locally a compare-and-replace under an flock (released by the kernel if the process dies);
- renew and release are conditional the same way, so a holder whose lease was broken or taken
  over learns it (LeaseLost) instead of overwriting the new holder's lease.

Expiry is judged by the reader's clock against the recorded `expires_at`: hosts sharing a
store need clocks that agree to well within a third of the TTL (a holder renews every TTL/3).
A crashed holder's lease expires after at most its TTL; `backup-pipelines lease break` ends
it sooner.

S3-compatible stores must honour conditional writes (AWS S3 since 2024, MinIO, moto).
`check_conditional_writes()` tells whether a store does. moto honours the headers but checks
the condition and then writes in two steps of its threaded server, so two requests interleaved
between those steps can both succeed there (measured: 4 of 100 rounds of 6 racing processes
had two winners; none of 100 with moto serving one request at a time, none of 200 on a local
folder); AWS S3 evaluates the condition atomically.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import secrets
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from backup_pipelines.lib.errors import StoreError
from backup_pipelines.lib.store.manifest import ShortText, Timestamp
from backup_pipelines.lib.streams import Log
from backup_pipelines.lib.workspaces import validate_workspace_id

LEASE_PREFIX = "_leases/"
WHOLE_DATABASE_LEASE = "_database"
DEFAULT_LEASE_TTL = 300.0
LEASE_POLL_SECONDS = 2.0
MIN_LEASE_TTL, MAX_LEASE_TTL = 1.0, 86_400.0
MAX_LEASE_BYTES = 64 << 10
LEASE_NAME_PATTERN = re.compile(r"_database|workspace=[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
PURPOSES = ("backup", "restore", "drill", "retention", "maintenance")


class LeaseHeld(StoreError):
    """Someone else holds the lease; the message says who, doing what, since and until when,
    and how to break a stale one."""

    def __init__(self, message: str, holder: Lease | None = None) -> None:
        super().__init__(message)
        self.holder = holder


class LeaseLost(StoreError):
    """A holder's lease was broken or taken over (or expired unrenewed) while it worked."""


# --------------------------------------------------------------------------------------------
# Names and records


def lease_name(workspace: str | None) -> str:
    """`workspace=<id>` for one workspace's partitions, `_database` for whole-database work."""
    return (
        WHOLE_DATABASE_LEASE
        if workspace is None
        else f"workspace={validate_workspace_id(workspace)}"
    )


def lease_key(name: str) -> str:
    if not LEASE_NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"invalid lease name {name[:80]!r}: expected workspace=<id> or {WHOLE_DATABASE_LEASE}"
        )
    return f"{LEASE_PREFIX}{name}.json"


def default_owner() -> str:
    """Who is running this, for a lease taken outside Dagster (the command line)."""
    try:
        return f"{getpass.getuser()} (command line)"
    except (KeyError, OSError):  # no user name in a bare container
        return f"uid {os.getuid()} (command line)"


@dataclass(frozen=True)
class LeaseOwner:
    who: str  # "dagster run 1a2b3c4d", "alice (command line)"
    purpose: str  # one of PURPOSES
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)


class _OwnerModel(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    who: ShortText
    purpose: ShortText
    host: ShortText
    pid: Annotated[StrictInt, Field(ge=0, le=1 << 32)]


class LeaseRecord(BaseModel):
    """A lease as stored; read back, it is untrusted input like any other store object."""

    model_config = ConfigDict(strict=True, extra="allow")
    format_version: StrictInt
    name: Annotated[StrictStr, Field(pattern=LEASE_NAME_PATTERN.pattern, max_length=80)]
    token: Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{32}$")]
    owner: _OwnerModel
    acquired_at: Timestamp
    renewed_at: Timestamp
    expires_at: Timestamp
    ttl_seconds: Annotated[float, Field(strict=False, ge=MIN_LEASE_TTL, le=MAX_LEASE_TTL)]

    @property
    def expires(self) -> float:
        return _epoch(self.expires_at)

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.expires


@dataclass
class Lease:
    """A lease as read or written: its record (None when unreadable) and the version (ETag)
    the next conditional change is made against."""

    name: str
    record: LeaseRecord | None
    version: str
    problem: str = ""  # why the record is unreadable

    @property
    def token(self) -> str | None:
        return self.record.token if self.record else None

    def expired(self, now: float | None = None) -> bool:
        return self.record is not None and self.record.expired(now)

    def describe(self, now: float | None = None) -> str:
        if self.record is None:
            return f"its lease object is unreadable ({self.problem})"
        now = time.time() if now is None else now
        r, o = self.record, self.record.owner
        state = (
            f"expired {_ago(now - r.expires)} ago"
            if r.expired(now)
            else f"until {r.expires_at} (in {_ago(r.expires - now)})"
        )
        return (
            f"held for {o.purpose} by {o.who} on host {o.host} pid {o.pid}, since {r.acquired_at} "
            f"(renewed {_ago(now - _epoch(r.renewed_at))} ago), {state}"
        )


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _iso(epoch: float) -> str:
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _record(name: str, owner: LeaseOwner, ttl: float, token: str, acquired_at: str) -> bytes:
    now = time.time()
    return json.dumps(
        {
            "format_version": 1,
            "name": name,
            "token": token,
            "owner": {
                "who": owner.who,
                "purpose": owner.purpose,
                "host": owner.host,
                "pid": owner.pid,
            },
            "acquired_at": acquired_at,
            "renewed_at": _iso(now),
            "expires_at": _iso(now + ttl),
            "ttl_seconds": ttl,
        },
        indent=2,
        sort_keys=True,
    ).encode()


def _parse(name: str, body: bytes, version: str) -> Lease:
    try:
        if len(body) > MAX_LEASE_BYTES:
            raise ValueError(f"larger than {MAX_LEASE_BYTES} bytes")
        record = LeaseRecord.model_validate(json.loads(body))
        if record.name != name:
            raise ValueError(f"it names lease {record.name!r}")
    except (ValueError, RecursionError, ValidationError) as exc:
        return Lease(name, None, version, f"{type(exc).__name__}: {str(exc)[:200]}")
    return Lease(name, record, version)


def _check_ttl(ttl: float) -> float:
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise ValueError(f"lease ttl must be a number of seconds, got {ttl!r}")
    if not MIN_LEASE_TTL <= ttl <= MAX_LEASE_TTL:
        raise ValueError(f"lease ttl {ttl} s is outside {MIN_LEASE_TTL:g}..{MAX_LEASE_TTL:g} s")
    return float(ttl)


# --------------------------------------------------------------------------------------------
# The store side


class LeaseStore(ABC):
    """Lease operations of a BackupStore, on four conditional primitives of its back end."""

    @abstractmethod
    def describe(self) -> str: ...

    @abstractmethod
    def _list(self, prefix: str) -> Iterator[tuple[str, int, float]]: ...

    @abstractmethod
    def _delete_prefix(self, prefix: str) -> None: ...

    @abstractmethod
    def _create_exclusive(self, key: str, data: bytes) -> str | None:
        """Create `key` only if absent: its version, or None when it exists."""

    @abstractmethod
    def _read_versioned(self, key: str, max_bytes: int) -> tuple[bytes, str] | None:
        """(bytes, version) of `key`, None when absent."""

    @abstractmethod
    def _replace_if(self, key: str, data: bytes, version: str) -> str | None:
        """Replace `key` only if it is still at `version`: the new version, or None."""

    @abstractmethod
    def _delete_if(self, key: str, version: str) -> bool:
        """Delete `key` only if it is still at `version`."""

    # -- reading ---------------------------------------------------------------------------
    def read_lease(self, name: str) -> Lease | None:
        found = self._read_versioned(lease_key(name), MAX_LEASE_BYTES)
        return None if found is None else _parse(name, *found)

    def list_leases(self) -> list[Lease]:
        leases = []
        for key, _size, _mtime in self._list(LEASE_PREFIX):
            file = key[len(LEASE_PREFIX) :]
            name = file.removesuffix(".json")
            if "/" in file or not file.endswith(".json") or not LEASE_NAME_PATTERN.fullmatch(name):
                continue  # lock files (.<name>.lock), temp files, anything not ours
            lease = self.read_lease(name)
            if lease is not None:
                leases.append(lease)
        return sorted(leases, key=lambda lease: lease.name)

    # -- changing --------------------------------------------------------------------------
    def acquire_lease(self, name: str, owner: LeaseOwner, ttl: float = DEFAULT_LEASE_TTL) -> Lease:
        """Take lease `name` for `owner`, or raise LeaseHeld. An expired lease is taken over
        (conditionally on the version read, so two takers cannot both win)."""
        ttl = _check_ttl(ttl)
        if owner.purpose not in PURPOSES:
            raise ValueError(f"lease purpose {owner.purpose!r} is not one of {', '.join(PURPOSES)}")
        key = lease_key(name)
        token = secrets.token_hex(16)
        body = _record(name, owner, ttl, token, _iso(time.time()))
        for _attempt in range(5):  # only a lease released between our steps loops again
            version = self._create_exclusive(key, body)
            if version is not None:
                return _parse(name, body, version)
            current = self.read_lease(name)
            if current is None:
                continue  # released in between: try to create again
            if not current.expired() and not holder_is_gone(current):
                raise self._held(current)
            version = self._replace_if(key, body, current.version)
            if version is not None:
                return _parse(name, body, version)
        raise self._held(self.read_lease(name))

    def renew_lease(self, lease: Lease, ttl: float | None = None) -> Lease:
        """Push the lease's expiry to now + ttl; LeaseLost when it is no longer ours."""
        record = lease.record
        assert record is not None, "only a lease this process holds can be renewed"
        ttl = _check_ttl(record.ttl_seconds if ttl is None else ttl)
        owner = LeaseOwner(
            record.owner.who, record.owner.purpose, record.owner.host, record.owner.pid
        )
        body = _record(lease.name, owner, ttl, record.token, record.acquired_at)
        version = self._replace_if(lease_key(lease.name), body, lease.version)
        if version is None:
            raise self._lost(lease)
        return _parse(lease.name, body, version)

    def release_lease(self, lease: Lease) -> bool:
        """Give the lease up; False when it was no longer ours (broken or taken over)."""
        return self._delete_if(lease_key(lease.name), lease.version)

    def break_lease(self, name: str, version: str | None = None) -> Lease | None:
        """Remove lease `name` whoever holds it (an operator ending a stale lease); only the
        version given (or the one read now) is removed, never a lease renewed meanwhile.
        Returns what was removed, None when there was none."""
        current = self.read_lease(name)
        if current is None:
            return None
        if version is not None and current.version != version:
            raise StoreError(f"lease {name} changed since it was read; look again")
        if not self._delete_if(lease_key(name), current.version):
            raise StoreError(f"lease {name} changed while breaking it (renewed?); look again")
        return current

    def acquire_waiting(
        self, name: str, owner: LeaseOwner, ttl: float, wait: float, log: Log | None = None
    ) -> Lease:
        """acquire_lease, trying again while someone else holds the lease, for up to `wait`
        seconds (a scheduled backup waits out a sibling step or a short restore; an operator
        at the command line, with wait 0, is told at once who holds it)."""
        deadline = time.monotonic() + max(0.0, wait)
        told = False
        while True:
            try:
                return self.acquire_lease(name, owner, ttl)
            except LeaseHeld as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                if not told and log is not None:
                    log(f"waiting up to {wait:.0f} s for the lease: {exc}")
                    told = True
                time.sleep(min(LEASE_POLL_SECONDS, left))

    @contextlib.contextmanager
    def lease(
        self,
        workspace: str | None,
        purpose: str,
        owner: str | None = None,
        ttl: float = DEFAULT_LEASE_TTL,
        log: Log | None = None,
        wait: float = 0.0,
        keep: bool = False,
    ) -> Iterator[HeldLease]:
        """Hold the lease of `workspace` (None: the whole database) for the block: renewed in
        the background every ttl/3, released on exit (also on exceptions). Raises LeaseHeld
        when someone else holds it (after `wait` seconds of trying); LeaseLost at the end of
        a block that completed while the lease was lost (broken, or taken over after it
        expired unrenewed), because its work may have overlapped someone else's.

        `keep`: on a normal exit the lease is renewed and kept, not released, for the next
        step of the same run to take up with continue_lease (Dagster ops of one restore)."""
        who = LeaseOwner(owner or default_owner(), purpose)
        taken = self.acquire_waiting(lease_name(workspace), who, ttl, wait, log)
        with self._holding(taken, log, keep) as held:
            yield held

    @contextlib.contextmanager
    def continue_lease(
        self,
        workspace: str | None,
        purpose: str,
        owner: str,
        ttl: float = DEFAULT_LEASE_TTL,
        log: Log | None = None,
        keep: bool = False,
    ) -> Iterator[HeldLease]:
        """Hold again the lease an earlier step of the same run (same `owner`) took and kept.
        When it is gone (the run was retried from a failed step, or it expired between steps)
        it is taken afresh (and said): the caller checks anyway that what it
        pinned earlier (the artifact generations it gated on) is still what the store holds.
        Someone else holding it is LeaseHeld, as for lease()."""
        name = lease_name(workspace)
        current = self.read_lease(name)
        ours = (
            current is not None
            and current.record is not None
            and current.record.owner.who == owner
            and not current.expired()
        )
        if ours:
            with self._holding(current, log, keep) as held:
                yield held
            return
        taken = self.acquire_lease(name, LeaseOwner(owner, purpose), ttl)
        if log is not None:
            log(f"lease {name} taken again: the hold of this run's earlier step had ended")
        with self._holding(taken, log, keep) as held:
            yield held

    @contextlib.contextmanager
    def _holding(self, lease: Lease, log: Log | None, keep: bool) -> Iterator[HeldLease]:
        held = HeldLease(self, lease, log)
        held.start()
        try:
            yield held
        except BaseException:
            held.close()
            raise
        held.close(release=not keep)
        held.ensure_held()

    @contextlib.contextmanager
    def restore_lease(
        self, workspace: str | None, owner: str | None = None, log: Log | None = None
    ) -> Iterator[HeldLease]:
        """What a restore holds for the block: the lease of `workspace` (None: the whole
        database), and then the check that no restore of the other kind runs beside it."""
        with self.lease(workspace, "restore", owner, log=log) as held:
            self.refuse_overlapping_restores(workspace)
            yield held

    def refuse_overlapping_restores(self, workspace: str | None) -> None:
        """A workspace restore and a whole-database restore exclude each other although their
        leases differ: each calls this after taking its own, so of two racing at least one
        sees the other and stops before writing. Backups do not count (a full dump does not
        stop a workspace restore)."""
        if workspace is None:
            others = [lease for lease in self.list_leases() if lease.name != WHOLE_DATABASE_LEASE]
        else:
            others = [lease for lease in [self.read_lease(WHOLE_DATABASE_LEASE)] if lease]
        for other in others:
            record = other.record
            if record is not None and record.owner.purpose == "restore" and not other.expired():
                raise self._held(other)

    # -- messages --------------------------------------------------------------------------
    def _held(self, current: Lease | None) -> LeaseHeld:
        if current is None:
            return LeaseHeld("the lease kept changing while acquiring it; try again")
        subject = _subject(current.name)
        return LeaseHeld(
            f"{subject} is busy: {current.describe()} (store {self.describe()}). Wait for "
            f"it to finish; if that process is gone, break the lease: "
            f"backup-pipelines lease break {_break_args(current.name)} (it also expires by "
            "itself unless renewed)",
            current,
        )

    def _lost(self, lease: Lease) -> LeaseLost:
        now = self.read_lease(lease.name)
        holder = "nobody holds it now" if now is None else f"now {now.describe()}"
        return LeaseLost(
            f"lease of {_subject(lease.name)} was lost (broken, or taken over after it expired "
            f"unrenewed); {holder}. Work done under it may have overlapped another run: "
            "check the partition before relying on it"
        )

    def check_conditional_writes(self) -> bool:
        """Whether this store refuses a second create-if-absent of one key (leases rely on
        it). Writes and removes a probe under _leases/."""
        key = f"{LEASE_PREFIX}.probe-{secrets.token_hex(6)}"
        first = self._create_exclusive(key, b"1")
        if first is None:
            return False
        try:
            return self._create_exclusive(key, b"2") is None
        finally:
            self._delete_prefix(key)


def holder_is_gone(lease: Lease) -> bool:
    """Whether the lease's holder was a process on this host that no longer exists (a restore
    killed with SIGKILL, a crashed run worker): its lease is taken over at once instead of
    after it expires. Holders on other hosts are judged by expiry only; a reused pid reads as
    alive, which only means waiting for the expiry."""
    record = lease.record
    if record is None or record.owner.host != socket.gethostname():
        return False
    if record.owner.pid == os.getpid():
        return False  # this process: another thread or step of ours, alive by definition
    try:
        os.kill(record.owner.pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OSError):
        return False  # exists under another user, or cannot tell: alive
    return False


def _subject(name: str) -> str:
    return "the whole database" if name == WHOLE_DATABASE_LEASE else name.replace("=", " ", 1)


def _break_args(name: str) -> str:
    return "--database" if name == WHOLE_DATABASE_LEASE else f"--workspace {name.split('=', 1)[1]}"


class HeldLease:
    """A lease this process holds, renewed by a daemon thread every ttl/3 until closed."""

    def __init__(self, store: LeaseStore, lease: Lease, log: Log | None = None) -> None:
        assert lease.record is not None
        self.store = store
        self.lease = lease
        self.lost: LeaseLost | None = None
        self._log = log or (lambda _m: None)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._heartbeat, name=f"lease {lease.name}", daemon=True
        )

    @property
    def name(self) -> str:
        return self.lease.name

    def start(self) -> None:
        self._thread.start()

    def ensure_held(self) -> None:
        """Raise LeaseLost if the lease was lost (call before committing work under it)."""
        if self.lost is not None:
            raise self.lost

    def _heartbeat(self) -> None:
        ttl = self.lease.record.ttl_seconds
        while not self._stop.wait(ttl / 3):
            try:
                self.lease = self.store.renew_lease(self.lease)
            except LeaseLost as exc:
                self.lost = exc
                self._log(f"ERROR {exc}")
                return
            except Exception as exc:  # the store unreachable for a moment: try again
                if self.lease.expired():
                    self.lost = LeaseLost(
                        f"lease {self.name} expired: it could not be renewed ({exc})"
                    )
                    self._log(f"ERROR {self.lost}")
                    return
                self._log(f"WARNING lease {self.name}: renewal failed, retrying: {exc}")

    def close(self, release: bool = True) -> None:
        """Stop renewing and release (a release that fails leaves the lease to expire). With
        release=False the lease is renewed once and kept for a later step of the same run."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.lost is not None:
            return
        try:
            if not release:
                self.lease = self.store.renew_lease(self.lease)
            elif not self.store.release_lease(self.lease):
                self.lost = self.store._lost(self.lease)
        except LeaseLost as exc:
            self.lost = exc
        except StoreError as exc:
            what = "renewed for the next step" if not release else "released"
            self._log(f"WARNING lease {self.name} not {what} ({exc}); it expires by itself")
