"""The boto3 S3 client of the store: no call can hang, and no failure shows a secret.

botocore's defaults (60 s connect, 60 s read, up to 5 attempts per call, per call of a
multipart upload) let a hung endpoint hold a backup for about 18 minutes. Here:

- connect and read timeouts come from BACKUP_CONNECT_TIMEOUT and BACKUP_READ_TIMEOUT, and a
  call makes at most 3 attempts, so a hung endpoint fails in about a minute by default (the
  read timeout bounds each silence, not a whole transfer: a large part keeps moving);
- a call that cannot reach the endpoint raises a StoreError naming S3, the operation, the
  bucket and key, the endpoint and how long it waited — also when a download's body stops
  in the middle, long after its call returned;
- the user info of an endpoint URL (`http://key:secret@host`) is dropped with a warning:
  S3 never uses it (requests are signed with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY),
  and botocore would echo the whole URL, secret included, in every error.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from urllib.parse import urlsplit, urlunsplit

from backup_pipelines.lib import timeouts
from backup_pipelines.lib.errors import StoreError

log = logging.getLogger(__name__)

S3_ATTEMPTS = 3
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")

_session = None
_session_lock = threading.Lock()


def bounded_s3_client():
    from botocore.config import Config

    config = Config(
        # boto3 1.36+ sends CRC checksum headers that several S3-compatible stores reject;
        # our own sha256 in the manifest is the integrity check that matters.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        connect_timeout=timeouts.connect_timeout(),
        read_timeout=timeouts.read_timeout(),
        retries={"total_max_attempts": S3_ATTEMPTS, "mode": "standard"},
        max_pool_connections=8,
    )
    # Keys are read from the environment at each call (a long-lived session would keep the
    # first ones it saw); without them, boto3's own chain (profiles, instance roles) applies.
    keys = {}
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        keys = {
            "aws_access_key_id": os.environ["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": os.environ["AWS_SECRET_ACCESS_KEY"],
            "aws_session_token": os.environ.get("AWS_SESSION_TOKEN") or None,
        }
    return _s3_session().client("s3", endpoint_url=_endpoint(), config=config, **keys)


def _endpoint() -> str | None:
    for variable in ENDPOINT_VARIABLES:
        url = os.environ.get(variable)
        if not url:
            continue
        parts = urlsplit(url)
        if "@" not in parts.netloc:
            return url
        plain = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        log.warning(
            "%s holds user info (user:password@ before the host), which S3 never uses: it is "
            "ignored. Credentials belong in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; set "
            "%s=%s",
            variable,
            variable,
            plain,
        )
        return plain
    return None


def _s3_session():
    """One boto3 session for our clients (creating one costs about 0.5 s), whose S3 client
    class names its failures; other boto3 clients of the process are left as they are."""
    global _session
    with _session_lock:
        if _session is None:
            import boto3

            session = boto3.session.Session()
            session.events.register("creating-client-class.s3", _add_named_failures)
            _session = session
        return _session


def _add_named_failures(class_attributes, base_classes, **_kwargs) -> None:
    # boto3's documented way to extend a client class: put a mixin first among its bases.
    base_classes.insert(0, _NamedFailures)


class _NamedFailures:
    """Mixin of the S3 client class: connection failures and timeouts become StoreErrors that
    say what was being done, where, and for how long; GetObject bodies do the same."""

    def _make_api_call(self, operation_name, api_params):
        from botocore.exceptions import (
            ConnectionClosedError,
            ConnectTimeoutError,
            EndpointConnectionError,
            ReadTimeoutError,
        )

        started = time.monotonic()
        try:
            response = super()._make_api_call(operation_name, api_params)
        except ReadTimeoutError as error:
            reason = (
                f"no answer within {self.meta.config.read_timeout:g} s "
                f"({timeouts.READ_TIMEOUT_VARIABLE})"
            )
            raise _unreachable(self, operation_name, api_params, reason, started) from error
        except ConnectTimeoutError as error:
            reason = (
                f"no connection within {self.meta.config.connect_timeout:g} s "
                f"({timeouts.CONNECT_TIMEOUT_VARIABLE})"
            )
            raise _unreachable(self, operation_name, api_params, reason, started) from error
        except EndpointConnectionError as error:
            reason = "could not connect (is the endpoint up?)"
            raise _unreachable(self, operation_name, api_params, reason, started) from error
        except ConnectionClosedError as error:
            # urllib3 sends a request body under a socket timeout: a send that timed out is
            # an endpoint that stopped taking data, not one that closed the connection.
            reason = (
                "sending stalled: the endpoint stopped taking data"
                if _timed_out(error)
                else "the endpoint closed the connection"
            )
            raise _unreachable(self, operation_name, api_params, reason, started) from error
        if operation_name == "GetObject" and "Body" in response:
            what = _call_description(self, operation_name, api_params)
            response["Body"] = _NamedBody(response["Body"], what, self.meta.config.read_timeout)
        return response


def _timed_out(error: BaseException) -> bool:
    """Whether a socket timeout is at the root of a botocore/urllib3 error."""
    pending: list[object] = [error]
    visited: set[int] = set()
    while pending:
        current = pending.pop()
        if id(current) in visited:
            continue
        visited.add(id(current))
        if isinstance(current, TimeoutError):
            return True
        if isinstance(current, BaseException):
            pending.extend(current.args)
            pending.extend(getattr(current, "kwargs", {}).values())
    return False


def _call_description(client, operation: str, params: dict) -> str:
    target = "/".join(str(params[k]) for k in ("Bucket", "Key") if params.get(k))
    return f"S3 {operation} of {target} at {client.meta.endpoint_url}"


class StoreUnreachable(StoreError):
    """An S3 call that got no usable answer (no connection, timeouts, a cut transfer)."""


def _unreachable(client, operation: str, params: dict, reason: str, started: float) -> StoreError:
    return StoreUnreachable(
        f"{_call_description(client, operation, params)}: {reason}; gave up after "
        f"{time.monotonic() - started:.1f} s and up to {S3_ATTEMPTS} attempts"
    )


class _NamedBody(io.RawIOBase):
    """A GetObject body (botocore StreamingBody) whose stalls and cuts are named like the
    call's: the body is read long after the call returned, outside its error handling."""

    def __init__(self, body, what: str, read_timeout: float) -> None:
        super().__init__()
        self._body = body
        self._what = what
        self._read_timeout = read_timeout
        self._received = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        from botocore.exceptions import ReadTimeoutError, ResponseStreamingError

        try:
            chunk = self._body.read(None if size is None or size < 0 else size)
        except ReadTimeoutError as error:
            raise self._failed(
                f"no data for {self._read_timeout:g} s ({timeouts.READ_TIMEOUT_VARIABLE})"
            ) from error
        except ResponseStreamingError as error:
            raise self._failed("the connection was cut") from error
        self._received += len(chunk)
        return chunk

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def iter_chunks(self, chunk_size: int = 1 << 16):
        while chunk := self.read(chunk_size):
            yield chunk

    def close(self) -> None:
        self._body.close()
        super().close()

    def __getattr__(self, name: str):
        return getattr(self._body, name)

    def _failed(self, reason: str) -> StoreError:
        return StoreError(
            f"{self._what}: the download stalled after {self._received:,} bytes: {reason}"
        )
