"""Point ids read from a snapshot's id-tracker files (lib/qdrant/segment_ids.py) against the
engine's own listing (lib/qdrant/offline.py, qdrant-edge), on snapshots of the shapes Qdrant
writes: appendable segments (mutable tracker), optimized ones (immutable tracker), points moved
and deleted across segments, one point in two segments, integer and UUID ids. Snapshots are
written by the stand-in's archive writer (the real server's layout) or downloaded from it."""

import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import numpy as np
import pytest
import qdrant_edge as edge
import requests

from backup_pipelines.devstack.ports import free_port
from backup_pipelines.devstack.qdrant import QdrantStandin
from backup_pipelines.devstack.qdrant.archive import write_collection_snapshot
from backup_pipelines.devstack.qdrant.models import collection_config_from_request
from backup_pipelines.devstack.qdrant.storage import Collection
from backup_pipelines.lib.qdrant import segment_ids
from backup_pipelines.lib.qdrant.offline import SnapshotError, read_snapshot_offline
from backup_pipelines.lib.qdrant.segment_ids import write_snapshot_point_ids

DIMENSION = 4


# ---------------------------------------------------------------------------------------------
# building snapshots
# ---------------------------------------------------------------------------------------------


class Shard:
    """A stand-in collection whose Edge shard is created with chosen optimizer settings."""

    def __init__(self, root: Path, optimize_small=False, cold_id_tracker=False):
        self.root = root
        config = collection_config_from_request(
            {"vectors": {"size": DIMENSION, "distance": "Cosine"}}
        )
        options = {}
        if optimize_small:  # an optimize() run turns the points into an immutable segment
            options["optimizers"] = edge.EdgeOptimizersConfig(
                indexing_threshold=10,
                default_segment_number=2,
                deleted_threshold=0.9,
                vacuum_min_vector_number=1_000_000,
            )
        if cold_id_tracker:
            options["id_tracker_memory"] = edge.Memory.Cold
        path = root / "collection"
        path.mkdir(parents=True)
        shard = edge.EdgeShard.create(
            str(path / "0"),
            edge.EdgeConfig(
                vectors=edge.EdgeVectorParams(size=DIMENSION, distance=edge.Distance.Cosine),
                **options,
            ),
        )
        self.collection = Collection("c", path, config, shard)
        self.random = np.random.default_rng(11)

    def upsert(self, ids) -> None:
        points = [
            edge.Point(i, self.random.standard_normal(DIMENSION).astype(np.float32).tolist(), {})
            for i in ids
        ]
        for start in range(0, len(points), 5000):
            self.collection.apply(edge.UpdateOperation.upsert_points(points[start : start + 5000]))

    def delete(self, ids) -> None:
        self.collection.apply(edge.UpdateOperation.delete_points(list(ids)))

    def optimize(self) -> None:
        assert self.collection.shard.optimize(), "nothing was optimized"

    def segments(self) -> list[Path]:
        return sorted(p for p in (self.collection.shard_path / "segments").iterdir() if p.is_dir())

    def duplicate_a_segment(self) -> None:
        """Copy a segment under a new id (a point then lives in two segments), and reopen."""
        self.collection.shard.flush()
        self.collection.close()
        source = self.segments()[0]
        shutil.copytree(source, source.with_name(str(uuid.uuid4())))
        path = self.collection.path
        self.collection = Collection(
            "c", path, self.collection.config, edge.EdgeShard.load(str(path / "0"))
        )

    def snapshot(self) -> Path:
        target = self.root / "c.snapshot"
        work = self.root / "work"
        work.mkdir(exist_ok=True)
        write_collection_snapshot(self.collection, target, work, 1, "1.19.0")
        self.collection.close()
        return target


def uuids(count: int, seed: int) -> list[str]:
    return [
        str(uuid.UUID(int=(seed * 7919 + n) * 0x9E3779B97F4A7C15 % 2**128)) for n in range(count)
    ]


