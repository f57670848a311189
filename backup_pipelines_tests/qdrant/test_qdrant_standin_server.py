"""The stand-in behaves like a real Qdrant server (v1.19 source) where production depends on it:
uploaded snapshots are kept, aliases are resolved, version.info is checked, an existing
collection keeps its configuration on recovery, auth answers in plain text with an open `/`
and a read-only key, downloads are gzipped for clients that accept it, `/cluster` reports the
node (or a simulated cluster), and a recovery goes on after its client is gone."""

import gzip
import hashlib
import random
import tarfile
import threading
from pathlib import Path

import pytest
import requests
from qdrant_client.http import models

from backup_pipelines.devstack.ports import free_port
from backup_pipelines.devstack.qdrant import QdrantStandin
from backup_pipelines.devstack.qdrant.cluster import ClusterLayout

DIMENSION = 8


def result_of(response: requests.Response):
    assert response.status_code == 200, response.text
    return response.json()["result"]


def error_of(response: requests.Response, status: int) -> str:
    assert response.status_code == status, response.text
    return response.json()["status"]["error"]


def add_collection(url: str, name: str, points: int, seed: int = 1, **config) -> None:
    body = {"vectors": {"size": DIMENSION, "distance": "Cosine"}, **config}
    assert result_of(requests.put(f"{url}/collections/{name}", json=body)) is True
    generator = random.Random(seed)
    batch = [
        {"id": i, "vector": [generator.uniform(-1, 1) for _ in range(DIMENSION)], "payload": {}}
        for i in range(1, points + 1)
    ]
    if batch:
        result_of(
            requests.put(f"{url}/collections/{name}/points?wait=true", json={"points": batch})
        )


def count(url: str, name: str) -> int:
    return result_of(requests.post(f"{url}/collections/{name}/points/count", json={}))["count"]


def take_snapshot(url: str, name: str, target: Path) -> str:
    """Create a snapshot, download it uncompressed to `target`; returns the server's sha256."""
    created = result_of(requests.post(f"{url}/collections/{name}/snapshots?wait=true"))
    with requests.get(
        f"{url}/collections/{name}/snapshots/{created['name']}",
        headers={"Accept-Encoding": "identity"},
        stream=True,
    ) as got:
        assert got.status_code == 200, got.text
        with target.open("wb") as sink:
            for chunk in got.iter_content(1 << 20):
                sink.write(chunk)
    result_of(requests.delete(f"{url}/collections/{name}/snapshots/{created['name']}"))
    return created["checksum"]


def upload(url: str, name: str, snapshot: Path, file_name: str, read_timeout=60.0, **params):
    """POST the snapshot as the `snapshot` field; the body is sent within the 60 s connect
    timeout (urllib3 applies the read timeout only once the request is out)."""
    with snapshot.open("rb") as stream:
        return requests.post(
            f"{url}/collections/{name}/snapshots/upload",
            params={"priority": "snapshot", "wait": "true", **params},
            files={"snapshot": (file_name, stream, "application/octet-stream")},
            timeout=(60, read_timeout),
        )


def snapshot_names(url: str, name: str) -> list[str]:
    return [s["name"] for s in result_of(requests.get(f"{url}/collections/{name}/snapshots"))]


@pytest.fixture
def standin(tmp_path):
    with QdrantStandin(tmp_path / "storage", port=free_port()) as server:
        yield server


@pytest.fixture
def small_snapshot(standin, tmp_path) -> tuple[Path, str]:
    """A snapshot of a 30-point collection `source` (the collection stays)."""
    add_collection(standin.url, "source", 30)
    path = tmp_path / "source.snapshot"
    return path, take_snapshot(standin.url, "source", path)


# ---------------------------------------------------------------------------------------------
# uploads are kept


