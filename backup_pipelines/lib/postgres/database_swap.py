"""A restored database put in the live one's place by renaming, and back; the previous live
database kept until the operator releases it.

Why a rename and never `pg_restore --clean` into live: --clean drops live's objects before any
data is back, and on PostgreSQL 15 it fails half-way on a partitioned table with a primary key
("cannot drop inherited constraint"), leaving live damaged. A swap changes nothing inside
either database: both renames (and the connection settings) commit in one transaction, or
none of it does.

PostgreSQL refuses to rename a database anyone is connected to, so during the swap both
databases refuse new connections (ALLOW_CONNECTIONS false, set back in the same transaction as
the renames) and their sessions are ended. Database names are at most 63 bytes: derived names
that would be longer keep a hash of the full base name instead of being cut by the server.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from backup_pipelines.lib.errors import BackupError, ConfigError, SourceError
from backup_pipelines.lib.postgres.connection import connect, describe_database
from backup_pipelines.lib.streams import Log

MAX_NAME_BYTES = 63  # NAMEDATALEN - 1: longer names are silently truncated by the server
BEFORE_RESTORE = "_before_restore_"
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
PREVIOUS_NAME = re.compile(r".+_before_restore_\d{8}T\d{6}Z")
MAINTENANCE_DATABASES = ("postgres", "template1")
SESSION_WAIT_SECONDS = 30.0
# List-valued settings whose stored form is a comma-separated list of (quoted) items.
LIST_SETTINGS = {"search_path", "temp_tablespaces", "local_preload_libraries",
                 "session_preload_libraries"}  # fmt: skip


def _quiet(_message: str) -> None:
    pass


# --------------------------------------------------------------------------------------------
# Names


def validate_database_name(name: str, what: str = "database name") -> str:
    if not isinstance(name, str) or not name.strip() or "\x00" in name:
        raise ConfigError(f"{what} {name!r} is empty or not a name")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise ConfigError(
            f"{what} {name!r} is {len(name.encode())} bytes long; PostgreSQL names are at most "
            f"{MAX_NAME_BYTES} bytes (it would silently cut it)"
        )
    return name


def derived_name(base: str, suffix: str) -> str:
    """`base + suffix`, or, past 63 bytes, the head of base, a hash of all of it, and suffix:
    distinct bases stay distinct and the suffix (what the database is) is never cut."""
    name = base + suffix
    if len(name.encode()) <= MAX_NAME_BYTES:
        return name
    digest = hashlib.sha256(base.encode()).hexdigest()[:8]
    room = MAX_NAME_BYTES - len(suffix.encode()) - len(digest) - 1
    head = base.encode()[:room].decode("utf-8", "ignore")  # never half a character
    return f"{head}_{digest}{suffix}"


def previous_name(live: str, when: datetime) -> str:
    return derived_name(live, f"{BEFORE_RESTORE}{when.astimezone(UTC).strftime(STAMP_FORMAT)}")


def live_database(database_url: str) -> str:
    name = conninfo_to_dict(database_url).get("dbname")
    if not name:
        raise ConfigError(
            f"DATABASE_URL ({describe_database(database_url)}) names no database: it must name "
            "the live database"
        )
    return name


# --------------------------------------------------------------------------------------------
# The maintenance connection (never to a database being created, renamed or dropped)


@contextlib.contextmanager
def admin_connection(
    database_url: str, avoid: tuple[str, ...] = ()
) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the server's maintenance database (`postgres`, else
    `template1`), with the credentials of `database_url`."""
    errors = []
    for name in MAINTENANCE_DATABASES:
        if name in avoid:
            continue
        try:
            conn = connect(make_conninfo(database_url, dbname=name), autocommit=True)
        except SourceError as exc:
            errors.append(str(exc))
            continue
        with conn:
            yield conn
        return
    raise SourceError("no maintenance database to connect to: " + "; ".join(errors))


def database_exists(conn: psycopg.Connection, name: str) -> bool:
    return bool(conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone())


def _ident(name: str) -> sql.Identifier:
    return sql.Identifier(name)


# --------------------------------------------------------------------------------------------
# Database-level attributes: what pg_restore into a new database does not carry over


@dataclass(frozen=True)
class DatabaseLocale:
    """What CREATE DATABASE must be told for pg_restore to load a dump as it was made."""

    encoding: str
    collate: str
    ctype: str
    icu_locale: str | None = None

    def describe(self) -> str:
        icu = f", ICU {self.icu_locale}" if self.icu_locale else ""
        return f"{self.encoding}, LC_COLLATE {self.collate}, LC_CTYPE {self.ctype}{icu}"