def engine_listing(snapshot: Path, work: Path) -> bytes:
    with read_snapshot_offline(snapshot, work) as offline:
        listed = "".join(f"{point_id}\n" for point_id in offline.iter_point_ids()).encode()
        assert listed.count(b"\n") == offline.points
        return listed


def files_listing(snapshot: Path, work: Path) -> tuple[bytes, segment_ids.SnapshotIds]:
    sink = io.BytesIO()
    found = write_snapshot_point_ids(snapshot, sink.write, work)
    assert found.points == sink.getvalue().count(b"\n")
    return sink.getvalue(), found


def assert_same_as_engine(snapshot: Path, tmp_path: Path, reader="id-tracker files") -> list[str]:
    work = tmp_path / "read"
    work.mkdir(exist_ok=True)
    expected = engine_listing(snapshot, work)
    listed, found = files_listing(snapshot, work)
    assert found.reader == reader, found.fallback_reason
    assert listed == expected
    assert list(work.iterdir()) == [], "scratch files left behind"
    return listed.decode().split()


def segment_files(snapshot: Path) -> dict[str, list[str]]:
    """Segment tar name -> the file names it holds (under snapshot/files/)."""
    found = {}
    with tarfile.open(snapshot) as archive:
        for member in archive:
            if member.name.startswith("0/segments/"):
                with tarfile.open(fileobj=archive.extractfile(member)) as inner:
                    found[member.name] = [m.name.removeprefix("snapshot/files/") for m in inner]
    return found


# ---------------------------------------------------------------------------------------------
# the same ids as the engine
# ---------------------------------------------------------------------------------------------


def test_qdrant_ids_one_appendable_segment_with_updates_and_deletes(tmp_path):
    shard = Shard(tmp_path)
    shard.upsert(range(1, 3001))
    shard.upsert([2**63 + 5, 2**53 + 1, 0])
    shard.delete([5, 6, 7, 2**53 + 1])
    shard.upsert(range(2990, 3010))  # updated in place, and new ones
    shard.upsert([6])  # deleted, then back
    listed = assert_same_as_engine(shard.snapshot(), tmp_path)
    assert len(listed) == 3009 + 3 - 3 - 1 + 1
    assert "5" not in listed and "6" in listed and listed[0] == "0"


def test_qdrant_ids_optimized_segment_plus_moved_and_deleted_points(tmp_path):
    shard = Shard(tmp_path, optimize_small=True)
    shard.upsert(range(1, 4001))
    shard.upsert(uuids(60, 1))
    shard.delete([5, 6, 7])
    shard.optimize()
    # Updates of optimized points move them to an appendable segment; deletes hit both kinds.
    shard.upsert(range(3990, 4100))
    shard.delete([10, 3995, 4050, uuids(60, 1)[0]])
    shard.upsert([6, 1, 2])
    snapshot = shard.snapshot()
    kinds = segment_files(snapshot)
    assert any("id_tracker.mappings" in files for files in kinds.values())
    assert any("mutable_id_tracker.mappings" in files for files in kinds.values())
    listed = assert_same_as_engine(snapshot, tmp_path)
    assert len(listed) == 4099 - 3 + 60 - 4 + 1
    assert listed[-59:] == sorted(uuids(60, 1)[1:])


def test_qdrant_ids_a_point_in_two_segments_is_listed_once(tmp_path):
    shard = Shard(tmp_path)
    shard.upsert(range(1, 1001))
    shard.duplicate_a_segment()
    shard.upsert(range(990, 1020))  # a newer version of some, beside the older copy
    shard.delete([3, 995])
    snapshot = shard.snapshot()
    assert len(segment_files(snapshot)) == 2
    listed = assert_same_as_engine(snapshot, tmp_path)
    assert len(listed) == 1019 - 2


def test_qdrant_ids_of_an_empty_collection(tmp_path):
    shard = Shard(tmp_path)
    shard.upsert([1])
    shard.delete([1])
    assert assert_same_as_engine(shard.snapshot(), tmp_path) == []


