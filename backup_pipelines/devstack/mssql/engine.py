"""The server: its databases (registry, states, recovery models, log-chain facts), sessions,
CREATE/DROP/ALTER DATABASE and msdb's backup history tables.

Storage layout under ``--storage DIR``::

    DIR/registry.json            databases: name, id, files, state, recovery model, GUIDs,
                                 log-chain and restore-sequence facts (rewritten atomically)
    DIR/data/<name>.mdf          the database's SQLite file (tables, catalog, LSNs, log)
    DIR/data/<name>_log.ldf      a placeholder for the log file (the log lives in the .mdf)
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import dbfile
from .ddl import create_table_statements, parse_create_table
from .errors import SqlError
from .tsql import Cursor, lex

SYSTEM_DATABASES = ["master", "tempdb", "model", "msdb"]
_generations = itertools.count(time.time_ns())


def next_generation() -> int:
    """Unique across databases and restarts: sessions re-attach a file whose generation changed."""
    return next(_generations)


MSDB_TABLES = [
    """backupmediaset (media_set_id int NOT NULL PRIMARY KEY, media_uuid uniqueidentifier,
    media_family_count tinyint, name nvarchar(128), description nvarchar(255), software_name nvarchar(128),
    software_vendor_id int, MTF_major_version tinyint, mirror_count tinyint, is_password_protected bit,
    is_compressed bit, is_encrypted bit)""",
    """backupmediafamily (media_set_id int NOT NULL, family_sequence_number tinyint NOT NULL,
    media_family_id uniqueidentifier, media_count int, logical_device_name nvarchar(128),
    physical_device_name nvarchar(260), device_type tinyint, physical_block_size int, mirror tinyint NOT NULL)""",
    """backupset (backup_set_id int NOT NULL PRIMARY KEY, backup_set_uuid uniqueidentifier NOT NULL,
    media_set_id int NOT NULL, first_family_number tinyint, first_media_number smallint,
    last_family_number tinyint, last_media_number smallint, position int, expiration_date datetime,
    software_vendor_id int, name nvarchar(128), description nvarchar(255), user_name nvarchar(128),
    software_major_version tinyint, software_minor_version tinyint, software_build_version smallint,
    time_zone smallint, first_lsn numeric(25,0), last_lsn numeric(25,0), checkpoint_lsn numeric(25,0),
    database_backup_lsn numeric(25,0), database_creation_date datetime, backup_start_date datetime,
    backup_finish_date datetime, type char(1), sort_order smallint, code_page smallint,
    compatibility_level tinyint, database_version int, backup_size numeric(20,0),
    database_name nvarchar(128), server_name nvarchar(128), machine_name nvarchar(128), flags int,
    unicode_locale int, unicode_compare_style int, collation_name nvarchar(128),
    is_password_protected bit, recovery_model nvarchar(60), has_bulk_logged_data bit, is_snapshot bit,
    is_readonly bit, is_single_user bit, has_backup_checksums bit, is_damaged bit,
    begins_log_chain bit, has_incomplete_metadata bit, is_force_offline bit, is_copy_only bit,
    first_recovery_fork_guid uniqueidentifier, last_recovery_fork_guid uniqueidentifier,
    fork_point_lsn numeric(25,0), database_guid uniqueidentifier, family_guid uniqueidentifier,
    differential_base_lsn numeric(25,0), differential_base_guid uniqueidentifier,
    compressed_backup_size numeric(20,0), key_algorithm nvarchar(32), encryptor_thumbprint varbinary(20),
    encryptor_type nvarchar(32), last_valid_restore_time datetime, compression_algorithm nvarchar(32))""",
    """backupfile (backup_set_id int NOT NULL, first_family_number tinyint, first_media_number smallint,
    filegroup_name nvarchar(128), page_size int, file_number numeric(10,0), backed_up_page_count numeric(10,0),
    file_type char(1), source_file_block_size numeric(10,0), file_size numeric(20,0), logical_name nvarchar(128),
    physical_drive nvarchar(260), physical_name nvarchar(260), state tinyint, state_desc nvarchar(64),
    create_lsn numeric(25,0), drop_lsn numeric(25,0), file_guid uniqueidentifier,
    differential_base_lsn numeric(25,0), differential_base_guid uniqueidentifier, backup_size numeric(20,0),
    is_readonly bit, is_present bit)""",
    """restorehistory (restore_history_id int NOT NULL PRIMARY KEY, restore_date datetime,
    destination_database_name nvarchar(128), user_name nvarchar(128), backup_set_id int NOT NULL,
    restore_type char(1), replace bit, recovery bit, restart bit, stop_at datetime, device_count tinyint,
    stop_at_mark_name nvarchar(128), stop_before bit)""",
]


@dataclass
class Database:
    name: str
    database_id: int
    data_path: str
    log_path: str
    create_date: str
    database_guid: str
    family_guid: str
    fork_guid: str
    state: str = "ONLINE"  # ONLINE, RESTORING
    recovery_model: str = "FULL"
    user_access: str = "MULTI_USER"
    fork_point_lsn: int | None = None
    capture_log: bool = False  # log records are kept (FULL/BULK_LOGGED once a base exists)
    chain_established: bool = False  # BACKUP LOG allowed
    diff_base: dict | None = None  # {"checkpoint_lsn", "guid"} of the differential base
    restore: dict | None = None  # restore sequence: redo_lsn, base, stop facts
    generation: int = field(
        default_factory=lambda: next_generation()
    )  # new on every file replacement
    single_user_spid: int | None = None
    system: bool = False
    logical_data: str = ""
    logical_log: str = ""
    log_begins_chain: bool = False  # the next log backup starts a new log chain
    previous_fork_guid: str | None = None

    @property
    def path(self) -> Path:
        return Path(self.data_path)

    @property
    def logical_names(self) -> tuple[str, str]:
        return self.logical_data or self.name, self.logical_log or f"{self.name}_log"


class Engine:
    """Server-wide state; every mutation of the registry happens under `lock`."""

    def __init__(self, storage: Path, password: str) -> None:
        self.storage = storage
        self.password = password
        self.lock = threading.RLock()
        self.databases: dict[str, Database] = {}
        self.sessions: dict[int, object] = {}
        self.credentials: dict[str, dict] = {}
        self.prepared_handle = 1
        self._next_spid = 51
        (storage / "data").mkdir(parents=True, exist_ok=True)
        self._load()

    # ---- registry ------------------------------------------------------------------------
    @property
    def _registry_path(self) -> Path:
        return self.storage / "registry.json"

    def _load(self) -> None:
        if self._registry_path.exists():
            raw = json.loads(self._registry_path.read_text())
            self.databases = {k: Database(**v) for k, v in raw["databases"].items()}
            self.credentials = raw.get("credentials", {})
            return
        for name in SYSTEM_DATABASES:
            db = self._new_database(name, system=True)
            db.recovery_model = "SIMPLE" if name in ("tempdb", "msdb", "master") else "FULL"
        self._create_msdb_tables()
        self.save()

    def save(self) -> None:
        with self.lock:
            data = {
                "databases": {k: dataclasses.asdict(v) for k, v in self.databases.items()},
                "credentials": self.credentials,
            }
            tmp = self._registry_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1))
            os.replace(tmp, self._registry_path)

    def get(self, name: str) -> Database | None:
        return self.databases.get(name.lower())

    def by_id(self, database_id: int) -> Database | None:
        return next((d for d in self.databases.values() if d.database_id == database_id), None)

    def default_paths(self, name: str) -> tuple[str, str]:
        data = self.storage / "data"
        return str(data / f"{name}.mdf"), str(data / f"{name}_log.ldf")

    def _new_database(
        self, name: str, system: bool = False, paths: tuple[str, str] | None = None
    ) -> Database:
        with self.lock:
            used = {d.database_id for d in self.databases.values()}
            database_id = next(i for i in range(1, 32768) if i not in used and (system or i > 4))
            data_path, log_path = paths or self.default_paths(name)
            now = dbfile.utcnow()
            db = Database(
                name=name,
                database_id=database_id,
                data_path=data_path,
                log_path=log_path,
                create_date=dbfile.fmt_time(now),
                database_guid=str(uuid.uuid4()).upper(),
                family_guid=str(uuid.uuid4()).upper(),
                fork_guid=str(uuid.uuid4()).upper(),
                system=system,
            )
            self.databases[name.lower()] = db
        if not Path(data_path).exists():
            dbfile.create_file(Path(data_path), now)
        write_log_placeholder(Path(log_path), name)
        return db

    # ---- sessions --------------------------------------------------------------------------
    def register_session(self, session) -> int:
        with self.lock:
            spid = self._next_spid
            self._next_spid += 1
            self.sessions[spid] = session
            return spid

    def unregister_session(self, spid: int) -> None:
        with self.lock:
            self.sessions.pop(spid, None)
            for db in self.databases.values():
                if db.single_user_spid == spid:
                    db.single_user_spid = None

    def users_of(self, db: Database, except_spid: int | None = None) -> list[int]:
        """Sessions using the database (as their current database or in an open transaction)."""
        with self.lock:
            return [
                spid for spid, s in self.sessions.items() if spid != except_spid and s.uses(db.name)
            ]

    # ---- CREATE / DROP / ALTER DATABASE ---------------------------------------------------
    def create_database(self, name: str) -> Database:
        with self.lock:
            if self.get(name) is not None:
                raise SqlError(
                    1801,
                    f"Database '{name}' already exists. Choose a different database name.",
                    16,
                    3,
                )
            data_path, _log_path = self.default_paths(name)
            if any(d.data_path == data_path for d in self.databases.values()):
                raise SqlError(
                    1802,
                    "CREATE DATABASE failed. Some file names listed could not be created. Check related errors.",
                    16,
                    4,
                )
            Path(data_path).unlink(missing_ok=True)
            db = self._new_database(name)
            db.recovery_model = "FULL"
            self.save()
            return db

    def drop_database(self, name: str, spid: int) -> None:
        with self.lock:
            db = self.get(name)
            if db is None or db.system:
                raise SqlError(
                    3701,
                    f"Cannot drop the database '{name}', because it does not exist "
                    "or you do not have permission.",
                    11,
                    1,
                )
            if self.users_of(db):
                raise SqlError(
                    3702, f'Cannot drop database "{db.name}" because it is currently in use.', 16, 4
                )
            del self.databases[db.name.lower()]
            self.save()
        for path in (Path(db.data_path), Path(db.log_path), Path(db.data_path + "-journal")):
            path.unlink(missing_ok=True)

    def set_recovery(self, db: Database, model: str) -> None:
        with self.lock:
            if model == db.recovery_model:
                return
            if model == "SIMPLE" or db.recovery_model == "SIMPLE":
                db.capture_log = False
                db.chain_established = False
            db.recovery_model = model
            self.save()

    # ---- msdb ------------------------------------------------------------------------------
    def _create_msdb_tables(self) -> None:
        msdb = self.get("msdb")
        with dbfile.write_locked(msdb.path) as conn:
            now = dbfile.fmt_time(dbfile.utcnow())
            for text in MSDB_TABLES:
                table = parse_create_table(Cursor(lex(text)))
                for sql in create_table_statements(
                    table,
                    lambda: dbfile.alloc_object_id(conn, None),
                    lambda _: None,
                    lambda toks: "",
                    now,
                ):
                    conn.execute(dbfile.bind_schema(sql, None))
            dbfile.commit_changes(conn, None, [], keep=False)

    def msdb_write(
        self, build: Callable[[Callable[[str, str], int]], dict[str, list[dict]]]
    ) -> None:
        """Insert msdb rows in one transaction; `build(next_id)` makes them ({table: [{col: value}]})."""
        msdb = self.get("msdb")
        with dbfile.write_locked(msdb.path) as conn:

            def next_id(table: str, column: str) -> int:
                row = conn.execute(
                    f'SELECT coalesce(max(+"{column}"), 0) + 1 FROM "{table}"'
                ).fetchone()
                return int(row[0])

            for table, items in build(next_id).items():
                for item in items:
                    cols = ", ".join(f'"{c}"' for c in item)
                    marks = ", ".join("?" * len(item))
                    conn.execute(
                        f'INSERT INTO "{table}" ({cols}) VALUES ({marks})', list(item.values())
                    )
            dbfile.commit_changes(conn, None, [], keep=False)


def write_log_placeholder(path: Path, name: str) -> None:
    """The .ldf beside each database: the stand-in keeps the log inside the .mdf."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(
            f"log file of database {name}: the SQL Server stand-in keeps its log in the data file\n"
        )
