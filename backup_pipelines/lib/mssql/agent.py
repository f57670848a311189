"""One agent back, across SQL Server and Qdrant, to one instant — without touching any other
agent: the database is restored into a scratch database at the moment the agent's Qdrant
snapshot was taken (the log chain can stop anywhere), the agent's rows there are gated against
the snapshot's point ids, the rows the live database lacks are inserted (foreign-key order,
insert-missing-only: the PostgreSQL workspace merge's contract), the collection is recovered
(merge: only missing points), and the scratch database is always dropped.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from backup_pipelines.lib.engines import IndexEngine, Mode
from backup_pipelines.lib.errors import BackupError
from backup_pipelines.lib.ids import Side
from backup_pipelines.lib.mssql.backup import Folders
from backup_pipelines.lib.mssql.connection import Log, connect, connected, query, quote_name, run
from backup_pipelines.lib.mssql.restore import (
    drop_stale_scratch_databases,
    execute_plan,
    plan,
    scratch_database_name,
)
from backup_pipelines.lib.recovery.consistency import Outcome, Verdict, evaluate
from backup_pipelines.lib.store import ArtifactRef, BackupStore
from backup_pipelines.lib.store.copy import lease_store
from backup_pipelines.lib.workspaces import validate_workspace_id


@dataclass(frozen=True)
class AgentTable:
    name: str  # dbo table name
    agent_column: str = "agent_id"


@dataclass(frozen=True)
class AgentSchema:
    """Where an agent's rows are (policy `mssql_agent_tables`) and which table's ids are the
    ids of its Qdrant points (`mssql_vector_table`, `mssql_vector_id_column`)."""

    tables: tuple[AgentTable, ...] = (
        AgentTable("agents", "agent_id"),
        AgentTable("episodes", "agent_id"),
        AgentTable("procedures", "agent_id"),
    )
    vector_table: str = "episodes"
    vector_id_column: str = "id"
    schema: str = "dbo"


class AgentGateRefused(BackupError):
    def __init__(self, verdict: Verdict) -> None:
        self.verdict = verdict
        super().__init__(
            "agent restore refused by the consistency gate: "
            + verdict.summary()
            + " — nothing was written to the live database or collection"
        )


@dataclass
class AgentReport:
    agent: str
    target: str
    verdict: str
    plan: list[str]
    rows: dict = field(default_factory=dict)
    qdrant: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    scratch_database: str = ""


def _qualified(database: str, schema: str, table: str) -> str:
    return f"{quote_name(database)}.{quote_name(schema)}.{quote_name(table)}"


def table_columns(conn, database: str, schema: str, table: str) -> list[dict]:
    return query(
        conn,
        f"SELECT COLUMN_NAME AS name FROM {quote_name(database)}.INFORMATION_SCHEMA.COLUMNS "
        "WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
        schema,
        table,
    )


def primary_key(conn, database: str, schema: str, table: str) -> list[str]:
    rows = query(
        conn,
        f"SELECT k.COLUMN_NAME AS name FROM {quote_name(database)}.INFORMATION_SCHEMA.TABLE_CONSTRAINTS c "
        f"JOIN {quote_name(database)}.INFORMATION_SCHEMA.KEY_COLUMN_USAGE k "
        "ON k.CONSTRAINT_NAME = c.CONSTRAINT_NAME AND k.TABLE_NAME = c.TABLE_NAME "
        "WHERE c.CONSTRAINT_TYPE = 'PRIMARY KEY' AND c.TABLE_SCHEMA = ? AND c.TABLE_NAME = ? "
        "ORDER BY k.ORDINAL_POSITION",
        schema,
        table,
    )
    return [r["name"] for r in rows]


def has_identity(conn, database: str, schema: str, table: str) -> bool:
    rows = query(
        conn,
        f"SELECT COUNT(*) AS n FROM {quote_name(database)}.sys.columns "
        f"WHERE object_id = OBJECT_ID(?) AND is_identity = 1",
        f"{database}.{schema}.{table}",
    )
    return bool(rows and rows[0]["n"])


def vector_ids(conn, database: str, schema: AgentSchema, agent: str) -> np.ndarray:
    table = next(t for t in schema.tables if t.name == schema.vector_table)
    rows = query(
        conn,
        f"SELECT {quote_name(schema.vector_id_column)} AS id FROM "
        f"{_qualified(database, schema.schema, table.name)} WHERE {quote_name(table.agent_column)} = ?",
        agent,
    )
    values = [r["id"] for r in rows]
    if all(isinstance(v, int) for v in values):
        return np.array(values, dtype=np.int64)
    return np.array([str(v).lower().encode() for v in values], dtype=np.bytes_)


def copy_agent_rows(
    connection_string: str,
    live: str,
    scratch: str,
    schema: AgentSchema,
    agent: str,
    log: Log,
) -> dict:
    """Insert the agent's rows the live database lacks, parents first, in one transaction."""
    report = {}
    conn = connect(connection_string, autocommit=False, database="master")
    try:
        for table in schema.tables:
            report[table.name] = _copy_table(conn, live, scratch, schema.schema, table, agent)
            log(f"{table.name}: {report[table.name]}")
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.close()
    return report


