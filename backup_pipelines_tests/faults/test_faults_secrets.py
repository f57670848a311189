"""Planted secrets never reach an output channel: every channel is grepped for them.

A malformed DATABASE_URL (no scheme, a broken IPv6 host) and an S3 endpoint URL with user
info are what made libpq and botocore quote a password; the secrets of every other variable
are planted beside them. The channels: the command line's stdout and stderr, Dagster's
instance (event log, run and tick storage, compute logs: every file of its folder), the
bodies the alert receiver got (webhook and Slack), and the store (manifests and all).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from backup_pipelines.lib.policy import Policy
from backup_pipelines.lib.postgres import dump
from backup_pipelines.lib.secrets import scrub
from backup_pipelines.lib.store import ArtifactRef, LocalStore

pytestmark = pytest.mark.faults

DATE = "2026-11-21"
PG_PASSWORD = f"pg-pw-{secrets.token_hex(6)}"
PLANTED = {
    "TYPESENSE_API_KEY": f"ts-key-{secrets.token_hex(8)}",
    "QDRANT_API_KEY": f"qd-key-{secrets.token_hex(8)}",
    "AWS_SECRET_ACCESS_KEY": f"aws-secret-{secrets.token_hex(8)}",
    "SLACK_TOKEN": f"xoxb-{secrets.token_hex(8)}",
    "DIGITALOCEAN_TOKEN": f"dop_v1_{secrets.token_hex(32)}",
    "MSSQL_CONNECTION_STRING": f"Driver=FreeTDS;Server=db;UID=sa;PWD=mssql-{secrets.token_hex(6)};",
}
S3_URL_SECRET = f"s3-url-secret-{secrets.token_hex(6)}"
WEBHOOK_TOKEN = f"hook-token-{secrets.token_hex(8)}"
MALFORMED_URLS = {
    "no scheme": f"backup:{PG_PASSWORD}@127.0.0.1:5432/agent_memory",
    "broken IPv6 host": f"postgresql://backup:{PG_PASSWORD}@[::1/agent_memory",
}


def planted_values() -> list[str]:
    return [
        PG_PASSWORD,
        S3_URL_SECRET,
        WEBHOOK_TOKEN,
        PLANTED["MSSQL_CONNECTION_STRING"].split("PWD=")[1].rstrip(";"),
        *(v for k, v in PLANTED.items() if k != "MSSQL_CONNECTION_STRING"),
    ]


def assert_no_secret(text: str, where: str) -> None:
    found = [secret for secret in planted_values() if secret in text]
    assert not found, f"{where} holds planted secret(s) {found}:\n{text[:3000]}"


def files_text(root: Path) -> str:
    """Every file under root, as text (binary files decoded leniently: sqlite pages too)."""
    return "\n".join(
        path.read_bytes().decode("utf-8", errors="replace")
        for path in sorted(root.rglob("*"))
        if path.is_file()
    )


@pytest.fixture
def planted_env(monkeypatch):
    for name, value in PLANTED.items():
        if name != "MSSQL_CONNECTION_STRING":  # it turns the SQL Server tier on
            monkeypatch.setenv(name, value)
    for name in ("TYPESENSE_URL", "QDRANT_URL", "BACKUP_POLICY_FILE", "ALERT_WEBHOOK_URL"):
        monkeypatch.delenv(name, raising=False)


# The scrubbing function itself, on the texts libraries produced


def test_scrub_removes_planted_secrets_from_library_messages(planted_env, monkeypatch):
    monkeypatch.setenv("MSSQL_CONNECTION_STRING", PLANTED["MSSQL_CONNECTION_STRING"])
    monkeypatch.setenv("DATABASE_URL", MALFORMED_URLS["no scheme"])
    monkeypatch.setenv("ALERT_WEBHOOK_URL", f"https://hooks.example.com/services/{WEBHOOK_TOKEN}")
    texts = [
        f'missing "=" after "{MALFORMED_URLS["no scheme"]}" in connection info string',
        f'in IPv6 host address in URI: "{MALFORMED_URLS["broken IPv6 host"]}"',
        f'Could not connect to the endpoint URL: "http://key:{S3_URL_SECRET}@127.0.0.1:9/b/k"',
        f"password authentication failed, password={PG_PASSWORD} was refused",
        f"posting to https://hooks.example.com/services/{WEBHOOK_TOKEN} failed",
        json.dumps({"headers": {"X-TYPESENSE-API-KEY": PLANTED["TYPESENSE_API_KEY"]}}),
        f"Authorization: Bearer {PLANTED['SLACK_TOKEN']}",
        f"connection string {PLANTED['MSSQL_CONNECTION_STRING']} rejected",
        " ".join(PLANTED.values()),
    ]
    for text in texts:
        assert_no_secret(scrub(text), "scrubbed text")
    # What makes a message useful stays: the user, the host, the shape.
    assert scrub(texts[0]).startswith('missing "=" after "backup:***@127.0.0.1:5432/agent_memory"')


# The command line


def run_cli(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "backup_pipelines.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.stdout + done.stderr


@pytest.mark.parametrize("malformed", sorted(MALFORMED_URLS))
def test_cli_never_prints_a_secret_of_a_malformed_database_url(
    malformed, planted_env, source_db, tmp_path
):
    store = LocalStore(tmp_path / "store")
    ref = ArtifactRef("postgres/workspace_dump", DATE, "ws_acme")
    with store.begin(ref) as writer:
        writer.commit(**dump.dump_workspace(source_db, "ws_acme", Policy(), writer))
    with store.begin(ArtifactRef("postgres/full_dump", DATE)) as writer:
        writer.commit(**dump.dump_full_database(source_db, writer))
    env = {"DATABASE_URL": MALFORMED_URLS[malformed], "BACKUP_STORE_URL": f"file://{store.root}"}

    doctor = run_cli("doctor", env=env)
    restore = run_cli("restore", "workspace", "--date", DATE, "--workspace", "ws_acme", env=env)
    full = run_cli("restore", "full", "--date", DATE, env=env)

    for output in (doctor, restore, full):
        assert_no_secret(output, f"CLI output with a DATABASE_URL with {malformed}")
        assert "backup:***@" in output, output  # still says which URL, without its password
    for output in (doctor, restore):
        assert "connection URL is malformed" in output, output


def test_cli_never_prints_the_secret_of_an_s3_endpoint_url_with_user_info(planted_env, s3_env):
    from backup_pipelines.devstack.ports import free_port

    live = f"http://key:{S3_URL_SECRET}@127.0.0.1:{s3_env.port}"
    down = f"http://key:{S3_URL_SECRET}@127.0.0.1:{free_port()}"
    for endpoint, works in ((down, False), (live, True)):
        env = {"BACKUP_STORE_URL": f"s3://{s3_env.bucket}/secrets", "AWS_ENDPOINT_URL_S3": endpoint}
        for args in (("doctor",), ("list",)):
            output = run_cli(*args, env=env)
            assert_no_secret(output, f"`{' '.join(args)}` with S3 endpoint {endpoint}")
            assert "AWS_ENDPOINT_URL_S3 holds user info" in output, output  # the warning
            if not works:
                assert "could not connect" in output, output


# Dagster: the event log, compute logs, tick errors and the alerts they cause


@pytest.fixture
def dagster_home(tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


@pytest.mark.parametrize("malformed", sorted(MALFORMED_URLS))
def test_a_secret_of_a_malformed_database_url_reaches_no_dagster_record_and_no_alert(
    malformed, planted_env, dagster_home, tmp_path, alert_receiver, monkeypatch
):
    from backup_pipelines.definitions import build_definitions
    from backup_pipelines.defs.resources import PolicyResource

    monkeypatch.setenv("DATABASE_URL", MALFORMED_URLS[malformed])
    monkeypatch.setenv("BACKUP_STORE_URL", f"file://{tmp_path / 'store'}")
    monkeypatch.setenv("ALERT_WEBHOOK_URL", f"{alert_receiver.url}/hooks/{WEBHOOK_TOKEN}")
    monkeypatch.setenv("SLACK_TOKEN", PLANTED["SLACK_TOKEN"])  # the receiver fixture unset it
    monkeypatch.setenv("SLACK_CHANNEL", "#backups")
    monkeypatch.setenv("SLACK_API_BASE_URL", f"{alert_receiver.url}/api")
    defs = build_definitions()

    with dg.instance_for_test(temp_dir=str(dagster_home)) as instance:
        for job_name, partition in (
            ("postgres_full_backup_job", DATE),
            ("workspace_backup_job", f"{DATE}|ws_acme"),
        ):
            if job_name == "workspace_backup_job":
                instance.add_dynamic_partitions("workspaces", ["ws_acme"])
            result = defs.resolve_job_def(job_name).execute_in_process(
                instance=instance, partition_key=partition, raise_on_error=False
            )
            assert not result.success
        sensor = defs.resolve_sensor_def("run_alert_sensor")
        with dg.build_sensor_context(
            instance=instance, resources={"policy": PolicyResource()}
        ) as context:
            sensor(context)
        tick_error = discovery_sensor_error(defs, instance)
        events = "\n".join(
            dg.serialize_value(record) for record in instance.all_logs(result.run_id)
        )

    assert_no_secret(events, "Dagster's event log")
    assert_no_secret(files_text(dagster_home), "the Dagster instance (storage, compute logs)")
    assert_no_secret(tick_error, "the discovery sensor's tick error")
    assert "connection URL is malformed" in events  # the failure is recorded, readable
    assert "connection URL is malformed" in tick_error
    assert len(alert_receiver.webhook) == 2 and len(alert_receiver.slack) == 2
    bodies = [json.dumps(body) for body in alert_receiver.webhook]
    bodies += [
        json.dumps({k: v for k, v in m.items() if k != "authorization"})
        for m in alert_receiver.slack
    ]
    for body in bodies:
        assert "malformed" in body
        assert_no_secret(body, "an alert body")


def discovery_sensor_error(defs, instance) -> str:
    """The discovery sensor's failure as Dagster records it for a tick (the code server
    serializes it with serializable_error_info_from_exc_info)."""
    from dagster._utils.error import serializable_error_info_from_exc_info

    sensor = defs.resolve_sensor_def("workspace_discovery_sensor")
    resources = defs.resources
    try:
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            sensor(context)
    except Exception:
        return dg.serialize_value(serializable_error_info_from_exc_info(sys.exc_info()))
    raise AssertionError("the discovery sensor did not fail on a malformed DATABASE_URL")


def test_backups_with_planted_secrets_keep_them_out_of_manifests_and_records(
    planted_env, dagster_home, tmp_path, pg_cluster, source_db, monkeypatch
):
    """A working URL carrying a password (the test cluster trusts, so any password is
    accepted): the backups succeed and no store file or Dagster record holds it."""
    from backup_pipelines.definitions import build_definitions

    database = source_db.rsplit("/", 1)[1]
    url = f"postgresql://postgres:{PG_PASSWORD}@127.0.0.1:{pg_cluster.port}/{database}"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("BACKUP_STORE_URL", f"file://{tmp_path / 'store'}")
    defs = build_definitions()

    with dg.instance_for_test(temp_dir=str(dagster_home)) as instance:
        instance.add_dynamic_partitions("workspaces", ["ws_acme"])
        for job_name, partition in (
            ("postgres_full_backup_job", DATE),
            ("workspace_backup_job", f"{DATE}|ws_acme"),
        ):
            result = defs.resolve_job_def(job_name).execute_in_process(
                instance=instance, partition_key=partition
            )
            assert result.success

    manifests = list((tmp_path / "store").rglob("manifest.json"))
    assert len(manifests) == 2
    assert_no_secret(files_text(tmp_path / "store"), "the store")
    assert_no_secret(files_text(dagster_home), "the Dagster instance")


def test_dagster_records_of_a_library_error_and_log_lines_quoting_a_secret_are_scrubbed(
    dagster_home,
):
    """Not only our errors: a library's exception raised in an op (psycopg quoting the whole
    URL), a library logger and context.log, as the code location's hook leaves them."""
    import logging

    from psycopg.conninfo import conninfo_to_dict

    from backup_pipelines.defs import scrubbing

    scrubbing.install()  # what loading the code location does
    url = MALFORMED_URLS["broken IPv6 host"]

    @dg.op
    def parse_url(context):
        logging.getLogger("a.library").warning("retrying with %s", url)
        context.log.info(f"connecting to {url}")
        conninfo_to_dict(url)

    @dg.job
    def parse_job() -> None:
        parse_url()

    with dg.instance_for_test(temp_dir=str(dagster_home)) as instance:
        result = parse_job.execute_in_process(instance=instance, raise_on_error=False)
        (failure,) = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)

    error = failure.dagster_event.event_specific_data.error
    assert "IPv6 host address in URI" in error.cause.message  # recorded, readable
    assert_no_secret(error.cause.message, "the recorded exception")
    records = files_text(dagster_home)
    assert "compute_logs" in "".join(str(p) for p in dagster_home.rglob("*.err"))
    assert "connecting to postgresql://backup:***@" in records
    assert_no_secret(records, "the Dagster instance (event log, compute logs)")
