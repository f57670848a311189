"""The production shape on loopback, as separate processes: Dagster's storage on PostgreSQL
(deploy/dagster.yaml: queued run coordinator, per-workspace tag concurrency limit), the code
server (`dagster api grpc`), `dagster-webserver` and `dagster-daemon run`, with the gRPC
workspace file of deploy/ pointed at the code server's port. Used by the deployed-shape and
browser tests and by bench/bench_orchestration.py; everything it starts is stopped by
`stop()`, whatever happened."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

from backup_pipelines.devstack.ports import free_port
from backup_pipelines_tests import processes

PROJECT = Path(__file__).resolve().parents[2]
DEPLOY = PROJECT / "deploy"
BIN = Path(sys.executable).parent
LOCATION = "backup_pipelines"
REPOSITORY = {"repositoryName": "__repository__", "repositoryLocationName": LOCATION}
TEST_MODULE = "backup_pipelines_tests.deploy.deployed_definitions"
SERVER_UP_SECONDS = 240  # a busy 2-core machine; about 10-15 s when idle (FACTS)


class DeploymentError(RuntimeError):
    pass


def wait_for(
    condition: Callable[[], object], seconds: float, what: str, every: float = 1.0, on_fail=None
):
    """Poll `condition` until it returns something truthy; fail with `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = on_fail() if on_fail else ""
            raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}\n{detail}")
        time.sleep(every)


@dataclass
class Deployment:
    home: Path
    dagster_db_port: int
    dagster_db_name: str
    code_env: dict[str, str]  # the code location's own variables (stores, alerts, automation)
    module: str = TEST_MODULE
    max_concurrent_runs: int | None = None
    # The backfill daemon's loop every few seconds instead of 30 (fast_daemon.py): tests.
    fast_backfills: bool = False
    url: str = ""
    grpc_port: int = 0
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    # ----------------------------------------------------------------------------------------
    # environment

    @property
    def dagster_env(self) -> dict[str, str]:
        """What the webserver and the daemon get: the instance's variables, nothing else of ours
        (the stores' secrets live only where the code runs: the code server and its runs)."""
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "BACKUP_"))}
        for name in ("DATABASE_URL", "TYPESENSE_URL", "TYPESENSE_API_KEY", "QDRANT_URL"):
            keep.pop(name, None)
        keep.pop("ALERT_WEBHOOK_URL", None)
        return {
            **keep,
            "DAGSTER_HOME": str(self.home),
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(self.dagster_db_port),
            "DAGSTER_PG_USER": "postgres",
            "DAGSTER_PG_PASSWORD": "unused-with-trust-auth",
            "DAGSTER_PG_DB": self.dagster_db_name,
        }

    @property
    def code_server_env(self) -> dict[str, str]:
        # Runs are launched by the code server (DefaultRunLauncher): the run workers it starts
        # open the instance themselves, so the code server needs the instance's variables too.
        return {**self.dagster_env, **self.code_env}

    def log(self, name: str) -> Path:
        return self.home / f"{name}.log"

    def logs_tail(self, chars: int = 3000) -> str:
        return "\n".join(
            f"--- {name} ---\n{self.log(name).read_text(errors='replace')[-chars:]}"
            for name in ("code-server", "webserver", "daemon")
            if self.log(name).exists()
        )

    # ----------------------------------------------------------------------------------------
    # start / stop

    def write_instance(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        config = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
        if self.max_concurrent_runs is not None:
            config["run_coordinator"]["config"]["max_concurrent_runs"] = self.max_concurrent_runs
        (self.home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        workspace = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())
        server = workspace["load_from"][0]["grpc_server"]
        server.update(host="127.0.0.1", port=self.grpc_port)
        (self.home / "workspace.yaml").write_text(yaml.safe_dump(workspace, sort_keys=False))
        # The UI's welcome pop-up would cover what the browser tests look at.
        (self.home / ".nux").mkdir(exist_ok=True)
        (self.home / ".nux" / "nux.yaml").write_text("seen: 1\n")

    def start(self) -> Deployment:
        self.grpc_port = free_port()
        self.write_instance()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        workspace = str(self.home / "workspace.yaml")
        self.procs["code-server"] = processes.start(
            [
                str(BIN / "dagster"),
                "api",
                "grpc",
                "-m",
                self.module,
                "-h",
                "127.0.0.1",
                "-p",
                str(self.grpc_port),
            ],
            env=self.code_server_env,
            log=self.log("code-server"),
            cwd=PROJECT,
        )
        wait_for(
            self._grpc_serving,
            SERVER_UP_SECONDS,
            "the code server's gRPC health check",
            every=0.5,
            on_fail=self.logs_tail,
        )
        # Once, the command the compose file's health check runs (deploy/docker-compose.yaml).
        if not self._grpc_healthy():
            raise DeploymentError(f"`dagster api grpc-health-check` failed\n{self.logs_tail()}")
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.procs["webserver"] = processes.start(
            [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w", workspace],
            env=self.dagster_env,
            log=self.log("webserver"),
            cwd=self.home,
        )
        self.procs["daemon"] = processes.start(
            [*self.daemon_command, "run", "-w", workspace],
            env=self.dagster_env,
            log=self.log("daemon"),
            cwd=self.home,
        )
        wait_for(self._webserver_up, SERVER_UP_SECONDS, "the webserver", on_fail=self.logs_tail)
        wait_for(
            self._location_loaded,
            SERVER_UP_SECONDS,
            "the code location in the webserver",
            on_fail=self.logs_tail,
        )

    @property
    def daemon_command(self) -> list[str]:
        if self.fast_backfills:
            return [sys.executable, "-m", "backup_pipelines_tests.deploy.fast_daemon"]
        return [str(BIN / "dagster-daemon")]

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise DeploymentError(f"{name} exited with {proc.returncode}\n{self.logs_tail()}")

    def _grpc_serving(self) -> bool:
        """The health check's own query, from this process: polling it does not start a
        process (and import Dagster) each time while the code server itself is starting."""
        from dagster._grpc.client import DagsterGrpcClient

        self._check_alive()
        client = DagsterGrpcClient(port=self.grpc_port, host="127.0.0.1")
        with contextlib.redirect_stdout(io.StringIO()):  # it prints each refused connection
            return client.health_check_query() == "SERVING"

    def _grpc_healthy(self) -> bool:
        self._check_alive()
        result = subprocess.run(
            [str(BIN / "dagster"), "api", "grpc-health-check", "-p", str(self.grpc_port)],
            capture_output=True,
            timeout=60,
            env=self.dagster_env,
        )
        return result.returncode == 0

    def _webserver_up(self) -> bool:
        self._check_alive()
        with contextlib.suppress(requests.RequestException):
            return requests.get(f"{self.url}/server_info", timeout=5).ok
        return False

    def _location_loaded(self) -> bool:
        self._check_alive()
        data = self.graphql(
            """query { workspaceOrError { ... on Workspace { locationEntries {
                 name locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
        )
        entries = data["workspaceOrError"]["locationEntries"]
        kinds = [e["locationOrLoadError"]["__typename"] for e in entries]
        if "PythonError" in kinds:
            raise DeploymentError(f"the code location failed to load: {entries}")
        return kinds == ["RepositoryLocation"]

    def stop(self) -> None:
        # The daemon first (no new runs), then the webserver, the code server last (its run
        # workers are in its process group and go with it).
        for name in ("daemon", "webserver", "code-server"):
            proc = self.procs.pop(name, None)
            if proc is not None:
                processes.stop(proc)

    def __enter__(self) -> Deployment:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----------------------------------------------------------------------------------------
    # GraphQL, as the UI speaks to the webserver

    def graphql(self, query: str, **variables) -> dict:
        answer = requests.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=120
        )
        if not answer.ok:
            raise DeploymentError(f"GraphQL HTTP {answer.status_code}: {answer.text[:2000]}")
        body = answer.json()
        if body.get("errors"):
            raise DeploymentError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def runs(self, tags: dict[str, str] | None = None) -> list[dict]:
        filter_ = {"tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]}
        data = self.graphql(RUNS, filter=filter_)
        return data["runsOrError"]["results"]

    def launch_run(self, job: str, partition: str | None = None, tags: dict | None = None) -> str:
        all_tags = dict(tags or {})
        if partition:
            all_tags.update(partition_tags(partition))
        params = {
            "selector": {**REPOSITORY, "jobName": job},
            "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in all_tags.items()]},
            "runConfigData": {},
        }
        result = self.graphql(LAUNCH_RUN, params=params)["launchRun"]
        if result["__typename"] != "LaunchRunSuccess":
            raise DeploymentError(f"launchRun {job} {partition}: {result}")
        return result["run"]["runId"]

    def materialize(
        self, asset_keys: list[str], partition: str | None = None, checks: list[str] = ()
    ) -> str:
        """What "Materialize" (or "Execute check") in the UI does: a run of the implicit
        `__ASSET_JOB`; `checks` are "asset/key:check_name"."""
        params = {
            "selector": {
                **REPOSITORY,
                "jobName": "__ASSET_JOB",
                "assetSelection": [{"path": k.split("/")} for k in asset_keys],
                "assetCheckSelection": [
                    {"assetKey": {"path": c.split(":")[0].split("/")}, "name": c.split(":")[1]}
                    for c in checks
                ],
            },
            "executionMetadata": {
                "tags": [{"key": k, "value": v} for k, v in partition_tags(partition or "").items()]
            },
            "runConfigData": {},
        }
        result = self.graphql(LAUNCH_RUN, params=params)["launchRun"]
        if result["__typename"] != "LaunchRunSuccess":
            raise DeploymentError(f"materialize {asset_keys} {checks} {partition}: {result}")
        return result["run"]["runId"]

    def add_workspace_partition(self, workspace: str) -> None:
        result = self.graphql(ADD_PARTITION, key=workspace, repo=REPOSITORY)
        kind = result["addDynamicPartition"]["__typename"]
        if kind not in {"AddDynamicPartitionSuccess", "DuplicateDynamicPartitionError"}:
            raise DeploymentError(f"addDynamicPartition {workspace}: {result}")

    def launch_backfill(self, job: str, partitions: list[str], tags: dict | None = None) -> str:
        params = {
            "selector": {
                "partitionSetName": f"{job}_partition_set",
                "repositorySelector": REPOSITORY,
            },
            "partitionNames": partitions,
            "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()],
        }
        result = self.graphql(LAUNCH_BACKFILL, params=params)["launchPartitionBackfill"]
        if result["__typename"] != "LaunchBackfillSuccess":
            raise DeploymentError(f"launchPartitionBackfill {job}: {result}")
        return result["backfillId"]

    def backfill(self, backfill_id: str) -> dict:
        return self.graphql(BACKFILL, id=backfill_id)["partitionBackfillOrError"]

    def start_sensor(self, name: str) -> None:
        """What the UI's sensor toggle does (the stored state then wins over the default)."""
        selector = {**REPOSITORY, "sensorName": name}
        result = self.graphql(START_SENSOR, selector=selector)["startSensor"]
        if result.get("__typename") != "Sensor":
            raise DeploymentError(f"startSensor {name}: {result}")

    def sensor_status(self, name: str) -> str:
        selector = {**REPOSITORY, "sensorName": name}
        return self.graphql(SENSOR_TICKS, selector=selector)["sensorOrError"]["sensorState"][
            "status"
        ]

    def partition_run_statuses(self, job: str) -> dict[str, str]:
        """Partition key -> the status of the job's latest run of it (what the job's partitions
        page and the backfill dialog's status filters go by); partitions never run are absent."""
        data = self.graphql(PARTITION_STATUSES, repo=REPOSITORY, name=f"{job}_partition_set")
        statuses = data["partitionSetOrError"]["partitionStatusesOrError"]["results"]
        return {s["partitionName"]: s["runStatus"] for s in statuses if s["runStatus"]}

    def output_metadata(self, run_id: str, step: str) -> dict[str, object]:
        """The metadata a step's output carries (what the run page lists under its output)."""
        data = self.graphql(OUTPUT_METADATA, runId=run_id)["logsForRun"]
        found: dict[str, object] = {}
        for event in data.get("events", []):
            if event["__typename"] == "ExecutionStepOutputEvent" and event["stepKey"] == step:
                for entry in event["metadataEntries"]:
                    found[entry["label"]] = {
                        k: v for k, v in entry.items() if k not in {"label", "__typename"}
                    }
        return found

    def ticks(self, sensor: str) -> list[dict]:
        selector = {**REPOSITORY, "sensorName": sensor}
        data = self.graphql(SENSOR_TICKS, selector=selector)["sensorOrError"]
        return data["sensorState"]["ticks"]

    def errors_of(self, run_id: str) -> list[str]:
        """The step and run failure messages of a run (for assertion messages)."""
        data = self.graphql(RUN_ERRORS, runId=run_id)["logsForRun"]
        found = []
        for event in data.get("events", []):
            error = event.get("error") or {}
            text = " ".join(filter(None, [event.get("message"), error.get("message")]))
            if event["__typename"] in {"ExecutionStepFailureEvent", "RunFailureEvent"}:
                found.append(text.strip()[:2000])
        return found

    def wait_runs_done(self, run_ids: list[str], seconds: float) -> dict[str, dict]:
        def done():
            by_id = {r["runId"]: r for r in self.runs()}
            if all(by_id.get(i, {}).get("status") in FINISHED for i in run_ids):
                return {i: by_id[i] for i in run_ids}
            return None

        return wait_for(done, seconds, f"runs {run_ids} to finish", every=2, on_fail=self.logs_tail)


def partition_tags(partition: str) -> dict[str, str]:
    """The tags a run of one partition carries when the UI, a schedule, a sensor or a backfill
    launches it. A date x workspace key also gets one tag per dimension: the per-workspace
    concurrency limit keys on `dagster/partition/workspace`, and Dagster does NOT derive it
    from `dagster/partition` for a run created through the GraphQL API."""
    if not partition:
        return {}
    tags = {"dagster/partition": partition}
    if "|" in partition:
        date, workspace = partition.split("|", 1)
        tags |= {"dagster/partition/date": date, "dagster/partition/workspace": workspace}
    return tags


FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}

RUNS = """
query($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    ... on Runs { results { runId jobName status startTime endTime creationTime
                            tags { key value } } }
  }
}"""
RUN_ERRORS = """
query($runId: ID!) {
  logsForRun(runId: $runId, limit: 1000) {
    ... on EventConnection { events { __typename
      ... on MessageEvent { message }
      ... on ExecutionStepFailureEvent { error { message } }
      ... on RunFailureEvent { error { message } } } }
  }
}"""
LAUNCH_RUN = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidSubsetError { message }
    ... on UnauthorizedError { message }
  }
}"""
LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
  }
}"""
BACKFILL = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    ... on PartitionBackfill { id status numPartitions tags { key value } }
  }
}"""
ADD_PARTITION = """
mutation($key: String!, $repo: RepositorySelector!) {
  addDynamicPartition(partitionsDefName: "workspaces", partitionKey: $key,
                      repositorySelector: $repo) {
    __typename
  }
}"""
START_SENSOR = """
mutation($selector: SensorSelector!) {
  startSensor(sensorSelector: $selector) { __typename ... on PythonError { message } }
}"""
PARTITION_STATUSES = """
query($repo: RepositorySelector!, $name: String!) {
  partitionSetOrError(repositorySelector: $repo, partitionSetName: $name) {
    ... on PartitionSet { partitionStatusesOrError {
      ... on PartitionStatuses { results { partitionName runStatus } } } }
  }
}"""
OUTPUT_METADATA = """
query($runId: ID!) {
  logsForRun(runId: $runId, limit: 1000) {
    ... on EventConnection { events { __typename
      ... on ExecutionStepOutputEvent { stepKey metadataEntries { __typename label
        ... on TextMetadataEntry { text }
        ... on IntMetadataEntry { intValue }
        ... on JsonMetadataEntry { jsonString }
        ... on TableMetadataEntry { table { records } } } } } }
  }
}"""
SENSOR_TICKS = """
query($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    ... on Sensor { sensorState { status ticks(limit: 100) { id status timestamp } } }
  }
}"""
