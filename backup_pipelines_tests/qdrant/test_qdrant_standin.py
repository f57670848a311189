"""The Qdrant stand-in checked against the official client's models of the real API.

Every answer is parsed with ``qdrant_client.http.models`` (or through the typed client), so a
drift of the stand-in from the real response shapes fails here.
"""

import hashlib
import importlib.metadata
import json
import math
import random
import shutil
import subprocess
import sys
import tarfile
import uuid
import warnings
from pathlib import Path

import pytest
import qdrant_edge
import requests
from qdrant_client import QdrantClient
from qdrant_client.common.version_check import get_server_version, is_compatible
from qdrant_client.http import models

from backup_pipelines.devstack.ports import free_port, wait_for_port
from backup_pipelines.devstack.qdrant import QdrantStandin

DIMENSION = 384
POINT_COUNT = 1000
COLLECTION = "agent_memories"
PAGE = 250


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def result_of(response: requests.Response, model=None):
    """The `result` of a real-API envelope, parsed with the client's model when given."""
    assert response.status_code == 200, response.text
    document = response.json()
    assert document["status"] == "ok"
    assert isinstance(document["time"], float)
    return model.model_validate(document["result"]) if model else document["result"]


def assert_error(response: requests.Response, status: int) -> str:
    """The real error envelope: {"status": {"error": ...}, "time": ...}."""
    assert response.status_code == status, response.text
    document = response.json()
    assert isinstance(document["time"], float)
    assert isinstance(document["status"]["error"], str) and document["status"]["error"]
    return document["status"]["error"]


def client_for(url: str, api_key: str | None = None) -> QdrantClient:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # api key over plain http on loopback is intended here
        # The client checks the server version on a background thread that can outlive a
        # short-lived server; test_service_endpoints_answer_like_a_server checks it instead.
        return QdrantClient(url=url, api_key=api_key, timeout=60, check_compatibility=False)


def memory_id(number: int) -> int | str:
    # Half integer ids, half UUIDs: the real API accepts both.
    return number if number % 2 else str(uuid.uuid5(uuid.NAMESPACE_URL, f"memory-{number}"))


def memory_points(count: int, seed: int) -> list[dict]:
    generator = random.Random(seed)
    return [
        {
            "id": memory_id(number),
            "vector": [generator.uniform(-1, 1) for _ in range(DIMENSION)],
            "payload": {"text": f"memory {number}", "session": f"s{number % 7}", "turn": number},
        }
        for number in range(count)
    ]


def unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(value * value for value in vector))
    return [value / norm for value in vector]


def all_records(client: QdrantClient, collection: str) -> dict:
    """Every point as {id: (vector, payload)}, paged with scroll like a real client would."""
    records, offset = {}, None
    while True:
        page, offset = client.scroll(collection, limit=PAGE, offset=offset, with_vectors=True)
        records.update({record.id: (record.vector, record.payload) for record in page})
        if offset is None:
            return records


def create_collection(url: str, name: str) -> None:
    body = {"vectors": {"size": DIMENSION, "distance": "Cosine"}}
    assert result_of(requests.put(f"{url}/collections/{name}", json=body)) is True


def upsert(url: str, name: str, points: list[dict]) -> models.UpdateResult:
    response = requests.put(f"{url}/collections/{name}/points?wait=true", json={"points": points})
    return result_of(response, models.UpdateResult)


def upload_snapshot(url: str, name: str, snapshot: Path, checksum: str) -> requests.Response:
    with snapshot.open("rb") as stream:
        return requests.post(
            f"{url}/collections/{name}/snapshots/upload",
            params={"priority": "snapshot", "checksum": checksum, "wait": "true"},
            files={"snapshot": (snapshot.name, stream, "application/octet-stream")},
        )


