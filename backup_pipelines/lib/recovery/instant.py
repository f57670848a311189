"""Restore to one instant across stores: SQL, Typesense and Qdrant as they were at T.

A workspace (`restore_workspaces_to`), merged into live:

1. T is checked against what the pgBackRest repository can reach (pitr.reachable_window)
   BEFORE anything is written; outside it is refused, naming the oldest or newest instant.
2. SQL at exactly T: pgBackRest restores a scratch copy of the cluster at T (new data
   directory and port, archiving off; removed afterwards), and the workspace is dumped from
   it with the daily dump (`dump_workspace`) into a temporary store.
3. Each index starts from the newest artifact captured at or before T whose checksums verify,
   and is caught up to T from the SQL rows: rows changed after the artifact (by the mapping's
   `updated_column`, less `max_clock_skew_seconds` of margin for indexer lag and clocks) or
   missing from it are re-derived, entries of rows gone by T removed (recovery.catch_up has
   the exact rule, also for what live already holds).
4. The plan — physical backup, WAL range, reachable window, per workspace the rows at T and
   how many the merge inserts (the merge's own dry run), the index artifacts with their
   captured_at, how many entries come from each, how many are upserted and deleted, and what
   the gate says of SQL at T against the artifacts alone — is logged before anything is
   written. A dry run stops there (it only ever wrote the scratch copy and temporary files).
5. SQL: the existing merge (insert missing rows only, parents first, one transaction) from the
   temporary dump; then each index: the artifact (merge: only entries live lacks; a missing
   collection is recovered whole), the upserts, the deletions (the index read before SQL, so
   an entry the platform writes meanwhile has its row already); then the restore's
   verification and the gate on the result: the workspace's SQL ids against each index's ids
   must PASS.

The whole platform (`restore_platform_to`): the cluster via pitr.restore_to_time (a new data
directory and port, or `overwrite_live`: the verified swap), then every workspace of the
restored registry caught up the same way in replace mode (the artifact restored over the
collection, the index made exactly the rows at T). The SQL part of the plan comes first; the
index counts are read from the restored cluster and logged before any index is written (a dry
run reads them from a scratch copy).

Both hold the store's lease (lib/store/lease.py) from their first read to their last write:
each workspace's for a workspace restore (one held by someone else is reported NOT RESTORED,
the others go on), the whole database's for the platform; a lease lost meanwhile stops the
workspace before it writes.

Library code: no Dagster. Passwords never reach the log (RestoredCluster.display_url).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from psycopg import sql

from backup_pipelines.lib.engines import IndexEngine, Mode, index_engines
from backup_pipelines.lib.errors import BackupError, ConfigError
from backup_pipelines.lib.ids import Side
from backup_pipelines.lib.policy import IndexMapping, Policy
from backup_pipelines.lib.postgres import pitr
from backup_pipelines.lib.postgres.catalog import columns_of, list_workspaces
from backup_pipelines.lib.postgres.connection import connect
from backup_pipelines.lib.postgres.dump import dump_workspace
from backup_pipelines.lib.postgres.memory_rows import iter_index_rows
from backup_pipelines.lib.postgres.merge import merge_sql_rows
from backup_pipelines.lib.postgres.pgbackrest import format_target
from backup_pipelines.lib.recovery import catch_up as rule
from backup_pipelines.lib.recovery import consistency
from backup_pipelines.lib.recovery.workspace_restore import (
    Located,
    check_before_writing,
    verify_restore,
)
from backup_pipelines.lib.scratch import ScratchFolder
from backup_pipelines.lib.store import ArtifactRef, BackupStore, HeldLease, LeaseHeld, LocalStore
from backup_pipelines.lib.workspaces import validate_workspace_id

SQL_ASSET = "postgres/workspace_dump"
Log = Callable[[str], None]


def _quiet(_message: str) -> None:
    pass


# --------------------------------------------------------------------------------------------
# Times


def _instant(value: str | datetime) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _span(*stamps: str | datetime | None) -> tuple[datetime, datetime]:
    """(earliest, latest) of an artifact's stamps. A stamp written in whole seconds (Qdrant's
    snapshot creation_time) stands for that whole second, so it ends one second later."""
    moments, ends = [], []
    for stamp in stamps:
        if not stamp:
            continue
        moment = _instant(stamp)
        moments.append(moment)
        whole = isinstance(stamp, str) and moment.microsecond == 0 and "." not in stamp
        ends.append(moment + timedelta(seconds=1) if whole else moment)
    return min(moments), max(ends)


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment else None


# --------------------------------------------------------------------------------------------
# The index artifact an index starts from


@dataclass
class IndexStart:
    """The newest verified artifact of one index captured at or before T (or none)."""

    engine: IndexEngine
    collection: str
    ref: ArtifactRef | None = None
    manifest: dict | None = field(default=None, repr=False)
    location: str = ""
    started_at: datetime | None = None  # it reflects the index from here...
    captured_at: datetime | None = None  # ...to here (<= T)
    ids: np.ndarray = field(default_factory=lambda: rule.EMPTY, repr=False)
    side: Side | None = field(default=None, repr=False)
    skipped: list[str] = field(default_factory=list)

    @property
    def restorable(self) -> bool:
        """The artifact holds the collection with entries to put back."""
        return (
            self.ref is not None
            and self.engine.holds(self.manifest, self.collection)
            and len(self.ids) > 0
        )

    def to_dict(self) -> dict:
        return {
            "artifact": self.location or None,
            "started_at": _iso(self.started_at),
            "captured_at": _iso(self.captured_at),
            "entries": len(self.ids),
            "skipped": self.skipped,
        }


def newest_artifact_before(
    store: BackupStore, engine: IndexEngine, workspace: str, collection: str, target: datetime
) -> IndexStart:
    """The newest artifact of `engine` for `workspace` captured at or before `target` whose
    checksums verify (newer ones that do not verify are skipped and named)."""
    start = IndexStart(engine, collection)
    candidates = []
    for ref in store.list_artifacts(engine.asset):
        if ref.workspace != workspace or ref.date > target.astimezone(UTC).date().isoformat():
            continue
        try:
            manifest = store.require_manifest(ref)
            first, last = _span(manifest.get("export_started_at"), manifest["captured_at"])
        except (BackupError, KeyError, TypeError, ValueError) as exc:
            start.skipped.append(f"{store.location(ref)}: unreadable manifest ({exc})")
            continue
        if last <= target:
            candidates.append((last, ref, manifest))
    for _last, ref, manifest in sorted(candidates, key=lambda c: c[0], reverse=True):
        try:
            checked = store.verify(ref)  # ManifestInvalid: replaced by an untrustworthy one
        except BackupError as exc:
            start.skipped.append(f"{store.location(ref)}: {exc}")
            continue
        if not checked.ok:
            start.skipped.append(f"{store.location(ref)}: {'; '.join(checked.problems)}")
            continue
        side = engine.ids(store, ref, manifest, collection)
        first, last = _span(
            side.started_at,
            side.captured_at,
            manifest.get("export_started_at"),
            manifest["captured_at"],
        )
        if last > target:  # the collection's own time (a snapshot) is later than the manifest's
            continue
        start.ref, start.manifest, start.location = ref, manifest, store.location(ref)
        start.started_at, start.captured_at = first, last
        start.ids, start.side = side.ids, side
        return start
    return start


# --------------------------------------------------------------------------------------------
# Ids (and when each row last changed) of the mapped table, read from a database


@dataclass
class SqlIds:
    ids: np.ndarray
    updated: np.ndarray  # epoch seconds per id; NaN: unknown (always taken as changed)

    def changed_after(self, cutoff: datetime | None) -> np.ndarray:
        if cutoff is None:
            return self.ids
        changed = ~(self.updated <= cutoff.timestamp())  # NaN compares False: changed
        return np.unique(self.ids[changed])


def updated_column(conn, policy: Policy, mapping: IndexMapping) -> tuple[str | None, str]:
    """The mapping's update timestamp column when usable, and a note when it is not (every
    row is then re-derived). An explicitly configured column that is unusable is an error."""
    name = mapping.updated_column
    if not name:
        return None, "no updated_column: every row at T is re-derived"
    column = (columns_of(conn, policy.schema, mapping.table) or {}).get(name)
    if column is not None and column.category == "D":
        return name, ""
    problem = (
        f"table {policy.schema}.{mapping.table} has no column {name!r}"
        if column is None
        else f"column {name} is {column.type}, not a timestamp"
    )
    if "updated_column" in mapping.model_fields_set:
        raise ConfigError(f"{mapping.described('updated_column')}: {problem}")
    return None, f"{problem} (indexes.{mapping.engine}.updated_column): every row is re-derived"


def read_sql_ids(
    database_url: str, workspace: str, policy: Policy, mapping: IndexMapping
) -> tuple[SqlIds, str]:
    """The workspace's ids of the mapped table and their update times, streamed."""
    with connect(database_url) as conn:
        column, note = updated_column(conn, policy, mapping)
        when = (
            sql.SQL("EXTRACT(EPOCH FROM {})::float8").format(sql.Identifier(column))
            if column
            else sql.SQL("NULL::float8")
        )
        query = sql.SQL("SELECT {id}, {when} FROM {tbl} WHERE {ws} = %s").format(
            id=sql.Identifier(mapping.id_column),
            when=when,
            tbl=sql.Identifier(policy.schema, mapping.table),
            ws=sql.Identifier(mapping.workspace_column),
        )
        conn.execute("SET TIME ZONE 'UTC'")  # a timestamp without time zone is read as UTC
        ids, times = [], []
        with conn.cursor(name=f"instant_ids_{secrets.token_hex(4)}") as cursor:
            cursor.itersize = 5000
            cursor.execute(query, (workspace,))
            for identifier, moment in cursor:
                ids.append(identifier)
                times.append(np.nan if moment is None else moment)
    keys = rule.id_keys(ids)
    return SqlIds(keys, np.array(times, dtype=np.float64)), note


