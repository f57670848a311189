"""deploy/dagster.yaml works against a real PostgreSQL (dagster-postgres, SQLAlchemy fix)."""

import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "dagster.yaml"


@dg.op
def say_hello(context) -> int:
    context.log.info("hello from the production instance test")
    return 1


@dg.job
def hello_job():
    say_hello()


@pytest.fixture
def production_home(tmp_path, make_database, pg_cluster, monkeypatch):
    url = make_database("dagster_instance")
    monkeypatch.setenv("DAGSTER_PG_HOST", "127.0.0.1")
    monkeypatch.setenv("DAGSTER_PG_PORT", str(pg_cluster.port))
    monkeypatch.setenv("DAGSTER_PG_USER", "postgres")
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "unused-with-trust-auth")
    monkeypatch.setenv("DAGSTER_PG_DB", url.rsplit("/", 1)[1])
    shutil.copy(DEPLOY, tmp_path / "dagster.yaml")
    return tmp_path


def test_production_instance_stores_runs_and_events_in_postgres(production_home):
    config = yaml.safe_load(DEPLOY.read_text())
    assert config["storage"]["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2"
    with dg.DagsterInstance.from_config(str(production_home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        result = hello_job.execute_in_process(instance=instance)
        assert result.success
        logs = [e.message for e in instance.all_logs(result.run_id)]
        assert any("hello from the production instance test" in (m or "") for m in logs)
        assert instance.get_run_by_id(result.run_id).is_success
