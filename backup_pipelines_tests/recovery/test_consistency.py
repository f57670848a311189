"""The consistency gate: verdict rules on crafted ids, and id parsing of real artifacts."""

from __future__ import annotations

import json
import threading
import uuid

import numpy as np
import pytest
import zstandard

from backup_pipelines.lib import ids as id_streams
from backup_pipelines.lib.errors import ChecksumMismatch
from backup_pipelines.lib.ids import Side
from backup_pipelines.lib.postgres.ids import sql_ids_from_workspace_dump
from backup_pipelines.lib.qdrant.ids import ids_from_qdrant_artifact
from backup_pipelines.lib.recovery.consistency import Outcome, evaluate
from backup_pipelines.lib.store import ArtifactRef, LocalStore
from backup_pipelines.lib.typesense.ids import ids_from_typesense_export

T0 = "2026-11-21T10:00:00.000Z"
SQL_REF = ArtifactRef("postgres/workspace_dump", "2026-11-21", "ws_acme")
TS_REF = ArtifactRef("typesense/export", "2026-11-21", "ws_acme")
QD_REF = ArtifactRef("qdrant/snapshot", "2026-11-21", "ws_acme")
COLUMNS = [
    "id",
    "workspace_id",
    "session_id",
    "kind",
    "content",
    "importance",
    "metadata",
    "embedding",
    "created_at",
    "updated_at",
]


def sql(ids, captured_at=T0, declared=None) -> Side:
    return Side("postgres:public.memory_entries", captured_at, np.array(ids), declared)


def index(name, ids, captured_at=T0, declared=None, started_at=None) -> Side:
    return Side(name, captured_at, np.array(ids), declared, started_at)


# --------------------------------------------------------------------------------------------
# Verdict rules


def test_exact_match_passes():
    ids = list(range(1, 101))
    verdict = evaluate(sql(ids), [index("typesense:memory_ws_acme", ids[::-1], declared=100)], 900)
    assert verdict.outcome is Outcome.PASS and verdict.passed
    (finding,) = verdict.findings
    assert (finding.orphans, finding.missing, finding.reasons) == (0, 0, [])
    assert finding.index_count == finding.sql_count == 100
    assert verdict.summary().startswith("PASS: postgres:public.memory_entries 100 ids; ")
    json.dumps(verdict.to_dict())  # metadata-ready


def test_index_taken_two_hours_after_sql_fails_on_skew():
    ids = [1, 2, 3]
    verdict = evaluate(
        sql(ids), [index("typesense:memory_ws_acme", ids, "2026-11-21T12:00:00.000Z")], 900
    )
    assert verdict.outcome is Outcome.FAIL
    assert verdict.findings[0].skew_seconds == 7200
    assert verdict.reasons == [
        "typesense:memory_ws_acme taken 7200 s after the SQL dump (allowed 900 s)"
    ]


def test_skew_within_tolerance_and_before_sql():
    ids = [1, 2, 3]
    ok = evaluate(sql(ids), [index("qdrant:agent_ws_acme", ids, "2026-11-21T09:45:00Z")], 900)
    assert ok.outcome is Outcome.PASS and ok.findings[0].skew_seconds == -900
    late = evaluate(sql(ids), [index("qdrant:agent_ws_acme", ids, "2026-11-21T09:44:59Z")], 900)
    assert late.reasons == ["qdrant:agent_ws_acme taken 901 s before the SQL dump (allowed 900 s)"]


def test_export_window_counts_from_its_farther_end():
    ids = [1, 2]
    side = index(
        "typesense:memory_ws_acme", ids, "2026-11-21T10:01:00Z", started_at="2026-11-21T09:30:00Z"
    )
    verdict = evaluate(sql(ids), [side], 900)
    assert verdict.outcome is Outcome.FAIL and verdict.findings[0].skew_seconds == -1800


