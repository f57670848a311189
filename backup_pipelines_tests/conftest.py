"""Real services on loopback, started once per session and stopped afterwards."""

from __future__ import annotations

import os
import secrets
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest

from backup_pipelines.devstack import sample_data
from backup_pipelines.devstack.postgres_cluster import PostgresCluster
from backup_pipelines.devstack.s3_server import S3Server
from backup_pipelines.lib.store import LocalStore, S3Store

# The suite's artifacts carry fixed dates (helpers.DATE is 2026-11-21) while the partitions'
# default start follows today (policy partitions_start: the first of the month keep_weekly_days
# back). Pinned for this process, so the suite run months from now still finds those dates
# among the partitions; the default itself is tested in recovery/test_operator_day.py.
PARTITIONS_START = "2026-01-01"


def _pin_partitions_start() -> None:
    """A policy file of the built-in defaults with the suite's partitions_start, read only by
    the import below: removed right after it, so no pytest process leaves one in /tmp."""
    saved = os.environ.get("BACKUP_POLICY_FILE")
    with tempfile.TemporaryDirectory(prefix="suite-policy-") as folder:
        path = Path(folder) / "partitions_start.yaml"
        path.write_text(f'partitions_start: "{PARTITIONS_START}"\n')
        os.environ["BACKUP_POLICY_FILE"] = str(path)
        try:
            import backup_pipelines.defs.partitions  # noqa: F401  (its start is read on import)
        finally:
            if saved is None:
                del os.environ["BACKUP_POLICY_FILE"]
            else:
                os.environ["BACKUP_POLICY_FILE"] = saved


_pin_partitions_start()

WORKSPACES = ["ws_acme", "ws_globex", "ws_initech"]
SMALL = sample_data.Scale(
    sessions=8, turns_per_session=5, memories=120, nodes=15, edges=30, embedding_dim=16
)


@pytest.fixture(scope="session")
def pg_cluster():
    with PostgresCluster() as cluster:
        yield cluster


@pytest.fixture
def make_database(pg_cluster):
    """A new empty database per call, dropped at the end of the test."""
    created = []

    def make(prefix: str = "db") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        created.append(name)
        return pg_cluster.create_database(name)

    yield make
    with psycopg.connect(pg_cluster.url(), autocommit=True) as conn:
        for name in created:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def source_db(make_database):
    """A seeded agent-memory database with three workspaces."""
    url = make_database("source")
    sample_data.seed(url, WORKSPACES, SMALL)
    return url


@pytest.fixture(scope="session")
def s3_server():
    with S3Server(bucket="test-backups") as server:
        yield server


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    """The same tests against both backends."""
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    server = request.getfixturevalue("s3_env")
    return S3Store(server.bucket, f"run-{secrets.token_hex(4)}")


@pytest.fixture(scope="session")
def typesense_server():
    from backup_pipelines.devstack.typesense_server import TypesenseServer

    with TypesenseServer(api_key=secrets.token_hex(16)) as server:
        yield server


@pytest.fixture(scope="session")
def qdrant_url():
    """A real Qdrant when QDRANT_URL is set (opt-in), else the stand-in on loopback."""
    import os

    if os.environ.get("QDRANT_URL"):
        yield os.environ["QDRANT_URL"]
        return
    from backup_pipelines.devstack.qdrant import QdrantStandinProcess

    with QdrantStandinProcess() as standin:
        yield standin.url


@pytest.fixture
def indexed_source(source_db, typesense_server, qdrant_url):
    """The seeded database with every workspace's memories indexed in Typesense and Qdrant,
    as the platform would; collections are dropped afterwards."""
    from backup_pipelines.lib.policy import Policy
    from backup_pipelines.lib.postgres.memory_rows import iter_index_rows
    from backup_pipelines.lib.qdrant.client import QdrantHttp
    from backup_pipelines.lib.qdrant.points import index_into_qdrant
    from backup_pipelines.lib.typesense.client import TypesenseClient
    from backup_pipelines.lib.typesense.documents import index_into_typesense

    policy = Policy()
    documents, points = policy.index_mapping("typesense"), policy.index_mapping("qdrant")
    typesense = TypesenseClient(typesense_server.url, typesense_server.api_key)
    qdrant = QdrantHttp(qdrant_url, os.environ.get("QDRANT_API_KEY"))
    with psycopg.connect(source_db) as conn:
        for workspace in WORKSPACES:
            rows = iter_index_rows(conn, workspace, documents, policy.schema)
            collection = policy.typesense_collection_for(workspace)
            index_into_typesense(typesense, collection, rows, documents)
            rows = iter_index_rows(conn, workspace, points, policy.schema)
            index_into_qdrant(qdrant, policy.qdrant_collections_for(workspace)[0], rows, points)
    yield {
        "db": source_db,
        "typesense": typesense,
        "qdrant": qdrant,
        "indexes": {"typesense": typesense, "qdrant": qdrant},  # engine name -> client
        "policy": policy,
        "typesense_url": typesense_server.url,
        "typesense_api_key": typesense_server.api_key,
        "qdrant_url": qdrant_url,
    }
    for workspace in WORKSPACES:
        for name in [policy.typesense_collection_for(workspace)]:
            if typesense.collection_exists(name):
                typesense.delete_collection(name)
        for name in policy.qdrant_collections_for(workspace):
            if qdrant.collection_exists(name):
                qdrant.delete_collection(name)
    for alias in typesense.list_aliases():
        typesense.http.request("DELETE", f"/aliases/{alias['name']}", "delete alias")


@pytest.fixture
def alert_receiver(monkeypatch):
    """A real HTTP receiver for the webhook and Slack channels, wired through the environment
    exactly as in production."""
    from backup_pipelines_tests.alert_receiver import AlertReceiver

    receiver = AlertReceiver().start()
    monkeypatch.setenv("ALERT_WEBHOOK_URL", f"{receiver.url}/hooks/backup-alerts")
    monkeypatch.setenv("DAGSTER_UI_URL", "https://dagster.example.test")
    monkeypatch.delenv("SLACK_TOKEN", raising=False)
    yield receiver
    receiver.stop()
