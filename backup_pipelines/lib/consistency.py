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

Memory: ids are parsed block by block (about 1 MiB of lines at a time) straight from the
decompressed stream into numpy arrays (int64: 8 MB per million ids), never into one Python
object per id for the whole artifact; the diff sorts the arrays and looks each side up in the
other with np.searchsorted. Ids that are not all canonical decimal integers (UUID strings, an
id beyond int64) take the same code as fixed-width bytes arrays (numpy "S" dtype: one buffer,
36 MB per million UUIDs), so no Python set is ever built. Caveat of "S": trailing NUL bytes of
an id are not significant. When one side is integers and the other text, the integers become
their canonical decimal text: "7" matches 7, "007" does not.

Speed: reading + sha256, zstd decompression and parsing run as three overlapping stages (the
first two in threads; hashlib and zstandard release the GIL). Parsing uses bytes.find (memchr)
from line to line and never looks at the rest of a row: the COPY id field is the text up to the
tab that ends it (raw tabs and newlines only ever separate fields and rows), the Typesense id
is read without json.loads when a document starts with `{"id":"` (see _jsonl_ids).
"""

from __future__ import annotations

import enum
import json
import queue
import re
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import zstandard

from backup_pipelines.lib.store import ArtifactRef, BackupStore

SAMPLE_SIZE = 20
READ_SIZE = 2 << 20  # bytes read and decompressed at a time
BLOCK = 1 << 20  # bytes of lines parsed at a time
TYPESENSE_FILE = "documents.jsonl.zst"
QDRANT_IDS_FILE = "point_ids.txt.zst"
MEMORY_TABLE = "public.memory_entries"


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


@dataclass(frozen=True)
class Side:
    """One artifact as the gate sees it: its ids (any order) and when it was taken."""

    name: str  # "postgres:public.memory_entries", "typesense:memory_ws_acme", ...
    captured_at: str | datetime
    ids: np.ndarray  # int64, or fixed-width bytes ("S") for non-integer ids
    declared_count: int | None = None  # what the artifact's manifest says it holds
    started_at: str | datetime | None = None  # for an export that spans a window


# --------------------------------------------------------------------------------------------
# Reading ids out of artifacts


def _raw_chunks(store: BackupStore, ref: ArtifactRef, manifest: dict, name: str):
    """The stored bytes of one artifact file; its size and sha256 are checked at its end."""
    with store.open_file(ref, manifest, name) as raw:
        while chunk := raw.read(READ_SIZE):
            yield chunk


class _ChunkSource:
    """A read()-able view of an iterator of chunks, for zstandard's stream_reader."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks

    def read(self, _size: int = -1) -> bytes:
        return next(self._chunks, b"")


def _decompress(compressed: Generator[bytes]) -> Iterator[bytes]:
    decompressor = zstandard.ZstdDecompressor()
    try:
        with decompressor.stream_reader(
            _ChunkSource(compressed), read_size=READ_SIZE, read_across_frames=True, closefd=False
        ) as reader:
            while chunk := reader.read(READ_SIZE):
                yield chunk
        for _ in compressed:  # read to the end, where the sha256 is checked
            pass
    finally:
        compressed.close()


def _decompressed(store: BackupStore, ref: ArtifactRef, manifest: dict, name: str):
    """The decompressed bytes of one artifact file, in chunks, verified against its manifest.

    Three stages overlap on separate cores: reading + sha256, zstd, and the caller's parsing
    (hashlib and zstandard release the GIL while they work).
    """
    stored = _prefetched(_raw_chunks(store, ref, manifest, name))
    return _prefetched(_decompress(stored))


_END = object()