def read_locale(conn: psycopg.Connection, name: str) -> DatabaseLocale | None:
    """`name`'s locale, on any server version: the ICU columns arrived in PostgreSQL 15
    (`datlocprovider`, `daticulocale`) and were renamed in 17 (`datlocale`), so the row is
    read as JSON rather than naming a column an older or newer server lacks (a full backup
    reads this too, and must not fail on it)."""
    row = conn.execute(
        "SELECT pg_encoding_to_char(d.encoding), d.datcollate, d.datctype, to_jsonb(d) "
        "FROM pg_database d WHERE d.datname = %s",
        (name,),
    ).fetchone()
    if row is None:
        return None
    encoding, collate, ctype, columns = row
    icu = None
    if columns.get("datlocprovider") == "i":
        icu = columns.get("daticulocale") or columns.get("datlocale")
    return DatabaseLocale(encoding, collate, ctype, icu)


@dataclass(frozen=True)
class DatabaseAttributes:
    oid: int
    name: str
    owner: str
    allow_connections: bool
    connection_limit: int
    comment: str | None
    grants: tuple[
        tuple[str | None, str, bool], ...
    ]  # (grantee or None: PUBLIC, privilege, grantable)
    acl_is_default: bool
    settings: tuple[tuple[str | None, tuple[str, ...]], ...]  # (role or None: all, "k=v" items)


def read_attributes(conn: psycopg.Connection, name: str) -> DatabaseAttributes | None:
    row = conn.execute(
        """
        SELECT d.oid, d.datname, pg_get_userbyid(d.datdba), d.datallowconn, d.datconnlimit,
               shobj_description(d.oid, 'pg_database'), d.datacl IS NULL
        FROM pg_database d WHERE d.datname = %s
        """,
        (name,),
    ).fetchone()
    if row is None:
        return None
    grants = conn.execute(
        """
        SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END,
               a.privilege_type, a.is_grantable
        FROM pg_database d, aclexplode(d.datacl) a
        WHERE d.oid = %s AND a.grantee <> d.datdba ORDER BY 1 NULLS FIRST, 2
        """,
        (row[0],),
    ).fetchall()
    settings = conn.execute(
        """
        SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole) END, s.setconfig
        FROM pg_db_role_setting s WHERE s.setdatabase = %s ORDER BY 1 NULLS FIRST
        """,
        (row[0],),
    ).fetchall()
    return DatabaseAttributes(
        *row[:6],
        grants=tuple((g, p, bool(o)) for g, p, o in grants),
        acl_is_default=row[6],
        settings=tuple((role, tuple(config or ())) for role, config in settings),
    )


def create_database_like(conn: psycopg.Connection, name: str, like: DatabaseLocale | None) -> None:
    """A new empty database from template0 with `like`'s encoding and locale, or the
    server's defaults for None (pg_restore's documented way: template1 may hold objects the
    dump creates again)."""
    options = [sql.SQL("TEMPLATE template0")]
    if like is not None:
        options.append(
            sql.SQL("ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
                sql.Literal(like.encoding), sql.Literal(like.collate), sql.Literal(like.ctype)
            )
        )
    if like is not None and like.icu_locale:
        options.append(
            sql.SQL("LOCALE_PROVIDER icu ICU_LOCALE {}").format(sql.Literal(like.icu_locale))
        )
    conn.execute(sql.SQL("CREATE DATABASE {} ").format(_ident(name)) + sql.SQL(" ").join(options))


def adopt_attributes(conn: psycopg.Connection, name: str, like: DatabaseAttributes) -> None:
    """Give database `name` live's owner, connection limit, grants and settings, so the swap
    changes the contents and nothing an application connects with. Raises before any swap
    when the restoring role may not (e.g. it is no member of the owner's role)."""
    target = _ident(name)
    try:
        conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(target, _ident(like.owner)))
        conn.execute(
            sql.SQL("ALTER DATABASE {} CONNECTION LIMIT {}").format(
                target, sql.Literal(like.connection_limit)
            )
        )
        if not like.acl_is_default:
            conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(target))
        for grantee, privilege, grantable in like.grants:
            conn.execute(
                sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                    sql.SQL(privilege),  # from aclexplode: CONNECT, CREATE or TEMPORARY
                    target,
                    _ident(grantee) if grantee else sql.SQL("PUBLIC"),
                    sql.SQL(" WITH GRANT OPTION") if grantable else sql.SQL(""),
                )
            )
        for role, items in like.settings:
            for item in items:
                conn.execute(_setting_statement(target, role, item))
    except psycopg.Error as exc:
        raise SourceError(
            f"cannot give the restored database {name!r} the live database's owner, grants "
            f"or settings: {server_message(exc)} — the restoring role must be "
            f"a member of {like.owner!r} (or a superuser)"
        ) from exc