def sha256_of_download(response: requests.Response, target: Path) -> str:
    digest = hashlib.sha256()
    with target.open("wb") as sink:
        for chunk in response.iter_content(1 << 20):
            digest.update(chunk)
            sink.write(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    server = QdrantStandin(tmp_path_factory.mktemp("qdrant-storage"), port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(standin):
    return client_for(standin.url)


@pytest.fixture(scope="module")
def memories(standin):
    """A collection of POINT_COUNT memories and the points that went in."""
    create_collection(standin.url, COLLECTION)
    points = memory_points(POINT_COUNT, seed=7)
    update = upsert(standin.url, COLLECTION, points)
    assert update.status == models.UpdateStatus.COMPLETED
    return points


@pytest.fixture(scope="module")
def snapshot(standin, client, memories, tmp_path_factory):
    """A snapshot of the memories collection, downloaded, with the records it holds."""
    response = requests.post(f"{standin.url}/collections/{COLLECTION}/snapshots?wait=true")
    description = result_of(response, models.SnapshotDescription)
    download = requests.get(
        f"{standin.url}/collections/{COLLECTION}/snapshots/{description.name}",
        headers={"Accept-Encoding": "identity"},
        stream=True,
    )
    assert download.status_code == 200
    assert int(download.headers["Content-Length"]) == description.size
    copy = tmp_path_factory.mktemp("downloads") / description.name
    checksum = sha256_of_download(download, copy)
    return {
        "description": description,
        "file": copy,
        "checksum": checksum,
        "records": all_records(client, COLLECTION),
    }


# ---------------------------------------------------------------------------------------------
# service, collections, aliases
# ---------------------------------------------------------------------------------------------


def test_service_endpoints_answer_like_a_server(standin):
    version = models.VersionInfo.model_validate(requests.get(f"{standin.url}/").json())
    assert "standin" in version.version
    client_version = importlib.metadata.version("qdrant-client")
    assert is_compatible(client_version, get_server_version(standin.url, {}, None, 10))
    for probe in ("healthz", "readyz"):
        response = requests.get(f"{standin.url}/{probe}")
        assert response.status_code == 200 and response.headers["Content-Type"] == "text/plain"


def test_collection_lifecycle_and_aliases(standin, client):
    url, name = standin.url, "lifecycle"
    create_collection(url, name)
    assert_error(
        requests.put(f"{url}/collections/{name}", json={"vectors": {"size": 4, "distance": "Dot"}}),
        409,
    )

    info = result_of(requests.get(f"{url}/collections/{name}"), models.CollectionInfo)
    assert info.status == models.CollectionStatus.GREEN and info.points_count == 0
    assert info.config.params.vectors.size == DIMENSION
    listed = result_of(requests.get(f"{url}/collections"), models.CollectionsResponse)
    assert name in {collection.name for collection in listed.collections}
    exists = result_of(requests.get(f"{url}/collections/{name}/exists"), models.CollectionExistence)
    assert exists.exists is True

    client.update_collection_aliases(
        [
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=name, alias_name="lifecycle_live")
            )
        ]
    )
    aliases = result_of(
        requests.get(f"{url}/collections/{name}/aliases"), models.CollectionsAliasesResponse
    )
    assert [(a.alias_name, a.collection_name) for a in aliases.aliases] == [
        ("lifecycle_live", name)
    ]
    assert (
        result_of(
            requests.get(f"{url}/collections/lifecycle_live"), models.CollectionInfo
        ).points_count
        == 0
    )
    actions = {"actions": [{"delete_alias": {"alias_name": "lifecycle_live"}}]}
    assert result_of(requests.post(f"{url}/collections/aliases", json=actions)) is True
    assert client.get_aliases().aliases == []

    assert client.delete_collection(name) is True
    assert result_of(requests.delete(f"{url}/collections/{name}")) is False
    assert client.collection_exists(name) is False


def test_missing_things_answer_404_with_the_error_envelope(standin, memories):
    url = standin.url
    assert "doesn't exist" in assert_error(requests.get(f"{url}/collections/nowhere"), 404)
    assert_error(requests.post(f"{url}/collections/nowhere/points/count", json={}), 404)
    assert_error(requests.get(f"{url}/collections/nowhere/snapshots"), 404)
    assert_error(requests.post(f"{url}/collections/nowhere/snapshots"), 404)
    assert_error(requests.get(f"{url}/collections/{COLLECTION}/snapshots/none.snapshot"), 404)
    assert_error(requests.delete(f"{url}/collections/{COLLECTION}/snapshots/none.snapshot"), 404)
    assert_error(requests.get(f"{url}/collections/{COLLECTION}/snapshots/..%2Fpeer.json"), 404)


# ---------------------------------------------------------------------------------------------
# points
# ---------------------------------------------------------------------------------------------


