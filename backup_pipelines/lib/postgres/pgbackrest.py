"""pgBackRest, the real tool (Debian's `pgbackrest`), driven for one stanza.

The project writes the stanza's configuration (a repository on a local path or on
S3-compatible storage, retention from the policy), runs `stanza-create`, `check`, `backup
--type=full|diff|incr`, `expire`, `archive-get` and `restore`, and reads `info --output=json`
into typed records.

Every command runs with `--config=FILE` on its command line (the `restore_command` pgBackRest
writes into a restored cluster carries `--config` only then), as the database server's user
when this process is root (`runuser -u postgres --`), with a bounded timeout, and with no
`PGBACKREST_*` variable of ours in its environment (pgBackRest reads those as options). S3
keys live only in the configuration file (mode 0600), never in argv, logs or errors.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

from backup_pipelines.lib.errors import BackupError, ConfigError

Log = Callable[[str], None]

BACKUP_TYPES = ("full", "diff", "incr")
DEFAULT_TIMEOUTS = {
    "stanza-create": 300,
    "stanza-upgrade": 300,
    "check": 300,
    "info": 120,
    "expire": 900,
    "archive-get": 300,
    "backup": 6 * 3600,
    "restore": 6 * 3600,
}
STDERR_TAIL = 12


class PgBackRestError(BackupError):
    """A pgBackRest command failed or timed out; the message names the stanza, the command
    and how long it ran."""


# --------------------------------------------------------------------------------------------
# Repository and configuration


@dataclass(frozen=True)
class Repository:
    """Where the stanza's backups and WAL archive live: a local path or S3-compatible storage."""

    type: str  # "posix" or "s3"
    path: str  # posix: an absolute folder; s3: the prefix inside the bucket ("/" or "/x/y")
    bucket: str = ""
    endpoint: str = ""  # host name, no scheme
    port: int = 443
    region: str = "us-east-1"
    key: str = field(default="", repr=False)
    key_secret: str = field(default="", repr=False)
    uri_style: str = "host"  # "path" for MinIO/moto-like endpoints
    verify_tls: bool = True

    @classmethod
    def from_url(cls, url: str, env: dict[str, str] | None = None) -> Repository:
        """`file:///absolute/dir` (or a bare absolute path) or `s3://bucket/prefix`; an S3
        endpoint, region and keys come from the same variables as the artifact store
        (AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID,
        AWS_SECRET_ACCESS_KEY); PGBACKREST_S3_URI_STYLE=path and PGBACKREST_S3_VERIFY_TLS=n
        for endpoints that need them."""
        env = os.environ if env is None else env
        parsed = urlparse(url)
        if parsed.scheme in ("", "file"):
            path = parsed.path if parsed.scheme else url
            if not path.startswith("/"):
                raise ConfigError(
                    f"PGBACKREST_REPO_URL {url!r}: a local repository needs an absolute path"
                )
            return cls("posix", path.rstrip("/") or "/")
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ConfigError(
                f"PGBACKREST_REPO_URL {url!r}: expected file:///absolute/dir or s3://bucket/prefix"
            )
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or ""
        region = env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or "us-east-1"
        if endpoint:
            ep = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
            if ep.scheme != "https":
                raise ConfigError(
                    f"S3 endpoint {ep.scheme}://{ep.hostname}: pgBackRest speaks HTTPS only; "
                    "put a TLS terminator in front of it or use its https:// address"
                )
            host, port = ep.hostname or "", ep.port or 443
        else:
            host, port = f"s3.{region}.amazonaws.com", 443
        key, secret = env.get("AWS_ACCESS_KEY_ID", ""), env.get("AWS_SECRET_ACCESS_KEY", "")
        if not key or not secret:
            raise ConfigError(
                "an S3 pgBackRest repository needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            )
        return cls(
            "s3",
            "/" + parsed.path.strip("/"),
            bucket=parsed.netloc,
            endpoint=host,
            port=port,
            region=region,
            key=key,
            key_secret=secret,
            uri_style=env.get("PGBACKREST_S3_URI_STYLE", "host"),
            verify_tls=env.get("PGBACKREST_S3_VERIFY_TLS", "y").lower() not in ("n", "no", "0"),
        )

    def describe(self) -> str:
        if self.type == "posix":
            return f"file://{self.path}"
        return f"s3://{self.bucket}{self.path.rstrip('/')} at {self.endpoint}:{self.port}"

    def options(self) -> dict[str, str]:
        if self.type == "posix":
            return {"repo1-type": "posix", "repo1-path": self.path}
        return {
            "repo1-type": "s3",
            "repo1-path": self.path,
            "repo1-s3-bucket": self.bucket,
            "repo1-s3-endpoint": self.endpoint,
            "repo1-storage-port": str(self.port),
            "repo1-s3-region": self.region,
            "repo1-s3-key": self.key,
            "repo1-s3-key-secret": self.key_secret,
            "repo1-s3-uri-style": self.uri_style,
            "repo1-storage-verify-tls": "y" if self.verify_tls else "n",
        }

    def secrets(self) -> list[str]:
        return [s for s in (self.key, self.key_secret) if s]


@dataclass(frozen=True)
class StanzaSettings:
    """Everything the project writes into the configuration of one stanza."""

    stanza: str
    pg_data: str  # pg1-path: the live cluster's data directory on this host
    pg_port: int = 5432
    pg_socket_dir: str = "/var/run/postgresql"
    pg_user: str = "postgres"  # the database role pgBackRest connects as
    repo: Repository = field(default_factory=lambda: Repository("posix", "/var/lib/pgbackrest"))
    retention_days: int = (
        7  # PITR window: full backups kept by time (repo1-retention-full-type=time)
    )
    log_dir: str = "/var/log/pgbackrest"
    lock_dir: str = "/tmp/pgbackrest"
    spool_dir: str = "/var/spool/pgbackrest"
    process_max: int = 2
    compress_type: str = "zst"
    archive_timeout_seconds: int = 60  # how long backup/check wait for a WAL segment to arrive

    def render(self) -> str:
        lines = [
            "# Written by backup_pipelines (lib/pgbackrest.py); rewritten by `pitr setup`.",
            "[global]",
        ]
        options = {
            **self.repo.options(),
            "repo1-retention-full-type": "time",
            "repo1-retention-full": str(self.retention_days),
            "repo1-bundle": "y",
            "start-fast": "y",
            "compress-type": self.compress_type,
            "compress-level": "3",
            "process-max": str(self.process_max),
            "archive-timeout": str(self.archive_timeout_seconds),
            "log-path": self.log_dir,
            "lock-path": self.lock_dir,
            "spool-path": self.spool_dir,
            "log-level-console": "warn",
            "log-level-stderr": "warn",
            "log-level-file": "info",
        }
        lines += [f"{k}={v}" for k, v in options.items()]
        lines += [
            "",
            f"[{self.stanza}]",
            f"pg1-path={self.pg_data}",
            f"pg1-port={self.pg_port}",
            f"pg1-socket-path={self.pg_socket_dir}",
            f"pg1-user={self.pg_user}",
            "",
        ]
        return "\n".join(lines)


STANZA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def validate_stanza_name(name: str) -> str:
    if not STANZA_NAME.fullmatch(name or ""):
        raise ConfigError(f"pgBackRest stanza name {name!r}: letters, digits, '_', '.', '-' only")
    return name


def write_config(path: str | os.PathLike, settings: StanzaSettings, os_user: str | None) -> Path:
    """Write the configuration (mode 0600, owned by os_user: it may hold S3 keys) and create
    the log, lock and spool folders that user must write to. Atomic: a reader never sees half
    a file."""
    validate_stanza_name(settings.stanza)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(settings.render())
        handle.flush()
        os.fsync(handle.fileno())
    dirs = [settings.log_dir, settings.lock_dir, settings.spool_dir]
    if settings.repo.type == "posix":
        dirs.append(settings.repo.path)
    for folder in dirs:
        Path(folder).mkdir(parents=True, exist_ok=True, mode=0o750)
    if os_user:
        for target in [tmp, *dirs]:
            shutil.chown(target, os_user, _group_of(os_user))
    os.replace(tmp, path)
    return path


def _group_of(user: str) -> int:
    return pwd.getpwnam(user).pw_gid


def archive_command(config_path: str | os.PathLike, stanza: str) -> str:
    """The `archive_command` of postgresql.conf for this stanza."""
    return (
        f"pgbackrest --config={config_path} --stanza={validate_stanza_name(stanza)} archive-push %p"
    )


# --------------------------------------------------------------------------------------------
# info --output=json


def _epoch(value) -> datetime | None:
    return None if value in (None, 0) else datetime.fromtimestamp(int(value), UTC)


@dataclass(frozen=True)
class BackupRecord:
    """One backup of the stanza, as `pgbackrest info --output=json` describes it."""

    label: str
    type: str  # full, diff, incr
    prior: str | None  # the backup a diff/incr depends on
    started_at: datetime
    stopped_at: datetime  # the earliest instant a point-in-time restore from it can reach
    size: int  # database size
    delta: int  # bytes copied by this backup
    repo_size: int  # bytes in the repository (compressed)
    repo_delta: int
    archive_start: str | None  # first WAL segment needed
    archive_stop: str | None  # last WAL segment needed for consistency
    lsn_start: str | None
    lsn_stop: str | None
    error: bool = False

    @classmethod
    def parse(cls, raw: dict) -> BackupRecord:
        info, repo = raw.get("info", {}), raw.get("info", {}).get("repository", {})
        archive, lsn, ts = raw.get("archive", {}), raw.get("lsn", {}), raw.get("timestamp", {})
        return cls(
            label=raw["label"],
            type=raw["type"],
            prior=raw.get("prior"),
            started_at=_epoch(ts.get("start")),
            stopped_at=_epoch(ts.get("stop")),
            size=int(info.get("size") or 0),
            delta=int(info.get("delta") or 0),
            repo_size=int(repo.get("size") or 0),
            repo_delta=int(repo.get("delta") or 0),
            archive_start=archive.get("start"),
            archive_stop=archive.get("stop"),
            lsn_start=lsn.get("start"),
            lsn_stop=lsn.get("stop"),
            error=bool(raw.get("error", False)),
        )

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "type": self.type,
            "prior": self.prior,
            "started_at": self.started_at.isoformat(),
            "stopped_at": self.stopped_at.isoformat(),
            "size": self.size,
            "delta": self.delta,
            "repo_size": self.repo_size,
            "repo_delta": self.repo_delta,
            "archive_start": self.archive_start,
            "archive_stop": self.archive_stop,
            "lsn_start": self.lsn_start,
            "lsn_stop": self.lsn_stop,
        }