def test_qdrant_ids_across_many_sorted_runs(tmp_path, monkeypatch):
    """Runs of 700 records and merges of at most 3 runs: the multi-pass merge and the chunk
    boundaries (an id's records split between chunks) give the same listing."""
    shard = Shard(tmp_path, optimize_small=True)
    shard.upsert(np.random.default_rng(5).permutation(6000).tolist())
    shard.upsert(uuids(300, 2))
    shard.optimize()
    shard.upsert(range(0, 6000, 7))
    shard.delete(range(0, 6000, 11))
    monkeypatch.setattr(segment_ids, "RUN_RECORDS", 700)
    monkeypatch.setattr(segment_ids, "MERGE_FAN_IN", 3)
    monkeypatch.setattr(segment_ids, "MERGE_RECORDS", 300)
    monkeypatch.setattr(segment_ids, "MIN_MERGE_BLOCK", 50)
    monkeypatch.setattr(segment_ids, "READ_BLOCK", 1000)
    assert_same_as_engine(shard.snapshot(), tmp_path)


def test_qdrant_ids_of_a_snapshot_downloaded_from_the_standin(tmp_path):
    server = QdrantStandin(tmp_path / "storage", port=free_port())
    server.start()
    try:
        url = server.url
        body = {"vectors": {"size": DIMENSION, "distance": "Cosine"}}
        requests.put(f"{url}/collections/m", json=body).raise_for_status()
        ids = [*range(1, 800), *uuids(40, 3)]
        points = [{"id": i, "vector": [0.5] * DIMENSION, "payload": {}} for i in ids]
        for start in range(0, len(points), 200):
            requests.put(
                f"{url}/collections/m/points?wait=true",
                json={"points": points[start : start + 200]},
            ).raise_for_status()
        requests.post(
            f"{url}/collections/m/points/delete?wait=true", json={"points": [4, ids[-1]]}
        ).raise_for_status()
        created = requests.post(f"{url}/collections/m/snapshots", params={"wait": "true"})
        created = created.json()["result"]
        snapshot = tmp_path / "m.snapshot"
        with requests.get(f"{url}/collections/m/snapshots/{created['name']}", stream=True) as got:
            got.raise_for_status()
            with snapshot.open("wb") as sink:
                for chunk in got.iter_content(1 << 20):
                    sink.write(chunk)
    finally:
        server.stop()
    listed = assert_same_as_engine(snapshot, tmp_path)
    assert len(listed) == len(ids) - 2
    sink = io.BytesIO()
    found = write_snapshot_point_ids(snapshot, sink.write, tmp_path, checksum=created["checksum"])
    assert found.storage_version == "1.19.0"
    assert found.config["params"]["vectors"] == {"size": DIMENSION, "distance": "Cosine"}


# ---------------------------------------------------------------------------------------------
# layouts left to the engine
# ---------------------------------------------------------------------------------------------


def test_qdrant_ids_disk_resident_tracker_is_read_by_the_engine(tmp_path, caplog):
    shard = Shard(tmp_path, optimize_small=True, cold_id_tracker=True)
    shard.upsert(range(1, 3001))
    shard.optimize()
    shard.delete([8])
    snapshot = shard.snapshot()
    assert any("id_tracker.i2e" in files for files in segment_files(snapshot).values())
    listed = assert_same_as_engine(snapshot, tmp_path, reader="engine")
    assert len(listed) == 2999
    assert "disk-resident id tracker (id_tracker.i2e)" in caplog.text
    assert "read with Qdrant's engine" in caplog.text


# ---------------------------------------------------------------------------------------------
# damaged id-tracker files: a clear error naming the segment and the file
# ---------------------------------------------------------------------------------------------