# --------------------------------------------------------------------------------------------
# The plan


@dataclass
class IndexPlan:
    engine: IndexEngine
    collection: str
    start: IndexStart
    steps: rule.CatchUp
    cutoff: datetime | None
    collection_exists: bool
    note: str = ""

    def to_dict(self) -> dict:
        return {
            "collection": self.collection,
            **self.start.to_dict(),
            "changed_after": _iso(self.cutoff),
            "collection_exists": self.collection_exists,
            "from_artifact": len(self.steps.from_artifact) if self.start.restorable else 0,
            "upsert": len(self.steps.upsert),
            "delete": len(self.steps.delete),
            "live_entries_kept": len(self.steps.kept_live),
            "note": self.note,
        }

    def line(self) -> str:
        d = self.to_dict()
        source = (
            f"from {d['artifact']} (captured {d['captured_at']}; rows changed after "
            f"{d['changed_after']} re-derived): {d['entries']} entries, {d['from_artifact']} "
            "put back from it"
            if self.start.ref
            else "no artifact captured at or before T: every row's entry derived from SQL"
        )
        text = (
            f"{self.engine.label} {self.collection}: {source}; {d['upsert']} to upsert from SQL, "
            f"{d['delete']} to delete (rows gone by T), {d['live_entries_kept']} live entries kept"
        )
        extras = [
            *(f"skipped {s}" for s in self.start.skipped),
            *([self.note] if self.note else []),
        ]
        return text + "".join(f"\n      ({e})" for e in extras)


