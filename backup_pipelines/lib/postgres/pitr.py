"""Point-in-time recovery of the whole PostgreSQL cluster with pgBackRest.

- `wal_rpo`: the RPO of the WAL archive: how long ago the archive last advanced while WAL is
  waiting to be archived (`pg_stat_archiver`, the current WAL position, `pgbackrest info`
  archive max), and whether `archive_command` is failing right now (`failed_count` rising,
  last failure newer than the last success).
- `reachable_window`: the oldest instant a restore can reach (just after the oldest backup's
  end) and the newest (just before the last commit in the archived WAL: recovery must see a
  commit after its target, else PostgreSQL stops with "recovery ended before configured
  recovery target was reached").
- `restore_to_time`: checks the target against that window BEFORE anything is written, then
  `pgbackrest restore --type=time --target-action=promote` into a NEW data directory and port
  (over the live cluster only with overwrite_live=True), starts it, waits for the promotion and
  verifies it: `pg_is_in_recovery()` false, the new timeline, the LSN reached, row counts.

Library code: no Dagster; every subprocess and query has a bounded timeout; passwords and keys
never appear in what is logged or raised.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from backup_pipelines.lib.errors import BackupError, ConfigError
from backup_pipelines.lib.postgres.connection import describe_database, pg_bin
from backup_pipelines.lib.postgres.pgbackrest import (
    Repository,
    Stanza,
    StanzaInfo,
    StanzaSettings,
    _as_user,
    archive_command,
    default_os_user,
    format_target,
    validate_stanza_name,
    write_config,
)
from backup_pipelines.lib.scratch import (
    CLAIM_SUFFIX,
    DirectoryClaim,
    ScratchFolder,
    remove_or_empty,
    work_dir,
)

Log = Callable[[str], None]

PENDING_SLACK_BYTES = 8192  # an idle server's last WAL page (standby snapshots) is not data at risk
WALDUMP_SEGMENTS = 8
REPO_LAG_TOLERANCE_SECONDS = 60  # how far back to look for the newest archived commit
DEFAULT_CONFIG = "/etc/pgbackrest/pgbackrest.conf"
SEGMENT = re.compile(r"^[0-9A-F]{24}$")


class PitrTargetUnreachable(BackupError):
    """The requested instant is outside what the backups and the archived WAL can reach."""


class PitrRestoreError(BackupError):
    """The restored cluster did not start, did not reach the target or did not verify."""


def _quiet(_message: str) -> None:
    pass


# --------------------------------------------------------------------------------------------
# Configuration from the environment


@dataclass(frozen=True)
class PitrConfig:
    """What a deployment configures for the PITR tier (environment only)."""

    stanza: Stanza
    database_url: str  # the live cluster (DATABASE_URL)
    repo_url: str = ""  # PGBACKREST_REPO_URL: the project writes the stanza's configuration
    pg_data: str = ""  # PGBACKREST_PG_DATA: the live data directory (pg1-path)

    @classmethod
    def from_env(cls, stanza_name: str = "main", env: dict[str, str] | None = None) -> PitrConfig:
        env = os.environ if env is None else env
        database_url = env.get("DATABASE_URL", "")
        if not database_url:
            raise ConfigError("point-in-time recovery needs DATABASE_URL (the live cluster)")
        if not (env.get("PGBACKREST_CONFIG") or env.get("PGBACKREST_REPO_URL")):
            raise ConfigError(
                "point-in-time recovery needs PGBACKREST_CONFIG (an existing pgBackRest "
                "configuration) or PGBACKREST_REPO_URL (the project writes one)"
            )
        stanza_name = validate_stanza_name(env.get("PGBACKREST_STANZA") or stanza_name)
        repo_url = env.get("PGBACKREST_REPO_URL", "")
        secrets: tuple[str, ...] = ()
        if repo_url:
            secrets = tuple(Repository.from_url(repo_url, env).secrets())
        config_path = Path(env.get("PGBACKREST_CONFIG") or DEFAULT_CONFIG)
        stanza = Stanza(stanza_name, config_path, default_os_user(), secrets)
        return cls(stanza, database_url, repo_url, env.get("PGBACKREST_PG_DATA", ""))

    def settings(self, retention_days: int, env: dict[str, str] | None = None) -> StanzaSettings:
        """The configuration the project writes from PGBACKREST_REPO_URL and PGBACKREST_PG_DATA
        (port, socket folder and role from DATABASE_URL)."""
        env = os.environ if env is None else env
        if not self.repo_url:
            raise ConfigError("writing the pgBackRest configuration needs PGBACKREST_REPO_URL")
        if not self.pg_data:
            raise ConfigError(
                "writing the pgBackRest configuration needs PGBACKREST_PG_DATA (the live "
                "cluster's data directory on this host: pgBackRest copies its files)"
            )
        params = conninfo_to_dict(self.database_url)
        host = params.get("host") or ""
        socket_dir = env.get("PGBACKREST_PG_SOCKET") or (
            host if host.startswith("/") else "/var/run/postgresql"
        )
        state = Path(self.stanza.config_path).parent
        return StanzaSettings(
            stanza=self.stanza.name,
            pg_data=self.pg_data,
            pg_port=int(params.get("port") or 5432),
            pg_socket_dir=socket_dir,
            pg_user=params.get("user") or "postgres",
            repo=Repository.from_url(self.repo_url, env),
            retention_days=max(1, retention_days),
            log_dir=env.get("PGBACKREST_LOG_DIR") or str(state / "log"),
            lock_dir=str(state / "lock"),
            spool_dir=str(state / "spool"),
        )

    def archive_command(self) -> str:
        return archive_command(self.stanza.config_path, self.stanza.name)


def configured(env: dict[str, str] | None = None) -> bool:
    """Whether this deployment has the PITR tier: DATABASE_URL plus PGBACKREST_CONFIG or
    PGBACKREST_REPO_URL."""
    env = os.environ if env is None else env
    return bool(env.get("DATABASE_URL")) and bool(
        env.get("PGBACKREST_CONFIG") or env.get("PGBACKREST_REPO_URL")
    )


def setup(
    config: PitrConfig,
    retention_days: int,
    log: Log = _quiet,
    env: dict[str, str] | None = None,
) -> list[str]:
    """Write the configuration (when PGBACKREST_REPO_URL is set), create the stanza and check
    that archiving reaches the repository. Returns the archive settings the live cluster
    still lacks (empty when it is ready)."""
    if config.repo_url:
        settings = config.settings(retention_days, env)
        write_config(config.stanza.config_path, settings, config.stanza.os_user)
        log(f"wrote {config.stanza.config_path} (repository {settings.repo.describe()})")
    problems = archive_settings_problems(config)
    if problems:
        return problems
    config.stanza.stanza_create(log)
    config.stanza.check(log)
    return []


def archive_settings_problems(config: PitrConfig) -> list[str]:
    """What postgresql.conf of the live cluster must still say for WAL archiving to this
    stanza (wal_level, archive_mode, archive_command)."""
    with _connect(config.database_url) as conn:
        row = conn.execute(
            "SELECT current_setting('wal_level'), current_setting('archive_mode'), "
            "current_setting('archive_command')"
        ).fetchone()
    wal_level, archive_mode, command = row
    problems = []
    if wal_level not in ("replica", "logical"):
        problems.append(f"wal_level = replica (now {wal_level}; needs a restart)")
    if archive_mode not in ("on", "always"):
        problems.append(f"archive_mode = on (now {archive_mode}; needs a restart)")
    if f"--stanza={config.stanza.name}" not in command or "archive-push" not in command:
        problems.append(
            f"archive_command = '{config.archive_command()}' (then SELECT pg_reload_conf())"
        )
    return problems


def _connect(url: str, timeout: int = 10, **kwargs) -> psycopg.Connection:
    try:
        conn = psycopg.connect(url, connect_timeout=timeout, autocommit=True, **kwargs)
    except psycopg.Error as exc:
        raise BackupError(
            f"PostgreSQL {describe_database(url)} unreachable within {timeout} s: {str(exc).strip()}"
        ) from exc
    conn.execute("SET statement_timeout = '60s'")
    return conn


# --------------------------------------------------------------------------------------------
# WAL segments and LSNs


def parse_lsn(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def segment_bounds(segment: str, segment_size: int) -> tuple[int, int]:
    """[start, end) LSN of a WAL segment file name."""
    per_log = 0x100000000 // segment_size
    number = int(segment[8:16], 16) * per_log + int(segment[16:24], 16)
    return number * segment_size, (number + 1) * segment_size


def segment_before(segment: str, segment_size: int) -> str | None:
    per_log = 0x100000000 // segment_size
    number = int(segment[8:16], 16) * per_log + int(segment[16:24], 16) - 1
    if number < 0:
        return None
    return f"{segment[:8]}{number // per_log:08X}{number % per_log:08X}"


def _segment_part(name: str | None) -> str | None:
    if name and SEGMENT.match(name[:24]) and len(name) == 24:
        return name
    return None


# --------------------------------------------------------------------------------------------
# WAL RPO


@dataclass
class WalRpo:
    """The recovery point of the PITR tier right now."""

    checked_at: datetime
    target_seconds: float
    archive_mode: str = ""
    archive_timeout_seconds: int = 0
    archived_count: int = 0
    last_archived_wal: str | None = None
    last_archived_at: datetime | None = None
    failed_count: int = 0
    last_failed_wal: str | None = None
    last_failed_at: datetime | None = None
    current_wal: str | None = None
    current_lsn: str | None = None
    newest_segment: str | None = None  # newest plain segment archived (server or repository)
    repo_archive_max: str | None = None
    pending_bytes: int = 0  # WAL written after the newest archived segment
    exposure_seconds: float = 0.0  # how much recent history a loss now would cost, at most
    problems: list[str] = field(default_factory=list)

    @property
    def failing(self) -> bool:
        """archive_command failed at its last attempt."""
        return bool(
            self.failed_count
            and self.last_failed_at
            and (self.last_archived_at is None or self.last_failed_at > self.last_archived_at)
        )

    @property
    def late(self) -> bool:
        return self.exposure_seconds > self.target_seconds or bool(self.problems)

    def describe(self) -> str:
        what = (
            f"WAL archive {self.exposure_seconds:.0f} s behind (target {self.target_seconds:.0f} s)"
        )
        if self.failing:
            what += (
                f"; archive_command failing since {self.last_failed_at:%Y-%m-%d %H:%M:%S} UTC "
                f"({self.failed_count} failures, last on {self.last_failed_wal})"
            )
        if self.problems:
            what += "; " + "; ".join(self.problems)
        return what

    def to_dict(self) -> dict:
        def iso(moment):
            return moment.isoformat(timespec="seconds") if moment else None

        return {
            "checked_at": iso(self.checked_at),
            "target_seconds": self.target_seconds,
            "exposure_seconds": round(self.exposure_seconds, 1),
            "late": self.late,
            "failing": self.failing,
            "archive_mode": self.archive_mode,
            "archive_timeout_seconds": self.archive_timeout_seconds,
            "archived_count": self.archived_count,
            "last_archived_wal": self.last_archived_wal,
            "last_archived_at": iso(self.last_archived_at),
            "failed_count": self.failed_count,
            "last_failed_wal": self.last_failed_wal,
            "last_failed_at": iso(self.last_failed_at),
            "current_wal": self.current_wal,
            "current_lsn": self.current_lsn,
            "repo_archive_max": self.repo_archive_max,
            "pending_bytes": self.pending_bytes,
            "problems": self.problems,
        }


def wal_rpo(
    database_url: str,
    target_seconds: float,
    info: StanzaInfo | None = None,
    now: datetime | None = None,
) -> WalRpo:
    """The WAL archive's recovery point: WAL is at risk when more than the last page was
    written after the newest archived segment, or archive_command is failing; then the
    exposure is the time since the archive last advanced."""
    with _connect(database_url) as conn:
        row = conn.execute(
            "SELECT archived_count, last_archived_wal, last_archived_time, failed_count, "
            "last_failed_wal, last_failed_time, now(), pg_current_wal_insert_lsn()::text, "
            "pg_walfile_name(pg_current_wal_insert_lsn()), "
            "(SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'), "
            "current_setting('archive_mode'), "
            "(SELECT setting::int FROM pg_settings WHERE name = 'archive_timeout'), "
            "pg_postmaster_start_time() "
            "FROM pg_stat_archiver"
        ).fetchone()
    (
        archived_count,
        last_wal,
        last_time,
        failed_count,
        failed_wal,
        failed_time,
        db_now,
        lsn,
        current_wal,
        segment_size,
        archive_mode,
        archive_timeout,
        started_at,
    ) = row
    result = WalRpo(
        checked_at=now or db_now,
        target_seconds=target_seconds,
        archive_mode=archive_mode,
        archive_timeout_seconds=int(archive_timeout or 0),
        archived_count=int(archived_count or 0),
        last_archived_wal=last_wal,
        last_archived_at=last_time,
        failed_count=int(failed_count or 0),
        last_failed_wal=failed_wal,
        last_failed_at=failed_time,
        current_wal=current_wal,
        current_lsn=lsn,
        repo_archive_max=info.archive_max if info else None,
    )
    if archive_mode not in ("on", "always"):
        result.problems.append(f"archive_mode is {archive_mode}: no WAL is archived")
    timeline = current_wal[:8]
    candidates = [
        s
        for s in (_segment_part(last_wal), _segment_part(result.repo_archive_max))
        if s and s[:8] == timeline
    ]
    result.newest_segment = max(candidates) if candidates else None
    if result.newest_segment:
        _start, end = segment_bounds(result.newest_segment, segment_size)
        result.pending_bytes = max(0, parse_lsn(lsn) - end)
    else:
        result.pending_bytes = parse_lsn(lsn)
    at_risk = result.failing or result.pending_bytes > PENDING_SLACK_BYTES
    if at_risk:
        since = last_time or started_at
        result.exposure_seconds = max(0.0, (db_now - since).total_seconds())
    server_newest = _segment_part(last_wal)
    if (
        info is not None
        and server_newest
        and server_newest[:8] == (result.repo_archive_max or "")[:8]
        and (result.repo_archive_max or "") < server_newest
        # info is read before the server: only a segment archived a while ago must be there
        and last_time is not None
        and (db_now - last_time).total_seconds() > REPO_LAG_TOLERANCE_SECONDS
    ):
        result.problems.append(
            f"the repository's newest WAL segment {result.repo_archive_max} is older than the "
            f"server's last archived {server_newest} (another repository or stanza?)"
        )
    return result


# --------------------------------------------------------------------------------------------
# What a restore can reach


@dataclass(frozen=True)
class ReachableWindow:
    """Instants a point-in-time restore can reach: oldest <= T <= newest."""

    oldest: datetime  # the oldest backup's end (its last commit before consistency)
    newest: datetime | None  # just before the newest archived commit; None: no commit archived
    oldest_backup: str
    newest_commit: datetime | None  # the newest commit found in the archived WAL
    newest_segment: str | None

    def refuse_reason(self, target: datetime) -> str | None:
        when = format_target(target)
        if target < self.oldest:
            return (
                f"target {when} is before the oldest restorable instant {format_target(self.oldest)} "
                f"(the end of the oldest backup, {self.oldest_backup})"
            )
        if self.newest is None:
            return (
                f"target {when} cannot be reached: no commit was found in the archived WAL after "
                f"the backups (newest segment {self.newest_segment}); recovery must replay a "
                "commit after its target"
            )
        if target > self.newest:
            return (
                f"target {when} is after the newest reachable instant {format_target(self.newest)} "
                f"(the newest archived commit is at {format_target(self.newest_commit)}, in WAL "
                f"up to {self.newest_segment}; recovery must replay a commit after its target)"
            )
        return None

    def to_dict(self) -> dict:
        return {
            "oldest": self.oldest.isoformat(),
            "newest": self.newest.isoformat() if self.newest else None,
            "oldest_backup": self.oldest_backup,
            "newest_commit": self.newest_commit.isoformat() if self.newest_commit else None,
            "newest_segment": self.newest_segment,
        }


COMMIT = re.compile(r"desc: COMMIT (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) (\S+)")


def commit_times(
    wal_dir: Path,
    timeline: int,
    start_lsn: str | None = None,
    end_lsn: str | None = None,
    segment_file: Path | None = None,
    timeout: float = 300,
) -> list[datetime]:
    """Commit timestamps in WAL (pg_waldump): one segment file, or the segments in wal_dir
    between two LSNs."""
    argv = [pg_bin("pg_waldump"), "--rmgr=Transaction"]
    if segment_file is not None:
        argv.append(str(segment_file))
    else:
        argv += ["-p", str(wal_dir), f"--timeline={timeline}", "-s", start_lsn, "-e", end_lsn]
    try:
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "TZ": "UTC", "PGTZ": "UTC"},
        )
    except subprocess.TimeoutExpired as exc:
        raise BackupError(f"pg_waldump did not finish within {timeout:.0f} s") from exc
    times = []
    for match in COMMIT.finditer(
        result.stdout
    ):  # pg_waldump may end with an error at the end of WAL
        stamp, zone = match.groups()
        if zone in ("UTC", "GMT", "Z"):
            times.append(datetime.fromisoformat(stamp).replace(tzinfo=UTC))
    return times


def _segments_between(first: str, last: str, segment_size: int, limit: int) -> list[str] | None:
    names, current = [], last
    while current is not None and current >= first:
        names.append(current)
        if len(names) > limit:
            return None
        current = segment_before(current, segment_size)
    return list(reversed(names))


def oldest_restorable(stanza: Stanza, backup, scratch: Path, segment_size: int) -> datetime:
    """The oldest instant a time target can name for this backup: recovery stops at the first
    commit after the target, and PostgreSQL refuses a stop before the backup's end
    (consistency), so the target must not precede any commit replayed from the backup's start
    to its end."""
    fallback = backup.stopped_at + timedelta(seconds=1)  # info's times are whole seconds
    if not (backup.archive_start and backup.archive_stop and backup.lsn_start and backup.lsn_stop):
        return fallback
    names = _segments_between(backup.archive_start, backup.archive_stop, segment_size, 64)
    if names is None:
        return fallback
    try:
        for name in names:
            stanza.archive_get(name, scratch / name)
    except BackupError:
        return fallback
    times = commit_times(
        scratch, int(backup.archive_start[:8], 16), backup.lsn_start, backup.lsn_stop
    )
    for name in names:
        (scratch / name).unlink(missing_ok=True)
    return max([backup.started_at, *times])


def reachable_window(
    stanza: Stanza,
    info: StanzaInfo | None = None,
    work_dir: str | os.PathLike | None = None,
    segment_size: int = 16 << 20,
) -> ReachableWindow:
    """The oldest and newest instants a point-in-time restore can reach now: from the end of
    the oldest backup to just before the newest commit in the archived WAL (found with
    `archive-get` + `pg_waldump`)."""
    info = info or stanza.info()
    oldest_backup = info.oldest_backup
    if oldest_backup is None:
        raise PitrTargetUnreachable(
            f"{stanza.describe()} holds no backup yet: nothing can be restored"
        )
    newest_commit = None
    segment = info.archive_max
    with _scratch_dir(work_dir, stanza.os_user) as scratch:
        oldest = oldest_restorable(stanza, oldest_backup, scratch, segment_size)
        for _ in range(WALDUMP_SEGMENTS):
            if segment is None or (info.archive_min and segment < info.archive_min):
                break
            target = scratch / segment
            try:
                stanza.archive_get(segment, target)
            except BackupError:
                break
            times = commit_times(scratch, 0, segment_file=target)
            target.unlink(missing_ok=True)
            if times:
                newest_commit = max(times)
                break
            segment = segment_before(segment, segment_size)
    newest = None
    if newest_commit is not None and newest_commit > oldest:
        newest = newest_commit - timedelta(microseconds=1)
    return ReachableWindow(oldest, newest, oldest_backup.label, newest_commit, info.archive_max)


@contextlib.contextmanager
def _scratch_dir(parent, os_user: str | None):
    with ScratchFolder("pitr-wal", parent=parent) as folder:
        wal = folder / "wal"
        wal.mkdir()
        if os_user:  # the folder stays ours (only its owner's sweep removes it)
            folder.chmod(0o711)
            shutil.chown(wal, os_user)
        yield wal


# --------------------------------------------------------------------------------------------
# Restore


@dataclass
class RestoredCluster:
    """A cluster restored to a point in time and running."""

    data_dir: Path
    port: int
    url: str = field(repr=False)  # connection URL (carries the live URL's password: never log it)
    target: datetime
    backup_label: str
    timeline: int = 0
    lsn: str = ""
    recovery_stop: str = ""  # PostgreSQL's "recovery stopping before ..." line
    last_transaction_at: str = ""  # PostgreSQL's "last completed transaction was at log time ..."
    row_counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    overwrote_live: bool = False
    os_user: str | None = None

    @property
    def display_url(self) -> str:
        """The connection URL with the password masked: safe to log and show."""
        params = conninfo_to_dict(self.url)
        if params.get("password"):
            params["password"] = "***"
        user = params.get("user", "")
        return f"postgresql://{user}{':***' if 'password' in params else ''}@{params.get('host')}:{params.get('port')}/{params.get('dbname', '')}"

    def stop(self, timeout: float = 60) -> None:
        _pg_ctl(
            ["stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", str(int(timeout))],
            self.os_user,
            timeout + 10,
            check=False,
        )

    def remove(self) -> None:
        """Stop it and delete its data directory (never the live one)."""
        if self.overwrote_live:
            raise BackupError("refusing to remove the live cluster's data directory")
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def to_dict(self) -> dict:
        return {
            "data_dir": str(self.data_dir),
            "port": self.port,
            "url": self.display_url,
            "target": self.target.isoformat(),
            "backup_label": self.backup_label,
            "timeline": self.timeline,
            "lsn": self.lsn,
            "recovery_stop": self.recovery_stop,
            "last_transaction_at": self.last_transaction_at,
            "row_counts": self.row_counts,
            "seconds": round(self.seconds, 1),
            "overwrote_live": self.overwrote_live,
        }


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _listens_everywhere(listen: str) -> bool:
    return listen.strip() in ("*", "0.0.0.0", "")


def _refuse_taken_port(listen: str, port: int) -> None:
    """A server already listening on the copy's port would answer for the copy."""
    everywhere = _listens_everywhere(listen)
    for host in ["0.0.0.0"] if everywhere else [h.strip() for h in listen.split(",")]:
        try:
            addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror:
            continue  # the server says what is wrong with it, in its own words
        for family, kind, proto, _name, address in addresses:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as PostgreSQL
                try:
                    probe.bind(address)
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE:
                        raise ConfigError(
                            f"port {port} is already in use on {host}: choose another port for "
                            "the restored copy, or leave it out for a free one"
                        ) from exc