@dataclass(frozen=True)
class StanzaInfo:
    name: str
    status_code: int
    status_message: str
    archive_min: str | None  # oldest WAL segment in the repository (current database)
    archive_max: str | None  # newest WAL segment in the repository
    backups: list[BackupRecord]

    @property
    def ok(self) -> bool:
        return self.status_code == 0

    @property
    def usable_backups(self) -> list[BackupRecord]:
        return [b for b in self.backups if not b.error]

    @property
    def oldest_backup(self) -> BackupRecord | None:
        usable = self.usable_backups
        return min(usable, key=lambda b: b.stopped_at) if usable else None

    @property
    def newest_backup(self) -> BackupRecord | None:
        usable = self.usable_backups
        return max(usable, key=lambda b: b.stopped_at) if usable else None

    @property
    def repo_size(self) -> int:
        return sum(b.repo_delta for b in self.backups)

    @classmethod
    def parse(cls, raw: list, stanza: str) -> StanzaInfo:
        entry = next((s for s in raw if s.get("name") == stanza), None)
        if entry is None:
            return cls(stanza, -1, "stanza not in pgbackrest info output", None, None, [])
        status = entry.get("status", {})
        current_db = next((d for d in entry.get("db", []) if d.get("id")), None)
        archives = entry.get("archive", [])
        if current_db is not None and len(archives) > 1:
            archives = [
                a for a in archives if a.get("database", {}).get("id") == current_db["id"]
            ] or archives
        archive_min = min((a["min"] for a in archives if a.get("min")), default=None)
        archive_max = max((a["max"] for a in archives if a.get("max")), default=None)
        backups = [BackupRecord.parse(b) for b in entry.get("backup", [])]
        return cls(
            stanza,
            int(status.get("code", -1)),
            str(status.get("message", "")),
            archive_min,
            archive_max,
            sorted(backups, key=lambda b: b.started_at),
        )


