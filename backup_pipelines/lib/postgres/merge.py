"""Merging a workspace dump into the live tables: the backed-up rows the live tables lack are
inserted, parents first, in ONE transaction; rows present (same key) keep their newer values and
no other workspace's rows are read or written.

Staging tables are temporary (`ON COMMIT DROP`, in pg_temp), so a killed restore leaves nothing
behind and no concurrent restore can collide on a name.

A table whose live rows include none of the workspace's (the usual case after losing a
workspace) skips staging: its backed-up rows go straight into the live table with one COPY,
in the same transaction, so PostgreSQL writes each row once instead of twice (temp table, then
live). Nothing can be overwritten that way: a key already taken makes the server refuse the
COPY, which is then undone (a savepoint) and the table staged and merged as usual.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg
from psycopg import sql

from backup_pipelines.lib.errors import BackupError, CommitOutcomeUnknown
from backup_pipelines.lib.postgres.catalog import live_columns, primary_key
from backup_pipelines.lib.postgres.connection import connect
from backup_pipelines.lib.postgres.load import check_binary_target, copy_table_in
from backup_pipelines.lib.store import ArtifactRef, BackupStore
from backup_pipelines.lib.streams import Log


class MergeAbandoned(BackupError):
    """The caller said not to go on after staging (the gate refused): nothing was written."""


class CopiedIn(int):
    """A table loaded straight into the live table (its rows copied in), not staged."""


# A row the live table refuses for one of these would be refused by the staged INSERT all the
# same (the table holds none of the workspace's rows, so every row is inserted): refused at the
# COPY. A key conflict, an exclusion or a foreign key (a parent still staged) may pass once
# staged, parents first; the staged INSERT names what it meets.
_REFUSED_STAGED_TOO = (psycopg.errors.NotNullViolation, psycopg.errors.CheckViolation)


class _NotStraight(Exception):
    """The straight COPY did not take exactly the manifest's rows: stage the table instead."""


def merge_sql_rows(
    database_url: str,
    store: BackupStore,
    ref: ArtifactRef,
    manifest: dict,
    dry_run: bool = False,
    log: Log | None = None,
    staged: Callable[[], bool] | None = None,
) -> dict:
    """Insert the backed-up rows of workspace dump `ref` that the live tables lack, parents
    first, in ONE transaction; returns per table what was in the backup, inserted, present.

    Every table is loaded first, then inserted: staged (COPY into a temporary table: nothing any
    other session sees, every value already checked by the server), or, when the live table
    holds none of the workspace's rows, COPYed straight into it (uncommitted: no other session
    sees those rows either; a concurrent insert of the same key waits for this transaction).
    `staged`, when given, is called once every row is in the live tables, uncommitted, and
    every constraint has been checked (deferred ones too: SET CONSTRAINTS ALL IMMEDIATE), so
    that only the commit is left to fail; it decides: True commits, False rolls back
    (MergeAbandoned). A restore loads and inserts while its consistency gate runs, and writes
    no index before this point: a row the live schema refuses stops it with nothing written
    anywhere."""
    workspace = ref.workspace
    report: dict[str, dict] = {}
    with connect(database_url) as conn:
        check_binary_target(conn, ref, manifest)
        conn.execute("SET LOCAL lock_timeout = '60s'")
        # A dry run always stages: it must not call a sequence's nextval (column defaults of a
        # COPY into the live table would), which no rollback undoes.
        stages = [
            _load_table(conn, store, ref, manifest, entry, log, straight=not dry_run)
            for entry in manifest["tables"]
        ]
        for entry, stage in zip(manifest["tables"], stages, strict=True):
            report[entry["table"]] = _apply_table(conn, entry, stage, workspace, dry_run)
            if log:
                log(f"{entry['table']}: {report[entry['table']]}")
        _check_deferred_constraints(conn)
        if staged is not None and not staged():
            conn.rollback()
            raise MergeAbandoned(
                f"the merge of {ref} was abandoned before its commit: nothing written"
            )
        if dry_run:
            # setval is not transactional: a rollback would not undo it, so a dry run only
            # says which sequences a restore would move.
            for sequence, value in _sequences_to_advance(conn, manifest["tables"]):
                if log:
                    log(f"dry run: would move sequence {sequence} to {value}")
            conn.rollback()
        else:
            _advance_sequences(conn, manifest["tables"])
            _commit(conn, ref)
    return report


def _commit(conn, ref: ArtifactRef) -> None:
    try:
        conn.commit()
    except psycopg.OperationalError as lost:  # the server may have committed before it went
        raise CommitOutcomeUnknown(
            f"the merge of {ref}: the connection to PostgreSQL was lost during its COMMIT "
            f"({_one_line(lost)}): whether its rows were committed is unknown; run the same "
            "restore again (it adds only the rows still missing)"
        ) from lost


