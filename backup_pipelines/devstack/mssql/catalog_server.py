"""Server-level catalog views (sys.databases, sys.master_files, ...) from the engine's registry."""

from __future__ import annotations

import os
import time
import uuid

STATES = {"ONLINE": 0, "RESTORING": 1}
MODELS = {"FULL": 1, "BULK_LOGGED": 2, "SIMPLE": 3}
ACCESS = {"MULTI_USER": 0, "SINGLE_USER": 1, "RESTRICTED_USER": 2}


def _pages(path: str) -> int:
    try:
        return max(os.path.getsize(path) // 8192, 1)
    except OSError:
        return 0


def _files(db) -> list[tuple]:
    data_name, log_name = db.logical_names
    guid = uuid.uuid5(uuid.NAMESPACE_URL, db.database_guid)
    state = STATES.get(db.state, 0)
    return [
        (
            1,
            str(guid).upper(),
            0,
            "ROWS",
            1,
            data_name,
            db.data_path,
            state,
            db.state,
            _pages(db.data_path),
            -1,
            8192,
        ),
        (
            2,
            str(uuid.uuid5(guid, "log")).upper(),
            1,
            "LOG",
            0,
            log_name,
            db.log_path,
            state,
            db.state,
            1024,
            268435456,
            8192,
        ),
    ]


def server_rows(session, view: str) -> list[tuple]:
    engine = session.engine
    with engine.lock:
        databases = sorted(engine.databases.values(), key=lambda d: d.database_id)
        sessions = list(engine.sessions.values())
    if view == "sys.databases":
        return [
            (
                d.name,
                d.database_id,
                None,
                d.create_date,
                160,
                "SQL_Latin1_General_CP1_CI_AS",
                ACCESS.get(d.user_access, 0),
                d.user_access,
                0,
                STATES.get(d.state, 0),
                d.state,
                MODELS.get(d.recovery_model, 1),
                d.recovery_model,
                0,
                "LOG_BACKUP" if d.chain_established else "NOTHING",
                0,
            )
            for d in databases
        ]
    if view == "sys.master_files":
        return [(d.database_id, *f, 0) for d in databases for f in _files(d)]
    if view == "sys.database_files":
        db = engine.get(session.current_db)
        return _files(db) if db else []
    if view == "sys.dm_exec_sessions":
        rows = []
        for s in sessions:
            db = engine.get(s.current_db)
            rows.append(
                (
                    s.spid,
                    s.user,
                    s.host,
                    s.app,
                    "running" if s is session else "sleeping",
                    db.database_id if db else 1,
                    1,
                    s.trancount,
                )
            )
        return rows
    if view == "sys.dm_exec_requests":
        rows = []
        for s in sessions:
            request = s.request
            if request is None:
                continue
            percent = float(request["percent"])
            elapsed_ms = int((time.monotonic() - request["clock"]) * 1000)
            remaining = int(elapsed_ms * (100 - percent) / percent) if percent > 0 else 0
            rows.append((s.spid, 0, request["start"], "running" if s is session else "suspended",
                         request["command"], request["database_id"], percent, remaining, 0, None, s.trancount))  # fmt: skip
        return rows
    if view == "sys.credentials":
        return [
            (i, name, c["identity"], c["created"])
            for i, (name, c) in enumerate(sorted(engine.credentials.items()), 65536)
        ]
    raise KeyError(view)
