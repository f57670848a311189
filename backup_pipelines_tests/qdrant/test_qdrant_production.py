"""The product against Qdrant as production runs it, through the stand-in (which behaves like a
real server: see test_qdrant_standin_server.py): recoveries that are never sent twice,
uploaded files that never pile up, version, alias, configuration and cluster checks, downloads
without compression, and clear errors for missing or read-only keys."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest

from backup_pipelines.devstack.ports import free_port
from backup_pipelines.devstack.qdrant import QdrantStandin
from backup_pipelines.devstack.qdrant.cluster import ClusterLayout
from backup_pipelines.lib.engines import Mode
from backup_pipelines.lib.errors import BackupError
from backup_pipelines.lib.http import IndexStoreError, RetryPolicy
from backup_pipelines.lib.qdrant import restore as qdrant_restore
from backup_pipelines.lib.qdrant.client import QdrantHttp
from backup_pipelines.lib.qdrant.snapshot import snapshot_qdrant_collections
from backup_pipelines.lib.store import ArtifactRef, LocalStore
from backup_pipelines_tests.qdrant.servers import GatewayTimeoutProxy, ShortBodyServer

DATE = "2026-11-21"
DIMENSION = 8
POINTS = 30
FAST = RetryPolicy(attempts=5, first_delay=0.01, max_delay=0.05)


def points(count: int, seed: int = 1, start: int = 1) -> list[dict]:
    generator = random.Random(seed)
    return [
        {
            "id": number,
            "vector": [generator.uniform(-1, 1) for _ in range(DIMENSION)],
            "payload": {"n": number},
        }
        for number in range(start, start + count)
    ]


def make_collection(client: QdrantHttp, name: str, count: int = POINTS, **config) -> None:
    client.create_collection(name, size=DIMENSION, distance="Cosine", **config)
    client.upsert_points(name, points(count))


def back_up(client: QdrantHttp, store: LocalStore, collections: list[str], workspace="ws_a"):
    ref = ArtifactRef("qdrant/collection_snapshot", DATE, workspace)
    with store.begin(ref) as writer:
        writer.commit(
            **snapshot_qdrant_collections(client, client.http.base_url, collections, writer)
        )
    return ref, store.require_manifest(ref)


def files_on_server(standin: QdrantStandin) -> list[str]:
    """Every file left in the server's snapshots folder (uploads, snapshots, checksums)."""
    root = standin.state.snapshots_dir
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def download(client: QdrantHttp, collection: str, target: Path) -> dict:
    snapshot = client.create_snapshot(collection)
    with target.open("wb") as sink:
        for chunk in client.stream_snapshot(collection, snapshot["name"]):
            sink.write(chunk)
    client.delete_snapshot(collection, snapshot["name"])
    return snapshot


@pytest.fixture
def standin(tmp_path):
    with QdrantStandin(tmp_path / "qdrant", port=free_port()) as server:
        yield server


@pytest.fixture
def client(standin):
    with QdrantHttp(standin.url, policy=FAST) as qdrant:
        yield qdrant


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "store")


# ---------------------------------------------------------------------------------------------
# 1. a recovery is never sent twice


def test_qdrant_recovery_whose_answer_timed_out_is_not_sent_again(tmp_path):
    with QdrantStandin(tmp_path / "qdrant", port=free_port(), recovery_delay=1.5) as server:
        client = QdrantHttp(server.url, policy=FAST)
        make_collection(client, "memories")
        snapshot = download(client, "memories", tmp_path / "memories.snapshot")
        client.delete_collection("memories")
        # The answer comes after 1.5 s; the client waits 0.5 s for it, then watches.
        client.snapshot_read_timeout = 0.5
        client.recovery_wait, client.poll_interval = 120, 0.05

        client.recover_from_upload(
            "memories", tmp_path / "memories.snapshot", checksum=snapshot["checksum"]
        )

        assert len(server.state.uploads) == 1, "the upload was sent again"
        assert client.count("memories") == POINTS
        info = client.collection_cluster_info("memories")
        assert [s["state"] for s in info["local_shards"]] == ["Active"]
        client.close()


def test_qdrant_recovery_behind_a_proxy_answering_504_is_not_sent_again(standin, tmp_path):
    direct = QdrantHttp(standin.url, policy=FAST)
    make_collection(direct, "memories")
    snapshot = download(direct, "memories", tmp_path / "memories.snapshot")
    direct.upsert_points("memories", points(5, seed=2, start=1000))  # changed after the backup
    with GatewayTimeoutProxy(standin.url) as proxy:
        client = QdrantHttp(proxy.url, policy=FAST)
        client.recovery_wait, client.poll_interval = 120, 0.05

        client.recover_from_upload(
            "memories",
            tmp_path / "memories.snapshot",
            checksum=snapshot["checksum"],
            expected_points=POINTS,
        )

        assert len(standin.state.uploads) == 1, "the upload was sent again"
    assert direct.count("memories") == POINTS  # the snapshot's state, recovered once
    client.close()
    direct.close()