def _refuse_gone_table_or_columns(conn, entry: dict, ref: ArtifactRef) -> None:
    schema, name = entry["table"].split(".", 1)
    found = conn.execute("SELECT to_regclass(%s)", (sql.Identifier(schema, name).as_string(conn),))
    if found.fetchone()[0] is None:  # DROP TABLE by mistake: rows have nowhere to go
        raise BackupError(
            f"{entry['table']} does not exist in the live database (dropped?): a workspace "
            "restore adds rows to live tables and does not recreate one. Nothing was written. "
            f"Restore the full dump into a new database (backup-pipelines restore full --date "
            f"{ref.date}) and copy the table back, or over live (--overwrite-live)"
        )
    present = live_columns(conn, schema, name)
    gone = [c for c in entry["columns"] if c not in present]
    if gone:
        raise BackupError(
            f"{entry['table']}: column(s) {', '.join(gone)} of the backup no longer exist in the live "
            "table; restore the full dump into a new database instead"
        )


def _load_table(conn, store, ref, manifest, entry: dict, log, straight: bool):
    """The table's rows in this transaction: copied straight in (CopiedIn) or staged."""
    _refuse_gone_table_or_columns(conn, entry, ref)
    copied = _copy_straight_in(conn, store, ref, manifest, entry, log) if straight else None
    if copied is not None:
        return copied
    return _stage_table(conn, store, ref, manifest, entry, log)


def _copy_straight_in(conn, store, ref, manifest, entry: dict, log) -> CopiedIn | None:
    """The table's backed-up rows COPYed straight into the live table when it holds none of the
    workspace's rows; None (nothing of it left, by a savepoint) when it does, or when the
    server refuses a row (a key another workspace holds, a foreign key) or keeps another count
    than the manifest's (rows of another workspace in the file): the caller stages it then,
    and the staged merge keeps or names those rows as it always did. A NOT NULL or CHECK
    violation is raised at once (_REFUSED_STAGED_TOO)."""
    schema, name = entry["table"].split(".", 1)
    live, column = sql.Identifier(schema, name), sql.Identifier(entry["workspace_column"])
    present = conn.execute(
        sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {} = %s)").format(live, column),
        (ref.workspace,),
    ).fetchone()[0]
    if present:
        return None
    try:
        with conn.transaction():  # a savepoint: a refused COPY leaves nothing behind
            copied = copy_table_in(conn, store, ref, manifest, entry, live, ref.workspace)
            if copied != entry["rows"]:
                raise _NotStraight(copied)
    except _REFUSED_STAGED_TOO as refused:
        raise _refused_by_live_table(entry["table"], refused) from refused
    except (psycopg.Error, _NotStraight) as reason:
        if log:
            log(f"{entry['table']}: not copied straight in ({_one_line(reason)}); staging it")
        return None
    if log:
        log(f"{entry['table']}: copied {copied} rows straight in (none of the workspace's live)")
    return CopiedIn(copied)


def _refused_by_live_table(table: str, refused: psycopg.Error) -> BackupError:
    return BackupError(
        f"{table}: the live table refuses the backed-up rows: {_one_line(refused)} "
        f"({type(refused).__name__}) — a constraint added or changed since the backup? The "
        "transaction was rolled back, no row of the backup is in the database: change the "
        "constraint or the live schema, then restore again"
    )


def _check_deferred_constraints(conn) -> None:
    """Deferred constraints (DEFERRABLE INITIALLY DEFERRED) checked now instead of at the
    commit, which a restore reaches only after its indexes were written."""
    try:
        conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
    except psycopg.errors.IntegrityError as refused:
        diag = refused.diag
        table = f"{diag.schema_name}.{diag.table_name}" if diag.table_name else "a live table"
        raise _refused_by_live_table(table, refused) from refused


def _one_line(error: BaseException) -> str:
    if isinstance(error, _NotStraight):
        return f"{error.args[0]} rows of the workspace kept, not all the file's"
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _stage_table(conn, store, ref, manifest, entry: dict, log) -> sql.Identifier:
    """A temporary copy of the backed-up rows of one table (dropped at commit or rollback)."""
    schema, name = entry["table"].split(".", 1)
    stage = sql.Identifier(f"restore_stage_{name}")
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in entry["columns"])
    conn.execute(
        sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
            stage, columns, sql.Identifier(schema, name)
        )
    )
    staged = copy_table_in(conn, store, ref, manifest, entry, stage)
    if staged != entry["rows"]:
        raise BackupError(
            f"{entry['table']}: staged {staged} rows, the manifest says {entry['rows']}"
        )
    if log:
        log(f"{entry['table']}: staged {staged} rows")
    return stage