@dataclass
class WorkspacePlan:
    workspace: str
    rows_at_target: dict[str, int]
    sql: dict[str, dict]  # per table: in_backup (at T), inserted (would be), already_present
    artifact_gate: consistency.Verdict | None
    indexes: list[IndexPlan]
    target: datetime
    dump_ref: ArtifactRef = field(repr=False)
    dump_manifest: dict = field(repr=False)

    def to_dict(self) -> dict:
        return {
            "workspace": self.workspace,
            "rows_at_target": self.rows_at_target,
            "sql": self.sql,
            "artifacts_alone_vs_sql_at_target": (
                self.artifact_gate.to_dict() if self.artifact_gate else None
            ),
            "indexes": {p.engine.name: p.to_dict() for p in self.indexes},
        }

    def lines(self) -> list[str]:
        rows = sum(self.rows_at_target.values())
        lines = [f"  workspace {self.workspace}: {rows} row(s) at T"]
        if self.sql:
            inserted = sum(t.get("inserted", 0) for t in self.sql.values())
            lines.append(
                f"    SQL: {inserted} row(s) to insert into live (rows live holds stay): "
                + ", ".join(
                    f"{table} {t['inserted']}/{t['in_backup']}" for table, t in self.sql.items()
                )
            )
        if self.artifact_gate is not None:
            lines.append(
                "    the index artifacts alone against SQL at T (the daily restore's view): "
                + self.artifact_gate.summary()
            )
        lines += [f"    {p.line()}" for p in self.indexes]
        return lines