def _setting_statement(target: sql.Identifier, role: str | None, item: str) -> sql.Composed:
    key, _, value = item.partition("=")
    if key in LIST_SETTINGS:
        values = sql.SQL(", ").join(sql.Literal(v) for v in _split_list_setting(value))
    else:
        values = sql.Literal(value)
    prefix = (
        sql.SQL("ALTER ROLE {} IN DATABASE {}").format(_ident(role), target)
        if role
        else sql.SQL("ALTER DATABASE {}").format(target)
    )
    return sql.SQL("{} SET {} = {}").format(prefix, _ident(key), values)


def _split_list_setting(value: str) -> list[str]:
    """`"$user", public` -> ['$user', 'public'] (the stored form of a list setting)."""
    items, current, quoted, index = [], "", False, 0
    while index < len(value):
        char = value[index]
        if char == '"':
            if quoted and value[index + 1 : index + 2] == '"':
                current += '"'
                index += 1
            else:
                quoted = not quoted
        elif char == "," and not quoted:
            items.append(current.strip())
            current = ""
        else:
            current += char
        index += 1
    items.append(current.strip())
    return [item for item in items if item]


# --------------------------------------------------------------------------------------------
# The swap


@dataclass(frozen=True)
class Swap:
    live: str  # the name applications use; now the restored database
    previous: str  # the live database as it was, kept until released
    restored_as: str  # the name the restored database had before the swap

    def to_dict(self) -> dict:
        return {"live": self.live, "previous": self.previous, "restored_as": self.restored_as}


def swap_into_place(
    database_url: str,
    restored: str,
    *,
    now: datetime | None = None,
    log: Log = _quiet,
    session_wait_seconds: float = SESSION_WAIT_SECONDS,
) -> Swap:
    """Rename live to `<live>_before_restore_<UTC time>` and `restored` to `<live>`, in one
    transaction; the new live database gets the previous one's comment (not the restore's
    marker). On any failure nothing is renamed and both databases take connections again
    as before."""
    live = live_database(database_url)
    previous = previous_name(live, now or datetime.now(UTC))
    with admin_connection(database_url, avoid=(live, restored, previous)) as conn:
        attributes = read_attributes(conn, live)
        _exchange_names(
            conn,
            [(live, previous), (restored, live)],
            comment=(live, attributes.comment if attributes else None),
            session_wait_seconds=session_wait_seconds,
            log=log,
        )
    log(f"swapped: {restored!r} is now {live!r}; the previous live database is {previous!r}")
    return Swap(live, previous, restored)


def swap_back(
    database_url: str,
    swap: Swap,
    *,
    log: Log = _quiet,
    session_wait_seconds: float = SESSION_WAIT_SECONDS,
) -> None:
    """Undo `swap`: the previous live database gets its name back, the restored one the
    name it had before the swap."""
    with admin_connection(database_url, avoid=(swap.live, swap.previous, swap.restored_as)) as conn:
        _exchange_names(
            conn,
            [(swap.live, swap.restored_as), (swap.previous, swap.live)],
            comment=None,
            session_wait_seconds=session_wait_seconds,
            log=log,
        )
    log(f"swapped back: {swap.live!r} is the database it was before the restore")


def _exchange_names(
    conn: psycopg.Connection,
    renames: list[tuple[str, str]],
    comment: tuple[str, str | None] | None,
    session_wait_seconds: float,
    log: Log,
) -> None:
    """Close the databases to new connections, end their sessions, then rename them and
    reopen each as it was, in one transaction (all of it or none)."""
    was_open = {}
    for old, _new in renames:
        attributes = read_attributes(conn, old)
        if attributes is None:
            raise SourceError(f"database {old!r} does not exist: nothing was renamed")
        was_open[old] = attributes.allow_connections
    for old in was_open:
        _allow_connections(conn, old, False)
    try:
        ended = end_sessions(conn, list(was_open), session_wait_seconds)
        if ended:
            log(f"ended {ended} sessions on {', '.join(was_open)}")
        with conn.transaction():
            for old, new in renames:
                _rename(conn, old, new)
            for old, new in renames:
                _allow_connections(conn, new, was_open[old])
            if comment is not None:
                conn.execute(
                    sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                        _ident(comment[0]), sql.Literal(comment[1])
                    )
                )
    except BaseException:
        for old, allowed in was_open.items():
            with contextlib.suppress(psycopg.Error):
                _allow_connections(conn, old, allowed)
        raise