def rewrite_segment_file(snapshot: Path, target: Path, file_name: str, change) -> Path:
    """A copy of `snapshot` whose first segment holding `file_name` has it replaced by
    change(old bytes); both tars are rebuilt with correct headers."""
    done = False
    with tarfile.open(snapshot) as source, tarfile.open(target, "w") as out:
        for member in source:
            data = source.extractfile(member).read() if member.isfile() else None
            if data is not None and member.name.startswith("0/segments/") and not done:
                inner_out = io.BytesIO()
                with (
                    tarfile.open(fileobj=io.BytesIO(data)) as inner,
                    tarfile.open(fileobj=inner_out, mode="w") as rebuilt,
                ):
                    for inner_member in inner:
                        content = inner.extractfile(inner_member).read()
                        if inner_member.name == f"snapshot/files/{file_name}":
                            content, done = change(content), True
                        copy = tarfile.TarInfo(inner_member.name)
                        copy.size = len(content)
                        rebuilt.addfile(copy, io.BytesIO(content))
                data = inner_out.getvalue()
            copy = tarfile.TarInfo(member.name)
            copy.type = member.type
            copy.size = len(data) if data is not None else 0
            out.addfile(copy, io.BytesIO(data) if data is not None else None)
    assert done, f"no segment holds {file_name}"
    return target


@pytest.fixture(scope="module")
def two_kinds(tmp_path_factory) -> Path:
    """An optimized (immutable) segment and an appendable (mutable) one."""
    shard = Shard(tmp_path_factory.mktemp("two-kinds"), optimize_small=True)
    shard.upsert(range(1, 2001))
    shard.upsert(uuids(20, 4))
    shard.optimize()
    shard.upsert(range(1990, 2100))
    shard.delete([4])
    return shard.snapshot()


def assert_ids_refused(snapshot: Path, tmp_path: Path, *phrases: str) -> None:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    with pytest.raises(SnapshotError) as raised:
        write_snapshot_point_ids(snapshot, io.BytesIO().write, work)
    message = str(raised.value)
    assert str(snapshot) in message and "0/segments/" in message, message
    for phrase in phrases:
        assert phrase in message, message
    assert list(work.iterdir()) == []


def u64(value: int) -> bytes:
    return value.to_bytes(8, "little")


IMMUTABLE_DAMAGE = {
    "cut-in-an-entry": (lambda data: data[:-5], ["id_tracker.mappings", "ends inside an entry"]),
    "fewer-entries-than-declared": (
        lambda data: u64(int.from_bytes(data[:8], "little") + 1) + data[8:],
        ["id_tracker.mappings", "ends after 2020 of its 2021 entries"],
    ),
    "count-too-large": (
        lambda data: u64(2**62) + data[8:],
        ["id_tracker.mappings", "declares 4611686018427387904 entries"],
    ),
    "bytes-after-the-entries": (
        lambda data: data + b"\0" * 13,
        ["id_tracker.mappings", "13 bytes after its"],
    ),
    "unknown-entry-type": (
        lambda data: data[:8] + b"\x07" + data[9:],
        ["id_tracker.mappings", "unknown entry type 0x07 at byte 8"],
    ),
    "internal-ids-out-of-order": (
        lambda data: data[:17] + (5).to_bytes(4, "little") + data[21:],
        ["id_tracker.mappings", "entry 0 maps internal id 5"],
    ),
}


@pytest.mark.parametrize("damage", sorted(IMMUTABLE_DAMAGE))
def test_qdrant_ids_damaged_immutable_mappings_are_refused(two_kinds, tmp_path, damage):
    change, phrases = IMMUTABLE_DAMAGE[damage]
    damaged = rewrite_segment_file(
        two_kinds, tmp_path / "d.snapshot", "id_tracker.mappings", change
    )
    assert_ids_refused(damaged, tmp_path, *phrases)


def test_qdrant_ids_damaged_immutable_companions_are_refused(two_kinds, tmp_path):
    short = rewrite_segment_file(
        two_kinds, tmp_path / "a.snapshot", "id_tracker.deleted", lambda data: data[:8]
    )
    assert_ids_refused(short, tmp_path, "id_tracker.deleted", "too few for")
    odd = rewrite_segment_file(
        two_kinds, tmp_path / "b.snapshot", "id_tracker.versions", lambda data: data[:-3]
    )
    assert_ids_refused(odd, tmp_path, "id_tracker.versions", "not a multiple of 8")