@dataclass
class InstantPlan:
    target: datetime
    scope: str  # "workspace" (merged into live) or "platform"
    backup: dict
    wal: dict
    window: dict
    workspaces: list[WorkspacePlan] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "target": format_target(self.target),
            "scope": self.scope,
            "physical_backup": self.backup,
            "wal": self.wal,
            "reachable_window": self.window,
            "workspaces": [w.to_dict() for w in self.workspaces],
        }

    def header(self) -> list[str]:
        b, w = self.backup, self.wal
        return [
            f"plan: restore {self.scope} to {format_target(self.target)}",
            f"  physical backup {b['label']} ({b['type']}, ended {b['stopped_at']}); WAL from "
            f"{w['from']} up to {w['to']} (reachable {self.window['oldest']} .. "
            f"{self.window['newest']})",
        ]

    def lines(self) -> list[str]:
        return self.header() + [line for w in self.workspaces for line in w.lines()]


def physical_part(config: pitr.PitrConfig, target: datetime, scope: str) -> InstantPlan:
    """The SQL part of the plan; refuses (PitrTargetUnreachable) a target outside the window,
    before anything is written."""
    if target.tzinfo is None:
        raise ConfigError(f"target time {target.isoformat()} has no time zone: add +00 or Z")
    info = config.stanza.info()
    window = pitr.reachable_window(config.stanza, info)
    reason = window.refuse_reason(target)
    if reason:
        raise pitr.PitrTargetUnreachable(f"restore to {format_target(target)} refused: {reason}")
    backup = pitr.choose_backup(info, target)
    return InstantPlan(
        target=target,
        scope=scope,
        backup={
            "label": backup.label,
            "type": backup.type,
            "stopped_at": _iso(backup.stopped_at),
            "lsn_start": backup.lsn_start,
        },
        wal={"from": backup.archive_start, "to": window.newest_segment},
        window={"oldest": _iso(window.oldest), "newest": _iso(window.newest)},
    )


def dump_at_target(
    scratch_url: str, workspace: str, policy: Policy, temp_store: BackupStore, target: datetime
) -> tuple[ArtifactRef, dict]:
    """The workspace's rows at T, dumped from the scratch cluster by the daily dump into the
    temporary store; its captured_at is T (the dump runs now, but it reads the state at T)."""
    ref = ArtifactRef(SQL_ASSET, target.astimezone(UTC).date().isoformat(), workspace)
    with temp_store.begin(ref) as writer:
        fields = dump_workspace(scratch_url, workspace, policy, writer)
        fields["captured_at"] = _iso(target).replace("+00:00", "Z")
        fields["source"] = {**fields["source"], "restored_to": format_target(target)}
        manifest = writer.commit(**fields)
    return ref, manifest