def test_points_count_scroll_retrieve_search(standin, client, memories):
    url = standin.url
    count = result_of(
        requests.post(f"{url}/collections/{COLLECTION}/points/count", json={"exact": True}),
        models.CountResult,
    )
    assert count.count == POINT_COUNT
    one_session = {
        "exact": True,
        "filter": {"must": [{"key": "session", "match": {"value": "s3"}}]},
    }
    filtered = result_of(
        requests.post(f"{url}/collections/{COLLECTION}/points/count", json=one_session),
        models.CountResult,
    )
    assert filtered.count == sum(1 for point in memories if point["payload"]["session"] == "s3")

    page = result_of(
        requests.post(
            f"{url}/collections/{COLLECTION}/points/scroll",
            json={"limit": 10, "with_payload": True},
        ),
        models.ScrollResult,
    )
    assert len(page.points) == 10 and page.next_page_offset is not None
    records = all_records(client, COLLECTION)
    assert set(records) == {point["id"] for point in memories}

    wanted = [memories[1], memories[2]]
    body = {"ids": [point["id"] for point in wanted], "with_vector": True, "with_payload": True}
    retrieved = result_of(requests.post(f"{url}/collections/{COLLECTION}/points", json=body))
    by_id = {record.id: record for record in map(models.Record.model_validate, retrieved)}
    for point in wanted:
        # Cosine collections store normalized vectors, as a real server does.
        assert by_id[point["id"]].vector == pytest.approx(unit(point["vector"]), abs=1e-6)
        assert by_id[point["id"]].payload == point["payload"]

    target = memories[42]
    hits = client.query_points(
        COLLECTION, query=target["vector"], limit=3, with_payload=True
    ).points
    assert hits[0].id == target["id"] and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].payload == target["payload"]
    legacy = requests.post(
        f"{url}/collections/{COLLECTION}/points/search",
        json={"vector": target["vector"], "limit": 1},
    )
    assert models.ScoredPoint.model_validate(result_of(legacy)[0]).id == target["id"]


def test_points_delete_and_wrong_dimension(standin, client):
    url, name = standin.url, "deletions"
    create_collection(url, name)
    upsert(url, name, memory_points(20, seed=1))
    deleted = requests.post(
        f"{url}/collections/{name}/points/delete?wait=true",
        json={"points": [memory_id(0), memory_id(1)]},
    )
    assert result_of(deleted, models.UpdateResult).status == models.UpdateStatus.COMPLETED
    assert client.count(name, exact=True).count == 18
    bad = requests.put(
        f"{url}/collections/{name}/points?wait=true",
        json={"points": [{"id": 1, "vector": [0.1, 0.2]}]},
    )
    assert "dimension" in assert_error(bad, 400)
    assert client.count(name, exact=True).count == 18
    client.delete_collection(name)


# ---------------------------------------------------------------------------------------------
# snapshots
# ---------------------------------------------------------------------------------------------


def test_snapshot_is_listed_checksummed_and_in_the_server_layout(standin, snapshot, tmp_path):
    description = snapshot["description"]
    listed = [
        models.SnapshotDescription.model_validate(item)
        for item in result_of(requests.get(f"{standin.url}/collections/{COLLECTION}/snapshots"))
    ]
    assert description in listed
    assert description.name.startswith(f"{COLLECTION}-") and description.name.endswith(".snapshot")
    assert snapshot["checksum"] == description.checksum
    checksum_file = standin.state.snapshots_dir / COLLECTION / f"{description.name}.checksum"
    assert checksum_file.read_text() == description.checksum

    with tarfile.open(snapshot["file"]) as archive:
        names = archive.getnames()
        config = json.load(archive.extractfile("config.json"))
        shard_members = [m for m in archive.getmembers() if m.name.startswith("0/") and m.isfile()]
        assert {
            "config.json",
            "version.info",
            "0/shard_config.json",
            "0/replica_state.json",
        } <= set(names)
        assert any(name.startswith("0/segments/") and name.endswith(".tar") for name in names)
        assert any(name.startswith("0/wal/") for name in names)
        assert config["params"]["vectors"] == {"size": DIMENSION, "distance": "Cosine"}
        # The shard folder tarred on its own is a shard snapshot the engine itself can read.
        shard_tar = tmp_path / "shard.tar"
        with tarfile.open(shard_tar, "w") as shard_archive:
            for member in shard_members:
                member_copy = archive.getmember(member.name)
                data = archive.extractfile(member)
                member_copy.name = member.name.removeprefix("0/")
                shard_archive.addfile(member_copy, data)
    qdrant_edge.EdgeShard.unpack_snapshot(str(shard_tar), str(tmp_path / "shard"))
    shard = qdrant_edge.EdgeShard.load(str(tmp_path / "shard"))
    assert shard.count(qdrant_edge.CountRequest(exact=True)) == POINT_COUNT
    shard.close()


