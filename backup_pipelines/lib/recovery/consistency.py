"""The consistency gate between the SQL artifact and the index artifacts of one partition.

PostgreSQL is the truth; Typesense and Qdrant are derived indexes. For one partition (date x
workspace) the gate compares the memory-entry ids of the workspace dump with the ids each index
artifact holds, and the moments the artifacts were taken:

* clock skew: |captured_at(SQL) - captured_at(index)| above the policy's tolerance is FAIL (for
  an export spanning a window, `export_started_at`..`captured_at`, the farther end counts);
* orphans, ids in an index but not in SQL, are FAIL: they reference data the restored SQL will
  not have, so the SQL artifact is the one that is behind;
* missing ids, in SQL but not in an index, are REBUILD_INDEX: SQL is good, the index is stale
  and can be rebuilt from it;
* an artifact whose ids disagree with the count its own manifest declares, or that repeats an id,
  is FAIL for SQL (the truth itself is doubtful) and REBUILD_INDEX for an index;
* otherwise PASS. The worst finding over all indexes is the verdict; each index keeps its own.

The ids come from each artifact through its engine (backup_pipelines.lib.engines: `ids`), as
numpy arrays (backup_pipelines.lib.ids); the diff sorts the arrays and looks each side up in the
other with np.searchsorted, so no Python set is ever built. When one side is integers and the
other text, the integers become their canonical decimal text: "7" matches 7, "007" does not.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from backup_pipelines.lib.engines import engine_for_asset
from backup_pipelines.lib.ids import Side
from backup_pipelines.lib.postgres.ids import sql_ids_from_workspace_dump
from backup_pipelines.lib.store import BackupStore

SAMPLE_SIZE = 20
SQL_ASSET = "postgres/workspace_dump"


class Outcome(enum.StrEnum):
    """The verdict of the gate, from best to worst."""

    PASS = "PASS"
    REBUILD_INDEX = "REBUILD_INDEX"
    FAIL = "FAIL"

    @property
    def rank(self) -> int:
        return list(Outcome).index(self)


def worst(outcomes: Iterable[Outcome]) -> Outcome:
    return max(outcomes, key=lambda o: o.rank, default=Outcome.PASS)


def evaluate_partition(store: BackupStore, refs: dict, manifests: dict, policy) -> Verdict:
    """The gate for one partition: its SQL dump against every index artifact it has (refs and
    manifests are keyed by asset). Each index is compared with the ids of the table and id
    column its mapping names (policy `indexes.<engine>`); with no index artifact there is
    nothing to compare and the SQL dump is not read."""
    workspace = refs[SQL_ASSET].workspace
    groups: dict[tuple[str, str], list[Side]] = {}
    for asset in refs:
        engine = engine_for_asset(asset)
        if engine is not None:
            mapping = policy.index_mapping(engine.name)
            key = (f"{policy.schema}.{mapping.table}", mapping.id_column)
            collection = engine.memory_collection(policy, workspace)
            side = engine.ids(store, refs[asset], manifests[asset], collection)
            groups.setdefault(key, []).append(side)
    if not groups:
        captured = manifests[SQL_ASSET].get("captured_at", "")
        nothing = Side("postgres (no index to compare)", captured, np.empty(0, np.int64), None)
        return evaluate(nothing, [], policy.max_clock_skew_seconds)
    verdicts = [
        evaluate(
            sql_ids_from_workspace_dump(store, refs[SQL_ASSET], manifests[SQL_ASSET], *key),
            sides,
            policy.max_clock_skew_seconds,
        )
        for key, sides in groups.items()
    ]
    return verdicts[0] if len(verdicts) == 1 else _combined(verdicts)


def _combined(verdicts: list[Verdict]) -> Verdict:
    """Indexes derived from different tables: one verdict, the worst outcome, every finding."""
    first = verdicts[0]
    return Verdict(
        outcome=worst(v.outcome for v in verdicts),
        sql_name=" + ".join(v.sql_name for v in verdicts),
        sql_captured_at=first.sql_captured_at,
        sql_count=sum(v.sql_count for v in verdicts),
        sql_declared_count=None,
        max_skew_seconds=first.max_skew_seconds,
        findings=[f for v in verdicts for f in v.findings],
        sql_problems=[p for v in verdicts for p in v.sql_problems],
    )


# --------------------------------------------------------------------------------------------
# The verdict


@dataclass
class IndexFinding:
    """What the gate found for one index, against the SQL ids."""

    name: str
    outcome: Outcome
    skew_seconds: float  # positive: the index was taken after the SQL dump
    index_count: int  # ids read from the index artifact
    declared_count: int | None
    sql_count: int
    orphans: int
    missing: int
    duplicates: int
    orphan_sample: list = field(default_factory=list)
    missing_sample: list = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "verdict": self.outcome.value,
            "skew_seconds": round(self.skew_seconds, 3),
            "counts": {
                "index": self.index_count,
                "index_declared": self.declared_count,
                "sql": self.sql_count,
                "orphans": self.orphans,
                "missing": self.missing,
                "duplicates": self.duplicates,
            },
            "orphan_sample": self.orphan_sample,
            "missing_sample": self.missing_sample,
            "reasons": self.reasons,
        }

    def summary(self) -> str:
        return (
            f"{self.name} {self.outcome.value} ({self.index_count:,} ids, skew "
            f"{self.skew_seconds:+.0f} s, {self.orphans:,} orphans, {self.missing:,} missing)"
        )


@dataclass
class Verdict:
    """The gate's answer for one partition: the worst outcome, and every index's evidence."""

    outcome: Outcome
    sql_name: str
    sql_captured_at: str
    sql_count: int
    sql_declared_count: int | None
    max_skew_seconds: float
    findings: list[IndexFinding]
    sql_problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.outcome is Outcome.PASS

    @property
    def reasons(self) -> list[str]:
        return [*self.sql_problems, *(r for f in self.findings for r in f.reasons)]

    def to_dict(self) -> dict:
        return {
            "verdict": self.outcome.value,
            "max_skew_seconds": self.max_skew_seconds,
            "sql": {
                "name": self.sql_name,
                "captured_at": self.sql_captured_at,
                "count": self.sql_count,
                "declared_count": self.sql_declared_count,
                "problems": self.sql_problems,
            },
            "indexes": [f.to_dict() for f in self.findings],
            "reasons": self.reasons,
        }

    def summary(self) -> str:
        parts = [f"{self.sql_name} {self.sql_count:,} ids"]
        parts += [f.summary() for f in self.findings]
        parts += self.sql_problems
        return f"{self.outcome.value}: " + "; ".join(parts)


def _instant(value: str | datetime) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _iso(value: str | datetime) -> str:
    return value if isinstance(value, str) else _instant(value).isoformat().replace("+00:00", "Z")


def skew_seconds(sql: Side, index: Side) -> float:
    """Signed seconds from the SQL dump to the farther end of the index's capture window."""
    base = _instant(sql.captured_at)
    ends = [index.captured_at] + ([index.started_at] if index.started_at else [])
    return max(((_instant(e) - base).total_seconds() for e in ends), key=abs)