def plan_workspace(
    store: BackupStore,
    temp_store: BackupStore,
    policy: Policy,
    indexes: Mapping[str, Any],
    workspace: str,
    target: datetime,
    at_target_url: str,
    live_url: str | None,
) -> WorkspacePlan:
    """Read everything the workspace's restore needs and decide what it writes. `live_url`
    None: replace mode (the whole platform restored; no merge into live)."""
    ref, manifest = dump_at_target(at_target_url, workspace, policy, temp_store, target)
    rows = {t["table"]: t["rows"] for t in manifest["tables"]}
    registry = f"{policy.schema}.{policy.workspace_registry_table}"
    if not any(rows.values()) or rows.get(registry, 1) == 0:
        raise BackupError(
            f"workspace {workspace} did not exist at {format_target(target)} (no row in "
            f"{registry}): nothing to restore"
        )
    merged = merge_sql_rows(live_url, temp_store, ref, manifest, dry_run=True) if live_url else {}
    plans, verdicts = [], []
    for engine in index_engines(indexes):
        plan, verdict = _plan_index(
            engine, indexes[engine.name], store, policy, workspace, target, at_target_url, live_url
        )
        plans.append(plan)
        verdicts.append(verdict)
    gate = _combined(verdicts) if verdicts else None
    return WorkspacePlan(workspace, rows, merged, gate, plans, target, ref, manifest)


def _plan_index(
    engine: IndexEngine,
    client,
    store: BackupStore,
    policy: Policy,
    workspace: str,
    target: datetime,
    at_target_url: str,
    live_url: str | None,
) -> tuple[IndexPlan, consistency.Verdict]:
    mapping = policy.index_mapping(engine.name)
    collection = engine.memory_collection(policy, workspace)
    start = newest_artifact_before(store, engine, workspace, collection, target)
    margin = timedelta(seconds=policy.max_clock_skew_seconds)
    cutoff = start.started_at - margin if start.ref else None
    at_t, note = read_sql_ids(at_target_url, workspace, policy, mapping)
    exists = client.collection_exists(collection)
    indexed = engine.entry_ids(client, collection) if exists else rule.EMPTY
    live = live_changed = rule.EMPTY
    if live_url:
        live_ids, _ = read_sql_ids(live_url, workspace, policy, mapping)
        live, live_changed = live_ids.ids, live_ids.changed_after(cutoff)
    steps = rule.catch_up(
        at_t.ids,
        at_t.changed_after(cutoff),
        start.ids,
        indexed,
        live,
        live_changed,
        merge=live_url is not None,
    )
    plan = IndexPlan(engine, collection, start, steps, cutoff, exists, note)
    table = f"{policy.schema}.{mapping.table}"
    sql_side = Side(f"postgres:{table} at T", _iso(target), at_t.ids)
    index_side = start.side or Side(
        f"{engine.name}:{collection} (no artifact)", _iso(target), rule.EMPTY
    )
    return plan, consistency.evaluate(sql_side, [index_side], policy.max_clock_skew_seconds)


def _combined(verdicts: list[consistency.Verdict]) -> consistency.Verdict:
    if len(verdicts) == 1:
        return verdicts[0]
    first = verdicts[0]
    return consistency.Verdict(
        outcome=consistency.worst(v.outcome for v in verdicts),
        sql_name=first.sql_name,
        sql_captured_at=first.sql_captured_at,
        sql_count=first.sql_count,
        sql_declared_count=None,
        max_skew_seconds=first.max_skew_seconds,
        findings=[f for v in verdicts for f in v.findings],
        sql_problems=[p for v in verdicts for p in v.sql_problems],
    )


# --------------------------------------------------------------------------------------------
# Applying the plan


def catch_up_index(
    plan: IndexPlan,
    client,
    store: BackupStore,
    policy: Policy,
    workspace: str,
    sql_url: str,
    merge: bool,
    log: Log,
) -> dict:
    """One index of one workspace brought to T: the artifact, the upserts, the deletions."""
    engine, collection, start = plan.engine, plan.collection, plan.start
    mapping = policy.index_mapping(engine.name)
    done: dict[str, Any] = {}
    if start.restorable:
        mode = Mode.MERGE if merge else Mode.REPLACE
        done["artifact"] = engine.restore(
            client, store, start.ref, start.manifest, collection, collection, mode
        )
    with connect(sql_url) as conn:
        rows = iter_index_rows(conn, workspace, mapping, policy.schema)
        wanted = rule.rows_with_ids(rows, mapping.id_column, plan.steps.upsert)
        done["upserted"] = engine.upsert_rows(client, collection, wanted, mapping)
    # Deletions last, reading the index before SQL: an entry the platform wrote meanwhile
    # has its row in SQL already, so it is never taken for one without a row.
    present = engine.entry_ids(client, collection)
    rows_now, _ = read_sql_ids(sql_url, workspace, policy, mapping)
    gone = rule.minus(present, rows_now.ids)
    done["deleted"] = (
        engine.delete_ids(client, collection, rule.id_values(gone)) if len(gone) else 0
    )
    log(f"{workspace}: {engine.label} {collection}: {done}")
    return done