def _prefetched(chunks: Iterator[bytes], depth: int = 4) -> Iterator[bytes]:
    """Run the iterator in a thread, `depth` items ahead; its exceptions reach the consumer."""
    pending: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                pending.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for chunk in chunks:
                if not put(chunk):
                    return
            put(_END)
        except BaseException as exc:
            put(exc)
        finally:
            if stop.is_set() and hasattr(chunks, "close"):
                chunks.close()

    worker = threading.Thread(target=produce, name="consistency-read", daemon=True)
    worker.start()
    try:
        while (item := pending.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


def _line_blocks(chunks: Iterable[bytes]) -> Iterator[tuple[bytes, int, int]]:
    """(buffer, start, stop) where buffer[start:stop] is whole lines, each ending in a newline.

    The big chunks are passed through without copying, as ranges of at most about BLOCK bytes
    (which bounds the per-block lists of ids); only a line cut by a chunk boundary is joined
    into a small buffer of its own. A last line without a newline gets one.
    """
    carry: list[bytes] = []
    for chunk in chunks:
        first = chunk.find(b"\n")
        if first < 0:
            carry.append(chunk)
            continue
        start = 0
        if carry:
            carry.append(chunk[: first + 1])
            head = b"".join(carry)
            carry = []
            yield head, 0, len(head)
            start = first + 1
        stop = chunk.rfind(b"\n") + 1
        while start < stop:
            cut = chunk.rfind(b"\n", start, min(start + BLOCK, stop)) + 1 or (
                chunk.find(b"\n", start + BLOCK, stop) + 1  # one line longer than BLOCK
            )
            yield chunk, start, cut
            start = cut
        if stop < len(chunk):
            carry.append(chunk[stop:])
    if carry:
        tail = b"".join(carry) + b"\n"
        yield tail, 0, len(tail)


def _copy_fields(buf: bytes, start: int, stop: int, column: int) -> list[bytes]:
    """Field `column` of every COPY-text line in buf[start:stop], still COPY-escaped.

    A tab or newline inside a value is written as the two characters backslash-t / backslash-n,
    so every raw tab separates fields and every raw newline ends a row.
    """
    out: list[bytes] = []
    append, find = out.append, buf.find
    pos = start
    while pos < stop:
        end = find(b"\n", pos, stop)
        begin = pos
        for _ in range(column):
            begin = find(b"\t", begin, end) + 1
            if begin == 0:
                raise ValueError(f"a COPY row has fewer than {column + 1} columns")
        tab = find(b"\t", begin, end)
        append(buf[begin : end if tab < 0 else tab])
        pos = end + 1
    return out


_COPY_ESCAPE = re.compile(rb"\\(?:([0-7]{1,3})|x([0-9A-Fa-f]{1,2})|(.))", re.S)
_COPY_SIMPLE = {b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v"}


def _copy_unescape(value: bytes) -> bytes:
    if b"\\" not in value:
        return value
    if value == rb"\N":
        raise ValueError("a NULL id in the COPY data (the id column is the primary key)")

    def one(match: re.Match) -> bytes:
        octal, hexa, char = match.groups()
        if octal:
            return bytes([int(octal, 8) & 0xFF])
        if hexa:
            return bytes([int(hexa, 16)])
        return _COPY_SIMPLE.get(char, char)

    return _COPY_ESCAPE.sub(one, value)


_JSONL_FAST = b'{"id":"'


def _jsonl_ids(buf: bytes, start: int, stop: int) -> list[bytes]:
    """The top-level "id" of every JSON document line in buf[start:stop], as UTF-8 bytes.

    Fast path, without json.loads: a line that starts with `{"id":"` has "id" as the first key
    of the top-level object (nothing before it can open a string or a nested object), and when
    the characters up to the next double quote hold no backslash, that quote closes the value.
    Text such as `"id": "999"` inside another field cannot be taken for it: it is never at the
    start of a line, and inside a JSON string its quotes are escaped anyway. Any other line
    (another key first, whitespace, an escaped id, a nested "id") is parsed with json.loads.
    """
    out: list[bytes] = []
    append, find, startswith = out.append, buf.find, buf.startswith
    fast = len(_JSONL_FAST)
    pos = start
    while pos < stop:
        end = find(b"\n", pos, stop)
        if startswith(_JSONL_FAST, pos, end):
            quote = find(b'"', pos + fast, end)
            value = buf[pos + fast : quote] if quote > 0 else b"\\"
            if b"\\" not in value:
                append(value)
                pos = end + 1
                continue
        line = buf[pos:end]
        if line.strip():
            append(_json_document_id(line))
        pos = end + 1
    return out


def _json_document_id(line: bytes) -> bytes:
    document = json.loads(line)
    value = document.get("id") if isinstance(document, dict) else None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"a document without a string id in the export: {line[:200]!r}")
    return str(value).encode()


_CANONICAL_INTS = re.compile(rb"(?:(?:0|-?[1-9][0-9]{0,18})\n)*")


def _as_int64(values: list[bytes]) -> np.ndarray | None:
    """int64 ids when every value is a canonical decimal integer ("7", never "007" or "+7")."""
    if _CANONICAL_INTS.fullmatch(b"\n".join(values) + b"\n") is None:
        return None
    try:
        return np.fromiter(map(int, values), np.int64, len(values))
    except OverflowError:
        return None


class _IdCollector:
    """Ids added chunk by chunk into numpy arrays: int64 while they are integers, else bytes."""

    def __init__(self) -> None:
        self._parts: list[np.ndarray] = []
        self._integers = True

    def add(self, values: list[bytes], decode: Callable[[bytes], bytes] | None = None) -> None:
        """Add raw values; `decode` turns a raw value into the id when it is not an integer."""
        if not values:
            return
        if self._integers:
            ints = _as_int64(values)
            if ints is not None:
                self._parts.append(ints)
                return
            self._integers = False
            self._parts = [part.astype("S20") for part in self._parts]  # canonical decimals
        if decode is not None:
            values = [decode(v) for v in values]
        self._parts.append(np.array(values, dtype=np.bytes_))

    def array(self) -> np.ndarray:
        if not self._parts:
            return np.empty(0, np.int64)
        ids = np.concatenate(self._parts) if len(self._parts) > 1 else self._parts[0]
        self._parts = []
        return ids


def _declared(manifest: dict, key: str) -> int | None:
    value = (manifest.get("counts") or {}).get(key)
    return int(value) if isinstance(value, int) else None


def _index_name(kind: str, ref: ArtifactRef, manifest: dict, name: str | None) -> str:
    if name:
        return name
    source = manifest.get("source") or {}
    return f"{kind}:{source.get('collection') or ref.folder}"


def sql_ids_from_workspace_dump(
    store: BackupStore, ref: ArtifactRef, manifest: dict, table: str = MEMORY_TABLE
) -> Side:
    """The ids of `table` in a workspace dump (its `id` column, found through the manifest)."""
    entry = next((t for t in manifest.get("tables", []) if t["table"] == table), None)
    if entry is None:
        raise ValueError(f"{store.location(ref)}: the manifest lists no table {table}")
    if "id" not in entry["columns"]:
        raise ValueError(f"{store.location(ref)}: table {table} has no id column")
    column = entry["columns"].index("id")
    collector = _IdCollector()
    for buf, start, stop in _line_blocks(_decompressed(store, ref, manifest, entry["file"])):
        collector.add(_copy_fields(buf, start, stop, column), _copy_unescape)
    return Side(f"postgres:{table}", manifest["captured_at"], collector.array(), entry.get("rows"))


def ids_from_typesense_export(
    store: BackupStore, ref: ArtifactRef, manifest: dict, name: str | None = None
) -> Side:
    """The document ids of a Typesense export artifact (documents.jsonl.zst)."""
    collector = _IdCollector()
    for buf, start, stop in _line_blocks(_decompressed(store, ref, manifest, TYPESENSE_FILE)):
        collector.add(_jsonl_ids(buf, start, stop))
    return Side(
        _index_name("typesense", ref, manifest, name),
        manifest["captured_at"],
        collector.array(),
        _declared(manifest, "documents"),
        manifest.get("export_started_at"),
    )


def ids_from_qdrant_artifact(
    store: BackupStore,
    ref: ArtifactRef,
    manifest: dict,
    name: str | None = None,
    collection: str | None = None,
) -> Side:
    """The point ids of a Qdrant snapshot artifact (one id a line): of `collection` when the
    artifact holds several (`<collection>.point_ids.txt.zst`), else of point_ids.txt.zst."""
    file_name, declared, captured_at = (
        QDRANT_IDS_FILE,
        _declared(manifest, "points"),
        manifest["captured_at"],
    )
    if collection is not None:
        described = manifest.get("collections", {}).get(collection)
        if described is None:  # the collection did not exist at backup time: an empty index
            return Side(name or f"qdrant:{collection}", captured_at, np.empty(0, np.int64), 0)
        file_name, declared = f"{collection}.point_ids.txt.zst", described["points"]
        created = described["snapshot"].get("creation_time")
        captured_at = created + ("" if created.endswith("Z") else "Z") if created else captured_at
    collector = _IdCollector()
    for buf, start, stop in _line_blocks(_decompressed(store, ref, manifest, file_name)):
        collector.add(buf[start:stop].split())
    return Side(
        name
        or (f"qdrant:{collection}" if collection else _index_name("qdrant", ref, manifest, None)),
        captured_at,
        collector.array(),
        declared,
    )


def typesense_side(store: BackupStore, ref: ArtifactRef, manifest: dict, collection: str) -> Side:
    """The export's ids; an export of a collection that did not exist is an empty index."""
    name = f"typesense:{collection}"
    if not manifest.get("collection_exists", True):
        return Side(name, manifest["captured_at"], np.empty(0, np.int64), 0)
    return ids_from_typesense_export(store, ref, manifest, name)


def evaluate_partition(store: BackupStore, refs: dict, manifests: dict, policy) -> Verdict:
    """The gate for one partition: its SQL dump against every index artifact it has."""
    sql_asset, ts_asset, qd_asset = (
        "postgres/workspace_dump",
        "typesense/collection_export",
        "qdrant/collection_snapshot",
    )
    workspace = refs[sql_asset].workspace
    table = f"{policy.schema}.{policy.memory_table}"
    sql = sql_ids_from_workspace_dump(store, refs[sql_asset], manifests[sql_asset], table)
    indexes = []
    if ts_asset in refs:
        collection = policy.typesense_collection_for(workspace)
        indexes.append(typesense_side(store, refs[ts_asset], manifests[ts_asset], collection))
    if qd_asset in refs:
        # The first collection template holds the memory entries' vectors; others (if any)
        # are not derived from this table and have nothing to compare with.
        collection = policy.qdrant_collections_for(workspace)[0]
        indexes.append(
            ids_from_qdrant_artifact(
                store, refs[qd_asset], manifests[qd_asset], collection=collection
            )
        )
    return evaluate(sql, indexes, policy.max_clock_skew_seconds)


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