def _answered_by(conn: psycopg.Connection, data_dir: Path) -> bool:
    """Whether the server behind `conn` runs in `data_dir`: its backend is a child of the
    postmaster written there. Another server that took the port after it was chosen (or a
    copy that never started while live listens there) must never pass for the copy."""
    try:
        with open(f"/proc/{conn.info.backend_pid}/status") as status:
            parent = next(line for line in status if line.startswith("PPid:")).split()[1]
        return int(parent) == int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, StopIteration, ValueError, IndexError):
        return False


def _pg_ctl(
    args: list[str], os_user: str | None, timeout: float, check: bool = True
) -> subprocess.CompletedProcess:
    argv = _as_user([pg_bin("pg_ctl"), *args], os_user)
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise PitrRestoreError(f"pg_ctl {args[0]} did not finish within {timeout:.0f} s") from exc
    if check and result.returncode != 0:
        raise PitrRestoreError(
            f"pg_ctl {args[0]} failed: {(result.stderr or result.stdout).strip()[-1500:]}"
        )
    return result


def _is_running(data_dir: Path, os_user: str | None) -> bool:
    """Whether a server runs on `data_dir` (`pg_ctl status`: 0 running, 3 not running, a
    crashed server's stale pid file included)."""
    result = _pg_ctl(["status", "-D", str(data_dir)], os_user, 30, check=False)
    if result.returncode in (0, 3):
        return result.returncode == 0
    detail = (result.stderr or result.stdout).strip()[-500:]
    raise PitrRestoreError(f"pg_ctl status -D {data_dir} failed: {detail}")