def gate_after(
    sql_url: str, workspace: str, policy: Policy, indexes: Mapping[str, Any]
) -> consistency.Verdict:
    """The consistency gate on the result: the workspace's SQL ids now against the ids each
    live index holds now (both at T for a restored workspace; rows live kept count too)."""
    verdicts = []
    for engine in index_engines(indexes):
        mapping = policy.index_mapping(engine.name)
        collection = engine.memory_collection(policy, workspace)
        entries = engine.entry_ids(indexes[engine.name], collection)
        rows, _ = read_sql_ids(sql_url, workspace, policy, mapping)
        now = datetime.now(UTC)
        verdicts.append(
            consistency.evaluate(
                Side(f"postgres:{policy.schema}.{mapping.table}", now, rows.ids),
                [Side(f"{engine.name}:{collection}", now, entries)],
                policy.max_clock_skew_seconds,
            )
        )
    if not verdicts:
        return consistency.evaluate(Side("postgres", datetime.now(UTC), rule.EMPTY), [], 0)
    return _combined(verdicts)


@dataclass
class WorkspaceResult:
    workspace: str
    sql: dict = field(default_factory=dict)
    indexes: dict[str, dict] = field(default_factory=dict)
    verification: dict = field(default_factory=dict)
    gate: consistency.Verdict | None = None
    error: str = ""

    def to_dict(self) -> dict:
        return {
            "workspace": self.workspace,
            "sql": self.sql,
            "indexes": self.indexes,
            "verification": self.verification,
            "gate_after": self.gate.to_dict() if self.gate else None,
            "error": self.error,
        }


def apply_workspace(
    plan: WorkspacePlan,
    store: BackupStore,
    temp_store: BackupStore,
    policy: Policy,
    indexes: Mapping[str, Any],
    sql_url: str,
    merge: bool,
    log: Log,
) -> WorkspaceResult:
    result = WorkspaceResult(plan.workspace)
    if merge:
        result.sql = merge_sql_rows(
            sql_url, temp_store, plan.dump_ref, plan.dump_manifest, dry_run=False, log=log
        )
    for index in plan.indexes:
        result.indexes[index.engine.name] = catch_up_index(
            index, indexes[index.engine.name], store, policy, plan.workspace, sql_url, merge, log
        )
    located = Located(
        plan.dump_ref.date,
        plan.workspace,
        {SQL_ASSET: plan.dump_ref},
        {SQL_ASSET: plan.dump_manifest},
        0,
    )
    result.verification = verify_restore(sql_url, located, policy, indexes)
    result.gate = gate_after(sql_url, plan.workspace, policy, indexes)
    log(f"{plan.workspace}: gate after the restore: {result.gate.summary()}")
    problems = list(result.verification["problems"])
    if result.gate.outcome != consistency.Outcome.PASS:
        problems.append(f"the gate on the result says {result.gate.summary()}")
    if problems:
        raise BackupError(
            f"restore of {plan.workspace} to {format_target(plan.target)} did not verify: "
            + "; ".join(problems)
        )
    return result


# --------------------------------------------------------------------------------------------
# The two entry points


@dataclass
class InstantResult:
    plan: InstantPlan
    dry_run: bool
    results: list[WorkspaceResult] = field(default_factory=list)
    restored: pitr.RestoredCluster | None = None  # the platform restore's new cluster

    @property
    def failed(self) -> list[WorkspaceResult]:
        return [r for r in self.results if r.error]

    def to_dict(self) -> dict:
        return {
            "plan": self.plan.to_dict(),
            "dry_run": self.dry_run,
            "cluster": self.restored.to_dict() if self.restored else None,
            "results": [r.to_dict() for r in self.results],
        }