def test_qdrant_recovery_failing_with_500_fails_at_once_with_the_servers_message(tmp_path):
    newer = QdrantStandin(tmp_path / "newer", port=free_port(), version="1.20.0")
    with newer, QdrantHttp(newer.url, policy=FAST) as source:
        make_collection(source, "memories")
        snapshot = download(source, "memories", tmp_path / "newer.snapshot")
    with QdrantStandin(tmp_path / "older", port=free_port(), version="1.19.0") as server:
        client = QdrantHttp(server.url, policy=FAST)
        with client, pytest.raises(IndexStoreError) as raised:
            client.recover_from_upload(
                "memories", tmp_path / "newer.snapshot", checksum=snapshot["checksum"]
            )
        assert raised.value.status == 500 and raised.value.attempts == 1
        assert "Data version 1.20.0 is newer than application version 1.19.0" in str(raised.value)
        assert len(server.state.uploads) == 1, "a failed recovery was sent again"


def test_qdrant_recovery_is_tried_again_when_the_connection_was_refused(tmp_path):
    """Nothing was sent, so trying again cannot start a second recovery."""
    port = free_port()
    late = QdrantStandin(tmp_path / "qdrant", port=port)
    source_dir = tmp_path / "source"
    with QdrantStandin(source_dir, port=free_port()) as source, QdrantHttp(source.url) as qdrant:
        make_collection(qdrant, "memories")
        snapshot = download(qdrant, "memories", tmp_path / "memories.snapshot")

    class StartServerOnFirstRetry(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "retry 1/" in record.getMessage() and late._server is None:
                late.start()

    handler = StartServerOnFirstRetry()
    logger = logging.getLogger("backup_pipelines.lib.qdrant.client")
    logger.addHandler(handler)
    try:
        client = QdrantHttp(f"http://127.0.0.1:{port}", policy=FAST)
        client.recover_from_upload(
            "memories", tmp_path / "memories.snapshot", checksum=snapshot["checksum"]
        )
        assert client.count("memories") == POINTS
        assert len(late.state.uploads) == 1
        client.close()
    finally:
        logger.removeHandler(handler)
        late.stop()


# ---------------------------------------------------------------------------------------------
# 2. uploaded files never pile up on the server


def test_qdrant_merge_restore_leaves_no_uploaded_file_on_the_server(standin, client, store):
    make_collection(client, "agent_ws_a")
    ref, _ = back_up(client, store, ["agent_ws_a"])
    assert files_on_server(standin) == []  # the backup's own snapshot was deleted
    client.upsert_points("agent_ws_a", points(3, seed=5, start=500))

    done = qdrant_restore.restore_from_snapshot(
        client, store, ref, "agent_ws_a", "agent_ws_a", Mode.MERGE
    )

    assert done == {"source": "snapshot", "added": 0, "already_present": POINTS}
    assert files_on_server(standin) == []
    assert len(standin.state.uploads) == 1
    assert client.count("agent_ws_a") == POINTS + 3


def test_qdrant_drill_style_restore_into_a_scratch_collection_leaves_no_file(
    standin, client, store
):
    make_collection(client, "agent_ws_a")
    ref, _ = back_up(client, store, ["agent_ws_a"])
    for scratch in ("drill_1_agent_ws_a", "drill_2_agent_ws_a"):
        done = qdrant_restore.restore_from_snapshot(
            client, store, ref, "agent_ws_a", scratch, Mode.REPLACE
        )
        assert done == {"source": "snapshot", "recovered": POINTS}
        client.delete_collection(scratch)  # what the drill's cleanup does
    assert files_on_server(standin) == []
    names = [upload["file"] for upload in standin.state.uploads]
    assert len(set(names)) == 2 and all(n.startswith("backup-pipelines-upload-") for n in names)


# ---------------------------------------------------------------------------------------------
# 3. versions


def test_qdrant_restore_onto_a_server_that_cannot_read_the_backup_is_refused(tmp_path, store):
    newer = QdrantStandin(tmp_path / "newer", port=free_port(), version="1.20.1")
    with newer, QdrantHttp(newer.url, policy=FAST) as source:
        make_collection(source, "agent_ws_a")
        ref, manifest = back_up(source, store, ["agent_ws_a"])
    assert manifest["source"]["server_version"] == "1.20.1-standin"
    assert manifest["collections"]["agent_ws_a"]["storage_version"] == "1.20.1"

    with QdrantStandin(tmp_path / "older", port=free_port(), version="1.19.0") as server:
        with QdrantHttp(server.url, policy=FAST) as client:
            with pytest.raises(BackupError) as raised:
                qdrant_restore.restore_from_snapshot(
                    client, store, ref, "agent_ws_a", "agent_ws_a", Mode.REPLACE
                )
            assert not client.collection_exists("agent_ws_a")
        assert server.state.uploads == [], "the snapshot was sent to a server that cannot read it"
    message = str(raised.value)
    assert "1.20.1" in message and "1.19.0" in message and "upgrade the target server" in message


@pytest.mark.parametrize(
    ("backup", "server", "allowed"),
    [
        ("1.19.0", "1.19.0", True),
        ("1.18.4", "1.19.0", True),
        ("1.19.0-standin", "1.19.2", True),
        ("1.19.2", "1.19.0", False),  # newer patch: newer data
        ("1.20.0", "1.19.3", False),
        ("1.17.9", "1.19.0", False),  # two minor versions behind
        ("0.11.0", "1.0.0", False),
        ("unknown", "1.19.0", True),  # cannot tell: the server decides
    ],
)
def test_qdrant_version_pairs_the_server_can_read(backup, server, allowed):
    from backup_pipelines.lib.qdrant.versions import refusal

    reason = refusal(backup, server)
    assert (reason is None) is allowed
    if reason:
        assert backup.split("-")[0] in reason and server in reason


# ---------------------------------------------------------------------------------------------
# 4. aliases


def test_qdrant_aliases_come_back_after_a_restore_onto_a_fresh_server(
    standin, client, store, tmp_path
):
    make_collection(client, "agent_ws_a")
    client.upsert_alias("agent_ws_a_live", "agent_ws_a")
    ref, manifest = back_up(client, store, ["agent_ws_a"])
    assert manifest["collections"]["agent_ws_a"]["aliases"] == ["agent_ws_a_live"]

    with QdrantStandin(tmp_path / "fresh", port=free_port()) as fresh:
        with QdrantHttp(fresh.url, policy=FAST) as target:
            done = qdrant_restore.restore_from_snapshot(
                target, store, ref, "agent_ws_a", "agent_ws_a", Mode.MERGE
            )
            assert done["aliases_restored"] == ["agent_ws_a_live"]
            assert target.list_aliases() == {"agent_ws_a_live": "agent_ws_a"}
            assert target.count("agent_ws_a_live") == POINTS
        assert files_on_server(fresh) == []


def test_qdrant_alias_pointing_elsewhere_is_left_alone(standin, client, store):
    make_collection(client, "agent_ws_a")
    client.upsert_alias("agent_ws_a_live", "agent_ws_a")
    ref, _ = back_up(client, store, ["agent_ws_a"])
    client.delete_collection("agent_ws_a")  # its alias goes with it
    make_collection(client, "agent_ws_a_v2", count=3)
    client.upsert_alias("agent_ws_a_live", "agent_ws_a_v2")  # live traffic moved on

    done = qdrant_restore.restore_from_snapshot(
        client, store, ref, "agent_ws_a", "agent_ws_a", Mode.REPLACE
    )

    assert done["aliases_left"] == {"agent_ws_a_live": "agent_ws_a_v2"}
    assert client.list_aliases() == {"agent_ws_a_live": "agent_ws_a_v2"}
    assert client.count("agent_ws_a") == POINTS


def test_qdrant_configured_name_that_is_an_alias_is_backed_up_and_restored_through_it(
    standin, client, store, tmp_path
):
    """The policy names `agent_ws_a`; on the server it is an alias of `agent_ws_a_v3`."""
    make_collection(client, "agent_ws_a_v3")
    client.upsert_alias("agent_ws_a", "agent_ws_a_v3")
    ref, manifest = back_up(client, store, ["agent_ws_a"])
    described = manifest["collections"]["agent_ws_a"]
    assert described["alias_of"] == "agent_ws_a_v3" and described["aliases"] == ["agent_ws_a"]

    # On the same server: recovered into the collection behind the alias; no file stays in
    # the alias's folder, where the API could not reach it.
    client.upsert_points("agent_ws_a", points(2, seed=8, start=900))
    done = qdrant_restore.restore_from_snapshot(
        client, store, ref, "agent_ws_a", "agent_ws_a", Mode.REPLACE
    )
    assert done == {"source": "snapshot", "recovered": POINTS}
    assert client.count("agent_ws_a_v3") == POINTS
    assert files_on_server(standin) == []

    # On a fresh server: the collection under its own name, and the alias again.
    fresh = QdrantStandin(tmp_path / "fresh", port=free_port())
    with fresh, QdrantHttp(fresh.url, policy=FAST) as target:
        qdrant_restore.restore_from_snapshot(
            target, store, ref, "agent_ws_a", "agent_ws_a", Mode.MERGE
        )
        assert target.list_aliases() == {"agent_ws_a": "agent_ws_a_v3"}
        assert target.count("agent_ws_a_v3") == POINTS


# ---------------------------------------------------------------------------------------------
# 5. recovering into an existing collection


def test_qdrant_replace_into_a_collection_of_other_vectors_is_refused_before_upload(
    standin, client, store
):
    make_collection(client, "agent_ws_a")
    ref, _ = back_up(client, store, ["agent_ws_a"])
    client.delete_collection("agent_ws_a")
    client.create_collection("agent_ws_a", size=DIMENSION * 2, distance="Cosine")

    with pytest.raises(BackupError) as raised:
        qdrant_restore.restore_from_snapshot(
            client, store, ref, "agent_ws_a", "agent_ws_a", Mode.REPLACE
        )

    message = str(raised.value)
    assert '"size": 16' in message and '"size": 8' in message and "Delete agent_ws_a" in message
    assert standin.state.uploads == [] and files_on_server(standin) == []


def test_qdrant_replace_into_an_existing_collection_reports_the_configuration_kept(
    standin, client, store
):
    make_collection(client, "agent_ws_a")
    ref, _ = back_up(client, store, ["agent_ws_a"])
    client.delete_collection("agent_ws_a")
    make_collection(client, "agent_ws_a", count=4, hnsw_config={"m": 32})

    done = qdrant_restore.restore_from_snapshot(
        client, store, ref, "agent_ws_a", "agent_ws_a", Mode.REPLACE
    )

    assert done["config_kept"] == {"hnsw_config.m": {"kept": 32, "backup": 16}}
    assert client.collection_info("agent_ws_a")["config"]["hnsw_config"]["m"] == 32
    assert client.count("agent_ws_a") == POINTS
    assert files_on_server(standin) == []


def test_qdrant_merge_into_a_collection_of_other_vectors_is_refused_clearly(standin, client, store):
    make_collection(client, "agent_ws_a")
    ref, _ = back_up(client, store, ["agent_ws_a"])
    client.delete_collection("agent_ws_a")
    client.create_collection("agent_ws_a", size=DIMENSION, distance="Dot")

    with pytest.raises(BackupError, match="cannot be merged into agent_ws_a"):
        qdrant_restore.restore_from_snapshot(
            client, store, ref, "agent_ws_a", "agent_ws_a", Mode.MERGE
        )

    assert client.count("agent_ws_a") == 0
    assert [c for c in standin.state.collection_names() if c != "agent_ws_a"] == []
    assert files_on_server(standin) == []


# ---------------------------------------------------------------------------------------------
# 6. clusters


def test_qdrant_backup_through_a_peer_missing_shards_is_refused(tmp_path, store):
    layout = ClusterLayout(peers=3)
    peer = QdrantStandin(tmp_path / "peer", port=free_port(), cluster=layout)
    with peer, QdrantHttp(peer.url, policy=FAST) as client:
        make_collection(client, "agent_ws_a")
        with pytest.raises(BackupError) as raised:
            back_up(client, store, ["agent_ws_a"])
    message = str(raised.value)
    assert "2 of the 3 shards of collection agent_ws_a" in message
    assert "shard 1 on peer(s)" in message and "replication_factor" in message
    assert list(store.list_artifacts()) == []


def test_qdrant_backup_through_a_peer_holding_every_shard_goes_ahead(tmp_path, store):
    layout = ClusterLayout(peers=3, replicated=True)
    peer = QdrantStandin(tmp_path / "peer", port=free_port(), cluster=layout)
    with peer, QdrantHttp(peer.url, policy=FAST) as client:
        make_collection(client, "agent_ws_a")
        _, manifest = back_up(client, store, ["agent_ws_a"])
    assert manifest["counts"]["points"] == POINTS


# ---------------------------------------------------------------------------------------------
# 7. downloads and keys


def test_qdrant_backup_downloads_snapshots_uncompressed(standin, client, store):
    make_collection(client, "agent_ws_a")
    back_up(client, store, ["agent_ws_a"])
    assert standin.state.downloads == ["identity"]


def test_qdrant_download_shorter_than_its_content_length_fails_clearly():
    with ShortBodyServer(promised=100_000, delivered=1000) as server:
        client = QdrantHttp(server.url, policy=FAST)
        with pytest.raises(IndexStoreError) as raised:
            b"".join(client.stream_snapshot("agent_ws_a", "x.snapshot"))
        client.close()
    assert "cut off after 1000 of 100000 bytes" in str(raised.value)


def test_qdrant_missing_or_wrong_key_is_a_clear_error(tmp_path):
    with QdrantStandin(tmp_path, port=free_port(), api_key="rw-secret-123") as server:
        for key in (None, "wrong-key-456"):
            with QdrantHttp(server.url, key, policy=FAST) as client:
                assert client.server_version().startswith("1.19.0")  # `/` is open
                with pytest.raises(IndexStoreError) as raised:
                    client.collection_exists("agent_ws_a")
                with pytest.raises(IndexStoreError) as raised_on_snapshot:
                    client.list_snapshots("agent_ws_a")
            for error in (raised.value, raised_on_snapshot.value):
                assert error.status == 401 and "QDRANT_API_KEY" in str(error)
                assert "Must provide an API key" in str(error) or "Invalid API key" in str(error)
                assert "rw-secret-123" not in str(error)


def test_qdrant_read_only_key_reads_but_cannot_take_a_snapshot(tmp_path, store):
    keys = {"api_key": "rw-secret-123", "read_only_api_key": "ro-secret-456"}
    with QdrantStandin(tmp_path / "qdrant", port=free_port(), **keys) as server:
        with QdrantHttp(server.url, "rw-secret-123", policy=FAST) as writer:
            make_collection(writer, "agent_ws_a")
        with QdrantHttp(server.url, "ro-secret-456", policy=FAST) as reader:
            assert reader.collection_exists("agent_ws_a")
            assert reader.count("agent_ws_a") == POINTS
            with pytest.raises(IndexStoreError) as raised:
                back_up(reader, store, ["agent_ws_a"])
    error = str(raised.value)
    assert raised.value.status == 403 and "Global manage access is required" in error
    assert "read-write key" in error and "ro-secret-456" not in error
    assert list(store.list_artifacts()) == []


# ---------------------------------------------------------------------------------------------
# 9. the typed client


def test_qdrant_json_calls_go_through_the_typed_client(standin, client):
    from qdrant_client import QdrantClient

    assert isinstance(client.api, QdrantClient)
    make_collection(client, "typed")
    client.upsert_alias("typed_alias", "typed")
    assert client.collection_exists("typed_alias")
    assert client.aliases_for("typed") == [
        {"alias_name": "typed_alias", "collection_name": "typed"}
    ]
    assert client.existing_ids("typed", [1, 2, 999]) == {1, 2}
    scrolled = list(client.scroll("typed", page_size=7))
    assert len(scrolled) == POINTS and set(scrolled[0]) == {"id", "payload", "vector"}
    hit = client.search("typed", points(1)[0]["vector"], limit=1)[0]
    assert hit["id"] == 1 and hit["payload"] == {"n": 1}
    assert client.cluster_status() == {"status": "disabled"}


def test_qdrant_scroll_that_does_not_advance_is_an_error_not_a_loop(standin, client, monkeypatch):
    """A server answering a scroll with the offset it was sent (a page in place, forever), or
    going round a cycle of offsets: the repeat fails naming the collection."""
    make_collection(client, "stuck")
    answer = client.api.scroll

    def in_place(collection, **kwargs):
        page, _next = answer(collection, **kwargs)
        return page, kwargs.get("offset") or page[-1].id

    monkeypatch.setattr(client.api, "scroll", in_place)
    read = []
    with pytest.raises(IndexStoreError, match=r"stuck/points/scroll.*does not advance"):
        read.extend(client.scroll("stuck", page_size=7))
    assert 7 <= len(read) <= 14

    sent = []

    def in_a_cycle(collection, **kwargs):  # offsets 8, 15, 8, 15, ...: never the one sent
        sent.append(kwargs.get("offset"))
        assert len(sent) < 20, "scrolled forever"
        page, _next = answer(collection, **kwargs)
        return page, 15 if kwargs.get("offset") == 8 else 8

    monkeypatch.setattr(client.api, "scroll", in_a_cycle)
    with pytest.raises(IndexStoreError, match=r"stuck/points/scroll.*does not advance"):
        list(client.scroll("stuck", page_size=7))
    assert sent == [None, 8, 15]
