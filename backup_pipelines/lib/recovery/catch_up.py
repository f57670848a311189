"""Which index entries a restore to an instant T writes and removes: the rule, on id arrays.

The inputs, for one workspace and one index (ids as lib.ids arrays: int64, or bytes for
non-integer ids; compared like the consistency gate compares them):

    at_t       ids of the mapped table's rows at T (the scratch cluster)
    changed_t  those of them changed after the artifact (their `updated_column` newer than
               the artifact's start less the clock-skew margin; all when there is no artifact
               or no usable update column)
    live       ids live SQL holds before the restore (merge only), and live_changed: those of
               them changed after the artifact, by live's own rows
    indexed    ids the live collection holds before the restore (empty when it is missing)
    artifact   ids the artifact holds

Merge (one workspace into live; SQL by the merge contract: rows at T that live lacks are
inserted, rows live holds keep their values):

    restored   = at_t - live                          rows the merge inserts
    upsert     = restored & (changed_t | ~artifact | indexed)
               | (live - indexed) & (live_changed | ~artifact)
    delete     = (artifact | indexed) - (live | at_t)

That is: every entry the restore writes is derived from the row live SQL holds after the merge
(for a restored row: the row at T); an entry comes from the artifact only when it is current
(the row unchanged since the artifact); entries live held for rows live SQL kept are left as
they are (live's newer state, like the rows themselves); and an entry whose row SQL no longer
holds — gone by T, or an orphan live held — is removed, since an index entry without its row
is derived from nothing.

Replace (the whole platform restored to T: SQL is exactly the rows at T, the artifact is
restored over the collection): live = indexed = empty in the rule above.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from backup_pipelines.lib.ids import IdCollector

EMPTY = np.empty(0, np.int64)


def id_keys(values: Iterable) -> np.ndarray:
    """SQL or index id values as an id array: canonical decimal integers become int64, any
    other id (a uuid, text) its text as bytes — as the artifacts' ids are read."""
    collector = IdCollector()
    collector.add([str(value).encode() for value in values])
    return collector.array()


def id_values(keys: np.ndarray) -> list:
    """An id array back to Python values (int, or text) for an engine call."""
    if keys.dtype.kind == "i":
        return [int(v) for v in keys.tolist()]
    return [v.decode() for v in keys.tolist()]


def _aligned(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both in one dtype: integers become their decimal text when the other side is text."""
    if a.dtype.kind == b.dtype.kind == "i":
        return a, b
    a = a.astype("S20") if a.dtype.kind == "i" else a
    b = b.astype("S20") if b.dtype.kind == "i" else b
    dtype = np.promote_types(a.dtype, b.dtype)
    return a.astype(dtype, copy=False), b.astype(dtype, copy=False)


def isin(values: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Boolean mask: which of `values` `other` holds."""
    if len(values) == 0 or len(other) == 0:
        return np.zeros(len(values), bool)
    a, b = _aligned(values, other)
    return np.isin(a, b)


def minus(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.unique(a[~isin(a, b)])


def both(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.unique(a[isin(a, b)])


def union(*arrays: np.ndarray) -> np.ndarray:
    present = [a for a in arrays if len(a)]
    if not present:
        return EMPTY
    merged = present[0]
    for other in present[1:]:
        merged, other = _aligned(merged, other)
        merged = np.union1d(merged, other)
    return np.unique(merged)


@dataclass
class CatchUp:
    """What one index of one workspace gets: entries from the artifact, entries derived from
    SQL (upsert), entries removed (delete), and the live entries left alone."""

    from_artifact: np.ndarray  # entries the artifact restore adds
    upsert: np.ndarray
    delete: np.ndarray
    kept_live: np.ndarray  # entries live held for rows live SQL kept: untouched
    restored_rows: np.ndarray  # rows the SQL merge inserts (merge), all rows at T (replace)


def catch_up(
    at_t: np.ndarray,
    changed_t: np.ndarray,
    artifact: np.ndarray,
    indexed: np.ndarray,
    live: np.ndarray = EMPTY,
    live_changed: np.ndarray = EMPTY,
    merge: bool = True,
) -> CatchUp:
    """The rule of this module's docstring."""
    if not merge:
        gone = minus(union(artifact, indexed), at_t)
        live = live_changed = indexed = EMPTY
    else:
        gone = minus(union(artifact, indexed), union(live, at_t))
    restored = minus(at_t, live)
    stale = union(changed_t, minus(restored, artifact), both(restored, indexed))
    from_sql = both(restored, stale)
    unindexed_live = minus(live, indexed)
    from_live = both(unindexed_live, union(live_changed, minus(unindexed_live, artifact)))
    return CatchUp(
        from_artifact=minus(artifact, indexed),
        upsert=union(from_sql, from_live),
        delete=gone,
        kept_live=both(indexed, live),
        restored_rows=restored,
    )


def rows_with_ids(rows: Iterator[dict], id_column: str, wanted: np.ndarray, batch: int = 2000):
    """The rows whose id is one of `wanted`, streamed (checked a batch at a time)."""
    if len(wanted) == 0:
        return
    pending: list[dict] = []
    for row in rows:
        pending.append(row)
        if len(pending) >= batch:
            yield from _kept(pending, id_column, wanted)
            pending = []
    yield from _kept(pending, id_column, wanted)


def _kept(rows: list[dict], id_column: str, wanted: np.ndarray) -> list[dict]:
    if not rows:
        return []
    mask = isin(id_keys(row[id_column] for row in rows), wanted)
    return [row for row, keep in zip(rows, mask.tolist(), strict=True) if keep]