def test_orphans_fail_with_evidence():
    sql_ids = list(range(1, 1001))
    index_ids = [*sql_ids, *range(5000, 5030)]  # 30 ids SQL does not have
    verdict = evaluate(sql(sql_ids), [index("typesense:memory_ws_acme", index_ids)], 900)
    assert verdict.outcome is Outcome.FAIL
    finding = verdict.findings[0]
    assert (finding.orphans, finding.missing) == (30, 0)
    assert finding.orphan_sample == list(range(5000, 5020))
    assert (finding.index_count, finding.sql_count) == (1030, 1000)
    assert "30 id(s) the SQL dump does not have" in finding.reasons[0]
    assert "holds 1,030 ids, the SQL dump 1,000" in finding.reasons[-1]


def test_missing_ids_ask_for_an_index_rebuild():
    sql_ids = list(range(1, 1001))
    index_ids = [i for i in sql_ids if i % 40]  # 25 ids missing
    verdict = evaluate(sql(sql_ids), [index("qdrant:agent_ws_acme", index_ids, declared=975)], 900)
    assert verdict.outcome is Outcome.REBUILD_INDEX
    finding = verdict.findings[0]
    assert (finding.orphans, finding.missing, finding.index_count) == (0, 25, 975)
    assert finding.missing_sample == list(range(40, 801, 40))  # the first 20 of them
    assert finding.orphan_sample == []
    payload = verdict.to_dict()
    assert payload["verdict"] == "REBUILD_INDEX"
    assert payload["indexes"][0]["counts"]["missing"] == 25
    assert "qdrant:agent_ws_acme REBUILD_INDEX (975 ids" in verdict.summary()


def test_orphans_and_missing_together_fail():
    verdict = evaluate(sql([1, 2, 3]), [index("typesense:memory_ws_acme", [2, 3, 4])], 900)
    finding = verdict.findings[0]
    assert verdict.outcome is Outcome.FAIL
    assert (finding.orphan_sample, finding.missing_sample) == ([4], [1])


def test_worst_index_wins_and_each_keeps_its_finding():
    ids = list(range(10))
    good = index("typesense:memory_ws_acme", ids)
    stale = index("qdrant:agent_ws_acme", ids[:-2])
    late = index("qdrant:other_ws_acme", ids, "2026-11-21T11:00:00Z")
    assert evaluate(sql(ids), [good, stale], 900).outcome is Outcome.REBUILD_INDEX
    verdict = evaluate(sql(ids), [good, stale, late], 900)
    assert verdict.outcome is Outcome.FAIL
    assert [f.outcome for f in verdict.findings] == [
        Outcome.PASS,
        Outcome.REBUILD_INDEX,
        Outcome.FAIL,
    ]
    assert [i["verdict"] for i in verdict.to_dict()["indexes"]] == ["PASS", "REBUILD_INDEX", "FAIL"]
    assert evaluate(sql(ids), [], 900).outcome is Outcome.PASS


def test_declared_counts_and_duplicates():
    ids = [1, 2, 3]
    wrong_index = evaluate(sql(ids), [index("typesense:memory_ws_acme", ids, declared=4)], 900)
    assert wrong_index.outcome is Outcome.REBUILD_INDEX
    assert "its manifest declares 4" in wrong_index.reasons[0]
    repeated = evaluate(sql(ids), [index("typesense:memory_ws_acme", [1, 2, 2, 3])], 900)
    assert repeated.outcome is Outcome.REBUILD_INDEX and repeated.findings[0].duplicates == 1
    wrong_sql = evaluate(sql(ids, declared=5), [index("typesense:memory_ws_acme", ids)], 900)
    assert wrong_sql.outcome is Outcome.FAIL and wrong_sql.findings[0].outcome is Outcome.PASS
    assert wrong_sql.sql_problems == [
        "postgres:public.memory_entries holds 3 ids but its manifest declares 5: "
        "the SQL artifact is inconsistent"
    ]


def test_string_ids_against_integer_ids():
    # Typesense ids are strings: "10" must match 10 and sort as text without losing anything.
    sql_ids = np.arange(1, 21, dtype=np.int64)
    text = np.array([str(i).encode() for i in range(2, 21)] + [b"abc", b"007"])
    verdict = evaluate(sql(sql_ids), [index("typesense:memory_ws_acme", text)], 900)
    finding = verdict.findings[0]
    assert verdict.outcome is Outcome.FAIL
    assert finding.orphan_sample == ["007", "abc"]  # "007" is not id 7: ids compare as text
    assert finding.missing_sample == ["1"]