def _live_dir_problem(live_dir: Path) -> str | None:
    """Why `live_dir` cannot take the restored copy's place, or None. Unreadable to this
    process (owned by the cluster's OS user) is not a problem: pg_ctl runs as that user."""
    try:
        os.stat(live_dir / "PG_VERSION")
    except FileNotFoundError:
        if not live_dir.exists():
            return f"the live data directory {live_dir} does not exist"
        return f"{live_dir} holds no PostgreSQL data directory (no PG_VERSION)"
    except PermissionError:
        return None
    return None


def _interrupted_swap_hint(live_dir: Path) -> str:
    """A swap killed between its two renames leaves live's directory missing and both halves
    beside it: name them, newest first, so the operator renames one back instead of
    restoring again. A copy with a claim beside it is unfinished (the next restore clears it)."""
    pattern = re.compile(rf"{re.escape(live_dir.name)}\.(before-)?pitr-\d{{8}}T\d{{6}}")
    try:
        left = sorted(
            (p.name for p in live_dir.parent.iterdir()
             if pattern.fullmatch(p.name) and p.is_dir() and not p.is_symlink()
             and not (live_dir.parent / f"{p.name}{CLAIM_SUFFIX}").exists()),
            key=lambda name: name.rsplit("-", 1)[1], reverse=True,
        )  # fmt: skip
    except OSError:
        return ""
    if not left:
        return ""
    return (
        f"; beside it, from an interrupted swap: {', '.join(left)} (`.before-pitr-`: live's "
        "previous directory; `.pitr-`: a restored copy): rename the one you want to "
        f"{live_dir.name}"
    )


