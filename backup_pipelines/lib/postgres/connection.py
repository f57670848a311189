"""Reaching PostgreSQL: connections, the client binaries, and descriptions safe to show.

Credentials travel in the environment of client processes, never in argv, and every
description of a server (logs, metadata, errors) is host:port/dbname without the password.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import psycopg
from psycopg.conninfo import conninfo_to_dict

from backup_pipelines.lib.errors import SourceError

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


def describe_database(database_url: str) -> str:
    """host:port/dbname, never the password: safe for logs, metadata and errors."""
    try:
        params = conninfo_to_dict(database_url)
    except psycopg.ProgrammingError:
        return "<unparseable DATABASE_URL>"
    host = params.get("host", "localhost")
    return f"{host}:{params.get('port', 5432)}/{params.get('dbname', params.get('user', ''))}"


def connect(database_url: str, **kwargs) -> psycopg.Connection:
    kwargs.setdefault("connect_timeout", 10)
    try:
        return psycopg.connect(database_url, **kwargs)
    except psycopg.Error as exc:
        # psycopg's message names host and port, never the password.
        raise SourceError(
            f"cannot connect to PostgreSQL {describe_database(database_url)}: "
            f"{str(exc).strip().splitlines()[0]} — check DATABASE_URL and that the server is up"
        ) from exc


def client_env(database_url: str) -> dict[str, str]:
    """Environment for pg_dump/pg_restore/psql: credentials travel in env, never in argv."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    for key, value in conninfo_to_dict(database_url).items():
        if key in PG_ENV and value is not None:
            env[PG_ENV[key]] = str(value)
    return env


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