def _copy_table(conn, live: str, scratch: str, schema: str, table: AgentTable, agent: str) -> dict:
    columns = [c["name"] for c in table_columns(conn, scratch, schema, table.name)]
    live_columns = {c["name"] for c in table_columns(conn, live, schema, table.name)}
    missing = [c for c in columns if c not in live_columns]
    if missing:
        raise BackupError(
            f"{schema}.{table.name}: column(s) {', '.join(missing)} of the backup no longer exist "
            "in the live table; restore the database under a new name instead"
        )
    key = primary_key(conn, live, schema, table.name)
    if not key:
        raise BackupError(
            f"{schema}.{table.name} has no primary key: missing rows cannot be told apart"
        )
    cols = ", ".join(quote_name(c) for c in columns)
    match = " AND ".join(f"l.{quote_name(c)} = s.{quote_name(c)}" for c in key)
    target, source = _qualified(live, schema, table.name), _qualified(scratch, schema, table.name)
    in_backup = query(
        conn,
        f"SELECT COUNT(*) AS n FROM {source} WHERE {quote_name(table.agent_column)} = ?",
        agent,
    )[0]["n"]
    identity = has_identity(conn, live, schema, table.name)
    if identity:
        run(conn, f"SET IDENTITY_INSERT {target} ON")
    try:  # under the no-progress watchdog, as every other statement: a hung server fails it
        inserted = run(
            conn,
            f"INSERT INTO {target} ({cols}) SELECT {', '.join('s.' + quote_name(c) for c in columns)} "
            f"FROM {source} s WHERE s.{quote_name(table.agent_column)} = ? AND NOT EXISTS "
            f"(SELECT 1 FROM {target} l WHERE {match})",
            agent,
            what=f"insert of agent {agent}'s missing rows into {schema}.{table.name}",
        ).rowcount
        inserted = max(inserted, 0)
    finally:
        if identity:
            run(conn, f"SET IDENTITY_INSERT {target} OFF")
    return {
        "in_backup": int(in_backup),
        "inserted": inserted,
        "already_present": int(in_backup) - inserted,
    }


def drop_database(connection_string: str, name: str) -> None:
    with connected(connection_string, "master") as conn:
        if query(conn, "SELECT name FROM sys.databases WHERE name = ?", name):
            run(conn, f"DROP DATABASE {quote_name(name)}")


def restore_agent(
    connection_string: str,
    store: BackupStore,
    database: str,
    agent: str,
    date: str,
    folders: Folders,
    qdrant: IndexEngine,
    qdrant_client,
    policy,
    schema: AgentSchema = AgentSchema(),
    target: datetime | None = None,
    dry_run: bool = False,
    override_gate: str = "",
    log: Log | None = None,
    lease_owner: str | None = None,
) -> AgentReport:
    """The agent back to the moment its Qdrant snapshot of `date` was taken (or `target`).

    The agent's lease is held throughout, as a workspace restore holds its workspace's: a
    backup of the agent waits, retention keeps the snapshot being read, and another restore
    of the agent, or a restore over the whole live database, is refused naming the holder."""
    log = log or (lambda _m: None)
    agent = validate_workspace_id(agent)
    with lease_store(store, log).restore_lease(agent, lease_owner, log):
        return _restore_agent_held(
            connection_string, store, database, agent, date, folders, qdrant, qdrant_client,
            policy, schema, target, dry_run, override_gate, log,
        )  # fmt: skip


def _restore_agent_held(
    connection_string, store, database, agent, date, folders, qdrant, qdrant_client, policy,
    schema, target, dry_run, override_gate, log,
) -> AgentReport:  # fmt: skip
    timings: dict[str, float] = {}
    started = time.monotonic()
    ref = ArtifactRef(qdrant.asset, date, agent)
    manifest = store.require_manifest(ref)
    verified = store.verify(ref)
    if not verified.ok:
        raise BackupError(f"cannot restore agent {agent}: " + "; ".join(verified.problems))
    collection = qdrant.memory_collection(policy, agent)
    index_side = qdrant.ids(store, ref, manifest, collection)
    instant = target or datetime.fromisoformat(str(index_side.captured_at).replace("Z", "+00:00"))
    restore_plan, catalog = plan(store, instant, database)
    for line in restore_plan.describe():
        log(line)
    drop_stale_scratch_databases(connection_string, log)
    scratch = scratch_database_name("agent")
    report = AgentReport(
        agent,
        restore_plan.target.isoformat(),
        "",
        restore_plan.describe(),
        scratch_database=scratch,
    )
    try:
        execute_plan(connection_string, store, restore_plan, catalog, folders, scratch, log=log)
        timings["restore_scratch"] = time.monotonic() - started
        with connected(connection_string, "master") as conn:
            sql_side = Side(
                f"sqlserver:{schema.vector_table}",
                restore_plan.target,
                vector_ids(conn, scratch, schema, agent),
            )
        verdict = evaluate(sql_side, [index_side], policy.max_clock_skew_seconds)
        report.verdict = str(verdict.outcome)
        log(f"consistency gate: {verdict.summary()}")
        if verdict.outcome is Outcome.FAIL and not override_gate:
            raise AgentGateRefused(verdict)
        if dry_run:
            return report
        report.rows = copy_agent_rows(connection_string, database, scratch, schema, agent, log)
        timings["sql"] = time.monotonic() - started - sum(timings.values())
        report.qdrant = qdrant.restore(
            qdrant_client, store, ref, manifest, collection, collection, Mode.MERGE
        )
        timings["qdrant"] = time.monotonic() - started - sum(timings.values())
    finally:
        drop_database(connection_string, scratch)
        report.seconds = {k: round(v, 3) for k, v in timings.items()}
    return report


def agents_in(connection_string: str, database: str, schema: AgentSchema) -> Iterable[str]:
    """Agent ids of the live database (for discovery)."""
    first = schema.tables[0]
    with connected(connection_string, database) as conn:
        rows = query(
            conn,
            f"SELECT DISTINCT {quote_name(first.agent_column)} AS id FROM "
            f"{quote_name(schema.schema)}.{quote_name(first.name)}",
        )
    return sorted(str(r["id"]) for r in rows)