def _postmaster_options(data_dir: Path) -> list[str]:
    """The command-line options the running server was started with (postmaster.opts), less
    the binary and its data directory."""
    opts = data_dir / "postmaster.opts"
    if not opts.exists():
        return []
    words = shlex.split(opts.read_text())[1:]
    kept, skip = [], False
    for word in words:
        if skip:
            skip = False
            continue
        if word == "-D":
            skip = True
            continue
        kept.append(word)
    return kept


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


# A Unix socket's path holds at most 107 bytes (sun_path), and PostgreSQL does not start when
# <dir>/.s.PGSQL.<port> is longer. Every connection made here is TCP, so a data directory too
# deep for its socket (a long BACKUP_WORK_DIR) runs with none.
SOCKET_PATH_MAX = 107


def _socket_dir(data_dir: Path, port: int) -> str:
    fits = len(os.fsencode(f"{data_dir}/.s.PGSQL.{port}")) <= SOCKET_PATH_MAX
    return str(data_dir) if fits else ""


def restore_to_time(
    config: PitrConfig,
    target: datetime,
    *,
    target_dir: str | os.PathLike | None = None,
    port: int | None = None,
    listen: str = "127.0.0.1",
    overwrite_live: bool = False,
    recovery_timeout: float = 3600,
    log: Log = _quiet,
    leases=None,
    lease_owner: str | None = None,
) -> RestoredCluster:
    """Restore the cluster to `target` (timezone-aware) and start it.

    Default: a NEW data directory (`target_dir`, default `<BACKUP_WORK_DIR or tmp>/pitr_<stamp>`)
    and a free port (or `port`), archiving off so the copy never pushes WAL into the live
    repository; the live cluster is not touched. `overwrite_live=True` makes the verified copy
    the live cluster (its port, options and archiving).

    A target outside `reachable_window` is refused before anything is written. Over live it is
    a verified swap: the copy is restored beside live, started and verified first, then
    renamed into live's place (live's previous directory is kept beside it). With `leases` (a
    backup store), over live holds the whole database's restore lease throughout: refused
    while a workspace or full restore writes into live, and refusing them while it runs."""
    restore = functools.partial(
        _restore_to_time, config, target, target_dir, port, listen, overwrite_live,
        recovery_timeout, log,
    )  # fmt: skip
    if overwrite_live and leases is not None:
        with leases.restore_lease(None, lease_owner, log):
            return restore()
    return restore()


