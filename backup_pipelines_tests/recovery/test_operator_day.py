"""The operator's day without a browser (issue 15): the code location's jobs, sensors and
commands run for real against PostgreSQL, Typesense, the Qdrant stand-in, a store folder and an
alert receiver. The browser walk is deploy/test_operator_day.py."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, date, datetime

import dagster as dg
import psycopg
import pytest

from backup_pipelines.cli import main as cli_main
from backup_pipelines.defs.partitions import partitions_start
from backup_pipelines.lib.errors import ConfigError
from backup_pipelines.lib.policy import Policy, load_policy
from backup_pipelines.lib.store import LocalStore
from backup_pipelines_tests.helpers import (
    DATE,
    back_up,
    back_up_an_orphan,
    restore_env,
)
from backup_pipelines_tests.pg_checks import fingerprint
from backup_pipelines_tests.recovery.test_restore import lose_workspace_memory

CLI_SECONDS = 180


@pytest.fixture
def operator(tmp_path, monkeypatch, indexed_source, alert_receiver):
    """One deployment's environment (SQL, both indexes, a store folder, a Dagster home, the
    alert receiver) with ws_acme and ws_globex backed up for DATE."""
    store = LocalStore(tmp_path / "store")
    for workspace in ("ws_acme", "ws_globex"):
        back_up(store, indexed_source, workspace)
    env = {**restore_env(indexed_source, tmp_path / "store"), "DAGSTER_HOME": str(tmp_path)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from backup_pipelines.definitions import build_definitions

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("workspaces", ["ws_acme", "ws_globex", "ws_initech"])
        yield {
            "defs": build_definitions(),
            "instance": instance,
            "store": store,
            "env": env,
            "source": indexed_source,
            "receiver": alert_receiver,
        }


def run(operator, job: str, partition: str, tags: dict | None = None):
    return (
        operator["defs"]
        .resolve_job_def(job)
        .execute_in_process(
            instance=operator["instance"],
            partition_key=partition,
            tags=tags or {},
            raise_on_error=False,
        )
    )


def failure(result) -> tuple[str, str]:
    event = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    return event.step_key, event.event_specific_data.error.message


def tick(operator, sensor: str, cursor: str | None = None):
    definition = operator["defs"].resolve_sensor_def(sensor)
    with dg.build_sensor_context(
        instance=operator["instance"],
        definitions=operator["defs"],
        resources=operator["defs"].resources,
        cursor=cursor,
    ) as context:
        return definition(context)


def alerts_of(operator, kind: str) -> list[dict]:
    return [a for a in operator["receiver"].webhook if a["kind"] == kind]


def cli(operator, *argv: str) -> subprocess.CompletedProcess:
    """The command as the operator types it: its own process (the entry point really works)."""
    return subprocess.run(
        [sys.executable, "-m", "backup_pipelines.cli", *argv],
        env={**os.environ, **operator["env"]},
        capture_output=True,
        text=True,
        timeout=CLI_SECONDS,
    )


def cli_in_process(operator, monkeypatch, capsys, *argv: str) -> subprocess.CompletedProcess:
    """The same command through `main` in this process (no Dagster import of its own: seconds
    less each), with the same environment; DAGSTER_HOME is the commands' instance, not the
    one `instance_for_test` points this process at."""
    capsys.readouterr()  # what earlier steps printed is not this command's output
    with monkeypatch.context() as patch:
        for key, value in operator["env"].items():
            patch.setenv(key, value)
        code = cli_main(list(argv))
    printed = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, printed.out, printed.err)


def test_operator_backup_of_a_workspace_sql_does_not_list_fails_and_writes_nothing(operator):
    """A typo added as a partition ("Add a partition" accepts any name) is refused at once, on
    every backup step, and leaves no artifact, not even a partial folder."""
    operator["instance"].add_dynamic_partitions("workspaces", ["ws_acmee"])
    result = run(operator, "workspace_backup_job", f"{DATE}|ws_acmee")
    assert not result.success
    _step, message = failure(result)
    assert "workspace ws_acmee is not in the workspace registry table public.workspaces" in message
    assert "backup-pipelines workspaces remove ws_acmee" in message
    store_root = operator["store"].root
    assert not [p for p in store_root.rglob("*") if "ws_acmee" in p.as_posix()]


def test_operator_workspaces_list_and_remove_keep_what_has_backups(operator, monkeypatch, capsys):
    """`workspaces list` tells active, vanished and never-registered partitions apart;
    `remove` takes a typo, refuses one SQL still lists or whose backups are kept (unless
    --force), and `list --restorable` names the restorable dates. The first command runs as
    its own process, the others through `main` in this one."""
    home = operator["env"]["DAGSTER_HOME"]  # the commands' instance, not the test's own
    with dg.DagsterInstance.from_config(home) as instance:
        instance.add_dynamic_partitions("workspaces", ["ws_acme", "ws_globex", "ws_acmee"])
    lose_workspace_memory(operator["source"], "ws_globex")  # deleted from SQL, backups kept

    listed = cli(operator, "workspaces", "list")
    assert listed.returncode == 0, listed.stderr
    lines = {line.split()[0]: line for line in listed.stdout.splitlines()[1:-1]}
    assert "active" in lines["ws_acme"] and DATE in lines["ws_acme"]
    assert "vanished from SQL" in lines["ws_globex"] and DATE in lines["ws_globex"]
    assert "never in SQL" in lines["ws_acmee"]
    assert "new in SQL" in lines["ws_initech"]  # discovery adds it

    refused = cli_in_process(
        operator, monkeypatch, capsys, "workspaces", "remove", "ws_acme", "ws_globex"
    )
    assert refused.returncode == 1
    assert "refused: ws_acme: SQL still lists it" in refused.stderr
    assert "refused: ws_globex: the store holds backups of it (1 date(s)" in refused.stderr
    removed = cli_in_process(operator, monkeypatch, capsys, "workspaces", "remove", "ws_acmee")
    assert removed.returncode == 0 and "removed partition ws_acmee" in removed.stdout
    forced = cli_in_process(
        operator, monkeypatch, capsys, "workspaces", "remove", "ws_globex", "--force"
    )
    assert forced.returncode == 0, forced.stderr
    assert "its 1 backed-up date(s) stay in" in forced.stdout
    with dg.DagsterInstance.from_config(home) as instance:
        assert instance.get_dynamic_partitions("workspaces") == ["ws_acme"]

    restorable = cli_in_process(operator, monkeypatch, capsys, "list", "--restorable")
    assert restorable.returncode == 0, restorable.stderr
    assert "ws_globex: 1 restorable date(s)" in restorable.stdout
    assert f"  {DATE}" in restorable.stdout


def test_operator_vanished_workspace_alerts_once_stops_its_rpo_and_comes_back(operator):
    """A workspace deleted from SQL is the runbook's accidental deletion: one alert naming its
    newest backup and the restore command, however many ticks follow; no RPO alert for it; it
    is backed up again once SQL lists it again."""
    lose_workspace_memory(operator["source"], "ws_globex")
    first = tick(operator, "workspace_discovery_sensor")
    second = tick(operator, "workspace_discovery_sensor", first.cursor)
    third = tick(operator, "workspace_discovery_sensor", second.cursor)

    [alert] = alerts_of(operator, "workspace_vanished")
    assert alert["workspace"] == "ws_globex"
    assert alert["details"]["newest_restorable_date"] == DATE
    assert alert["details"]["rows_in_newest_backup"] > 0
    assert alert["details"]["restore_command"] == (
        f"backup-pipelines restore workspace --date {DATE} --workspace ws_globex"
    )
    backups = [r for r in first.run_requests if r.job_name == "workspace_backup_job"]
    assert "ws_globex" not in {r.partition_key.split("|")[1] for r in backups}
    assert "1 gone from SQL (ws_globex)" in third.skip_reason.skip_message

    schedule = operator["defs"].resolve_schedule_def("workspace_backup_daily")
    with dg.build_schedule_context(
        instance=operator["instance"],
        scheduled_execution_time=datetime.now(UTC),
        resources=operator["defs"].resources,
        repository_def=operator["defs"].get_repository_def(),
    ) as context:
        scheduled = schedule.evaluate_tick(context).run_requests
    assert sorted(r.partition_key.split("|")[1] for r in scheduled) == ["ws_acme", "ws_initech"]

    tick(operator, "rpo_sensor")
    late = [a for a in operator["receiver"].webhook if a["kind"].startswith("rpo")]
    assert late, "ws_acme's backup of DATE is days old: the RPO sensor alerts on it"
    assert "ws_globex" not in {a.get("workspace") for a in late}

    with psycopg.connect(operator["source"]["db"], autocommit=True) as conn:
        conn.execute("INSERT INTO workspaces (workspace_id, name) VALUES ('ws_globex', 'back')")
    returned = tick(operator, "workspace_discovery_sensor", third.cursor)
    assert [r.run_key for r in returned.run_requests if r.run_key.startswith("returned-")] == [
        f"returned-{r.partition_key}"
        for r in returned.run_requests
        if r.job_name == "workspace_backup_job" and r.partition_key.endswith("|ws_globex")
    ]
    assert any(r.partition_key.endswith("|ws_globex") for r in returned.run_requests)
    assert len(alerts_of(operator, "workspace_vanished")) == 1


def test_operator_dry_run_is_its_own_job_and_leaves_the_partition_to_restore(operator):
    """The dry run plans (rows per table, what each index would get) and writes nothing; the
    restore job's partition is not completed by it, and the restore job refuses the old dry-run
    tag rather than restoring."""
    source = operator["source"]
    before = fingerprint(source["db"], "ws_acme")
    lose_workspace_memory(source, "ws_acme")
    damaged = fingerprint(source["db"], "ws_acme")
    partition = f"{DATE}|ws_acme"

    planned = run(operator, "workspace_restore_dry_run_job", partition)
    assert planned.success
    metadata = planned.output_for_node("plan_workspace_restore")
    assert metadata["rows_to_insert"] > 0
    assert metadata["verdict"] == "PASS"
    for engine in ("typesense", "qdrant"):  # both collections were dropped by the incident
        assert metadata["indexes"][engine]["action"] == "restore from artifact"
        assert metadata["indexes"][engine]["effect"].startswith("collection missing: created")
    assert fingerprint(source["db"], "ws_acme") == damaged  # nothing written
    assert not source["typesense"].collection_exists(
        source["policy"].typesense_collection_for("ws_acme")
    )
    instance = operator["instance"]
    restored_partitions = instance.get_run_records(
        dg.RunsFilter(job_name="workspace_restore_job", statuses=[dg.DagsterRunStatus.SUCCESS])
    )
    assert not restored_partitions

    tagged = run(operator, "workspace_restore_job", partition, tags={"restore/dry_run": "true"})
    assert not tagged.success
    assert "workspace_restore_dry_run_job" in failure(tagged)[1]
    assert fingerprint(source["db"], "ws_acme") == damaged

    restored = run(operator, "workspace_restore_job", partition)
    assert restored.success
    assert fingerprint(source["db"], "ws_acme") == before


def test_operator_gate_refusal_is_a_decision_alerted_as_restore_refused(operator):
    """An index artifact holding a memory the SQL artifact lacks: the gate's FAIL reads as a
    decision (what, why, what to do), and one `restore_refused` alert carries the verdict and
    its evidence; nothing is written."""
    source = operator["source"]
    back_up_an_orphan(operator["store"], source, "ws_acme")
    before = fingerprint(source["db"], "ws_acme")

    refused = run(operator, "workspace_restore_job", f"{DATE}|ws_acme")
    assert not refused.success
    step, message = failure(refused)
    assert step == "consistency_gate"
    decision = message.split("Failure: ", 1)[-1]  # what the run page shows under the step
    assert decision.startswith(
        f"Restore refused: the consistency gate's verdict for {DATE}|ws_acme is FAIL"
    )
    assert "Nothing was written" in message and "restore/override_gate" in message
    assert "Traceback" not in message
    [alert] = alerts_of(operator, "restore_refused")
    assert alert["workspace"] == "ws_acme"
    assert alert["details"]["verdict"] == "FAIL"
    assert alert["details"]["evidence"]  # what the gate saw, for the on-call
    assert fingerprint(source["db"], "ws_acme") == before


def test_operator_restore_catalog_and_health_report_read_at_a_glance(operator):
    """The catalog asset holds a table of restorable dates per workspace; the health report
    keeps the whole database apart from workspaces, the workspace column first, and leaves a
    cell empty for "none" (never -1)."""
    catalog = run(operator, "restore_catalog_job", None)
    assert catalog.success
    [event] = catalog.get_asset_materialization_events()
    metadata = event.materialization.metadata
    assert metadata["workspaces_restorable"].value == 2
    dates = metadata["dates of ws_acme"].value
    assert [r.data["date"] for r in dates.records] == [DATE]

    rpo = tick(operator, "rpo_sensor")
    report = [e for e in rpo.asset_events if isinstance(e, dg.AssetMaterialization)]
    assert report, "the RPO tick materializes the health report"
    tables = report[-1].metadata
    assert tables["workspaces"].value == 3
    workspaces = tables["report"].value
    assert workspaces.schema.columns[0].name == "workspace"
    assert {r.data["workspace"] for r in workspaces.records} == {
        "ws_acme",
        "ws_globex",
        "ws_initech",
    }
    initech = next(r.data for r in workspaces.records if r.data["workspace"] == "ws_initech")
    assert initech["newest_backup"] is None  # never backed up: an empty cell
    assert all(v != -1 for r in workspaces.records for v in r.data.values())
    whole = tables["whole_database"].value
    assert [r.data["backup"] for r in whole.records] == ["postgres/full_dump"]


def test_operator_every_asset_job_and_check_has_a_description(operator):
    defs = operator["defs"]
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        assert graph.get(key).description, f"asset {key.to_user_string()} has no description"
    for check_key in graph.asset_check_keys:
        spec = graph.get_check_spec(check_key)
        assert spec.description, f"check {check_key.name} of {check_key.asset_key} undescribed"
    for job in defs.resolve_all_job_defs():
        if not job.name.startswith("__"):
            assert job.description, f"job {job.name} has no description"


def test_operator_partitions_start_from_the_policy_or_a_recent_default(tmp_path, monkeypatch):
    """Partitions start where a deployment can have backups: by default the first of the
    month retention's longest window reaches back to (not a fixed date a year ago)."""
    assert partitions_start(date(2026, 12, 3)) == "2026-09-01"  # 90 days back: September
    policy = tmp_path / "policy.yaml"
    policy.write_text("partitions_start: 2025-07-01\n")
    monkeypatch.setenv("BACKUP_POLICY_FILE", str(policy))
    assert load_policy(str(policy)).partitions_start == "2025-07-01"
    assert partitions_start(date(2026, 12, 3)) == "2025-07-01"
    policy.write_text("partitions_start: 2025-02-30\n")
    with pytest.raises(ConfigError, match="partitions_start"):
        load_policy(str(policy))
    assert Policy().partitions_start == ""