def test_qdrant_standin_keeps_uploaded_snapshot_where_the_server_keeps_it(standin, small_snapshot):
    path, checksum = small_snapshot
    assert result_of(upload(standin.url, "copy", path, "../up-1.snapshot", checksum=checksum))
    assert count(standin.url, "copy") == 30
    kept = standin.state.snapshots_dir / "copy" / "up-1.snapshot"  # top-level name only
    assert kept.is_file() and "up-1.snapshot" in snapshot_names(standin.url, "copy")
    assert standin.state.uploads == [{"collection": "copy", "file": "../up-1.snapshot"}]

    # Deleting the collection leaves the file, and the API can no longer reach it.
    assert result_of(requests.delete(f"{standin.url}/collections/copy")) is True
    gone = requests.delete(f"{standin.url}/collections/copy/snapshots/up-1.snapshot")
    assert "doesn't exist" in error_of(gone, 404)
    assert kept.is_file()


def test_qdrant_standin_deletes_a_kept_upload_while_its_collection_exists(standin, small_snapshot):
    path, checksum = small_snapshot
    assert result_of(upload(standin.url, "copy", path, "up-2.snapshot", checksum=checksum))
    deleted = requests.delete(f"{standin.url}/collections/copy/snapshots/up-2.snapshot?wait=true")
    assert result_of(deleted) is True
    assert snapshot_names(standin.url, "copy") == []
    assert not (standin.state.snapshots_dir / "copy" / "up-2.snapshot").exists()


def test_qdrant_standin_upload_checksum_is_checked_before_anything_is_kept(standin, small_snapshot):
    path, _ = small_snapshot
    refused = upload(standin.url, "copy", path, "up-3.snapshot", checksum="0" * 64)
    assert error_of(refused, 400).endswith(f"actual {'0' * 64}")
    assert not (standin.state.snapshots_dir / "copy" / "up-3.snapshot").exists()
    assert requests.get(f"{standin.url}/collections/copy").status_code == 404


# ---------------------------------------------------------------------------------------------
# aliases


def test_qdrant_standin_resolves_aliases_like_the_server(standin, small_snapshot, tmp_path):
    url = standin.url
    path, checksum = small_snapshot
    actions = [{"create_alias": {"collection_name": "source", "alias_name": "live"}}]
    assert result_of(requests.post(f"{url}/collections/aliases", json={"actions": actions}))

    assert result_of(requests.get(f"{url}/collections/live/exists")) == {"exists": True}
    # An alias has no aliases of its own: the listing is literal.
    assert result_of(requests.get(f"{url}/collections/live/aliases")) == {"aliases": []}
    assert result_of(requests.get(f"{url}/collections/source/aliases"))["aliases"] == [
        {"alias_name": "live", "collection_name": "source"}
    ]
    # A snapshot through the alias is the collection's, named after the collection.
    through_alias = tmp_path / "through-alias.snapshot"
    take_snapshot(url, "live", through_alias)
    with tarfile.open(through_alias) as archive:
        assert "config.json" in archive.getnames()

    # Recovering through the alias recovers the collection; the upload lands in the folder
    # named after the alias, which no collection owns.
    requests.post(f"{url}/collections/source/points/delete?wait=true", json={"points": [1, 2]})
    assert count(url, "source") == 28
    assert result_of(upload(url, "live", path, "via-alias.snapshot", checksum=checksum))
    assert count(url, "source") == 30
    assert (standin.state.snapshots_dir / "live" / "via-alias.snapshot").is_file()
    assert "via-alias.snapshot" not in snapshot_names(url, "live")
    # Deleting by the alias's name deletes nothing.
    assert result_of(requests.delete(f"{url}/collections/live")) is False
    assert count(url, "source") == 30


# ---------------------------------------------------------------------------------------------
# version.info


def test_qdrant_standin_checks_version_info_on_recovery(tmp_path):
    snapshots = {}
    for version in ("1.20.0", "1.18.3", "1.17.0"):
        with QdrantStandin(tmp_path / version, port=free_port(), version=version) as older:
            assert requests.get(f"{older.url}/").json()["version"] == f"{version}-standin"
            add_collection(older.url, "memories", 5)
            snapshots[version] = tmp_path / f"{version}.snapshot"
            take_snapshot(older.url, "memories", snapshots[version])
            with tarfile.open(snapshots[version]) as archive:
                assert archive.extractfile("version.info").read() == version.encode()

    with QdrantStandin(tmp_path / "1.19.0", port=free_port(), version="1.19.0") as server:
        newer = upload(server.url, "memories", snapshots["1.20.0"], "newer.snapshot")
        assert error_of(newer, 500) == (
            "Service internal error: Data version 1.20.0 is newer than application version "
            "1.19.0. Please upgrade the application. Compatibility is not guaranteed."
        )
        too_old = upload(server.url, "memories", snapshots["1.17.0"], "old.snapshot")
        assert "Cannot upgrade version 1.17.0 to 1.19.0" in error_of(too_old, 500)
        assert result_of(requests.get(f"{server.url}/collections"))["collections"] == []

        assert result_of(upload(server.url, "memories", snapshots["1.18.3"], "prev.snapshot"))
        assert count(server.url, "memories") == 5