def _restore_to_time(
    config, target, target_dir, port, listen, overwrite_live, recovery_timeout, log
) -> RestoredCluster:
    if target.tzinfo is None:
        raise ConfigError(f"target time {target.isoformat()} has no time zone: add +00 or Z")
    started = time.monotonic()
    stanza = config.stanza
    live_dir = Path(config.pg_data or _pg1_path(stanza)) if overwrite_live else None
    if live_dir is not None and (problem := _live_dir_problem(live_dir)):
        raise ConfigError(
            f"{problem}: there is nothing to swap the restored copy into. Restore into a new "
            "directory instead (without --overwrite-live) and move it into place by hand"
            + _interrupted_swap_hint(live_dir)
        )
    info = stanza.info()
    window = reachable_window(stanza, info)
    reason = window.refuse_reason(target)
    if reason:
        raise PitrTargetUnreachable(reason)
    backup = choose_backup(info, target)
    log(
        f"restoring to {format_target(target)} from backup {backup.label} ({backup.type}) and WAL "
        f"up to {window.newest_segment}"
    )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    if overwrite_live:
        # Beside the live directory (same file system: the swap is a rename).
        data_dir = live_dir.parent / f"{live_dir.name}.pitr-{stamp}"
        listen, port = "127.0.0.1", None
    else:
        data_dir = Path(target_dir or work_dir() / f"pitr_{stamp}")
    if config.pg_data and data_dir.resolve() == Path(config.pg_data).resolve():
        raise ConfigError(f"{data_dir} is the live data directory: use overwrite_live")
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    claim = DirectoryClaim(data_dir, log)  # a killed run's copy here (or beside) is cleared
    try:
        claim.acquire()
    except BackupError as exc:
        raise ConfigError(str(exc)) from None
    try:
        if data_dir.exists() and any(data_dir.iterdir()):
            raise ConfigError(f"target directory {data_dir} is not empty")
        port = port or free_port("127.0.0.1" if _listens_everywhere(listen) else listen)
        _refuse_taken_port(listen, port)  # before anything is written, not after the restore
    except BaseException:
        claim.release()
        raise
    made_here = not data_dir.exists()
    log_file = data_dir / "pitr-restore.log"
    restored = RestoredCluster(data_dir, port, "", target, backup.label, os_user=stanza.os_user)
    try:  # from here every failure removes what was written and lets go of the claim
        claim.record(made_here)
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if stanza.os_user:
            shutil.chown(data_dir, stanza.os_user, stanza.os_user)
        stanza.restore(
            data_dir, target_time=target, archive_mode="off", backup_set=backup.label, log=log
        )
        _ensure_config_files(data_dir, stanza.os_user)
        start_options = ["-p", str(port), "-c", f"listen_addresses={listen}"]
        start_options += ["-k", _socket_dir(data_dir, port)]
        argv = ["start", "-D", str(data_dir), "-l", str(log_file), "-W"]
        _pg_ctl([*argv, "-o", shlex.join(start_options)], stanza.os_user, 60)
        log(f"started the copy on port {port}; replaying WAL up to {format_target(target)}")
        host = "127.0.0.1" if _listens_everywhere(listen) else listen.split(",")[0].strip()
        restored.url = make_conninfo(config.database_url, host=host, port=str(port))
        _wait_promoted(restored, log_file, recovery_timeout, log)
        _verify(restored, log_file)
    except BaseException:
        try:
            _remove_unfinished_copy(restored, log_file, made_here, log)
        except Exception as cleanup:  # the restore's own failure is the one to report
            log(f"the unfinished copy in {data_dir} could not be removed: {cleanup}")
            claim.abandon()  # the next run into this folder clears it
        else:
            claim.release()
        raise
    claim.release()  # verified: a result, never cleared by a later run
    if overwrite_live:
        _swap_into_live(config, restored, live_dir, stamp, log)
    restored.seconds = time.monotonic() - started
    log(
        f"restored to {format_target(target)} in {restored.seconds:.1f} s: timeline "
        f"{restored.timeline}, LSN {restored.lsn}; {restored.recovery_stop or 'recovery ended'}"
    )
    log(f"point the platform at it: DATABASE_URL={restored.display_url}")
    return restored


