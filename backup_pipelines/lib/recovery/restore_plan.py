"""What a workspace restore would do, without doing it: the dry run's plan.

The same first steps as the restore (artifacts located and verified, the consistency gate),
then the SQL rows staged and inserted inside a transaction that is rolled back (so the counts
are exactly what the restore would insert), and for each index what would happen: restored
from its artifact or rebuilt from the SQL rows, how many entries the backup holds and how
many the live collection holds now. Nothing is written anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from backup_pipelines.lib.engines import Mode, index_engines
from backup_pipelines.lib.policy import Policy
from backup_pipelines.lib.recovery import workspace_restore as restore
from backup_pipelines.lib.recovery.consistency import Outcome
from backup_pipelines.lib.store import BackupStore
from backup_pipelines.lib.streams import Log

RESTORE = "RESTORE"
REFUSED = "REFUSED"


def decision(verdict, override_gate: str = "") -> str:
    """What the real restore would decide, in the words an operator reads."""
    if verdict.outcome == Outcome.FAIL:
        if override_gate:
            return f"{RESTORE} despite the gate's FAIL (overridden: {override_gate})"
        return f"{REFUSED} by the consistency gate: nothing would be written"
    if verdict.outcome == Outcome.REBUILD_INDEX:
        return (
            f"{RESTORE}: SQL rows, then the indexes rebuilt from them (the index backup is stale)"
        )
    return f"{RESTORE}: SQL rows and indexes from their artifacts"


def artifacts(store: BackupStore, located: restore.Located) -> dict[str, dict]:
    source = restore.artifact_source(store, located)  # the copy store, after a fallback
    return {
        asset: {
            "location": source.location(ref),
            "files": len(located.manifests[asset]["files"]),
            "bytes": sum(f["bytes"] for f in located.manifests[asset]["files"]),
            "captured_at": located.manifests[asset].get("captured_at"),
        }
        for asset, ref in located.refs.items()
    }


def _entries_in(manifest: dict) -> int | None:
    counts = manifest.get("counts", {})
    for key in ("documents", "points"):
        if isinstance(counts.get(key), int):
            return counts[key]
    return None


def _live_count(engine, client, collection: str) -> int | None:
    """Entries the live collection holds now; None when it does not exist."""
    if not client.collection_exists(collection):
        return None
    count = getattr(engine, "count", None)
    if count is not None:
        return count(client, collection)
    return (
        client.num_documents(collection) if engine.name == "typesense" else client.count(collection)
    )


def index_plan(
    store: BackupStore,
    located: restore.Located,
    policy: Policy,
    indexes: Mapping[str, Any],
    verdict,
    mode: Mode,
) -> dict[str, dict]:
    """Per engine: restore or rebuild, entries in the backup, entries live, the effect."""
    rebuild_all = verdict.outcome == Outcome.REBUILD_INDEX
    plans = {}
    for engine in index_engines(indexes):
        collection = engine.memory_collection(policy, located.workspace)
        manifest = located.manifests.get(engine.asset)
        rebuild = rebuild_all or manifest is None or not engine.holds(manifest, collection)
        entries = verdict.sql_count if rebuild else _entries_in(manifest)
        live = _live_count(engine, indexes[engine.name], collection)
        plans[engine.name] = {
            "collection": collection,
            "action": "rebuild from the restored SQL rows" if rebuild else "restore from artifact",
            "entries_from_backup": entries,
            "entries_live_now": live,
            "effect": _effect(mode, entries, live),
        }
    return plans


def _effect(mode: Mode, entries: int | None, live: int | None) -> str:
    shown = "?" if entries is None else f"{entries:,}"
    if live is None:
        return f"collection missing: created with {shown} entries"
    if mode == Mode.REPLACE:
        return f"replaced: {live:,} live entries become the backup's {shown}"
    return f"merged: the backup's entries the live {live:,} lack are added (of {shown}); none overwritten"


def plan_restore(
    store: BackupStore,
    located: restore.Located,
    verdict,
    database_url: str,
    policy: Policy,
    indexes: Mapping[str, Any],
    mode: Mode = Mode.MERGE,
    override_gate: str = "",
    log: Log | None = None,
) -> dict:
    """The plan of restoring `located` (already verified) given the gate's `verdict`."""
    sql = restore.merge_sql(database_url, store, located, dry_run=True, log=log)
    return {
        "partition": f"{located.date}|{located.workspace}",
        "decision": decision(verdict, override_gate),
        "verdict": str(verdict.outcome),
        "gate": verdict.summary(),
        "mode": str(mode),
        "artifacts": artifacts(store, located),
        "sql": sql,
        "rows_to_insert": sum(t["inserted"] for t in sql.values()),
        "indexes": index_plan(store, located, policy, indexes, verdict, mode),
    }