# --------------------------------------------------------------------------------------------
# Running commands


def _as_user(argv: list[str], os_user: str | None) -> list[str]:
    if os_user and os.geteuid() == 0 and pwd.getpwuid(os.geteuid()).pw_name != os_user:
        return ["runuser", "-u", os_user, "--", *argv]
    return argv


def child_env() -> dict[str, str]:
    """Our environment without variables pgBackRest would read as options, nor secrets it does
    not need."""
    drop = ("PGBACKREST_", "AWS_", "DIGITALOCEAN_", "PGPASSWORD")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def default_os_user() -> str | None:
    """pgBackRest must run as the database server's user: `postgres` when we are root."""
    explicit = os.environ.get("PGBACKREST_OS_USER")
    if explicit:
        return explicit
    return "postgres" if os.geteuid() == 0 else None


@dataclass(frozen=True)
class Stanza:
    """A configured stanza: runs pgBackRest commands against it."""

    name: str
    config_path: Path
    os_user: str | None = None
    secrets: tuple[str, ...] = ()  # scrubbed from any output we show
    binary: str = "pgbackrest"

    def __post_init__(self) -> None:
        validate_stanza_name(self.name)

    def describe(self) -> str:
        return f"pgBackRest stanza {self.name!r} ({self.config_path})"

    def argv(self, command: str, *args: str) -> list[str]:
        return [
            self.binary,
            f"--config={self.config_path}",
            f"--stanza={self.name}",
            command,
            *args,
        ]

    def run(
        self,
        command: str,
        *args: str,
        timeout: float | None = None,
        log: Log | None = None,
    ) -> str:
        """Run one command; its stdout. Raises PgBackRestError naming the stanza, the command,
        the exit code or the timeout, with the end of stderr."""
        if shutil.which(self.binary) is None:
            raise PgBackRestError(
                f"{self.binary} is not installed (Debian: apt-get install pgbackrest)"
            )
        timeout = timeout or DEFAULT_TIMEOUTS.get(command, 600)
        argv = _as_user(self.argv(command, *args), self.os_user)
        started = time.monotonic()
        if log:
            log(" ".join(["pgbackrest", command, *args]) + f" (stanza {self.name})")
        process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
            start_new_session=True,  # a timeout kills runuser and pgBackRest's workers together
        )
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                out, err = process.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                out, err = process.communicate()
            raise PgBackRestError(
                f"pgbackrest {command} (stanza {self.name}) did not finish within {timeout:.0f} s "
                f"and was stopped{self._tail(err)}"
            ) from None
        elapsed = time.monotonic() - started
        if process.returncode != 0:
            raise PgBackRestError(
                f"pgbackrest {command} (stanza {self.name}) failed with exit code "
                f"{process.returncode} after {elapsed:.1f} s{self._tail(err or out)}"
            )
        return out

    def _tail(self, text: str | None) -> str:
        lines = [line for line in (text or "").strip().splitlines() if line.strip()]
        if not lines:
            return ""
        tail = "\n".join(lines[-STDERR_TAIL:])
        for secret in self.secrets:
            tail = tail.replace(secret, "***")
        return ": " + tail

    # ---- commands -----------------------------------------------------------------------

    def stanza_create(self, log: Log | None = None) -> None:
        self.run("stanza-create", log=log)

    def check(self, log: Log | None = None) -> None:
        """Checks the configuration and that archive_command delivers a WAL segment to the
        repository (pgBackRest forces a WAL switch and waits up to archive-timeout)."""
        self.run("check", log=log)

    def backup(
        self, backup_type: str = "full", log: Log | None = None, timeout: float | None = None
    ) -> BackupRecord:
        """A backup of the given type; its record from `info` (the newest backup)."""
        if backup_type not in BACKUP_TYPES:
            raise ConfigError(
                f"backup type {backup_type!r}: expected one of {', '.join(BACKUP_TYPES)}"
            )
        before = {b.label for b in self.info().backups}
        self.run("backup", f"--type={backup_type}", timeout=timeout, log=log)
        info = self.info()
        new = [b for b in info.backups if b.label not in before]
        if not new:
            raise PgBackRestError(
                f"pgbackrest backup (stanza {self.name}) succeeded but info lists no new backup"
            )
        return max(new, key=lambda b: b.started_at)

    def expire(self, log: Log | None = None) -> None:
        self.run("expire", log=log)

    def info(self, timeout: float | None = None) -> StanzaInfo:
        out = self.run("info", "--output=json", timeout=timeout)
        try:
            raw = json.loads(out)
        except ValueError as exc:
            raise PgBackRestError(
                f"pgbackrest info (stanza {self.name}) printed something that is not JSON"
            ) from exc
        return StanzaInfo.parse(raw, self.name)

    def archive_get(self, segment: str, destination: Path, timeout: float | None = None) -> None:
        """Fetch one archived WAL segment (decompressed) into `destination`, which the
        server's user must be able to write."""
        self.run("archive-get", segment, str(destination), timeout=timeout)

    def restore(
        self,
        pg_data: Path,
        *,
        target_time: datetime | None = None,
        target_action: str = "promote",
        archive_mode: str = "off",
        delta: bool = False,
        backup_set: str | None = None,
        log: Log | None = None,
        timeout: float | None = None,
    ) -> None:
        """Restore into `pg_data` (empty, or the live folder with delta=True), recovering to
        `target_time` when given (else to the end of the archive). archive_mode=off keeps a
        restored copy from pushing WAL into this stanza's repository."""
        args = [f"--pg1-path={pg_data}", f"--archive-mode={archive_mode}"]
        if target_time is not None:
            args += [
                "--type=time",
                f"--target={format_target(target_time)}",
                f"--target-action={target_action}",
            ]
        if delta:
            args.append("--delta")
        if backup_set:
            # Chosen by the caller: pgBackRest's own choice parses the target with less
            # precision than PostgreSQL's microseconds.
            args.append(f"--set={backup_set}")
        self.run("restore", *args, timeout=timeout, log=log)


def format_target(moment: datetime) -> str:
    """A recovery_target_time PostgreSQL parses unambiguously: UTC with microseconds."""
    if moment.tzinfo is None:
        raise ConfigError(f"target time {moment.isoformat()} has no time zone")
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")