def _remove_unfinished_copy(
    restored: RestoredCluster, log_file: Path, made_here: bool, log: Log
) -> None:
    """A copy that failed (or was interrupted) before it was verified is no result: stopped and
    removed, not left beside live or in the work dir at the size of the cluster for every
    attempt. The directory was new (then removed) or empty (then emptied again): checked
    before the restore. Its server log is kept beside it."""
    restored.stop()
    data_dir = restored.data_dir
    kept = data_dir.parent / f"{data_dir.name}.pitr-restore.log"
    with contextlib.suppress(OSError):
        if log_file.exists():
            shutil.copyfile(log_file, kept)
    remove_or_empty(data_dir, made_here)
    note = f"; its server log is {kept}" if kept.exists() else ""
    log(f"removed the unfinished copy in {data_dir}{note}")


@contextlib.contextmanager
def scratch_cluster_at(config: PitrConfig, target: datetime, **kwargs):
    """The cluster as it was at `target`, running in a new data directory and port for the
    duration of the block (e.g. to read one workspace's rows at T), then stopped and deleted.
    Keyword arguments as restore_to_time (never overwrite_live)."""
    if kwargs.get("overwrite_live"):
        raise ConfigError("scratch_cluster_at never restores over the live cluster")
    restored = restore_to_time(config, target, **kwargs)
    try:
        yield restored
    finally:
        restored.remove()