@dataclass
class _Run:
    """What every step of one restore shares."""

    result: InstantResult
    store: BackupStore
    temp_store: BackupStore
    policy: Policy
    indexes: Mapping[str, Any]
    log: Log
    leases: Mapping[str | None, HeldLease] = field(default_factory=dict)

    def plan(self, workspaces: list[str], at_target_url: str, live_url: str | None) -> None:
        """Each workspace's plan, logged; a workspace that cannot be planned is reported."""
        plan = self.result.plan
        for workspace in workspaces:
            try:
                ws_plan = plan_workspace(
                    self.store, self.temp_store, self.policy, self.indexes, workspace,
                    plan.target, at_target_url, live_url,
                )  # fmt: skip
            except BackupError as exc:
                self.log(f"  workspace {workspace}: NOT RESTORED: {exc}")
                self.result.results.append(WorkspaceResult(workspace, error=str(exc)))
                continue
            plan.workspaces.append(ws_plan)
            for line in ws_plan.lines():
                self.log(line)

    def apply(self, sql_url: str, merge: bool) -> None:
        """Every planned workspace; one workspace's failure never stops the others."""
        for ws_plan in self.result.plan.workspaces:
            try:
                self._ensure_leases(ws_plan.workspace)
                done = apply_workspace(
                    ws_plan, self.store, self.temp_store, self.policy, self.indexes,
                    sql_url, merge, self.log,
                )  # fmt: skip
            except Exception as exc:
                # Not ours (a driver's error): its type helps, and BackupError scrubs secrets
                # from a message that goes to the log, the result and the run's metadata.
                error = (
                    exc
                    if isinstance(exc, BackupError)
                    else BackupError(f"{type(exc).__name__}: {exc}")
                )
                reason = str(error)
                when = format_target(self.result.plan.target)
                self.log(f"restore of {ws_plan.workspace} to {when} FAILED: {reason}")
                done = WorkspaceResult(ws_plan.workspace, error=reason)
            self.result.results.append(done)

    def _ensure_leases(self, workspace: str) -> None:
        """LeaseLost when the lease this workspace is written under was broken or taken over
        (the whole database's for the platform): someone else may be working on it now."""
        for name in (workspace, None):
            if name in self.leases:
                self.leases[name].ensure_held()


def _lease_workspaces(
    store: BackupStore,
    workspaces: list[str],
    owner: str | None,
    result: InstantResult,
    held: contextlib.ExitStack,
    log: Log,
) -> dict[str | None, HeldLease]:
    """Each workspace's store lease, held until `held` closes. A workspace whose lease someone
    else holds (a backup, another restore) is reported NOT RESTORED, naming the holder."""
    leases: dict[str | None, HeldLease] = {}
    for workspace in workspaces:
        try:
            lease = held.enter_context(store.lease(workspace, "restore", owner=owner, log=log))
            store.refuse_overlapping_restores(workspace)  # no whole-database restore beside it
            leases[workspace] = lease
        except LeaseHeld as exc:
            log(f"  workspace {workspace}: NOT RESTORED: {exc}")
            result.results.append(WorkspaceResult(workspace, error=str(exc)))
    return leases


@contextlib.contextmanager
def _scratch_at(config: pitr.PitrConfig, target: datetime, log: Log):
    """The scratch copy of the cluster at T, in a scratch folder of the work dir, stopped and
    removed when the block ends; if this process is killed first, the next run's scratch
    folder stops its server and removes it (lib/scratch.py)."""

    def scratch_log(message: str) -> None:
        if not message.startswith("point the platform at it"):  # not a scratch copy
            log(f"scratch copy at T: {message}")

    with ScratchFolder("instant-cluster", log=log) as folder:
        if config.stanza.os_user:
            folder.chmod(0o711)  # the server's OS user enters it; nobody else can list it
        data_dir = folder / "data"
        with pitr.scratch_cluster_at(config, target, target_dir=data_dir, log=scratch_log) as at:
            yield at


