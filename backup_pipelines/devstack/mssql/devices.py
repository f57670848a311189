"""Backup devices: TO/FROM DISK = N'/path' and TO/FROM URL = N's3://host:port/bucket/key'.

URL devices follow SQL Server 2022's S3 connector: the credential is the one whose name is the
longest prefix of the URL (``CREATE CREDENTIAL [s3://host:port/bucket] WITH IDENTITY =
'S3 Access Key', SECRET = 'key:secret'``); BACKUP TO URL needs WITH FORMAT when the object exists
(no INIT, no appending); MAXTRANSFERSIZE (5-20 MB, default 10 MB) is the multipart part size.
The set is written to a temporary file and uploaded with boto3 (streamed from disk); RESTORE
downloads it to a temporary file first. Real SQL Server only speaks HTTPS to S3; the stand-in
uses plain HTTP for loopback endpoints (a local moto server) and HTTPS otherwise.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import SqlError, backup_failure

DISK, URL = 2, 9
MB = 1024 * 1024
URL_RE = re.compile(r"^s3://(?P<host>[^/]+)/(?P<bucket>[^/]+)/(?P<key>.+)$", re.IGNORECASE)


@dataclass
class Device:
    name: str  # as written in the statement (messages, msdb physical_device_name)
    path: Path  # the local file read or written
    device_type: int = DISK
    upload: dict | None = field(default=None, repr=False)  # URL: client, bucket, key, part size
    temporary: bool = False

    def commit(self, verb: str) -> None:
        """After the set is complete: upload it (URL devices)."""
        if self.upload is None:
            return
        from boto3.s3.transfer import TransferConfig

        u = self.upload
        config = TransferConfig(
            multipart_threshold=u["part"], multipart_chunksize=u["part"], max_concurrency=2
        )
        try:
            u["client"].upload_file(str(self.path), u["bucket"], u["key"], Config=config)
        except Exception as exc:
            raise backup_failure(
                verb, 3202, f'Write on "{self.name}" failed: {_reason(exc)}'
            ) from None

    def close(self) -> None:
        if self.temporary:
            self.path.unlink(missing_ok=True)


def _reason(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"50(The request is not supported.) {text}"


def open_device(
    engine, verb: str, devices: list[tuple[str, str]], write: bool, options: dict
) -> Device:
    if not devices:
        raise backup_failure(verb, 3207, "Backup or restore requires at least one backup device. Rerun your "
                             "statement specifying a backup device.")  # fmt: skip
    if len(devices) > 1:
        raise backup_failure(verb, 3205, "Too many backup devices specified for backup or restore; only 1 are "
                             "allowed. (The SQL Server stand-in does not stripe backups.)")  # fmt: skip
    kind, target = devices[0]
    if kind == "URL":
        return _url_device(engine, verb, target, write, options)
    if kind != "DISK":
        raise backup_failure(verb, 3206, f"Backup device '{target}' does not exist. (The SQL Server stand-in "
                             "supports DISK and URL devices.)")  # fmt: skip
    path = Path(target)
    if not write and not path.is_file():
        raise backup_failure(verb, 3201, f"Cannot open backup device '{target}'. Operating system error "
                             "2(The system cannot find the file specified.).")  # fmt: skip
    if write and (not path.parent.is_dir() or path.is_dir()):
        raise backup_failure(verb, 3201, f"Cannot open backup device '{target}'. Operating system error "
                             "3(The system cannot find the path specified.).")  # fmt: skip
    return Device(target, path)


def _url_device(engine, verb: str, url: str, write: bool, options: dict) -> Device:
    m = URL_RE.match(url)
    if not m:
        raise backup_failure(verb, 3201, f"Cannot open backup device '{url}'. Operating system error "
                             "123(The filename, directory name, or volume label syntax is incorrect.).")  # fmt: skip
    credential = _credential(engine, url)
    if credential is None:
        raise backup_failure(verb, 3201, f"Cannot open backup device '{url}'. Operating system error "
                             "50(The request is not supported.).")  # fmt: skip
    access, _, secret = credential["secret"].partition(":")
    client = _client(m.group("host"), access, secret)
    bucket, key = m.group("bucket"), m.group("key")
    part = int(options.get("MAXTRANSFERSIZE", 10 * MB))
    if write and not 5 * MB <= part <= 20 * MB:
        raise backup_failure(verb, 3032, "One or more of the options (maxtransfersize) are not supported for "
                             "this statement. Review the documentation for supported options.")  # fmt: skip
    exists = _exists(client, bucket, key)
    if write:
        if options.get("INIT") and not options.get("FORMAT"):
            raise backup_failure(verb, 3032, "One or more of the options (init) are not supported for this "
                                 "statement. Review the documentation for supported options.")  # fmt: skip
        if exists and not options.get("FORMAT"):
            raise backup_failure(verb, 3201, f"Cannot open backup device '{url}'. Operating system error "
                                 "80(The file exists.). Use WITH FORMAT to overwrite it.")  # fmt: skip
    elif not exists:
        raise backup_failure(verb, 3201, f"Cannot open backup device '{url}'. Operating system error "
                             "2(The system cannot find the file specified.).")  # fmt: skip
    fd, name = tempfile.mkstemp(prefix="url-", suffix=".bak", dir=engine.storage)
    os.close(fd)
    device = Device(url, Path(name), URL, temporary=True)
    if write:
        device.upload = {"client": client, "bucket": bucket, "key": key, "part": part}
        return device
    try:
        client.download_file(bucket, key, name)
    except Exception as exc:
        device.close()
        raise backup_failure(verb, 3203, f'Read on "{url}" failed: {_reason(exc)}') from None
    return device


def _credential(engine, url: str) -> dict | None:
    best = None
    for name, credential in engine.credentials.items():
        if url.lower().startswith(name.lower().rstrip("/") + "/") and (
            best is None or len(name) > len(best[0])
        ):
            best = (name, credential)
    return best[1] if best else None


def _client(host: str, access: str, secret: str):
    import boto3
    from botocore.config import Config

    hostname = host.rsplit(":", 1)[0].strip("[]")
    scheme = "http" if hostname in ("127.0.0.1", "localhost", "::1") else "https"
    return boto3.client(
        "s3", endpoint_url=f"{scheme}://{host}", aws_access_key_id=access, aws_secret_access_key=secret,
        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        config=Config(request_checksum_calculation="when_required", response_checksum_validation="when_required",
                      s3={"addressing_style": "path"}),
    )  # fmt: skip


def _exists(client, bucket: str, key: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
        return True
    except Exception as exc:  # botocore ClientError 404, or the endpoint is unreachable
        code = getattr(exc, "response", {}).get("Error", {}).get("Code")
        if code in ("404", "NoSuchKey", "NotFound"):
            return False
        raise SqlError(3201, f"Cannot open backup device '{client.meta.endpoint_url}/{bucket}/{key}'. Operating "
                       f"system error {_reason(exc)}", 16, 1).then(3013, "BACKUP DATABASE is terminating abnormally.") from None  # fmt: skip