def _swap_into_live(
    config: PitrConfig, restored: RestoredCluster, live_dir: Path, stamp: str, log: Log
) -> None:
    """The verified copy becomes the live cluster: stop the copy, stop live if it runs, rename
    live's directory aside (kept: `<dir>.before-pitr-<stamp>`), rename the copy into its
    place, start it with live's own options (postmaster.opts) and archiving back on. Until the
    renames, live is untouched; if the copy then fails to start, live's directory is put back
    (and started again if it was running)."""
    os_user = config.stanza.os_user
    options = _postmaster_options(live_dir)
    restored.stop()
    auto = restored.data_dir / "postgresql.auto.conf"
    if auto.exists():  # pgBackRest's archive-mode=off line: the new primary archives again
        kept = [
            line
            for line in auto.read_text().splitlines()
            if not line.strip().startswith("archive_mode")
        ]
        auto.write_text("\n".join(kept) + "\n")
    (restored.data_dir / "pitr-restore.log").replace(
        restored.data_dir.parent / f"{live_dir.name}.pitr-{stamp}.log"
    )
    # Live is often down already (that is why it is being restored): stopped by the operator,
    # or crashed with its pid file left. Only a running one is stopped, and put back running.
    was_running = _is_running(live_dir, os_user)
    if was_running:
        log(f"stopping the live cluster ({live_dir}) to swap the restored copy in")
        _pg_ctl(["stop", "-D", str(live_dir), "-m", "fast", "-w", "-t", "300"], os_user, 320)
    else:
        log(f"the live cluster ({live_dir}) was not running: swapping the restored copy in")
    aside = live_dir.parent / f"{live_dir.name}.before-pitr-{stamp}"
    live_dir.rename(aside)
    restored.data_dir.rename(live_dir)
    log_file = live_dir.parent / f"{live_dir.name}.pitr-{stamp}.start.log"
    argv = ["start", "-D", str(live_dir), "-l", str(log_file), "-w", "-t", "300"]
    if options:
        argv += ["-o", shlex.join(options)]
    try:
        _pg_ctl(argv, os_user, 320)
    except PitrRestoreError as exc:
        log(
            f"the restored copy did not start in live's place, putting live back: {exc}\n{_log_tail(log_file)}"
        )
        live_dir.rename(restored.data_dir)
        aside.rename(live_dir)
        if was_running:  # one that was down stays down, as the operator left it
            _pg_ctl(argv, os_user, 320, check=False)
        raise
    # A fresh checkpointer may ignore archive_timeout until checkpoint_timeout; a reload wakes it.
    _pg_ctl(["reload", "-D", str(live_dir)], os_user, 30, check=False)
    restored.data_dir, restored.url = live_dir, config.database_url
    params = conninfo_to_dict(config.database_url)
    restored.port = int(params.get("port") or 5432)
    restored.overwrote_live = True
    log(f"the live cluster now runs the restored data; the previous data directory is {aside}")


def choose_backup(info: StanzaInfo, target: datetime):
    """The newest backup that surely ended before the target (info's stop times are whole
    seconds: one second of margin), else the oldest (the window check proved it reaches)."""
    ended = [b for b in info.usable_backups if b.stopped_at + timedelta(seconds=1) <= target]
    if ended:
        return max(ended, key=lambda b: b.stopped_at)
    return info.oldest_backup


