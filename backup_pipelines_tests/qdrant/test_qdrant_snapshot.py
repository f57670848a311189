"""Reading a Qdrant collection snapshot offline: a snapshot downloaded from the stand-in (which
writes the real server's layout) counts and lists its points, and damaged files are refused."""

import io
import json
import random
import shutil
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import pytest
import requests

from backup_pipelines.devstack.ports import free_port
from backup_pipelines.devstack.qdrant import QdrantStandin
from backup_pipelines.lib.errors import BackupError
from backup_pipelines.lib.qdrant.offline import (
    SnapshotError,
    empty_wal_segment,
    last_operation_number,
    read_snapshot_offline,
    sha256_of_file,
    unpack_collection_snapshot,
    verify_checksum,
    write_point_ids,
)

COLLECTION = "memories"
POINT_COUNT = 500
DIMENSION = 16
ID_TRACKER_MAPPINGS = "snapshot/files/mutable_id_tracker.mappings"


def check(response: requests.Response):
    assert response.status_code == 200, response.text
    return response.json()["result"]


def add_collection(url: str, name: str, ids: list, seed: int) -> None:
    body = {"vectors": {"size": DIMENSION, "distance": "Cosine"}}
    assert check(requests.put(f"{url}/collections/{name}", json=body)) is True
    generator = random.Random(seed)
    points = [
        {"id": i, "vector": [generator.uniform(-1, 1) for _ in range(DIMENSION)], "payload": {}}
        for i in ids
    ]
    for start in range(0, len(points), 200):  # several WAL operations, like a real loader
        batch = {"points": points[start : start + 200]}
        check(requests.put(f"{url}/collections/{name}/points?wait=true", json=batch))