def _id_array(ids) -> np.ndarray:
    """int64 or bytes ("S") ids from whatever array-like a caller built a Side with."""
    array = np.asarray(ids)
    if array.dtype.kind == "U" or array.dtype.kind == "O":
        return np.array([str(v).encode() for v in array.tolist()], dtype=np.bytes_)
    if array.dtype.kind == "u" and len(array) and array.max() > np.iinfo(np.int64).max:
        return array.astype("S20")
    if array.dtype.kind in "iu":
        return array.astype(np.int64, copy=False)
    if array.dtype.kind != "S":
        raise TypeError(f"ids must be integers or strings, not {array.dtype}")
    return array


def _sorted_unique(ids: np.ndarray) -> tuple[np.ndarray, int]:
    """(ids sorted without repeats, how many repeats); sorts a copy only when needed."""
    ids = _id_array(ids)
    if len(ids) > 1 and not bool(np.all(ids[:-1] <= ids[1:])):
        ids = np.sort(ids)
    if len(ids) < 2:
        return ids, 0
    repeated = ids[1:] == ids[:-1]
    duplicates = int(np.count_nonzero(repeated))
    if duplicates:
        ids = ids[np.concatenate(([True], ~repeated))]
    return ids, duplicates


def _common(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sides in one dtype: integers become canonical decimal bytes when the other is not."""
    if a.dtype.kind == b.dtype.kind == "i":
        return a, b
    # decimal text does not sort like the numbers it spells: sort again after converting
    a = np.sort(a.astype("S20")) if a.dtype.kind == "i" else a
    b = np.sort(b.astype("S20")) if b.dtype.kind == "i" else b
    dtype = np.promote_types(a.dtype, b.dtype)
    return a.astype(dtype, copy=False), b.astype(dtype, copy=False)


def _absent_from(values: np.ndarray, sorted_other: np.ndarray) -> np.ndarray:
    """The values (sorted) that sorted_other does not hold."""
    if len(sorted_other) == 0:
        return values
    at = np.searchsorted(sorted_other, values)
    np.minimum(at, len(sorted_other) - 1, out=at)
    return values[sorted_other[at] != values]


def _sample(ids: np.ndarray) -> list:
    head = ids[:SAMPLE_SIZE]
    if head.dtype.kind == "S":
        return [v.decode("utf-8", "replace") for v in head.tolist()]
    return head.tolist()


def _compare(sql: Side, sql_ids: np.ndarray, index: Side, max_skew: float) -> IndexFinding:
    skew = skew_seconds(sql, index)
    index_ids, duplicates = _sorted_unique(index.ids)
    sql_sorted, index_sorted = _common(sql_ids, index_ids)
    orphans = _absent_from(index_sorted, sql_sorted)
    missing = _absent_from(sql_sorted, index_sorted)
    finding = IndexFinding(
        name=index.name,
        outcome=Outcome.PASS,
        skew_seconds=skew,
        index_count=len(index.ids),
        declared_count=index.declared_count,
        sql_count=len(sql_ids),
        orphans=len(orphans),
        missing=len(missing),
        duplicates=duplicates,
        orphan_sample=_sample(orphans),
        missing_sample=_sample(missing),
    )
    _judge(finding, max_skew)
    return finding


def _judge(f: IndexFinding, max_skew: float) -> None:
    """Fill the finding's outcome and reasons from its evidence."""
    verdicts: list[Outcome] = []

    def reason(outcome: Outcome, text: str) -> None:
        verdicts.append(outcome)
        f.reasons.append(text)

    if abs(f.skew_seconds) > max_skew:
        when = "after" if f.skew_seconds > 0 else "before"
        reason(
            Outcome.FAIL,
            f"{f.name} taken {abs(f.skew_seconds):.0f} s {when} the SQL dump "
            f"(allowed {max_skew:.0f} s)",
        )
    if f.orphans:
        reason(
            Outcome.FAIL,
            f"{f.name} holds {f.orphans:,} id(s) the SQL dump does not have (orphans, e.g. "
            f"{_shown(f.orphan_sample)}): they reference data the restored SQL will not have",
        )
    if f.missing:
        reason(
            Outcome.REBUILD_INDEX,
            f"{f.name} lacks {f.missing:,} id(s) of the SQL dump (e.g. "
            f"{_shown(f.missing_sample)}): the index is stale, rebuild it from SQL",
        )
    if f.declared_count is not None and f.declared_count != f.index_count:
        reason(
            Outcome.REBUILD_INDEX,
            f"{f.name} holds {f.index_count:,} ids but its manifest declares "
            f"{f.declared_count:,}: the index artifact is inconsistent, rebuild it from SQL",
        )
    if f.duplicates:
        reason(
            Outcome.REBUILD_INDEX,
            f"{f.name} repeats {f.duplicates:,} id(s): rebuild the index from SQL",
        )
    if f.index_count - f.duplicates != f.sql_count:
        f.reasons.append(f"{f.name} holds {f.index_count:,} ids, the SQL dump {f.sql_count:,}")
    f.outcome = worst(verdicts)


def _shown(sample: list) -> str:
    return ", ".join(str(v) for v in sample[:5]) + (", ..." if len(sample) > 5 else "")


def _sql_problems(sql: Side, duplicates: int) -> list[str]:
    problems = []
    if sql.declared_count is not None and sql.declared_count != len(sql.ids):
        problems.append(
            f"{sql.name} holds {len(sql.ids):,} ids but its manifest declares "
            f"{sql.declared_count:,}: the SQL artifact is inconsistent"
        )
    if duplicates:
        problems.append(f"{sql.name} repeats {duplicates:,} primary-key id(s)")
    return problems


def evaluate(sql: Side, indexes: list[Side], max_skew_seconds: float) -> Verdict:
    """Judge the index artifacts of one partition against its SQL artifact."""
    sql_ids, duplicates = _sorted_unique(sql.ids)
    problems = _sql_problems(sql, duplicates)
    findings = [_compare(sql, sql_ids, index, max_skew_seconds) for index in indexes]
    outcome = worst([Outcome.FAIL if problems else Outcome.PASS, *(f.outcome for f in findings)])
    return Verdict(
        outcome=outcome,
        sql_name=sql.name,
        sql_captured_at=_iso(sql.captured_at),
        sql_count=len(sql_ids),
        sql_declared_count=sql.declared_count,
        max_skew_seconds=max_skew_seconds,
        findings=findings,
        sql_problems=problems,
    )
