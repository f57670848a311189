"""One client connection: its SQLite connection, current database, transaction and SET state.

The SQLite connection's main database is an empty in-memory one; every database the session
touches is ATTACHed under an alias (``d<database_id>``), and the translator qualifies every table
with it. Isolation: writes take the write lock of the attached files (``BEGIN IMMEDIATE``) and
keep it to COMMIT/ROLLBACK; reads outside a write transaction run in autocommit, each statement
seeing the last committed data (READ COMMITTED without blocking); SQLite's rollback journal
keeps uncommitted rows invisible to other sessions.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections import OrderedDict

from . import dbfile
from .catalog import SERVER_LEVEL, VIEWS, Meta, db_rows, materialize
from .engine import Database, Engine
from .errors import SqlError, db_missing, db_restoring, deadlock, invalid_object, lock_timeout
from .functions import register_functions
from .sqltypes import parse_type, register_decltype
from .translate import TableInfo
from .tsql import Tok, quote_ident, quote_str, split_name

MAX_ATTACHED = 9
DEFAULT_WAIT_MS = 60_000


class Session:
    def __init__(self, engine: Engine, user: str, host: str = "", app: str = "") -> None:
        self.engine = engine
        self.user, self.host, self.app = user, host, app
        self.spid = engine.register_session(self)
        self.conn = sqlite3.connect(
            ":memory:",
            isolation_level=None,
            detect_types=sqlite3.PARSE_DECLTYPES,
            check_same_thread=False,
        )
        self.conn.execute("PRAGMA foreign_keys = ON")
        register_functions(self.conn, self)
        self.attached: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self.current_db = "master"
        self.trancount = 0
        self.sqlite_txn = False
        self.txn_dbs: set[str] = set()
        self.ddl_ops: dict[str, list[str]] = {}
        self.implicit_transactions = False
        self.nocount = False
        self.xact_abort = False
        self.lock_timeout_ms = -1
        self.identity_insert: tuple[str, str] | None = None
        self.last_identity: int | None = None
        self.rowcount = 0
        self.prepared: dict[int, tuple[str, str]] = {}
        self.cancel = threading.Event()
        self.killed = False
        self.request: dict | None = None  # the running statement (sys.dm_exec_requests)
        self.on_kill = None
        self.tx_descriptor = b"\x00" * 8
        self._tx_counter = 0
        self._cat_counter = 0
        self._set_busy_timeout()

    # ---- lifecycle ---------------------------------------------------------------------
    def close(self) -> None:
        try:
            if self.sqlite_txn:
                self.conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        self.conn.close()
        self.engine.unregister_session(self.spid)

    def kill(self) -> None:
        """ROLLBACK IMMEDIATE from another session: end this connection."""
        self.killed = True
        self.cancel.set()
        if self.on_kill is not None:
            self.on_kill()

    def uses(self, name: str) -> bool:
        key = name.lower()
        return self.current_db.lower() == key or (self.sqlite_txn and key in self.txn_dbs)

    # ---- databases ---------------------------------------------------------------------------
    def database(self, name: str, for_use: bool = False) -> Database:
        db = self.engine.get(name)
        if db is None:
            raise db_missing(name)
        if db.state != "ONLINE":
            raise db_restoring(db.name)
        if db.single_user_spid not in (None, self.spid):
            raise SqlError(
                924,
                f"Database '{db.name}' is already open and can only have one user at a time.",
                14,
                1,
            )
        return db

    def alias(self, db: Database) -> str:
        key = db.name.lower()
        entry = self.attached.get(key)
        if entry is not None and entry[1] == db.generation:
            self.attached.move_to_end(key)
            return entry[0]
        if entry is not None:
            self._detach(key)
        while len(self.attached) >= MAX_ATTACHED:
            victim = next(
                (
                    k
                    for k in self.attached
                    if k not in self.txn_dbs and k != self.current_db.lower()
                ),
                None,
            )
            if victim is None:
                raise SqlError(
                    50000,
                    "The SQL Server stand-in cannot use more than 9 databases in one transaction.",
                    16,
                    1,
                )
            self._detach(victim)
        alias = f"d{db.database_id}"
        self.conn.execute(f"ATTACH DATABASE {quote_str(db.data_path)} AS {quote_ident(alias)}")
        self.attached[key] = (alias, db.generation)
        for (type_sql,) in self.conn.execute(
            f"SELECT DISTINCT +type_sql FROM {quote_ident(alias)}.__standin_columns"
        ):
            register_decltype(parse_type(type_sql).decltype())
        return alias

    def _detach(self, key: str) -> None:
        alias, _ = self.attached.pop(key)
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute(f"DETACH DATABASE {quote_ident(alias)}")

    def refresh_attachments(self) -> None:
        """Before each request: drop attachments of databases dropped, restored or not online."""
        if self.sqlite_txn:
            return
        for key, (_, generation) in list(self.attached.items()):
            db = self.engine.get(key)
            if db is None or db.generation != generation or db.state != "ONLINE":
                self._detach(key)

    def release_database(self, name: str) -> None:
        """Detach before the file is replaced or removed (RESTORE, DROP DATABASE)."""
        if name.lower() in self.attached and not self.sqlite_txn:
            self._detach(name.lower())

    # ---- translator context --------------------------------------------------------------------
    def resolve_table(self, parts: list[str]) -> tuple[str, TableInfo | None, str]:
        full = ".".join(parts)
        if len(parts) > 4:
            raise invalid_object(full)
        parts = ([""] * (3 - len(parts)) + parts) if len(parts) < 3 else parts[-3:]
        db_name, schema, name = parts
        schema_l = schema.lower()
        if schema_l in ("sys", "information_schema"):
            return self._catalog(
                db_name or self.current_db, f"{schema_l}.{name.lower()}", full, name
            )
        if name.startswith("#"):
            raise SqlError(
                50000, "The SQL Server stand-in does not support temporary tables.", 16, 1
            )
        if schema_l not in ("", "dbo"):
            raise invalid_object(full)
        db = self.engine.get(db_name or self.current_db)
        if db is None:
            raise invalid_object(full)
        db = self.database(db.name)
        info = self.table_info(db, name)
        if info is None:
            raise invalid_object(full)
        return f"{quote_ident(info.alias)}.{quote_ident(info.name)}", info, ""

    def table_info(self, db: Database, name: str) -> TableInfo | None:
        alias = self.alias(db)
        a = quote_ident(alias)
        row = self.conn.execute(
            f"SELECT +object_id, +name FROM {a}.__standin_objects WHERE type = 'U' AND name = ? COLLATE NOCASE",
            (name,),
        ).fetchone()
        if row is None:
            return None
        cols = self.conn.execute(
            f"SELECT +name, +type_sql, +is_nullable, +is_identity, +seed, +increment FROM {a}.__standin_columns "
            "WHERE object_id = ? ORDER BY column_id",
            (row[0],),
        ).fetchall()
        columns = [(c[0], parse_type(c[1]), bool(c[2]), bool(c[3])) for c in cols]
        identity = next(((c[0], c[4], c[5]) for c in cols if c[3]), None)
        return TableInfo(db.name, alias, row[1], row[0], columns, identity)

    def _catalog(self, db_name: str, view: str, full: str, name: str) -> tuple[str, TableInfo, str]:
        if view not in VIEWS:
            raise invalid_object(full)
        if view in SERVER_LEVEL:
            rows = self.server_rows(view)
            db = db_name or self.current_db
        else:
            found = self.database(db_name)
            rows = db_rows(view, Meta.load(self.conn, self.alias(found), found.name))
            db = found.name
        table = f"__cat_{self._cat_counter}"
        self._cat_counter += 1
        materialize(self.conn, view, rows, table)
        columns = [(n, parse_type(t), True, False) for n, t in VIEWS[view]]
        info = TableInfo(db, "temp", table, 0, columns, catalog=True)
        return f"temp.{quote_ident(table)}", info, name

    def server_rows(self, view: str) -> list[tuple]:
        from .catalog_server import server_rows

        return server_rows(self, view)

    def global_var(self, name: str) -> list[Tok]:
        from .tds import PRODUCT_VERSION, SERVER_NAME

        values = {
            "@@TRANCOUNT": self.trancount,
            "@@SPID": self.spid,
            "@@ROWCOUNT": self.rowcount,
            "@@ERROR": 0,
            "@@VERSION": "Microsoft SQL Server 2022 (RTM) - {}.{}.{}.1 (X64) \n\tSQL Server stand-in "
            "(backup_pipelines.devstack.mssql)\n".format(*PRODUCT_VERSION),
            "@@SERVERNAME": SERVER_NAME,
            "@@LANGUAGE": "us_english",
            "@@MAX_PRECISION": 38,
            "@@OPTIONS": 5176,
            "@@LOCK_TIMEOUT": self.lock_timeout_ms,
        }
        if name == "@@IDENTITY":
            return [Tok("raw", "SCOPE_IDENTITY()")]
        if name not in values:
            raise SqlError(
                137, f'Must declare the scalar variable "{name}".', 15, 2, batch_abort=True
            )
        value = values[name]
        return [Tok("str", value)] if isinstance(value, str) else [Tok("num", str(value))]

    def identity_insert_on(self, table: TableInfo) -> bool:
        return self.identity_insert == (table.db.lower(), table.name.lower())

    # ---- functions needing session state (see functions.register_functions) -------------------
    def fn_user(self):
        return self.user

    def fn_host(self):
        return self.host

    def fn_app(self):
        return self.app

    def fn_db_id(self, name):
        db = self.engine.get(self.current_db if name is None else str(name))
        return db.database_id if db else None

    def fn_db_name(self, database_id):
        if database_id is None:
            return self.engine.get(self.current_db).name
        db = self.engine.by_id(int(database_id))
        return db.name if db else None

    def fn_object_id(self, name, kind):
        parts = split_name(str(name))
        db = self.engine.get(parts[0] if len(parts) >= 3 else self.current_db)
        if db is None or db.state != "ONLINE":
            return None
        info = self.table_info(db, parts[-1])
        return info.object_id if info else None

    def fn_object_name(self, object_id, database_id):
        db = (
            self.engine.by_id(int(database_id)) if database_id else self.engine.get(self.current_db)
        )
        if db is None or object_id is None or db.state != "ONLINE":
            return None
        row = self.conn.execute(
            f"SELECT +name FROM {quote_ident(self.alias(db))}.__standin_objects WHERE object_id = ?",
            (int(object_id),),
        ).fetchone()
        return row[0] if row else None

    def fn_serverproperty(self, prop):
        from .tds import PRODUCT_VERSION, SERVER_NAME

        return {
            "productversion": "{}.{}.{}.1".format(*PRODUCT_VERSION),
            "productmajorversion": str(PRODUCT_VERSION[0]),
            "productlevel": "RTM",
            "edition": "Developer Edition (64-bit)",
            "engineedition": "3",
            "servername": SERVER_NAME,
            "machinename": SERVER_NAME,
            "instancename": None,
            "collation": "SQL_Latin1_General_CP1_CI_AS",
            "isclustered": "0",
            "ishadrenabled": "0",
            "instancedefaultdatapath": f"{self.engine.storage / 'data'}/",
            "instancedefaultlogpath": f"{self.engine.storage / 'data'}/",
        }.get(str(prop).lower())

    def fn_databasepropertyex(self, name, prop):
        db = self.engine.get(str(name))
        if db is None:
            return None
        return {
            "status": db.state,
            "recovery": db.recovery_model,
            "useraccess": db.user_access,
            "updateability": "READ_WRITE",
            "collation": "SQL_Latin1_General_CP1_CI_AS",
        }.get(str(prop).lower())

    def fn_scope_identity(self):
        return self.last_identity

    def fn_ident_current(self, name):
        parts = split_name(str(name))
        db = self.engine.get(parts[0] if len(parts) >= 3 else self.current_db)
        info = self.table_info(db, parts[-1]) if db else None
        if info is None or info.identity is None:
            return None
        row = self.conn.execute(
            f"SELECT +current FROM {quote_ident(info.alias)}.__standin_identity WHERE object_id = ?",
            (info.object_id,),
        ).fetchone()
        return row[0] if row and row[0] is not None else info.identity[1]

    # ---- transactions ------------------------------------------------------------------------
    def _set_busy_timeout(self) -> None:
        ms = DEFAULT_WAIT_MS if self.lock_timeout_ms < 0 else max(self.lock_timeout_ms, 1)
        self.conn.execute(f"PRAGMA busy_timeout = {ms}")

    def lock_error(self) -> SqlError:
        """Waiting for a lock ended: 1222 under SET LOCK_TIMEOUT, else reported as a deadlock
        (SQL Server would wait forever or pick a deadlock victim; the stand-in waits 60 s)."""
        return lock_timeout() if self.lock_timeout_ms >= 0 else deadlock(self.spid)

    def set_lock_timeout(self, ms: int) -> None:
        self.lock_timeout_ms = ms
        self._set_busy_timeout()

    def new_descriptor(self) -> bytes:
        self._tx_counter += 1
        return (self.spid << 32 | self._tx_counter).to_bytes(8, "little")

    def begin_write(self, db: Database) -> None:
        """Make sure this session's transaction holds the write lock of `db` (and only of the
        databases it writes: reads of other databases take no lock beyond their statement)."""
        key = db.name.lower()
        alias = self.alias(db)
        if not self.sqlite_txn:
            self.conn.execute("BEGIN")
            self.sqlite_txn = True
        if key in self.txn_dbs:
            return
        try:  # a no-op write takes the file's RESERVED lock now, waiting up to LOCK_TIMEOUT
            self.conn.execute(f"DELETE FROM {quote_ident(alias)}.__standin_dirty WHERE 0")
        except sqlite3.OperationalError as exc:
            if not self.txn_dbs:
                self.rollback_sqlite()
            if "locked" in str(exc) or "busy" in str(exc):
                raise self.lock_error() from None
            raise
        self.txn_dbs.add(key)

    def commit_sqlite(self) -> None:
        if not self.sqlite_txn:
            return
        try:
            for key in sorted(self.txn_dbs):
                db = self.engine.get(key)
                if db is None or key not in self.attached:
                    continue
                alias = self.attached[key][0]
                dbfile.commit_changes(
                    self.conn, alias, self.ddl_ops.get(key, []), keep=db.capture_log
                )
            self.conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            self.rollback_sqlite()
            if "locked" in str(exc):
                raise self.lock_error() from None
            raise
        finally:
            self.sqlite_txn = False
            self.txn_dbs.clear()
            self.ddl_ops.clear()

    def rollback_sqlite(self) -> None:
        if self.sqlite_txn:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
        self.sqlite_txn = False
        self.txn_dbs.clear()
        self.ddl_ops.clear()