def _rename(conn: psycopg.Connection, old: str, new: str) -> None:
    try:
        conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(_ident(old), _ident(new)))
    except psycopg.Error as exc:
        raise SourceError(
            f"cannot rename database {old!r} to {new!r}: {server_message(exc)} — nothing was "
            "renamed"
        ) from exc


def server_message(exc: psycopg.Error) -> str:
    """The server's message and its detail (e.g. "There is 1 prepared transaction using the
    database."), which says what to do."""
    diag = getattr(exc, "diag", None)
    primary = (diag and diag.message_primary) or str(exc).strip().splitlines()[0]
    detail = diag and diag.message_detail
    return f"{primary} ({detail})" if detail else primary


def _allow_connections(conn: psycopg.Connection, name: str, allow: bool) -> None:
    conn.execute(
        sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(_ident(name), sql.Literal(allow))
    )


def end_sessions(conn: psycopg.Connection, names: list[str], wait_seconds: float) -> int:
    """Terminate every session on `names` (other than ours) and wait until they are gone.
    Returns how many were ended; raises when one may not be ended or outlives the wait."""
    deadline = time.monotonic() + wait_seconds
    ended: set[int] = set()
    while True:
        sessions = conn.execute(
            "SELECT pid, datname, usename, application_name FROM pg_stat_activity "
            "WHERE datname = ANY(%s) AND pid <> pg_backend_pid()",
            (names,),
        ).fetchall()
        if not sessions:
            return len(ended)
        if time.monotonic() > deadline:
            raise SourceError(
                f"{len(sessions)} sessions on {', '.join(names)} did not end within "
                f"{wait_seconds:.0f} s: " + _describe_sessions(sessions)
            )
        for pid, datname, user, application in sessions:
            try:
                conn.execute("SELECT pg_terminate_backend(%s, 1000)", (pid,))
            except psycopg.Error as exc:
                raise SourceError(
                    f"cannot end session {pid} of {user!r} ({application or 'no application'}) "
                    f"on {datname!r}: {server_message(exc)} — end it, or run as a "
                    "role with pg_signal_backend"
                ) from exc
            ended.add(pid)


def _describe_sessions(sessions: list[tuple]) -> str:
    return ", ".join(f"pid {pid} ({user}, {app or '-'}) on {db}" for pid, db, user, app in sessions)


# --------------------------------------------------------------------------------------------
# Dropping


def drop_database(conn: psycopg.Connection, name: str) -> None:
    """Drop a database this tool created (its sessions are ended first)."""
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(_ident(name)))


def release_database(database_url: str, name: str) -> None:
    """Drop a previous live database kept by a swap (`<live>_before_restore_<time>`), and
    nothing else: the operator's explicit "I no longer need it"."""
    if not isinstance(name, str) or not PREVIOUS_NAME.fullmatch(name):
        raise ConfigError(
            f"{name!r} is not a database kept by a restore (<name>{BEFORE_RESTORE}"
            "<YYYYMMDDTHHMMSSZ>): release-database drops nothing else"
        )
    live = live_database(database_url)
    if name == live:
        raise ConfigError(f"{name!r} is the live database (DATABASE_URL): refusing to drop it")
    with admin_connection(database_url, avoid=(name,)) as conn:
        if not database_exists(conn, name):
            raise BackupError(
                f"no database {name!r} on {describe_database(database_url)}: nothing to release"
            )
        sessions = conn.execute(
            "SELECT pid, datname, usename, application_name FROM pg_stat_activity "
            "WHERE datname = %s",
            (name,),
        ).fetchall()
        if sessions:
            raise BackupError(
                f"database {name!r} is in use ({_describe_sessions(sessions)}): close those "
                "sessions first; nothing was dropped"
            )
        try:
            conn.execute(sql.SQL("DROP DATABASE {}").format(_ident(name)))
        except psycopg.Error as exc:
            raise SourceError(f"cannot drop {name!r}: {str(exc).strip().splitlines()[0]}") from exc