def test_qdrant_ids_unknown_entry_in_the_mutable_log_is_refused(two_kinds, tmp_path):
    damaged = rewrite_segment_file(
        two_kinds,
        tmp_path / "d.snapshot",
        "mutable_id_tracker.mappings",
        lambda data: data[:13] + b"\x09" + data[14:],
    )
    assert_ids_refused(
        damaged, tmp_path, "mutable_id_tracker.mappings", "unknown entry type 0x09 at byte 13"
    )


def test_qdrant_ids_mutable_log_cut_inside_an_entry_reads_like_qdrant(two_kinds, tmp_path):
    """Qdrant reads a change log up to an entry cut short (a crash while flushing) and drops
    the rest; so does the reader, and both list the same ids."""
    damaged = rewrite_segment_file(
        two_kinds, tmp_path / "d.snapshot", "mutable_id_tracker.mappings", lambda data: data[:-6]
    )
    listed = assert_same_as_engine(damaged, tmp_path)
    intact = assert_same_as_engine(two_kinds, tmp_path)
    assert len(listed) == len(intact) - 1


def test_qdrant_ids_mapping_without_a_version_is_dropped_like_qdrant(two_kinds, tmp_path):
    damaged = rewrite_segment_file(
        two_kinds, tmp_path / "d.snapshot", "mutable_id_tracker.versions", lambda data: data[:-16]
    )
    listed = assert_same_as_engine(damaged, tmp_path)
    assert len(listed) == len(assert_same_as_engine(two_kinds, tmp_path)) - 2


def test_qdrant_ids_mutable_log_reusing_an_internal_id_is_read_by_the_engine(two_kinds, tmp_path):
    def reuse(data: bytes) -> bytes:  # insert id 10**12 at internal id 0, already taken
        return data + b"\x01" + (10**12).to_bytes(8, "little") + (0).to_bytes(4, "little")

    damaged = rewrite_segment_file(
        two_kinds, tmp_path / "d.snapshot", "mutable_id_tracker.mappings", reuse
    )
    listed = assert_same_as_engine(damaged, tmp_path, reader="engine")
    assert "1000000000000" in listed


def rewrite_segment_tar(snapshot: Path, target: Path, change) -> Path:
    """A copy of `snapshot` whose segment tars are replaced by change(old bytes)."""
    with tarfile.open(snapshot) as source, tarfile.open(target, "w") as out:
        for member in source:
            data = source.extractfile(member).read() if member.isfile() else b""
            if member.name.startswith("0/segments/"):
                data = change(data)
            copy = tarfile.TarInfo(member.name)
            copy.type, copy.size = member.type, len(data)
            out.addfile(copy, io.BytesIO(data) if member.isfile() else None)
    return target