def test_upload_recovers_a_deleted_collection(standin, client, snapshot, memories):
    assert client.delete_collection(COLLECTION) is True
    response = upload_snapshot(standin.url, COLLECTION, snapshot["file"], snapshot["checksum"])
    assert result_of(response) is True

    assert client.get_collection(COLLECTION).points_count == POINT_COUNT
    assert all_records(client, COLLECTION) == snapshot["records"]
    remembered = memories[314]
    hits = client.query_points(
        COLLECTION, query=remembered["vector"], limit=1, with_payload=True
    ).points
    assert hits[0].id == remembered["id"] and hits[0].payload == remembered["payload"]

    # Updates after a recovery must apply (the recovered WAL continues the operation numbers).
    changed = {**remembered, "payload": {"text": "rewritten"}}
    upsert(standin.url, COLLECTION, [changed])
    assert client.retrieve(COLLECTION, [remembered["id"]])[0].payload == {"text": "rewritten"}


def test_recover_from_snapshots_dir_replaces_changed_data(standin, client, snapshot):
    upsert(standin.url, COLLECTION, memory_points(3, seed=99))
    client.delete(COLLECTION, points_selector=models.PointIdsList(points=[memory_id(11)]))
    location = (standin.state.snapshots_dir / COLLECTION / snapshot["description"].name).as_uri()
    body = {"location": location, "priority": "snapshot", "checksum": snapshot["checksum"]}
    response = requests.put(
        f"{standin.url}/collections/{COLLECTION}/snapshots/recover?wait=true", json=body
    )
    assert result_of(response) is True
    assert all_records(client, COLLECTION) == snapshot["records"]

    # The typed client's call works too, and recovery creates a missing collection.
    assert client.recover_snapshot(
        "agent_memories_copy",
        location=location,
        priority=models.SnapshotPriority.SNAPSHOT,
        wait=True,
    )
    assert client.count("agent_memories_copy", exact=True).count == POINT_COUNT
    client.delete_collection("agent_memories_copy")


def test_wrong_checksum_is_refused_and_leaves_the_collection_untouched(standin, client, snapshot):
    client.delete(COLLECTION, points_selector=models.PointIdsList(points=[memory_id(21)]))
    expected = client.count(COLLECTION, exact=True).count
    wrong = "0" * 64
    assert (
        "checksum"
        in assert_error(
            upload_snapshot(standin.url, COLLECTION, snapshot["file"], wrong), 400
        ).lower()
    )
    location = (standin.state.snapshots_dir / COLLECTION / snapshot["description"].name).as_uri()
    body = {"location": location, "priority": "snapshot", "checksum": wrong}
    assert_error(
        requests.put(f"{standin.url}/collections/{COLLECTION}/snapshots/recover", json=body), 400
    )
    assert client.count(COLLECTION, exact=True).count == expected


def test_file_locations_outside_the_snapshots_dir_are_refused(standin, snapshot, tmp_path):
    outside = tmp_path / snapshot["file"].name
    shutil.copy(snapshot["file"], outside)
    url = f"{standin.url}/collections/{COLLECTION}/snapshots/recover"
    assert_error(
        requests.put(url, json={"location": outside.as_uri(), "priority": "snapshot"}), 403
    )
    sneaky = f"{standin.state.snapshots_dir.as_uri()}/../../{outside.name}"
    assert_error(requests.put(url, json={"location": sneaky, "priority": "snapshot"}), 403)
    missing = (standin.state.snapshots_dir / COLLECTION / "missing.snapshot").as_uri()
    assert_error(requests.put(url, json={"location": missing, "priority": "snapshot"}), 400)


def test_snapshot_delete_removes_file_and_checksum(standin, client, memories):
    description = client.create_snapshot(COLLECTION, wait=True)
    folder = standin.state.snapshots_dir / COLLECTION
    assert (folder / f"{description.name}.checksum").exists()
    assert client.delete_snapshot(COLLECTION, description.name, wait=True)
    assert not (folder / description.name).exists()
    assert not (folder / f"{description.name}.checksum").exists()


# ---------------------------------------------------------------------------------------------
# restart, command line (keys, versions, uploads: test_qdrant_standin_server.py)
# ---------------------------------------------------------------------------------------------


def test_collections_survive_a_restart(tmp_path):
    with QdrantStandin(tmp_path, port=free_port()) as server:
        create_collection(server.url, "durable")
        upsert(server.url, "durable", memory_points(30, seed=3))
    with QdrantStandin(tmp_path, port=free_port()) as server:
        assert client_for(server.url).count("durable", exact=True).count == 30
        assert upsert(server.url, "durable", memory_points(1, seed=4)).operation_id >= 1


def test_runs_as_a_module_process(tmp_path):
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "backup_pipelines.devstack.qdrant",
        "--port",
        str(port),
        "--storage",
        str(tmp_path),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, timeout=20)
        assert "standin" in requests.get(f"http://127.0.0.1:{port}/").json()["version"]
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
