"""Reaching PostgreSQL: connections, the client binaries, and descriptions safe to show.

Credentials travel in the environment of client processes, never in argv, and every
description of a server (logs, metadata, errors) is host:port/dbname without the password.

No call waits forever on a server that stopped answering: connections have a connect timeout
(BACKUP_CONNECT_TIMEOUT) and TCP keepalives plus a user timeout, so a dead peer or a broken
network is noticed within about a minute, in psycopg and in pg_dump/pg_restore/psql alike; a
server that is up but silent is the job of the transfers' watchdog (lib/timeouts.py).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import socket
import subprocess
import threading

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from backup_pipelines.lib.errors import ConfigError, SourceError
from backup_pipelines.lib.timeouts import CONNECT_TIMEOUT_VARIABLE, connect_timeout

PG_ENV = {
    "host": "PGHOST",
    "port": "PGPORT",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "dbname": "PGDATABASE",
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "options": "PGOPTIONS",
    "connect_timeout": "PGCONNECT_TIMEOUT",
}
# A peer that stops acknowledging (server host gone, network cut) is declared dead after
# about KEEPALIVES_IDLE + KEEPALIVES_INTERVAL x KEEPALIVES_COUNT seconds, and data it never
# acknowledges after TCP_USER_TIMEOUT_MS; libpq's defaults leave that to the kernel (2 hours+).
KEEPALIVES_IDLE = 30
KEEPALIVES_INTERVAL = 10
KEEPALIVES_COUNT = 3
TCP_USER_TIMEOUT_MS = (KEEPALIVES_IDLE + KEEPALIVES_INTERVAL * KEEPALIVES_COUNT) * 1000
KEEPALIVE_KEYS = (
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
)


def parse_database_url(database_url: str) -> dict[str, str]:
    """The URL's connection parameters; a malformed URL is a ConfigError that never shows the
    password (libpq's own message quotes the whole URL)."""
    try:
        return conninfo_to_dict(database_url)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(
            "the PostgreSQL connection URL is malformed "
            f"({str(exc).strip().splitlines()[0]}); expected a postgresql:// URL "
            "(user, password, host, port and database) or libpq key=value pairs"
        ) from None


def describe_database(database_url: str) -> str:
    """host:port/dbname, never the password: safe for logs, metadata and errors."""
    try:
        params = conninfo_to_dict(database_url)
    except psycopg.ProgrammingError:
        return "<unparseable DATABASE_URL>"
    host = params.get("host", "localhost")
    return f"{host}:{params.get('port', 5432)}/{params.get('dbname', params.get('user', ''))}"


def libpq_connect_timeout() -> int:
    """BACKUP_CONNECT_TIMEOUT as libpq takes it: whole seconds, at least 2."""
    return max(2, math.ceil(connect_timeout()))


def stall_guards(params: dict[str, str]) -> dict[str, str]:
    """Connect timeout and keepalive parameters the URL does not set itself."""
    guards = {
        "connect_timeout": str(libpq_connect_timeout()),
        "keepalives": "1",
        "keepalives_idle": str(KEEPALIVES_IDLE),
        "keepalives_interval": str(KEEPALIVES_INTERVAL),
        "keepalives_count": str(KEEPALIVES_COUNT),
        "tcp_user_timeout": str(TCP_USER_TIMEOUT_MS),
    }
    return {key: value for key, value in guards.items() if key not in params}


def connect(database_url: str, **kwargs) -> psycopg.Connection:
    """A psycopg connection with a connect timeout and keepalives; failures are SourceErrors
    naming the server, never the password."""
    params = parse_database_url(database_url)
    for key, value in stall_guards(params).items():
        kwargs.setdefault(key, value)
    try:
        return psycopg.connect(database_url, **kwargs)
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "timeout expired" in reason:
            reason += f" after {kwargs['connect_timeout']} s ({CONNECT_TIMEOUT_VARIABLE})"
        raise SourceError(
            f"cannot connect to PostgreSQL {describe_database(database_url)}: {reason} — "
            "check DATABASE_URL and that the server is up"
        ) from exc


def client_failure(output: str) -> str:
    """A client's (pg_dump, psql, pg_restore) error output, naming the wait when it timed out
    connecting."""
    output = output.strip() or "no message"
    if "timeout expired" in output:
        output += f" (after {libpq_connect_timeout()} s, {CONNECT_TIMEOUT_VARIABLE})"
    return output


def server_answers(database_url: str) -> bool:
    """Whether the server answers a new connection and `SELECT 1` within the connect timeout:
    the watchdog's way to tell a busy server from a hung one. An error the server sends
    (too many clients, a failed login) is an answer too."""
    limit = connect_timeout()
    try:
        conn = psycopg.connect(
            database_url, autocommit=True, **stall_guards(parse_database_url(database_url))
        )
    except psycopg.Error as exc:
        return _server_sent(exc)
    with conn:
        timer = threading.Timer(limit, abort_connection, (conn,))
        timer.daemon = True
        timer.start()
        try:
            conn.execute("SELECT 1")
            return True
        except psycopg.Error as exc:
            return _server_sent(exc)
        finally:
            timer.cancel()


def server_answers_for(conn: psycopg.Connection) -> bool:
    """server_answers() for the server behind an open connection."""
    info = conn.info
    return server_answers(make_conninfo(info.dsn, password=info.password or None))


def _server_sent(error: psycopg.Error) -> bool:
    return error.sqlstate is not None or "FATAL" in str(error)


def abort_connection(conn: psycopg.Connection) -> None:
    """Shut down the connection's socket from any thread: a call blocked on it fails at once
    (the watchdog's way out of a hung server). The socket itself stays libpq's to close."""
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
        sock.shutdown(socket.SHUT_RDWR)


def client_env(database_url: str) -> dict[str, str]:
    """Environment for pg_dump/pg_restore/psql: credentials travel in env, never in argv."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    params = parse_database_url(database_url)
    for key, value in {**stall_guards(params), **params}.items():
        if key in PG_ENV and value is not None:
            env[PG_ENV[key]] = str(value)
    return env


def client_conninfo(database_url: str, dbname: str | None = None) -> str:
    """The `--dbname` argument of pg_dump/pg_restore/psql: the database and the keepalive
    parameters (libpq has no environment variables for those). Never the password: host,
    user and password come from client_env()."""
    params = parse_database_url(database_url)
    guards = {k: v for k, v in stall_guards(params).items() if k in KEEPALIVE_KEYS}
    keep = {k: params[k] for k in ("dbname", *KEEPALIVE_KEYS) if k in params}
    if dbname is not None:
        keep["dbname"] = dbname
    return make_conninfo("", **{**guards, **keep})


def pg_bin(name: str) -> str:
    """A PostgreSQL client binary: PG_BIN_DIR, then PATH, then the newest Debian install."""
    candidates = []
    if os.environ.get("PG_BIN_DIR"):
        candidates.append(os.path.join(os.environ["PG_BIN_DIR"], name))
    found = shutil.which(name)
    if found:
        candidates.append(found)
    debian = "/usr/lib/postgresql"
    if os.path.isdir(debian):
        for version in sorted(
            os.listdir(debian), key=lambda v: int(v) if v.isdigit() else 0, reverse=True
        ):
            candidates.append(os.path.join(debian, version, "bin", name))
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return candidate
    raise SourceError(
        f"{name} not found: install the PostgreSQL client (Debian: postgresql-client) or set PG_BIN_DIR"
    )


def tool_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    return out.strip()


def major_version(version_text: str) -> int:
    match = re.search(r"(\d+)(?:\.\d+)?", version_text)
    return int(match.group(1)) if match else 0
