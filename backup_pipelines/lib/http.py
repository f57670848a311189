"""HTTP calls to the index stores (Typesense, Qdrant) with bounded retries and waits.

Transient failures (connection refused or reset, timeouts, HTTP 429 and 5xx) are retried with
exponential backoff; anything else fails at once. No call waits forever on a hung server:

- an ordinary call waits BACKUP_READ_TIMEOUT for each answer, and its retries stop once
  3 x that has passed (a hung server fails in about a minute, not 5 x 120 s);
- a streamed call (export, snapshot download, import results) may last hours, so only
  silence counts: BACKUP_STALL_SECONDS without a byte ends it;
- a caller that knows an operation is long on the server's side passes its own read_timeout.

Errors name the store, the operation, the URL path and how long they waited, never the API
key: the key travels in a header only, and every message is scrubbed of it anyway in case a
server echoes it back.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3

from backup_pipelines.lib import timeouts
from backup_pipelines.lib.errors import BackupError

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
# Enough of a server's error body to explain it, not enough to flood a log.
MAX_DETAIL_CHARS = 500
REDACTED = "***"


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a transient failure."""

    attempts: int = 5
    first_delay: float = 0.2
    max_delay: float = 10.0
    multiplier: float = 2.0
    # Jitter spreads the retries of parallel workers so they do not hammer a store in step.
    jitter: float = 0.1
    connect_timeout: float = field(default_factory=timeouts.connect_timeout)
    # Each answer of an ordinary call; retries stop once give_up_after (default: 3 read
    # timeouts) has passed since the first attempt.
    read_timeout: float = field(default_factory=timeouts.read_timeout)
    # Streamed bodies: the longest silence tolerated between two bytes.
    stall_timeout: float = field(default_factory=timeouts.stall_seconds)
    give_up_after: float | None = None

    def delay_before(self, retry_number: int) -> float:
        """Seconds to sleep before retry 1, 2, ... (exponential, capped, jittered)."""
        base = min(self.max_delay, self.first_delay * self.multiplier ** (retry_number - 1))
        return base * (1 + random.uniform(-self.jitter, self.jitter))

    @property
    def timeout(self) -> tuple[float, float]:
        return (self.connect_timeout, self.read_timeout)

    @property
    def deadline(self) -> float:
        """Seconds after the first attempt past which no retry starts."""
        if self.give_up_after is not None:
            return self.give_up_after
        return timeouts.READ_TIMEOUTS_PER_CALL * self.read_timeout


class IndexStoreError(BackupError):
    """A call to an index store failed for good (after retries, or not retryable)."""

    def __init__(
        self,
        store: str,
        operation: str,
        path: str,
        reason: str,
        *,
        status: int | None = None,
        attempts: int = 1,
        waited: float | None = None,
    ) -> None:
        self.store = store
        self.operation = operation
        self.path = path
        self.status = status
        self.reason = reason  # the server's answer alone, without store and path
        self.attempts = attempts
        self.waited = waited
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        if waited is not None and waited >= 1:
            tries += f" in {waited:.1f} s"
        super().__init__(f"{store} {operation} failed{tries} ({path}): {reason}")