def download_snapshot(url: str, name: str, target: Path) -> str:
    """Create a collection snapshot, stream it to `target`; returns the server's checksum."""
    created = check(requests.post(f"{url}/collections/{name}/snapshots", params={"wait": "true"}))
    with (
        requests.get(f"{url}/collections/{name}/snapshots/{created['name']}", stream=True) as got,
        target.open("wb") as sink,
    ):
        assert got.status_code == 200, got.text
        for chunk in got.iter_content(1 << 20):
            sink.write(chunk)
    return created["checksum"]


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    server = QdrantStandin(tmp_path_factory.mktemp("qdrant-storage"), port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def point_ids() -> list[int]:
    # Sparse, shuffled integer ids, including one above 2**53 and one above 2**63.
    ids = [*random.Random(3).sample(range(10**9), POINT_COUNT - 2), 2**53 + 1, 2**63 + 5]
    random.Random(4).shuffle(ids)
    return ids


@pytest.fixture(scope="module")
def snapshot(standin, point_ids, tmp_path_factory) -> tuple[Path, str]:
    add_collection(standin.url, COLLECTION, point_ids, seed=5)
    target = tmp_path_factory.mktemp("download") / "memories.snapshot"
    checksum = download_snapshot(standin.url, COLLECTION, target)
    return target, checksum


def damaged_copy(snapshot: Path, target: Path, damage) -> Path:
    data = bytearray(snapshot.read_bytes())
    damage(data)
    target.write_bytes(bytes(data))
    return target


def segment_member_offsets(snapshot: Path, inner_name: str) -> tuple[int, int]:
    """(offset of the first segment tar's data, offset of `inner_name` in that tar)."""
    with tarfile.open(snapshot) as archive:
        segment = next(m for m in archive if m.name.startswith("0/segments/"))
        with tarfile.open(fileobj=archive.extractfile(segment)) as inner:
            member = next(m for m in inner if m.name == inner_name)
            return segment.offset_data, member.offset_data


def write_tar(target: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(target, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return target


def assert_refused(snapshot: Path, work_dir: Path, *phrases: str, **options) -> SnapshotError:
    with pytest.raises(SnapshotError) as raised:
        read_snapshot_offline(snapshot, work_dir, **options)
    message = str(raised.value)
    assert str(snapshot) in message
    for phrase in phrases:
        assert phrase in message
    assert list(work_dir.iterdir()) == [], "the temporary folder is left behind"
    return raised.value


# ---------------------------------------------------------------------------------------------
# an intact snapshot
# ---------------------------------------------------------------------------------------------


def test_counts_and_lists_every_point_in_ascending_order(snapshot, point_ids, tmp_path):
    path, checksum = snapshot
    with read_snapshot_offline(path, tmp_path, checksum=checksum) as offline:
        assert offline.points == POINT_COUNT
        assert offline.config["params"]["vectors"] == {"size": DIMENSION, "distance": "Cosine"}
        listed = list(offline.iter_point_ids())
        assert listed == sorted(point_ids)
        assert all(type(point_id) is int for point_id in listed)
        # Small pages give the same ids: the pages join without gaps or repeats.
        assert list(offline.iter_point_ids(page_size=7)) == listed
        assert len(list(tmp_path.iterdir())) == 1
    assert list(tmp_path.iterdir()) == [], "the temporary folder is removed on close"
    assert offline.closed
    with pytest.raises(SnapshotError, match="closed"):
        next(offline.iter_point_ids())


def test_write_point_ids_writes_one_id_per_line(snapshot, point_ids, tmp_path):
    sink = io.BytesIO()
    offline = read_snapshot_offline(snapshot[0], tmp_path)
    try:
        assert write_point_ids(offline, sink.write) == POINT_COUNT
    finally:
        offline.close()
    assert sink.getvalue() == "".join(f"{i}\n" for i in sorted(point_ids)).encode()
    assert list(tmp_path.iterdir()) == []


def test_uuid_ids_come_after_integer_ids_as_strings(standin, tmp_path):
    uuids = sorted(str(uuid.uuid5(uuid.NAMESPACE_URL, f"p{n}")) for n in range(5))
    add_collection(standin.url, "mixed", [42, *uuids, 7, 2**63], seed=6)
    path = tmp_path / "mixed.snapshot"
    download_snapshot(standin.url, "mixed", path)
    sink = io.BytesIO()
    with read_snapshot_offline(path, tmp_path) as offline:
        assert list(offline.iter_point_ids(page_size=2)) == [7, 42, 2**63, *uuids]
        assert write_point_ids(offline, sink.write) == 8
    assert sink.getvalue().decode().splitlines() == ["7", "42", str(2**63), *uuids]


def test_checksum_helpers(snapshot, tmp_path):
    path, checksum = snapshot
    assert sha256_of_file(path) == checksum
    verify_checksum(path, checksum.upper())
    verify_checksum(path, None)
    with pytest.raises(SnapshotError, match="checksum mismatch"):
        verify_checksum(path, "0" * 64)
    assert_refused(path, tmp_path, "checksum mismatch", checksum="0" * 64)


def test_unpack_collection_snapshot_gives_config_and_edge_shard_folder(snapshot, tmp_path):
    config, shard = unpack_collection_snapshot(snapshot[0], tmp_path)
    assert config["params"]["vectors"]["size"] == DIMENSION
    assert shard == tmp_path / "shard"
    assert [p.name.startswith("closed-") for p in (shard / "wal").iterdir()] == [True]
    assert any((shard / "segments").iterdir())


def test_reader_imports_no_dagster():
    code = (
        "import sys, backup_pipelines.lib.qdrant.offline; "
        "sys.exit('dagster' in sys.modules or 'backup_pipelines.devstack' in str(sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ---------------------------------------------------------------------------------------------
# damaged and wrong files
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_snapshot_is_refused(snapshot, tmp_path, keep):
    """Cut inside a member's data (here: the segment tar): tarfile notices while copying."""
    path = snapshot[0]
    cut = tmp_path / "cut.snapshot"
    cut.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])
    work = tmp_path / "work"
    work.mkdir()
    error = assert_refused(cut, work, "not a readable tar archive: unexpected end of data")
    assert isinstance(error, BackupError)


def test_snapshot_cut_at_a_member_boundary_is_refused(snapshot, tmp_path):
    """tarfile itself reads such a file as a complete, shorter archive without any error."""
    path = snapshot[0]
    with tarfile.open(path) as archive:
        last = archive.getmembers()[-1]
    cut = tmp_path / "cut.snapshot"
    cut.write_bytes(path.read_bytes()[: last.offset])
    with tarfile.open(cut) as archive:  # the premise: Python's tarfile does not notice
        assert archive.getmembers()[-1].name != last.name
    work = tmp_path / "work"
    work.mkdir()
    assert_refused(cut, work, "truncated or damaged", "no end-of-archive marker")


def test_flipped_byte_in_a_segment_tar_header_is_refused(snapshot, tmp_path):
    path = snapshot[0]
    segment_at, member_at = segment_member_offsets(path, ID_TRACKER_MAPPINGS)
    header_at = segment_at + member_at - 512  # the inner tar header of that file

    def flip(data: bytearray) -> None:
        data[header_at + 10] ^= 0xFF  # inside the member name: the header checksum fails

    damaged = damaged_copy(path, tmp_path / "flipped.snapshot", flip)
    work = tmp_path / "work"
    work.mkdir()
    assert_refused(damaged, work, "cannot unpack shard 0 of the snapshot")


def test_flipped_byte_in_segment_data_is_caught_by_the_checksum_only(snapshot, point_ids, tmp_path):
    """Segment files carry no checksums: a flipped id-tracker byte reads back as another id
    without any error. Only the snapshot's sha256 catches it."""
    path, checksum = snapshot
    segment_at, member_at = segment_member_offsets(path, ID_TRACKER_MAPPINGS)

    def flip(data: bytearray) -> None:
        data[segment_at + member_at + 3] ^= 0xFF  # third byte of the first mapped external id

    damaged = damaged_copy(path, tmp_path / "flipped.snapshot", flip)
    work = tmp_path / "work"
    work.mkdir()
    assert_refused(damaged, work, "checksum mismatch", checksum=checksum)
    with read_snapshot_offline(damaged, work) as offline:  # without the checksum: no error
        listed = list(offline.iter_point_ids())
        assert offline.points == POINT_COUNT
    assert len(listed) == POINT_COUNT
    assert len(set(listed) - set(point_ids)) == 1, "one id silently changed"


def test_tar_without_config_json_is_refused(tmp_path):
    path = write_tar(
        tmp_path / "no-config.snapshot",
        {"version.info": b"1.19.0", "0/shard_config.json": b"{}"},
    )
    work = tmp_path / "work"
    work.mkdir()
    assert_refused(path, work, "has no config.json", "not a collection snapshot")


def test_snapshot_without_shard_folder_is_refused(tmp_path):
    path = write_tar(tmp_path / "no-shard.snapshot", {"config.json": b"{}"})
    work = tmp_path / "work"
    work.mkdir()
    assert_refused(path, work, "no shard folder")


def test_unsafe_member_path_is_refused(tmp_path):
    path = write_tar(
        tmp_path / "escape.snapshot",
        {"config.json": b"{}", "0/segments/../../../escape.tar": b"x"},
    )
    work = tmp_path / "work"
    work.mkdir()
    assert_refused(path, work, "unsafe member path", "escape.tar")
    assert not (tmp_path / "escape.tar").exists()


def test_file_that_is_not_a_tar_is_refused(tmp_path):
    path = tmp_path / "random.snapshot"
    path.write_bytes(random.Random(1).randbytes(4096))
    work = tmp_path / "work"
    work.mkdir()
    assert_refused(path, work, "not a readable tar archive")
    assert_refused(tmp_path / "missing.snapshot", work, "no such snapshot file")


def test_standin_still_answers_wrong_input_for_a_bad_snapshot(standin, tmp_path):
    path = write_tar(tmp_path / "no-config.snapshot", {"version.info": b"1.19.0"})
    with path.open("rb") as stream:
        response = requests.post(
            f"{standin.url}/collections/restored/snapshots/upload",
            files={"snapshot": (path.name, stream, "application/octet-stream")},
        )
    assert response.status_code == 400, response.text
    assert response.json()["status"]["error"] == (
        "Wrong input: the snapshot has no config.json: it is not a collection snapshot"
    )
    with path.open("rb") as stream:
        response = requests.post(
            f"{standin.url}/collections/restored/snapshots/upload",
            params={"checksum": "0" * 64},
            files={"snapshot": (path.name, stream, "application/octet-stream")},
        )
    assert response.status_code == 400, response.text
    error = response.json()["status"]["error"]
    # The upload handler's wording (the recover endpoint says "Snapshot checksum mismatch").
    assert error.startswith("Checksum mismatch: expected ") and error.endswith(f"actual {'0' * 64}")
    assert "restored" not in check(requests.get(f"{standin.url}/collections"))["collections"]


# ---------------------------------------------------------------------------------------------
# memory: the offline copy maps its vectors (issue 16, item 2)
# ---------------------------------------------------------------------------------------------


def vector_storage_types(shard: Path) -> list[str]:
    return [
        vector["storage_type"]
        for segment in (shard / "segments").iterdir()
        if (segment / "segment.json").exists()
        for vector in json.loads((segment / "segment.json").read_text())["config"][
            "vector_data"
        ].values()
    ]


def test_memory_offline_copy_maps_vectors_instead_of_loading_them(snapshot, point_ids, tmp_path):
    # As the server wrote them (and as the stand-in's own recovery keeps them): in RAM.
    (tmp_path / "unpacked").mkdir()
    _, shard = unpack_collection_snapshot(snapshot[0], tmp_path / "unpacked")
    assert vector_storage_types(shard) == ["InRamChunkedMmap"] * len(vector_storage_types(shard))
    # The offline reader's private copy maps them instead, and reads every id the same.
    (tmp_path / "read").mkdir()
    with read_snapshot_offline(snapshot[0], tmp_path / "read") as offline:
        copy = next((tmp_path / "read").iterdir()) / "shard"
        kinds = vector_storage_types(copy)
        assert kinds and all(kind == "ChunkedMmap" for kind in kinds)
        assert offline.points == POINT_COUNT
        assert sorted(offline.iter_point_ids()) == sorted(point_ids)


MEMORY_PROBE = """
import json, re, sys
from pathlib import Path
import qdrant_edge as edge
from backup_pipelines.lib.qdrant.offline import keep_vectors_on_disk

def status(field):
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\\s+(\\d+) kB", text, re.M).group(1)) * 1024

shard = Path(sys.argv[1])
if sys.argv[2] == "mapped":
    keep_vectors_on_disk(shard)
rest = status("VmRSS")
Path("/proc/self/clear_refs").write_text("5")
loaded = edge.EdgeShard.load(str(shard))
count = loaded.count(edge.CountRequest(exact=True))
loaded.close()
print(json.dumps({"points": count, "added": status("VmHWM") - rest}))
"""


def test_memory_offline_read_does_not_hold_the_vectors(tmp_path):
    """A shard written as the server writes it (vectors "InRamChunkedMmap"), opened by a fresh
    process as the offline reader opens it: its peak RSS must not grow by the vectors' size."""
    import numpy as np
    import qdrant_edge as edge

    from backup_pipelines.devstack.qdrant.models import collection_config_from_request
    from backup_pipelines.devstack.qdrant.storage import Collection

    points, dimension = 40_000, 384  # 61 MB of float32 vectors
    config = collection_config_from_request({"vectors": {"size": dimension, "distance": "Cosine"}})
    collection = Collection.create("probe", tmp_path / "probe", config)
    vectors = np.random.default_rng(7).standard_normal((points, dimension), dtype=np.float32)
    for start in range(0, points, 10_000):
        batch = [edge.Point(i + 1, vectors[i], {}) for i in range(start, start + 10_000)]
        collection.apply(edge.UpdateOperation.upsert_points(batch))
    collection.shard.flush()
    collection.close()
    shard = next(p.parent for p in (tmp_path / "probe").rglob("segments"))
    # As the offline reader leaves it: the server's WAL replaced by an empty one.
    shutil.rmtree(shard / "wal")
    (shard / "wal").mkdir()
    next_operation = last_operation_number(shard) + 1
    (shard / "wal" / f"closed-{next_operation}").write_bytes(empty_wal_segment())
    vector_bytes = points * dimension * 4

    def probe(mode: str) -> dict:
        done = subprocess.run(
            [sys.executable, "-c", MEMORY_PROBE, str(shard), mode],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return json.loads(done.stdout)

    as_written = probe("as-written")  # the control: the probe does see the vectors
    mapped = probe("mapped")
    assert as_written["points"] == mapped["points"] == points
    assert as_written["added"] > vector_bytes * 0.8, as_written
    assert mapped["added"] < vector_bytes * 0.25, mapped