def test_qdrant_ids_segment_tars_without_end_marker_are_read(two_kinds, tmp_path):
    """Qdrant's own segment tars end right after their last member (no end-of-archive blocks)."""

    def without_end_marker(data: bytes) -> bytes:
        with tarfile.open(fileobj=io.BytesIO(data)) as inner:
            last = inner.getmembers()[-1]
        return data[: last.offset_data + (last.size + 511) // 512 * 512]

    bare = rewrite_segment_tar(two_kinds, tmp_path / "bare.snapshot", without_end_marker)
    assert assert_same_as_engine(bare, tmp_path) == assert_same_as_engine(two_kinds, tmp_path)


def test_qdrant_ids_damaged_header_inside_a_segment_tar_is_refused(two_kinds, tmp_path):
    """tarfile stops quietly at a damaged header after the first member: the bytes left over
    tell the reader, instead of a segment read with files missing."""

    def flip_last_header(data: bytes) -> bytes:
        with tarfile.open(fileobj=io.BytesIO(data)) as inner:
            at = inner.getmembers()[-1].offset
        return data[: at + 10] + bytes([data[at + 10] ^ 0xFF]) + data[at + 11 :]

    damaged = rewrite_segment_tar(two_kinds, tmp_path / "d.snapshot", flip_last_header)
    assert_ids_refused(damaged, tmp_path, "is damaged: unreadable tar header at byte")


def test_qdrant_ids_truncated_snapshot_is_refused(two_kinds, tmp_path):
    cut = tmp_path / "cut.snapshot"
    cut.write_bytes(two_kinds.read_bytes()[: two_kinds.stat().st_size // 2])
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(SnapshotError, match=r"not a readable tar archive|cannot be read") as raised:
        write_snapshot_point_ids(cut, io.BytesIO().write, work)
    assert str(cut) in str(raised.value)
    assert list(work.iterdir()) == []


def test_qdrant_ids_checksum_mismatch_is_refused(two_kinds, tmp_path):
    with pytest.raises(SnapshotError, match="checksum mismatch") as raised:
        write_snapshot_point_ids(two_kinds, io.BytesIO().write, tmp_path, checksum="0" * 64)
    assert str(two_kinds) in str(raised.value)


# ---------------------------------------------------------------------------------------------
# memory: flat with the number of points (issue 16, item 2)
# ---------------------------------------------------------------------------------------------


def synthetic_snapshot(target: Path, points: int, seed: int) -> Path:
    """A collection snapshot whose one appendable segment holds `points` shuffled integer ids
    (the id-tracker files as Qdrant writes them; no vectors: only the ids are read)."""
    ids = np.random.default_rng(seed).permutation(points).astype(np.uint64) + 1
    log = np.zeros(points, segment_ids.NUM_INSERT)
    log["type"], log["id"], log["internal"] = 1, ids, np.arange(points, dtype=np.uint32)
    files = {
        "version.info": b"0.6.0",
        "mutable_id_tracker.mappings": log.tobytes(),
        "mutable_id_tracker.versions": np.ones(points, "<u8").tobytes(),
    }
    segment = io.BytesIO()
    with tarfile.open(fileobj=segment, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(f"snapshot/files/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    members = {
        "config.json": json.dumps({"params": {}}).encode(),
        "version.info": b"1.19.0",
        f"0/segments/{uuid.uuid4()}.tar": segment.getvalue(),
    }
    with tarfile.open(target, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return target


MEMORY_PROBE = """
import json, re, sys
from pathlib import Path
from backup_pipelines.lib.qdrant.segment_ids import write_snapshot_point_ids

def status(field):
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\\s+(\\d+) kB", text, re.M).group(1)) * 1024

lines = []
rest = status("VmRSS")
Path("/proc/self/clear_refs").write_text("5")
found = write_snapshot_point_ids(Path(sys.argv[1]), lambda data: lines.append(data.count(b"\\n")), Path(sys.argv[2]))
print(json.dumps({"points": found.points, "lines": sum(lines), "added": status("VmHWM") - rest}))
"""


def test_memory_qdrant_ids_do_not_grow_with_the_points(tmp_path):
    """A fresh process lists 0.5M and 2M shuffled ids: the engine's id tracker would add
    ~105 bytes a point (~160 MB more at 2M); the file reader adds the same either way."""

    def probe(points: int) -> dict:
        snapshot = synthetic_snapshot(tmp_path / f"{points}.snapshot", points, seed=points)
        done = subprocess.run(
            [sys.executable, "-c", MEMORY_PROBE, str(snapshot), str(tmp_path)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        snapshot.unlink()
        return json.loads(done.stdout)

    small, large = probe(500_000), probe(2_000_000)
    assert small["points"] == small["lines"] == 500_000
    assert large["points"] == large["lines"] == 2_000_000
    mb = 1024 * 1024
    assert large["added"] < 64 * mb, large
    assert large["added"] - small["added"] < 8 * mb, (small, large)


def test_qdrant_ids_reader_imports_no_dagster():
    code = (
        "import sys, backup_pipelines.lib.qdrant.segment_ids; "
        "sys.exit('dagster' in sys.modules or 'backup_pipelines.devstack' in str(sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_qdrant_ids_uuid_text_is_canonical():
    value = uuid.UUID("0123abcd-4567-89ef-0011-223344556677")
    assert segment_ids.uuid_text(value.int >> 64, value.int & (2**64 - 1)) == str(value)
    assert re.fullmatch(r"[0-9a-f-]{36}", segment_ids.uuid_text(0, 1))