def test_python_strings_and_unsigned_ids_are_accepted():
    big = np.array([1, 2, 2**64 - 1], dtype=np.uint64)
    verdict = evaluate(sql(["1", "2", "18446744073709551615"]), [index("qdrant:x", big)], 900)
    assert verdict.outcome is Outcome.PASS
    verdict = evaluate(sql(np.array([1, 2], dtype=np.uint64)), [index("qdrant:x", [1, 2, 3])], 900)
    assert verdict.findings[0].orphan_sample == [3]


def test_uuid_ids():
    ids = [str(uuid.UUID(int=i * 7919)).encode() for i in range(1, 200)]
    verdict = evaluate(sql(ids), [index("qdrant:agent_ws_acme", ids[5:])], 900)
    assert verdict.outcome is Outcome.REBUILD_INDEX
    assert sorted(verdict.findings[0].missing_sample) == sorted(i.decode() for i in ids[:5])


# --------------------------------------------------------------------------------------------
# Parsing real artifacts written through the store


def copy_escape(value) -> str:
    if value is None:
        return "\\N"
    text = str(value)
    for raw, escaped in (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r")):
        text = text.replace(raw, escaped)
    return text


def compress(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3, write_checksum=True).compress(data)


def write_sql_dump(store, rows, columns=COLUMNS, table="public.memory_entries", extra=b""):
    body = b"".join(("\t".join(copy_escape(v) for v in row) + "\n").encode() for row in rows)
    file = f"{table}.copy.zst"
    with store.begin(SQL_REF) as writer:
        writer.write_bytes("public.workspaces.copy.zst", compress(b"ws_acme\n"))
        writer.write_bytes(file, compress(body + extra))
        entry = {
            "table": table,
            "columns": columns,
            "workspace_column": "workspace_id",
            "rows": len(rows),
            "file": file,
        }
        return writer.commit(
            captured_at=T0,
            counts={"rows": {table: len(rows)}},
            source={},
            tool={},
            tables=[
                {
                    "table": "public.workspaces",
                    "columns": ["workspace_id"],
                    "workspace_column": "workspace_id",
                    "rows": 1,
                    "file": "public.workspaces.copy.zst",
                },
                entry,
            ],
        )


def memory_row(i, content):
    embedding = "{" + ",".join(f"{((i * 31 + k) % 200 - 100) / 97:.6f}" for k in range(8)) + "}"
    metadata = json.dumps({"id": 999, "tags": ["t\tab"], "note": 'say "hi"\nbye'})
    return (
        i,
        "ws_acme",
        None if i % 3 else i // 3,
        "fact",
        content,
        0.5,
        metadata,
        embedding,
        "2026-11-20 10:00:00+00",
        "2026-11-20 10:00:00+00",
    )


TRICKY = [
    "plain",
    "tab\there and newline\nthere",
    "12\t13\n14",  # looks like more rows of ids once unescaped
    "back\\slash at the end \\",
    "unicode café 東京 🚀",
    "\\N is not null here",
    "x" * 300_000,  # one row longer than a small read
]


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "store")


@pytest.mark.parametrize(
    ("read_size", "block"), [(7, 3), (1 << 16, 100), (id_streams.READ_SIZE, id_streams.BLOCK)]
)
def test_sql_ids_from_copy_text(store, monkeypatch, read_size, block):
    monkeypatch.setattr(id_streams, "READ_SIZE", read_size)
    monkeypatch.setattr(id_streams, "BLOCK", block)
    ids = [5, 3, 900_000_000_001, 1, 42, 7, 8]
    manifest = write_sql_dump(store, [memory_row(i, c) for i, c in zip(ids, TRICKY, strict=True)])
    side = sql_ids_from_workspace_dump(store, SQL_REF, manifest)
    assert side.ids.dtype == np.int64
    assert side.ids.tolist() == ids
    assert (side.name, side.captured_at, side.declared_count) == (
        "postgres:public.memory_entries",
        T0,
        7,
    )


def test_sql_id_column_found_through_the_manifest(store):
    columns = ["workspace_id", "content", "id"]
    rows = [("ws_acme", "a\tb", 11), ("ws_acme", "line\nbreak", 12), ("ws_acme", None, 13)]
    manifest = write_sql_dump(store, rows, columns)
    assert sql_ids_from_workspace_dump(store, SQL_REF, manifest).ids.tolist() == [11, 12, 13]


