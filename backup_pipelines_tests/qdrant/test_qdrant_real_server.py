"""Opt-in smoke test against a REAL Qdrant server: runs only when QDRANT_URL is set (with
QDRANT_API_KEY when the server needs one), skipped otherwise. No Qdrant can run on the build
machines, so these check the stand-in's claims where it matters most:

    QDRANT_URL=http://localhost:6333 .venv/bin/python -m pytest -k qdrant_real_server

It creates collections named `bp_smoke_<hex>_...` and deletes them (and every file it
uploads) again.
"""

from __future__ import annotations

import copy
import hashlib
import os
import random
import secrets

import pytest
import requests

from backup_pipelines.lib.engines import Mode
from backup_pipelines.lib.qdrant import restore as qdrant_restore
from backup_pipelines.lib.qdrant.client import QdrantHttp
from backup_pipelines.lib.qdrant.snapshot import snapshot_qdrant_collections
from backup_pipelines.lib.qdrant.versions import IncompatibleVersion, parse_version
from backup_pipelines.lib.store import ArtifactRef, LocalStore

URL = os.environ.get("QDRANT_URL", "")
API_KEY = os.environ.get("QDRANT_API_KEY") or None
DIMENSION = 8
POINTS = 40

pytestmark = pytest.mark.skipif(not URL, reason="needs a real Qdrant server: set QDRANT_URL")


@pytest.fixture
def real():
    client = QdrantHttp(URL, API_KEY)
    prefix = f"bp_smoke_{secrets.token_hex(3)}"
    yield client, prefix
    for name in {**client.list_aliases()}:
        if name.startswith(prefix):
            client.http.request(
                "POST",
                "/collections/aliases",
                "delete alias",
                json={"actions": [{"delete_alias": {"alias_name": name}}]},
            )
    for name in [
        c["name"] for c in client.http.json("GET", "/collections", "list")["result"]["collections"]
    ]:
        if name.startswith(prefix):
            for snapshot in client.list_snapshots(name):
                client.delete_snapshot(name, snapshot["name"])
            client.delete_collection(name)
    client.close()


def make_collection(client: QdrantHttp, name: str) -> None:
    generator = random.Random(7)
    client.create_collection(name, size=DIMENSION, distance="Cosine")
    client.upsert_points(
        name,
        [
            {
                "id": i,
                "vector": [generator.uniform(-1, 1) for _ in range(DIMENSION)],
                "payload": {"i": i},
            }
            for i in range(1, POINTS + 1)
        ],
    )


def back_up(client: QdrantHttp, store: LocalStore, collection: str):
    ref = ArtifactRef("qdrant/collection_snapshot", "2026-11-21", "ws_smoke")
    with store.begin(ref) as writer:
        writer.commit(**snapshot_qdrant_collections(client, URL, [collection], writer))
    return ref, store.require_manifest(ref)


def test_qdrant_real_server_gzips_downloads_unless_asked_for_identity(real):
    client, prefix = real
    name = f"{prefix}_zip"
    make_collection(client, name)
    snapshot = client.create_snapshot(name)
    path = f"{URL.rstrip('/')}/collections/{name}/snapshots/{snapshot['name']}"
    headers = {"api-key": API_KEY} if API_KEY else {}
    with requests.get(path, headers={**headers, "Accept-Encoding": "gzip"}, stream=True) as zipped:
        assert zipped.headers.get("Content-Encoding") == "gzip"
        assert "Content-Length" not in zipped.headers
    digest = hashlib.sha256()
    for chunk in client.stream_snapshot(name, snapshot["name"]):
        digest.update(chunk)
    assert digest.hexdigest() == snapshot["checksum"]
    with requests.get(
        path, headers={**headers, "Accept-Encoding": "identity"}, stream=True
    ) as plain:
        assert "Content-Encoding" not in plain.headers
        assert int(plain.headers["Content-Length"]) == snapshot["size"]
    client.delete_snapshot(name, snapshot["name"])


def test_qdrant_real_server_resolves_an_alias_in_exists(real):
    client, prefix = real
    name, alias = f"{prefix}_aliased", f"{prefix}_alias"
    make_collection(client, name)
    client.upsert_alias(alias, name)
    assert client.collection_exists(alias) is True
    assert client.aliases_for(alias) == []  # the listing is literal
    assert client.aliases_for(name) == [{"alias_name": alias, "collection_name": name}]
    assert client.count(alias) == POINTS


def test_qdrant_real_server_keeps_an_uploaded_file_which_the_restore_removes(real, tmp_path):
    client, prefix = real
    name, scratch = f"{prefix}_kept", f"{prefix}_kept_copy"
    make_collection(client, name)
    snapshot = client.create_snapshot(name)
    local = tmp_path / "kept.snapshot"
    with local.open("wb") as sink:
        for chunk in client.stream_snapshot(name, snapshot["name"]):
            sink.write(chunk)
    client.delete_snapshot(name, snapshot["name"])

    uploaded = client.recover_from_upload(
        scratch, local, checksum=snapshot["checksum"], expected_points=POINTS
    )
    assert uploaded in [s["name"] for s in client.list_snapshots(scratch)], "not kept?"
    client.delete_snapshot(scratch, uploaded)

    store = LocalStore(tmp_path / "store")
    ref, _ = back_up(client, store, name)
    merged = qdrant_restore.restore_from_snapshot(client, store, ref, name, name, Mode.MERGE)
    assert merged == {"source": "snapshot", "added": 0, "already_present": POINTS}
    drilled = f"{prefix}_drill"
    replaced = qdrant_restore.restore_from_snapshot(client, store, ref, name, drilled, Mode.REPLACE)
    assert replaced == {"source": "snapshot", "recovered": POINTS}
    assert client.list_snapshots(drilled) == []
    assert client.list_snapshots(name) == []


def test_qdrant_real_server_replace_into_the_same_collection_keeps_nothing_else(real, tmp_path):
    """The REST configuration and the snapshot's config.json compare equal on a real server."""
    client, prefix = real
    name = f"{prefix}_same"
    make_collection(client, name)
    store = LocalStore(tmp_path / "store")
    ref, _ = back_up(client, store, name)
    done = qdrant_restore.restore_from_snapshot(client, store, ref, name, name, Mode.REPLACE)
    assert done == {"source": "snapshot", "recovered": POINTS}
    assert client.count(name) == POINTS


def test_qdrant_real_server_refuses_a_backup_of_a_newer_minor_version(real, tmp_path):
    client, prefix = real
    name = f"{prefix}_versions"
    make_collection(client, name)
    store = LocalStore(tmp_path / "store")
    ref, manifest = back_up(client, store, name)
    major, minor, _ = parse_version(client.server_version())
    newer = copy.deepcopy(manifest)
    newer["collections"][name]["storage_version"] = f"{major}.{minor + 1}.0"
    with pytest.raises(IncompatibleVersion) as raised:
        qdrant_restore.check_server_version(client, newer, newer["collections"][name], ref, name)
    assert f"{major}.{minor + 1}.0" in str(raised.value)
    assert client.server_version() in str(raised.value)
