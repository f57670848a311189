"""Typesense and Qdrant hung in front of a real server (TCP proxy): an ordinary call gives up
after a bounded number of read timeouts, a download that stops in the middle fails after one
stall timeout, and each error names the store, the operation, the URL path and the wait."""

from __future__ import annotations

import json
import random

import pytest

from backup_pipelines.lib import timeouts
from backup_pipelines.lib.http import IndexStoreError, RetryPolicy
from backup_pipelines.lib.policy import Policy
from backup_pipelines.lib.qdrant.client import QdrantHttp
from backup_pipelines.lib.store import ArtifactRef, LocalStore
from backup_pipelines.lib.typesense.client import TypesenseClient
from backup_pipelines.lib.typesense.documents import typesense_schema
from backup_pipelines.lib.typesense.export import export_typesense_collection
from backup_pipelines_tests.faults.proxy import TcpProxy, outcome_within

pytestmark = pytest.mark.faults

CONNECT = READ = STALL = 1.0
# An ordinary call: attempts start until READ_TIMEOUTS_PER_CALL read timeouts have passed,
# the last one may take its full connect + read time, plus the backoff between attempts.
ORDINARY_BOUND = timeouts.READ_TIMEOUTS_PER_CALL * READ + CONNECT + READ + 15
# A stalled download: one silence of STALL, then unwinding.
STALL_BOUND = STALL + CONNECT + 15


@pytest.fixture(autouse=True)
def short_timeouts(monkeypatch):
    monkeypatch.setenv("BACKUP_CONNECT_TIMEOUT", str(CONNECT))
    monkeypatch.setenv("BACKUP_READ_TIMEOUT", str(READ))
    monkeypatch.setenv("BACKUP_STALL_SECONDS", str(STALL))


@pytest.fixture
def proxy_for():
    proxies = []

    def make(url: str):
        proxy = TcpProxy.in_front_of(url)
        proxies.append(proxy)
        return proxy, proxy.url_for(url)

    yield make
    for proxy in proxies:
        proxy.close()


def assert_named(error, store: str, operation: str, path: str) -> str:
    assert isinstance(error, IndexStoreError), repr(error)
    message = str(error)
    assert message.startswith(f"{store} {operation} failed"), message
    assert f"({path})" in message, message
    return message


# Typesense


@pytest.fixture
def typesense_collection(typesense_server):
    """A collection of 2,000 documents (about 2 MB of export), dropped afterwards."""
    name = f"hung_{random.randrange(1 << 30)}"
    direct = TypesenseClient(typesense_server.url, typesense_server.api_key)
    direct.create_collection(typesense_schema(name, Policy().index_mapping("typesense")))
    lines = (
        json.dumps(
            {
                "id": str(i),
                "workspace_id": "ws_acme",
                "kind": "fact",
                "content": f"memory {i} " + "x" * 900,
                "importance": 0.5,
                "created_at": i,
                "updated_at": i,
            }
        ).encode()
        + b"\n"
        for i in range(2000)
    )
    direct.import_jsonl(name, lines, action="upsert")
    yield name
    direct.delete_collection(name)
    direct.close()


def test_typesense_hung_fails_an_ordinary_call_within_a_few_read_timeouts(
    typesense_server, typesense_collection, proxy_for
):
    proxy, url = proxy_for(typesense_server.url)
    proxy.hang()
    with TypesenseClient(url, typesense_server.api_key) as client:
        error = outcome_within(ORDINARY_BOUND, client.get_collection, typesense_collection)

    message = assert_named(
        error, "Typesense", "get collection", f"/collections/{typesense_collection}"
    )
    assert f"no answer within {READ:g} s (BACKUP_READ_TIMEOUT)" in message
    assert error.waited >= READ and " s (" in message  # "failed after N attempts in X s"
    assert typesense_server.api_key not in message


def test_typesense_hung_mid_export_fails_the_backup_after_one_stall(
    typesense_server, typesense_collection, proxy_for, tmp_path
):
    store = LocalStore(tmp_path / "store")

    def back_up(url: str, date: str):
        ref = ArtifactRef("typesense/collection_export", date, "ws_acme")
        with (
            TypesenseClient(url, typesense_server.api_key) as client,
            store.begin(ref) as writer,
        ):
            writer.commit(**export_typesense_collection(client, url, typesense_collection, writer))
        return ref

    clean, url = proxy_for(typesense_server.url)
    back_up(url, "2026-11-20")
    proxy, url = proxy_for(typesense_server.url)
    proxy.hang_after(clean.bytes_to_clients // 2)  # the export body is nearly all of it

    error = outcome_within(STALL_BOUND, back_up, url, "2026-11-21")

    path = f"/collections/{typesense_collection}/documents/export"
    message = assert_named(error, "Typesense", "export", path)
    assert f"stalled: no data for {STALL:g} s (BACKUP_STALL_SECONDS)" in message
    assert proxy.mode == "hung"
    ref = ArtifactRef("typesense/collection_export", "2026-11-21", "ws_acme")
    assert store.read_manifest(ref) is None


# Qdrant


@pytest.fixture
def qdrant_collection(qdrant_url):
    name = f"hung_{random.randrange(1 << 30)}"
    direct = QdrantHttp(qdrant_url, policy=RetryPolicy())
    direct.create_collection(name, size=64)
    generator = random.Random(7)
    for start in range(0, 3000, 500):
        points = [
            {"id": i, "vector": [generator.uniform(-1, 1) for _ in range(64)], "payload": {}}
            for i in range(start, start + 500)
        ]
        direct.upsert_points(name, points)
    yield name, direct
    direct.delete_collection(name)
    direct.close()


def test_qdrant_hung_fails_an_ordinary_call_within_a_few_read_timeouts(
    qdrant_url, qdrant_collection, proxy_for
):
    name, _direct = qdrant_collection
    proxy, url = proxy_for(qdrant_url)
    proxy.hang()
    with QdrantHttp(url) as client:
        error = outcome_within(ORDINARY_BOUND, client.count, name)

    message = assert_named(error, "Qdrant", "count", f"/collections/{name}/points/count")
    assert f"no answer within {READ:g} s (BACKUP_READ_TIMEOUT)" in message


def test_qdrant_hung_mid_snapshot_download_fails_after_one_stall(
    qdrant_url, qdrant_collection, proxy_for
):
    name, direct = qdrant_collection
    snapshot = direct.create_snapshot(name)
    proxy, url = proxy_for(qdrant_url)
    proxy.hang_after(snapshot["size"] // 2)

    def download() -> int:
        with QdrantHttp(url) as client:
            return sum(len(chunk) for chunk in client.stream_snapshot(name, snapshot["name"]))

    error = outcome_within(STALL_BOUND, download)

    path = f"/collections/{name}/snapshots/{snapshot['name']}"
    message = assert_named(error, "Qdrant", "download snapshot", path)
    assert f"stalled: no data for {STALL:g} s (BACKUP_STALL_SECONDS)" in message
    assert proxy.mode == "hung"