def test_sql_text_ids_are_unescaped(store):
    ids = [str(uuid.uuid4()) for _ in range(3)] + ["odd\tid", "back\\slash"]
    rows = [(i, "ws_acme", "c\td") for i in ids]
    manifest = write_sql_dump(store, rows, ["id", "workspace_id", "content"])
    side = sql_ids_from_workspace_dump(store, SQL_REF, manifest)
    assert side.ids.dtype.kind == "S"
    assert [v.decode() for v in side.ids] == ids


def test_sql_checksum_is_verified(store):
    manifest = write_sql_dump(store, [memory_row(1, "x")])
    manifest["files"][-1]["sha256"] = "0" * 64  # the file decompresses fine but is not the one
    with pytest.raises(ChecksumMismatch):
        sql_ids_from_workspace_dump(store, SQL_REF, manifest)


def write_typesense(store, lines: list[bytes], documents=None, started=T0, captured=T0):
    with store.begin(TS_REF) as writer:
        writer.write_bytes("documents.jsonl.zst", compress(b"".join(lines)))
        return writer.commit(
            captured_at=captured,
            export_started_at=started,
            counts={"documents": len(lines) if documents is None else documents},
            source={"collection": "memory_ws_acme"},
            tool={},
        )


def test_typesense_ids_from_tricky_jsonl(store):
    def doc(**fields) -> bytes:
        return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"

    lines = [
        doc(id="1", content='he said "id": "999" and {"id":"998"}', tags=["id"]),
        doc(id="2", content='unicode café 東京 🚀 \\ \\" tricky'),
        doc(content='{"id":"997"}', id="3"),  # id is not the first key
        doc(meta={"id": "996"}, id="4"),  # a nested "id" comes first
        b'{ "id" : "5", "content": "spaced"}\n',
        doc(id='6"quoted"', content="x"),  # an escaped quote in the id itself
        doc(id="caf\u00e9", content="x"),
        json.dumps({"id": "\u00e9t\u00e9"}).encode() + b"\n",  # \u escapes (ensure_ascii)
        b"\n",  # a blank line is not a document
        doc(id="7", content="id" * 50_000, id_like='"id":"995"'),
        b'{"id":"8","content":"last line without newline"}',
    ]
    manifest = write_typesense(store, lines, documents=10)
    side = ids_from_typesense_export(store, TS_REF, manifest)
    assert [v.decode() for v in side.ids] == [
        "1",
        "2",
        "3",
        "4",
        "5",
        '6"quoted"',
        "café",
        "été",
        "7",
        "8",
    ]
    assert (side.name, side.declared_count, side.started_at) == ("typesense:memory_ws_acme", 10, T0)
    broken = write_typesense(store, [b'{"id":"9\n'])
    with pytest.raises(ValueError):
        ids_from_typesense_export(store, TS_REF, broken)


def test_typesense_ids_of_sorted_key_exports_match_json(store, monkeypatch):
    """Typesense exports a document's keys in sorted order, so "id" follows "content",
    "created_at" and the like. The id read without json.loads must be json.loads' own for
    every line: strings holding quotes, backslashes (one ending a value), "id": and newlines
    (escaped), numbers, booleans, nulls, nested objects and arrays before "id", escaped ids;
    lines of one export mixed so both the one-pass and the line-by-line reads run."""
    import random

    monkeypatch.setattr(id_streams, "READ_SIZE", 4096)  # many blocks, lines cut by chunks
    rng = random.Random(20261204)
    pieces = ['"id":"x"', "\\", '\\"', "\n", "\t", "{", "}", "[", ",", ":", "café 東京 🚀"]

    def text() -> str:
        return "".join(rng.choice([*pieces, "plain words"]) for _ in range(rng.randint(0, 6)))

    def value():
        kind = rng.randrange(8)
        return [text(), rng.randint(-10**12, 10**12), rng.random() * 1e6, True, False, None,
                {"id": text(), "n": [1, text()]}, [text(), 2.5, None]][kind]  # fmt: skip

    lines, expected = [], []
    for number in range(1, 3001):
        document = {name: value() for name in rng.sample(["a", "content", "created_at", "hx",
                                                          "ia", "kind", "tags"], rng.randint(0, 5))}  # fmt: skip
        document["id"] = str(number) if rng.random() < 0.9 else f'{number}"\\{text()}'
        spaced = rng.random() < 0.02
        line = json.dumps(document, ensure_ascii=rng.random() < 0.1, sort_keys=True,
                          separators=(", ", ": ") if spaced else (",", ":"))  # fmt: skip
        lines.append(line.encode() + b"\n")
        expected.append(json.loads(line)["id"])
    side = ids_from_typesense_export(store, TS_REF, write_typesense(store, lines))
    assert [v.decode() for v in side.ids] == expected