class StoreHttp:
    """A requests.Session bound to one store's base URL and secret headers, with retries."""

    def __init__(
        self,
        store: str,
        base_url: str,
        secret_headers: Mapping[str, str] | None = None,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.base_url = base_url.rstrip("/")
        self.policy = policy or RetryPolicy()
        self._secrets = [value for value in (secret_headers or {}).values() if value]
        self._sleep = sleep
        self.session = requests.Session()
        self.session.headers.update(secret_headers or {})

    def request(
        self,
        method: str,
        path: str,
        operation: str,
        *,
        accept_statuses: Collection[int] = (200, 201),
        retry: bool = True,
        body_factory: Callable[[], Any] | None = None,
        read_timeout: float | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        """Send method to base_url + path, retrying transient failures.

        Returns the response when its status is in accept_statuses; raises IndexStoreError
        otherwise. A body that can be sent once only (a generator) must come from
        body_factory, which builds a fresh one per attempt; pass retry=False when even that
        is unsafe (a non-idempotent write).
        """
        attempts = self.policy.attempts if retry else 1
        per_attempt, waits_for = self._read_timeout(read_timeout, kwargs.get("stream", False))
        timeout = (self.policy.connect_timeout, per_attempt)
        started = time.monotonic()
        last_reason, last_status, made = "not attempted", None, 0
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                if not self.may_retry(started):
                    break
                self._pause_before_retry(attempt - 1, method, path, operation, last_reason)
            made = attempt
            if body_factory is not None:
                kwargs["data"] = body_factory()
            try:
                response = self.session.request(
                    method, self.base_url + path, timeout=timeout, **kwargs
                )
            except requests.ConnectTimeout:
                last_reason, last_status = self._no_connection(), None
                continue
            except (requests.ConnectionError, requests.Timeout) as error:
                # A read timeout in the middle of a body comes as a ConnectionError.
                if _is_read_timeout(error):
                    last_reason = f"no answer within {per_attempt:g} s ({waits_for})"
                else:
                    last_reason = f"{type(error).__name__}: {self.redact(str(error))}"
                last_status = None
                continue
            if response.status_code in accept_statuses:
                response.stall_timeout = (per_attempt, waits_for)  # for stream_chunks
                return response
            last_reason, last_status = self._describe_status(response), response.status_code
            response.close()
            if last_status not in RETRYABLE_STATUSES:
                raise self.error(operation, path, last_reason, last_status, made, _since(started))
        raise self.error(operation, path, last_reason, last_status, made, _since(started))

    def _read_timeout(self, explicit: float | None, streamed: bool) -> tuple[float, str]:
        """The read timeout of one attempt and what set it (named in errors)."""
        if explicit:
            return explicit, "the operation's own read timeout"
        if streamed:
            return self.policy.stall_timeout, timeouts.STALL_VARIABLE
        return self.policy.read_timeout, timeouts.READ_TIMEOUT_VARIABLE

    def _no_connection(self) -> str:
        return (
            f"no connection within {self.policy.connect_timeout:g} s "
            f"({timeouts.CONNECT_TIMEOUT_VARIABLE})"
        )

    def json(self, method: str, path: str, operation: str, **kwargs: Any) -> Any:
        """request() and decode the JSON body."""
        response = self.request(method, path, operation, **kwargs)
        try:
            return response.json()
        except ValueError as error:
            raise self.error(operation, path, f"response is not JSON: {error}") from error

    def stream_chunks(
        self, response: requests.Response, operation: str, path: str, chunk_size: int
    ) -> Iterator[bytes]:
        """The body of a streamed response in chunks; a broken connection, or a body that stops
        coming (a hung server), becomes our error."""
        started, received = time.monotonic(), 0
        try:
            for chunk in response.iter_content(chunk_size=chunk_size):
                received += len(chunk)
                yield chunk
        except (requests.RequestException, OSError) as error:
            stalled = self.stall_reason(response, error)
            if stalled:
                reason = f"{stalled} after {received:,} bytes in {_since(started):.1f} s"
            else:
                reason = f"body cut off: {type(error).__name__}: {self.redact(str(error))}"
            raise self.error(operation, path, reason, waited=_since(started)) from error
        finally:
            response.close()

    def stall_reason(self, response: requests.Response, error: BaseException) -> str | None:
        """ "stalled: no data for N s (VARIABLE)" when a streamed body failed by going silent
        (a hung server), else None."""
        if not _is_read_timeout(error):
            return None
        silence, waits_for = getattr(response, "stall_timeout", (None, "read timeout"))
        return f"stalled: no data for {silence:g} s ({waits_for})"

    def no_answer(self) -> str:
        """Why an ordinary call timed out, with the wait and the variable that sets it."""
        return f"no answer within {self.policy.read_timeout:g} s ({timeouts.READ_TIMEOUT_VARIABLE})"

    def may_retry(self, started: float) -> bool:
        """Whether another attempt of a call begun at `started` may start: retries stop once
        policy.deadline has passed (a hung server is given up on, not waited on 5 times)."""
        return _since(started) < self.policy.deadline

    def error(
        self,
        operation: str,
        path: str,
        reason: str,
        status: int | None = None,
        attempts: int = 1,
        waited: float | None = None,
    ) -> IndexStoreError:
        return IndexStoreError(
            self.store,
            operation,
            _without_query(path),
            self.redact(reason),
            status=status,
            attempts=attempts,
            waited=waited,
        )

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    def close(self) -> None:
        self.session.close()

    def _pause_before_retry(
        self, retry_number: int, method: str, path: str, operation: str, reason: str
    ) -> None:
        delay = self.policy.delay_before(retry_number)
        log.warning(
            "%s %s: %s %s failed (%s); retry %d/%d in %.2f s",
            self.store,
            operation,
            method,
            _without_query(path),
            reason,
            retry_number,
            self.policy.attempts - 1,
            delay,
        )
        self._sleep(delay)

    def _describe_status(self, response: requests.Response) -> str:
        # Read only the head of the body: an error on a streamed call could be large.
        head = next(response.iter_content(MAX_DETAIL_CHARS), b"")
        detail = head.decode("utf-8", errors="replace") if isinstance(head, bytes) else head
        return f"HTTP {response.status_code} {response.reason or ''}: {detail}".strip()


def _since(started: float) -> float:
    return time.monotonic() - started


def _is_read_timeout(error: BaseException) -> bool:
    """requests wraps a read timeout in the middle of a body as a ConnectionError."""
    if isinstance(error, requests.Timeout | TimeoutError):
        return True
    return any(isinstance(arg, urllib3.exceptions.ReadTimeoutError) for arg in error.args)


def _without_query(path: str) -> str:
    # Query strings may carry checksums or filters; the path alone is enough to locate a call.
    return urlsplit(path).path or path


def public_host(url: str) -> str:
    """scheme://host:port of a store URL: no path, query or credentials."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