def _apply_table(conn, entry: dict, stage, workspace: str, dry_run: bool = False) -> dict:
    if isinstance(stage, CopiedIn):  # already in, every row of the file: nothing was present
        return {"in_backup": entry["rows"], "inserted": int(stage), "already_present": 0}
    schema, name = entry["table"].split(".", 1)
    live = sql.Identifier(schema, name)
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in entry["columns"])
    staged = entry["rows"]
    drawing = _columns_drawing_from_sequences(conn, schema, name, entry["columns"])
    if dry_run and drawing:
        # Inserting would call nextval() for these columns, which no rollback undoes: a dry
        # run counts the rows a restore would add instead.
        inserted = _rows_absent(conn, schema, name, stage, entry["workspace_column"], workspace)
        return {
            "in_backup": staged,
            "inserted": inserted,
            "already_present": staged - inserted,
            "dry_run": f"counted, not inserted: {', '.join(drawing)} would draw from a sequence",
        }
    try:
        inserted = conn.execute(
            sql.SQL(
                "INSERT INTO {live} ({cols}) SELECT {cols} FROM {stage} WHERE {ws} = %s "
                "ON CONFLICT DO NOTHING"
            ).format(
                live=live, cols=columns, stage=stage, ws=sql.Identifier(entry["workspace_column"])
            ),
            (workspace,),
        ).rowcount
    except psycopg.errors.IntegrityError as refused:  # a foreign key, an exclusion, a CHECK
        raise _refused_by_live_table(entry["table"], refused) from refused
    missing = _rows_still_missing(conn, schema, name, stage)
    if missing:
        raise BackupError(
            f"{entry['table']}: {missing} backed-up row(s) neither inserted nor present (a key "
            "conflict with different data?); the restore was rolled back"
        )
    return {"in_backup": staged, "inserted": inserted, "already_present": staged - inserted}


def _rows_still_missing(conn, schema: str, name: str, stage: sql.Identifier) -> int:
    key = primary_key(conn, schema, name)
    if not key:
        return 0
    match = sql.SQL(" AND ").join(sql.SQL("l.{c} = s.{c}").format(c=sql.Identifier(c)) for c in key)
    query = sql.SQL(
        "SELECT count(*) FROM {stage} s WHERE NOT EXISTS (SELECT 1 FROM {live} l WHERE {m})"
    ).format(stage=stage, live=sql.Identifier(schema, name), m=match)
    return conn.execute(query).fetchone()[0]


def _columns_drawing_from_sequences(conn, schema: str, name: str, backed_up: list[str]) -> list:
    """Live columns the backup lacks whose default takes a sequence's next value."""
    rows = conn.execute(
        "SELECT a.attname FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid "
        "AND d.adnum = a.attnum WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT "
        "a.attisdropped AND (a.attidentity <> '' OR pg_get_expr(d.adbin, d.adrelid) LIKE "
        "'%%nextval(%%')",
        (sql.Identifier(schema, name).as_string(conn),),
    ).fetchall()
    return [r[0] for r in rows if r[0] not in backed_up]


def _rows_absent(conn, schema, name, stage, workspace_column: str, workspace: str) -> int:
    """Staged rows of the workspace whose primary key the live table lacks."""
    key = primary_key(conn, schema, name)
    query = sql.SQL("SELECT count(*) FROM {stage} s WHERE s.{ws} = %s").format(
        stage=stage, ws=sql.Identifier(workspace_column)
    )
    if key:
        match = sql.SQL(" AND ").join(
            sql.SQL("l.{c} = s.{c}").format(c=sql.Identifier(c)) for c in key
        )
        query += sql.SQL(" AND NOT EXISTS (SELECT 1 FROM {live} l WHERE {m})").format(
            live=sql.Identifier(schema, name), m=match
        )
    return conn.execute(query, (workspace,)).fetchone()[0]


def _serial_sequences(conn, tables: list[dict]):
    """(sequence, table identifier, column) of every identity/serial column of the tables."""
    for entry in tables:
        schema, name = entry["table"].split(".", 1)
        qualified = sql.Identifier(schema, name).as_string(conn)
        for column in entry["columns"]:
            sequence = conn.execute(
                "SELECT pg_get_serial_sequence(%s, %s)", (qualified, column)
            ).fetchone()[0]
            if sequence:
                yield sequence, sql.Identifier(schema, name), column


def _target_value(sequence: str, table: sql.Identifier, column: str) -> sql.Composed:
    return sql.SQL(
        "GREATEST((SELECT coalesce(max({c}), 1) FROM {t}), (SELECT last_value FROM {s}))"
    ).format(c=sql.Identifier(column), t=table, s=sql.SQL(sequence))


def _advance_sequences(conn, tables: list[dict]) -> None:
    """Rows restored with their ids: move identity/serial sequences past them."""
    for sequence, table, column in list(_serial_sequences(conn, tables)):
        conn.execute(
            sql.SQL("SELECT setval(%s, {})").format(_target_value(sequence, table, column)),
            (sequence,),
        )


def _sequences_to_advance(conn, tables: list[dict]) -> list[tuple[str, int]]:
    """(sequence, value) a restore would set — read only, for a dry run."""
    moves = []
    for sequence, table, column in list(_serial_sequences(conn, tables)):
        target = conn.execute(sql.SQL("SELECT {}").format(_target_value(sequence, table, column)))
        moves.append((sequence, target.fetchone()[0]))
    return moves