def test_typesense_integer_ids_parse_as_int64(store, monkeypatch):
    monkeypatch.setattr(id_streams, "READ_SIZE", 100)
    lines = [b'{"id":"%d","content":"c%d \\"id\\": \\"0\\""}\n' % (i, i) for i in range(1, 500)]
    side = ids_from_typesense_export(store, TS_REF, write_typesense(store, lines))
    assert side.ids.dtype == np.int64 and side.ids.tolist() == list(range(1, 500))


def write_qdrant(store, body: bytes, points: int, captured=T0):
    with store.begin(QD_REF) as writer:
        writer.write_bytes("snapshot.snapshot", b"not really a snapshot")
        writer.write_bytes("point_ids.txt.zst", compress(body))
        return writer.commit(captured_at=captured, counts={"points": points}, source={}, tool={})


def test_qdrant_point_ids(store, monkeypatch):
    monkeypatch.setattr(id_streams, "READ_SIZE", 5)
    manifest = write_qdrant(store, b"1\n2\n30\n18446744073709551615", 4)
    side = ids_from_qdrant_artifact(store, QD_REF, manifest, name="qdrant:agent_ws_acme")
    # u64 beyond int64 takes the bytes path, still exact
    assert [v.decode() for v in side.ids] == ["1", "2", "30", "18446744073709551615"]
    assert (side.name, side.declared_count) == ("qdrant:agent_ws_acme", 4)


def test_end_to_end_through_the_store(store):
    ids = list(range(1, 301))
    sql_manifest = write_sql_dump(store, [memory_row(i, f"memory {i}\twith tab") for i in ids])
    ts_lines = [b'{"id":"%d","content":"memory %d"}\n' % (i, i) for i in ids[:-3]]
    ts_manifest = write_typesense(
        store, ts_lines, started="2026-11-21T10:01:00Z", captured="2026-11-21T10:02:00Z"
    )
    qd_manifest = write_qdrant(store, b"".join(b"%d\n" % i for i in ids), len(ids))
    verdict = evaluate(
        sql_ids_from_workspace_dump(store, SQL_REF, sql_manifest),
        [
            ids_from_typesense_export(store, TS_REF, ts_manifest),
            ids_from_qdrant_artifact(store, QD_REF, qd_manifest, name="qdrant:agent_ws_acme"),
        ],
        900,
    )
    assert verdict.outcome is Outcome.REBUILD_INDEX
    typesense, qdrant = verdict.findings
    assert typesense.missing_sample == [298, 299, 300] and typesense.skew_seconds == 120
    assert qdrant.outcome is Outcome.PASS


def test_stopping_early_leaves_no_reader_thread(store, monkeypatch):
    monkeypatch.setattr(id_streams, "READ_SIZE", 1000)
    manifest = write_qdrant(store, b"".join(b"%d\n" % i for i in range(100_000)), 100_000)
    before = threading.active_count()
    chunks = id_streams.decompressed(store, QD_REF, manifest, "point_ids.txt.zst")
    assert next(chunks).startswith(b"0\n1\n")
    chunks.close()
    assert threading.active_count() == before


def test_parse_error_surfaces_and_leaves_no_reader_thread(store):
    manifest = write_typesense(store, [b'{"id":"1"}\n', b"not json\n"])
    before = threading.active_count()
    with pytest.raises(ValueError):
        ids_from_typesense_export(store, TS_REF, manifest)
    assert threading.active_count() == before
