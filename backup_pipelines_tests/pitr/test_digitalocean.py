"""DigitalOcean managed PITR through pydo against the local stand-in of the documented API
(and, opt-in, the real API)."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from backup_pipelines.devstack.digitalocean_standin import DigitalOceanStandin
from backup_pipelines.lib.postgres.digitalocean import DigitalOceanError, ManagedDatabases

POOLS = [
    {"name": "agent-pool", "mode": "transaction", "size": 10, "db": "defaultdb"},
    {"name": "reports", "mode": "session", "size": 3, "db": "defaultdb", "user": "doadmin"},
]


@pytest.fixture
def standin():
    with DigitalOceanStandin(online_after=0.3) as server:
        yield server


def _api(standin, cluster_id, **kwargs) -> tuple[ManagedDatabases, list[str]]:
    lines: list[str] = []
    api = ManagedDatabases(standin.token, cluster_id, standin.url, log=lines.append, **kwargs)
    return api, lines


def test_digitalocean_restore_sends_the_documented_body_and_recreates_pools(standin):
    source_id = standin.add_cluster("agent-memory", pools=POOLS)
    api, lines = _api(standin, source_id)
    target = datetime.now(UTC) - timedelta(hours=5)
    restored = api.restore_to_time(target, wait_timeout=30, poll_seconds=0.1)

    (post,) = standin.requests_to("POST", "/v2/databases")[:1]
    assert post.path == "/v2/databases" and post.had_bearer_token
    source = standin.cluster(source_id)
    assert post.body["backup_restore"] == {
        "database_name": "agent-memory",
        "backup_created_at": target.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    for key in ("engine", "version", "size", "region", "num_nodes"):
        assert post.body[key] == source[key]
    assert post.body["name"].startswith("agent-memory-pitr-")
    assert standin.restored_from(restored.cluster_id)["database_name"] == "agent-memory"
    assert restored.status == "online" and restored.host.endswith(".invalid")
    assert sorted(restored.pools) == ["agent-pool", "reports"]
    pool_posts = standin.requests_to("POST", f"/v2/databases/{restored.cluster_id}/pools")
    assert [p.body for p in pool_posts] == [
        {
            "name": "agent-pool",
            "mode": "transaction",
            "size": 10,
            "db": "defaultdb",
            "user": "doadmin",
        },
        {"name": "reports", "mode": "session", "size": 3, "db": "defaultdb", "user": "doadmin"},
    ]
    assert any("is creating" in line for line in lines)  # progress while waiting
    password = standin.cluster(restored.cluster_id)["connection"]["password"]
    shown = " ".join(lines) + str(restored.to_dict())
    assert password not in shown and standin.token not in shown
    assert ":***@" in restored.display_url


def test_digitalocean_cluster_never_online_is_reported(standin):
    source_id = standin.add_cluster("agent-memory")
    standin.online_after = None  # new clusters stay "creating"
    api, _ = _api(standin, source_id)
    started = time.monotonic()
    with pytest.raises(DigitalOceanError, match=r"was not online within 1 s \(status creating\)"):
        api.restore_to_time(
            datetime.now(UTC) - timedelta(hours=1), wait_timeout=1, poll_seconds=0.1
        )
    assert time.monotonic() - started < 10


def test_digitalocean_422_is_a_clear_error_and_out_of_window_refused_before_post(standin):
    source_id = standin.add_cluster("agent-memory")
    api, _ = _api(standin, source_id)
    with pytest.raises(
        DigitalOceanError,
        match=r"refused to create cluster agent-memory .*\(422 unprocessable_entity: a database cluster named agent-memory already exists\)",
    ):
        api.restore_to_time(datetime.now(UTC) - timedelta(hours=1), name="agent-memory")
    # The API's 422 for a timestamp outside the 7-day window, straight from the stand-in:
    with pytest.raises(
        DigitalOceanError,
        match=r"422 unprocessable_entity: backup_created_at .* outside the restorable window",
    ):
        api._call(
            "create cluster x",
            api._client.databases.create_cluster,
            body={
                "name": "x",
                "engine": "pg",
                "size": "db-s-1vcpu-2gb",
                "region": "fra1",
                "num_nodes": 1,
                "backup_restore": {
                    "database_name": "agent-memory",
                    "backup_created_at": "2001-01-01T00:00:00Z",
                },
            },
        )
    posts_before = len(standin.requests_to("POST", "/v2/databases"))
    with pytest.raises(DigitalOceanError, match="outside what DigitalOcean can restore"):
        api.restore_to_time(datetime.now(UTC) - timedelta(days=9))
    assert len(standin.requests_to("POST", "/v2/databases")) == posts_before  # refused first


def test_digitalocean_429_is_retried_after_retry_after(standin):
    source_id = standin.add_cluster("agent-memory")
    api, lines = _api(standin, source_id)
    standin.rate_limit_next(1, retry_after=1)
    started = time.monotonic()
    backups = api.list_backups()
    assert len(backups) == 7 and backups[0].created_at < backups[-1].created_at
    assert time.monotonic() - started >= 1.0
    assert len(standin.requests_to("GET", f"/v2/databases/{source_id}/backups")) == 2
    assert any("answered 429" in line and "retrying in 1 s" in line for line in lines)
    standin.rate_limit_next(3, retry_after=0)
    api_once, _ = _api(standin, source_id, max_retries=1)
    with pytest.raises(DigitalOceanError, match=r"429 too_many_requests.*after 2 attempts"):
        api_once.list_backups()


def test_digitalocean_401_and_404_are_clear_errors(standin):
    source_id = standin.add_cluster("agent-memory")
    bad = ManagedDatabases("not-the-token", source_id, standin.url)
    with pytest.raises(
        DigitalOceanError,
        match=r"refused the token .*401 Unauthorized: Unable to authenticate you.*DIGITALOCEAN_TOKEN",
    ) as err:
        bad.list_backups()
    assert "not-the-token" not in str(err.value)
    missing, _ = _api(standin, "00000000-0000-0000-0000-000000000000")
    with pytest.raises(DigitalOceanError, match="404 not_found"):
        missing.list_backups()


def test_digitalocean_dagster_assets_and_job(standin, monkeypatch):
    from backup_pipelines.defs import managed
    from backup_pipelines.defs.resources import PolicyResource

    source_id = standin.add_cluster("agent-memory", pools=POOLS[:1])
    resource = managed.DigitalOceanResource(
        token=standin.token, cluster_id=source_id, api_url=standin.url
    )
    result = dg.materialize(
        [managed.managed_backups],
        resources={"digitalocean_db": resource, "policy": PolicyResource()},
    )
    metadata = result.asset_materializations_for_node("postgres__managed_backups")[0].metadata
    assert metadata["backups"].value == 7 and metadata["newest_age_hours"].value < 24
    target = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    run = managed.managed_pitr_restore_job.execute_in_process(
        resources={"digitalocean_db": resource},
        tags={"managed/to": target},
        run_config={"ops": {"managed_pitr_restore": {"config": {"poll_seconds": 0.1}}}},
    )
    assert run.success
    output = run.output_for_node("managed_pitr_restore")
    assert output["status"] == "online" and output["pools"] == ["agent-pool"]
    assert "password" not in output and ":***@" in output["url"]


@pytest.mark.skipif(
    not (os.environ.get("DIGITALOCEAN_TOKEN") and os.environ.get("DIGITALOCEAN_TEST_DATABASE_ID")),
    reason="opt-in: set DIGITALOCEAN_TOKEN and DIGITALOCEAN_TEST_DATABASE_ID (a test cluster)",
)
def test_digitalocean_real_api_lists_backups_and_pools():
    """Read-only against the real API (a restore would create a billed cluster)."""
    api = ManagedDatabases(
        os.environ["DIGITALOCEAN_TOKEN"], os.environ["DIGITALOCEAN_TEST_DATABASE_ID"]
    )
    cluster = api.get_cluster()
    assert cluster["engine"] in ("pg", "advanced_pg")
    backups = api.list_backups()
    oldest, newest = api.restorable_window(backups)
    assert oldest <= newest
    api.list_pools()