def _pg1_path(stanza: Stanza) -> str:
    text = Path(stanza.config_path).read_text()
    section = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif section == stanza.name and line.startswith("pg1-path="):
            return line.split("=", 1)[1]
    raise ConfigError(
        f"{stanza.config_path} has no pg1-path for stanza {stanza.name}: set PGBACKREST_PG_DATA"
    )


def _ensure_config_files(data_dir: Path, os_user: str | None) -> None:
    """Clusters whose configuration lives outside the data directory (Debian's
    /etc/postgresql) restore without it: give the copy a minimal one."""
    defaults = {
        "postgresql.conf": "# written by backup_pipelines for a point-in-time restored copy\n",
        "pg_hba.conf": "local all all peer\nhost all all 127.0.0.1/32 scram-sha-256\nhost all all ::1/128 scram-sha-256\n",
        "pg_ident.conf": "",
    }
    for stale in data_dir.glob(
        ".s.PGSQL.*"
    ):  # socket lock files copied with a data dir used as socket dir
        stale.unlink(missing_ok=True)
    for name, text in defaults.items():
        path = data_dir / name
        if not path.exists():
            path.write_text(text)
            if os_user:
                shutil.chown(path, os_user, os_user)


def _server_running(data_dir: Path) -> bool:
    pid_file = data_dir / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# Seconds a server started by pg_ctl (without waiting) may take to write its postmaster.pid;
# it does so before anything slow.
SERVER_START_SECONDS = 60.0


# What PostgreSQL's startup process logs first, once the postmaster has its sockets.
RECOVERY_BEGAN = ("starting point-in-time recovery", "starting archive recovery")


def _recovery_began(log_file: Path) -> bool:
    try:
        with open(log_file, "rb") as log:
            head = log.read(1 << 20).decode(errors="replace")
    except OSError:
        return False
    return any(line in head for line in RECOVERY_BEGAN)


def _said_shut_down(log_file: Path) -> bool:
    return "database system is shut down" in _log_tail(log_file, 5)


def _wait_promoted(restored: RestoredCluster, log_file: Path, timeout: float, log: Log) -> None:
    """Poll until the server accepts connections and has left recovery (promoted at the
    target); fail as soon as the server stops (e.g. the target was not reached), or turns
    out never to have started: a server refused at start (its port taken, say) may exit
    between two polls, so its pid file is never seen; its log says it shut down."""
    started = time.monotonic()
    deadline = started + timeout
    next_note = started + 30
    seen_pid = False
    while time.monotonic() < deadline:
        running = _server_running(restored.data_dir)
        seen_pid = seen_pid or running
        if not running and (
            seen_pid
            or _said_shut_down(log_file)
            or time.monotonic() - started > SERVER_START_SECONDS
        ):
            # A server refused at start (no socket) writes its pid file before it gives up:
            # seeing that file says nothing; its log says whether recovery had begun.
            began = seen_pid and _recovery_began(log_file)
            raise PitrRestoreError(
                f"the restored cluster in {restored.data_dir} "
                f"{'stopped during recovery' if began else 'did not start'}:\n"
                + _log_tail(log_file)
            )
        try:
            with psycopg.connect(restored.url, connect_timeout=3, autocommit=True) as conn:
                if not _answered_by(conn, restored.data_dir):
                    raise PitrRestoreError(
                        f"another server answers on port {restored.port}, not the restored "
                        f"cluster in {restored.data_dir}:\n" + _log_tail(log_file)
                    )
                if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                    return
        except psycopg.OperationalError:
            pass
        if time.monotonic() > next_note:
            log(f"still recovering ({restored.data_dir}) ...")
            next_note = time.monotonic() + 30
        time.sleep(0.2)
    raise PitrRestoreError(
        f"the restored cluster in {restored.data_dir} was not promoted within {timeout:.0f} s:\n"
        + _log_tail(log_file)
    )


def _verify(restored: RestoredCluster, log_file: Path) -> None:
    with psycopg.connect(restored.url, connect_timeout=10, autocommit=True) as conn:
        conn.execute("SET statement_timeout = '600s'")
        in_recovery, wal, lsn = conn.execute(
            "SELECT pg_is_in_recovery(), pg_walfile_name(pg_current_wal_lsn()), "
            "pg_current_wal_lsn()::text"
        ).fetchone()
        if in_recovery:
            raise PitrRestoreError("the restored cluster is still in recovery")
        restored.timeline = int(wal[:8], 16)
        restored.lsn = lsn
        restored.row_counts = count_rows(conn)
    text = ""
    with contextlib.suppress(OSError):
        text = log_file.read_text(errors="replace")
    stops = re.findall(r"LOG:\s+(recovery stopping [^\n]*)", text)
    last = re.findall(r"last completed transaction was at log time ([^\n]*)", text)
    restored.recovery_stop = stops[-1] if stops else ""
    restored.last_transaction_at = last[-1].strip() if last else ""


def count_rows(conn: psycopg.Connection) -> dict[str, int]:
    """Exact row counts of every user table of the connected database."""
    tables = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "AND n.nspname NOT LIKE 'pg_toast%' AND NOT c.relispartition ORDER BY 1, 2"
    ).fetchall()
    counts = {}
    for schema, table in tables:
        query = sql.SQL("SELECT count(*) FROM {}.{}").format(
            sql.Identifier(schema), sql.Identifier(table)
        )
        counts[f"{schema}.{table}"] = conn.execute(query).fetchone()[0]
    return counts
