"""CREATE / DROP / ALTER DATABASE and CREATE / DROP CREDENTIAL."""

from __future__ import annotations

import time

from .dbfile import fmt_time, utcnow
from .errors import SqlError, not_supported
from .statements import Output
from .tsql import Cursor


def _not_in_transaction(session, statement: str) -> None:
    if session.trancount:
        raise SqlError(
            226, f"{statement} statement not allowed within multi-statement transaction.", 16, 5
        )


def database_statement(session, head: str, cur: Cursor, out: Output) -> None:
    cur.expect("DATABASE")
    engine = session.engine
    if head == "CREATE":
        _not_in_transaction(session, "CREATE DATABASE")
        name = cur.name()
        while not cur.done:  # ON (...), LOG ON (...), COLLATE x, WITH ...: accepted, ignored
            cur.next()
        engine.create_database(name)
        out.done(None)
        return
    if head == "DROP":
        _not_in_transaction(session, "DROP DATABASE")
        if_exists = cur.accept("IF")
        if if_exists:
            cur.expect("EXISTS")
        names = [cur.name()]
        while cur.accept_kind("comma"):
            names.append(cur.name())
        for name in names:
            if if_exists and engine.get(name) is None:
                continue
            if session.current_db.lower() == name.lower():
                raise SqlError(
                    3702, f'Cannot drop database "{name}" because it is currently in use.', 16, 4
                )
            session.release_database(name)
            engine.drop_database(name, session.spid)
        out.done(None)
        return
    _not_in_transaction(session, "ALTER DATABASE")
    name = cur.name()
    db = engine.get(name) if name.upper() != "CURRENT" else engine.get(session.current_db)
    if db is None:
        raise SqlError(
            5011,
            f"User does not have permission to alter database '{name}', the database does "
            "not exist, or the database is not in a state that allows access checks.",
            14,
            5,
        )
    if cur.accept("MODIFY"):
        raise not_supported("ALTER DATABASE ... MODIFY")
    cur.expect("SET")
    option = cur.next().up
    if option == "RECOVERY":
        model = cur.next().up
        if model not in ("FULL", "SIMPLE", "BULK_LOGGED"):
            raise cur.error()
        engine.set_recovery(db, model)
    elif option in ("SINGLE_USER", "MULTI_USER", "RESTRICTED_USER"):
        _set_access(session, db, option, cur, out)
    elif option in ("ONLINE", "OFFLINE", "READ_ONLY", "READ_WRITE", "EMERGENCY"):
        raise not_supported(f"ALTER DATABASE ... SET {option}")
    # other options (AUTO_CLOSE, PAGE_VERIFY, COMPATIBILITY_LEVEL, ...) are accepted and ignored
    out.done(None)


def _set_access(session, db, option: str, cur: Cursor, out: Output) -> None:
    engine = session.engine
    rollback = False
    if cur.accept("WITH"):
        if cur.accept("ROLLBACK"):
            rollback = True
            if cur.accept("AFTER"):
                cur.literal()
                cur.accept("SECONDS")
            else:
                cur.expect("IMMEDIATE")
        else:
            cur.expect("NO_WAIT")
    if option == "MULTI_USER":
        with engine.lock:
            db.user_access, db.single_user_spid = "MULTI_USER", None
            engine.save()
        return
    others = engine.users_of(db, except_spid=session.spid)
    if others and not rollback:
        raise SqlError(
            5061,
            f"ALTER DATABASE failed because a lock could not be placed on database '{db.name}'. "
            "Try again later.",
            16,
            1,
        )
    for spid in others:
        other = engine.sessions.get(spid)
        if other is not None:
            other.kill()
    deadline = time.monotonic() + 10
    while engine.users_of(db, except_spid=session.spid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if others:
        out.info(
            5060,
            "Nonqualified transactions are being rolled back. Estimated rollback completion: 100%.",
        )
    with engine.lock:
        db.user_access = option
        db.single_user_spid = session.spid if option == "SINGLE_USER" else None
        engine.save()


def credential_statement(session, head: str, cur: Cursor, out: Output) -> None:
    cur.expect("CREDENTIAL")
    name = cur.name()
    engine = session.engine
    if head == "DROP":
        with engine.lock:
            if engine.credentials.pop(name, None) is None:
                raise SqlError(
                    15151,
                    f"Cannot drop the credential '{name}', because it does not exist or you "
                    "do not have permission.",
                    16,
                    1,
                )
            engine.save()
        out.done(None)
        return
    cur.expect("WITH")
    values = {}
    while not cur.done:
        key = cur.next().up
        cur.expect_kind("op")
        values[key] = cur.literal()
        cur.accept_kind("comma")
    with engine.lock:
        if head == "CREATE" and name in engine.credentials:
            raise SqlError(15025, f"The server principal '{name}' already exists.", 16, 1)
        engine.credentials[name] = {
            "identity": str(values.get("IDENTITY", "")),
            "secret": str(values.get("SECRET", "")),
            "created": fmt_time(utcnow()),
        }
        engine.save()
    out.done(None)