# ---------------------------------------------------------------------------------------------
# recovery into an existing collection


def test_qdrant_standin_recovery_into_existing_collection_keeps_its_configuration(
    standin, small_snapshot
):
    url = standin.url
    path, checksum = small_snapshot
    add_collection(url, "tuned", 3, seed=9, hnsw_config={"m": 32}, on_disk_payload=False)
    assert result_of(upload(url, "tuned", path, "into-tuned.snapshot", checksum=checksum))

    info = models.CollectionInfo.model_validate(result_of(requests.get(f"{url}/collections/tuned")))
    assert info.points_count == 30  # the snapshot's data
    assert info.config.hnsw_config.m == 32  # ... under the existing collection's configuration
    assert info.config.params.on_disk_payload is False
    source = models.CollectionInfo.model_validate(
        result_of(requests.get(f"{url}/collections/source"))
    )
    assert source.config.hnsw_config.m == 16


@pytest.mark.parametrize(
    ("config", "phrase"),
    [
        ({"vectors": {"size": DIMENSION, "distance": "Dot"}}, "Collection vectors"),
        ({"shard_number": 2}, "Collection shard number: 2 Snapshot shard number: 1"),
    ],
)
def test_qdrant_standin_recovery_into_existing_collection_needs_equal_vectors_and_shards(
    standin, small_snapshot, config, phrase
):
    url = standin.url
    path, checksum = small_snapshot
    add_collection(url, "other", 3, seed=9, **config)
    refused = upload(url, "other", path, "into-other.snapshot", checksum=checksum)
    message = error_of(refused, 400)
    assert message.startswith("Wrong input: Snapshot is not compatible with existing collection")
    assert phrase in message
    assert count(url, "other") == 3


# ---------------------------------------------------------------------------------------------
# auth


def test_qdrant_standin_auth_answers_like_the_server(tmp_path):
    with QdrantStandin(
        tmp_path, port=free_port(), api_key="rw-key", read_only_api_key="ro-key"
    ) as server:
        url = server.url
        assert requests.get(f"{url}/").json()["version"].endswith("-standin")  # open
        for headers, text in [
            ({}, "Must provide an API key or an Authorization bearer token"),
            ({"api-key": "wrong"}, "Invalid API key or JWT"),
        ]:
            refused = requests.get(f"{url}/collections", headers=headers)
            assert refused.status_code == 401
            assert refused.headers["Content-Type"].startswith("text/plain")
            assert refused.text == text
        bearer = {"Authorization": "Bearer rw-key"}
        add = requests.put(
            f"{url}/collections/keyed",
            json={"vectors": {"size": DIMENSION, "distance": "Cosine"}},
            headers=bearer,
        )
        assert result_of(add) is True

        read_only = {"api-key": "ro-key"}
        assert result_of(requests.get(f"{url}/collections/keyed/exists", headers=read_only))
        snapshot = requests.post(f"{url}/collections/keyed/snapshots", headers=read_only)
        assert error_of(snapshot, 403) == "Forbidden: Global manage access is required"
        created = result_of(
            requests.post(f"{url}/collections/keyed/snapshots", headers={"api-key": "rw-key"})
        )
        download = requests.get(
            f"{url}/collections/keyed/snapshots/{created['name']}", headers=read_only
        )
        assert download.status_code == 200 and download.content
        delete = requests.delete(
            f"{url}/collections/keyed/snapshots/{created['name']}", headers=read_only
        )
        assert error_of(delete, 403) == "Forbidden: Global manage access is required"


# ---------------------------------------------------------------------------------------------
# compression of downloads