def restore_workspaces_to(
    config: pitr.PitrConfig,
    store: BackupStore,
    target: datetime,
    workspaces: list[str],
    database_url: str,
    policy: Policy,
    indexes: Mapping[str, Any] | None = None,
    dry_run: bool = False,
    log: Log = _quiet,
    lease_owner: str | None = None,
) -> InstantResult:
    """Workspaces to `target`: SQL at T merged into live, indexes from their artifacts caught
    up to T. One scratch cluster serves every workspace; one workspace's failure does not stop
    the others (InstantResult.failed). Each workspace's store lease is held throughout
    (`lease_owner` names who holds it; default: the command line's user)."""
    workspaces = list(dict.fromkeys(validate_workspace_id(w) for w in workspaces))
    indexes = indexes or {}
    plan = physical_part(config, target, "workspace (merged into live)")
    check_before_writing(database_url, policy, list(indexes))
    result = InstantResult(plan, dry_run)
    for line in plan.header():
        log(line)
    with contextlib.ExitStack() as held:
        leases = _lease_workspaces(store, workspaces, lease_owner, result, held, log)
        if not leases:
            return result  # every workspace is busy: nothing to restore
        with ScratchFolder("instant", log=log) as temp:
            at_target = LocalStore(temp / "at_target")
            run = _Run(result, store, at_target, policy, indexes, log, leases)
            with _scratch_at(config, target, log) as scratch:
                run.plan(list(leases), scratch.url, database_url)
                if dry_run:
                    log("dry run: nothing was written")
                    return result
                run.apply(database_url, merge=True)
    return result


def restore_platform_to(
    config: pitr.PitrConfig,
    store: BackupStore,
    target: datetime,
    policy: Policy,
    indexes: Mapping[str, Any] | None = None,
    *,
    target_dir: str | os.PathLike | None = None,
    port: int | None = None,
    listen: str = "127.0.0.1",
    overwrite_live: bool = False,
    dry_run: bool = False,
    log: Log = _quiet,
    lease_owner: str | None = None,
) -> InstantResult:
    """The whole platform to `target`: the cluster by pgBackRest (a new data directory and
    port, or over live by the verified swap), then the indexes of every workspace in the
    restored registry made exactly its rows at T (artifact, then catch-up, replace mode).
    The whole database's store lease is held throughout (LeaseHeld when someone has it)."""
    indexes = indexes or {}
    plan = physical_part(config, target, "platform (the whole cluster; indexes replaced to T)")
    result = InstantResult(plan, dry_run)
    for line in plan.header():
        log(line)
    with (
        store.lease(None, "restore", owner=lease_owner, log=log) as lease,
        ScratchFolder("instant", log=log) as temp,
    ):
        store.refuse_overlapping_restores(None)  # no workspace restore beside it
        at_target = LocalStore(temp / "at_target")
        run = _Run(result, store, at_target, policy, indexes, log, {None: lease})
        if dry_run:
            with _scratch_at(config, target, log) as scratch:
                run.plan(_registry(scratch.url, policy, log), scratch.url, None)
            log("dry run: nothing was written")
            return result
        lease.ensure_held()  # the cluster (over live, with overwrite_live) is written next
        restored = pitr.restore_to_time(
            config, target, target_dir=target_dir, port=port, listen=listen,
            overwrite_live=overwrite_live, log=log,
        )  # fmt: skip
        result.restored = restored
        check_before_writing(restored.url, policy, list(indexes))
        run.plan(_registry(restored.url, policy, log), restored.url, None)
        run.apply(restored.url, merge=False)
        log(f"point the platform at the restored cluster: DATABASE_URL={restored.display_url}")
    return result


def _registry(database_url: str, policy: Policy, log: Log) -> list[str]:
    """The workspaces of the restored cluster's registry (the platform at T)."""
    workspaces, invalid = list_workspaces(database_url, policy)
    if invalid:
        log(f"  skipped {len(invalid)} registry value(s) that are not workspace ids")
    return workspaces