def test_qdrant_standin_gzips_snapshot_downloads_unless_asked_not_to(standin, tmp_path):
    url = standin.url
    add_collection(url, "zipped", 20)
    created = result_of(requests.post(f"{url}/collections/zipped/snapshots?wait=true"))
    path = f"{url}/collections/zipped/snapshots/{created['name']}"

    with requests.get(path, headers={"Accept-Encoding": "gzip"}, stream=True) as zipped:
        assert zipped.headers["Content-Encoding"] == "gzip"
        assert "Content-Length" not in zipped.headers
        body = b"".join(zipped.raw.stream(1 << 16, decode_content=False))
    assert hashlib.sha256(gzip.decompress(body)).hexdigest() == created["checksum"]

    plain = requests.get(path, headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers
    assert int(plain.headers["Content-Length"]) == created["size"] == len(plain.content)
    assert hashlib.sha256(plain.content).hexdigest() == created["checksum"]
    assert standin.state.downloads == ["gzip", "identity"]


# ---------------------------------------------------------------------------------------------
# cluster


def test_qdrant_standin_reports_a_single_node_by_default(standin):
    add_collection(standin.url, "alone", 4)
    status = result_of(requests.get(f"{standin.url}/cluster"))
    assert models.ClusterStatusOneOf.model_validate(status).status == "disabled"
    info = models.CollectionClusterInfo.model_validate(
        result_of(requests.get(f"{standin.url}/collections/alone/cluster"))
    )
    assert info.shard_count == 1 and info.remote_shards == []
    assert [(s.shard_id, s.points_count, s.state) for s in info.local_shards] == [
        (0, 4, models.ReplicaState.ACTIVE)
    ]


@pytest.mark.parametrize("replicated", [False, True])
def test_qdrant_standin_simulates_a_peer_of_a_cluster(tmp_path, replicated):
    layout = ClusterLayout(peers=3, replicated=replicated)
    with QdrantStandin(tmp_path, port=free_port(), cluster=layout) as server:
        add_collection(server.url, "spread", 4)
        status = models.ClusterStatusOneOf1.model_validate(
            result_of(requests.get(f"{server.url}/cluster"))
        )
        assert status.status == "enabled" and len(status.peers) == 3
        info = models.CollectionClusterInfo.model_validate(
            result_of(requests.get(f"{server.url}/collections/spread/cluster"))
        )
    remote = sorted((s.shard_id, s.peer_id != info.peer_id) for s in info.remote_shards)
    if replicated:
        assert info.shard_count == 1 and remote == [(0, True), (0, True)]
    else:
        assert info.shard_count == 3 and remote == [(1, True), (2, True)]


# ---------------------------------------------------------------------------------------------
# a recovery outlives its client


def test_qdrant_standin_recovery_goes_on_after_the_client_gave_up(tmp_path):
    with QdrantStandin(tmp_path / "storage", port=free_port(), recovery_delay=1.0) as server:
        add_collection(server.url, "slow", 12)
        snapshot = tmp_path / "slow.snapshot"
        checksum = take_snapshot(server.url, "slow", snapshot)
        requests.post(
            f"{server.url}/collections/slow/points/delete?wait=true", json={"points": [1]}
        )
        states: list[str] = []
        watcher = threading.Thread(target=watch_shard_state, args=(server.url, "slow", states))
        watcher.start()
        with pytest.raises(requests.ReadTimeout):
            upload(server.url, "slow", snapshot, "slow-up.snapshot", 0.3, checksum=checksum)
        watcher.join()
        assert "Partial" in states and states[-1] == "Active"
        assert count(server.url, "slow") == 12
        assert len(server.state.uploads) == 1


def watch_shard_state(url: str, name: str, seen: list[str], deadline_polls: int = 2000) -> None:
    """Record the local shard's state until it was Partial and is Active again."""
    for _ in range(deadline_polls):
        info = result_of(requests.get(f"{url}/collections/{name}/cluster"))
        state = info["local_shards"][0]["state"]
        if not seen or seen[-1] != state:
            seen.append(state)
        if "Partial" in seen and state == "Active":
            return
        threading.Event().wait(0.01)
