"""deploy/: the compose file against the compose specification's JSON schema (as shipped by
PyPI's check-jsonschema), the Helm values against the dagster chart's values.schema.json
(vendored in deploy/helm/chart-schema/), and the pieces agreeing with each other and with the
code (every variable the code reads is in the env template; one concurrency policy)."""

from __future__ import annotations

import copy
import json
import re
from importlib import resources
from pathlib import Path

import jsonschema
import yaml

PROJECT = Path(__file__).resolve().parents[2]
DEPLOY = PROJECT / "deploy"


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


# --------------------------------------------------------------------------------------------
# compose


def compose_schema() -> dict:
    source = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(source.read_text())


def test_compose_file_follows_the_compose_specification():
    compose = load_yaml(DEPLOY / "docker-compose.yaml")
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]
    # The schema does catch mistakes (a sanity check of the check itself).
    broken = copy.deepcopy(compose)
    broken["services"]["dagster_daemon"]["depends_on"] = {"x": {"condition": "whenever"}}
    assert list(validator.iter_errors(broken))


def test_compose_wires_code_server_webserver_and_daemon():
    compose = load_yaml(DEPLOY / "docker-compose.yaml")
    services = compose["services"]
    assert set(services) == {
        "dagster_postgres",
        "backup_pipelines_code",
        "dagster_webserver",
        "dagster_daemon",
    }
    code = services["backup_pipelines_code"]
    command = code["command"]
    assert command[:3] == ["dagster", "code-server", "start"]
    assert command[command.index("-m") + 1] == "backup_pipelines.definitions"
    port = int(command[command.index("-p") + 1])
    assert code["healthcheck"]["test"] == [
        "CMD",
        "dagster",
        "api",
        "grpc-health-check",
        "-p",
        str(port),
    ]
    assert code["build"]["dockerfile"] == "deploy/Dockerfile"
    # The workspace file the webserver and daemon load points at that service and port.
    server = load_yaml(DEPLOY / "workspace.yaml")["load_from"][0]["grpc_server"]
    assert (server["host"], server["port"]) == ("backup_pipelines_code", port)
    assert server["location_name"] == "backup_pipelines"
    for name in ("dagster_webserver", "dagster_daemon"):
        service = services[name]
        assert "/opt/dagster/app/workspace.yaml" in service["command"]
        assert service["depends_on"]["backup_pipelines_code"]["condition"] == "service_healthy"
        # The stores' secrets only where the code runs.
        assert service["env_file"] == ["dagster.env"]
    assert code["env_file"] == ["dagster.env", "backup_pipelines.env"]


def variables_read_by_the_code() -> set[str]:
    pattern = re.compile(
        r"\"((?:DATABASE|TYPESENSE|QDRANT|BACKUP|AWS|PG|PGBACKREST|DIGITALOCEAN|ALERT|SLACK|DRILL|DAGSTER|MSSQL)"
        r"_[A-Z0-9_]+|DATABASE_URL)\""
    )
    found = set()
    for path in (PROJECT / "backup_pipelines").rglob("*.py"):
        if "devstack" in path.parts:
            continue  # the local stack's own knobs (DEMO_S3, ports) are not the deployment's
        found |= set(pattern.findall(path.read_text()))
    # Dagster's own (set by the image or the process manager), internal cache folders, the
    # variables the code sets for an operator's rebuild command (written, not read), and a
    # PostgreSQL data directory's version file (a file name the pattern also matches).
    return found - {
        "DAGSTER_HOME",
        "DAGSTER_PORT",
        "BACKUP_PIPELINES_CACHE_DIR",
        "BACKUP_REBUILD_WORKSPACE",
        "BACKUP_REBUILD_COLLECTION",
        "PG_VERSION",
    }


def env_template_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        match = re.match(r"^#?\s*([A-Z][A-Z0-9_]+)=", line)
        if match:
            names.add(match.group(1))
    return names


def test_env_templates_name_every_variable_the_code_reads():
    code_vars = variables_read_by_the_code()
    assert {"DATABASE_URL", "BACKUP_STORE_URL", "ALERT_WEBHOOK_URL"} <= code_vars
    templates = env_template_names(DEPLOY / "backup_pipelines.env.example")
    templates |= env_template_names(DEPLOY / "dagster.env.example")
    assert code_vars - templates == set()
    instance_vars = set(
        re.findall(r"env: (DAGSTER_PG_[A-Z]+)", (DEPLOY / "dagster.yaml").read_text())
    )
    assert instance_vars == env_template_names(DEPLOY / "dagster.env.example") & instance_vars
    assert len(instance_vars) == 5


def test_dockerfile_installs_the_tools_the_backups_run():
    text = (DEPLOY / "Dockerfile").read_text()
    assert "python:3.11" in text
    for package in (
        '"postgresql-client-${PG_MAJOR}"',
        "pgbackrest",
        "unixodbc",
        "tdsodbc",
        "msodbcsql18",
    ):
        assert package in text
    assert "COPY deploy/dagster.yaml ${DAGSTER_HOME}/dagster.yaml" in text
    assert '"grpc-health-check"' in text


# --------------------------------------------------------------------------------------------
# Helm


def helm_merge(defaults, overrides):
    """Helm's values coalescing: maps merge key by key, anything else is replaced."""
    if isinstance(defaults, dict) and isinstance(overrides, dict):
        merged = dict(defaults)
        for key, value in overrides.items():
            merged[key] = helm_merge(defaults.get(key), value) if key in defaults else value
        return merged
    return copy.deepcopy(overrides)


def without_remote_refs(schema):
    """The chart's schema with its `$ref`s to kubernetesjsonschema.dev dropped (not reachable
    here); every other keyword of the chart's schema stays."""
    if isinstance(schema, dict):
        return {
            k: without_remote_refs(v)
            for k, v in schema.items()
            if not (k == "$ref" and isinstance(v, str) and v.startswith("http"))
        }
    if isinstance(schema, list):
        return [without_remote_refs(v) for v in schema]
    return schema


def user_deployments_values() -> dict:
    chart = DEPLOY / "helm" / "chart-schema"
    ours = load_yaml(DEPLOY / "helm" / "values.yaml")
    section = ours["dagster-user-deployments"]
    merged = helm_merge(load_yaml(chart / "values.yaml"), section)
    # The parent chart passes its `global` down to the subchart.
    return helm_merge(merged, {"global": ours.get("global", {})})


def test_helm_user_deployment_follows_the_charts_schema():
    schema = without_remote_refs(
        json.loads((DEPLOY / "helm" / "chart-schema" / "values.schema.json").read_text())
    )
    validator = jsonschema.Draft202012Validator(schema)
    values = user_deployments_values()
    errors = list(validator.iter_errors(values))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]
    broken = copy.deepcopy(values)
    broken["deployments"][0]["image"]["pullPolicy"] = "Sometimes"
    del broken["deployments"][0]["port"]
    assert len(list(validator.iter_errors(broken))) == 2


def test_helm_values_match_the_production_instance():
    values = load_yaml(DEPLOY / "helm" / "values.yaml")
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["codeServerArgs"] == ["-m", "backup_pipelines.definitions"]
    assert deployment["readinessProbe"]["enabled"] is True
    assert deployment["envSecrets"] == [{"name": "backup-pipelines-env"}]
    # No secret value in the values file: only names of variables whose values are public.
    secret_names = {"DATABASE_URL", "TYPESENSE_API_KEY", "QDRANT_API_KEY", "SLACK_TOKEN"}
    secret_names |= {"AWS_SECRET_ACCESS_KEY", "ALERT_WEBHOOK_URL", "DRILL_DATABASE_URL"}
    assert not secret_names & {e["name"] for e in deployment["env"]}
    # The chart renders its own dagster.yaml: the same run queue policy as deploy/dagster.yaml.
    instance = load_yaml(DEPLOY / "dagster.yaml")["run_coordinator"]["config"]
    retries = load_yaml(DEPLOY / "dagster.yaml")["run_retries"]
    assert values["dagsterDaemon"]["runRetries"] == {
        "enabled": retries["enabled"],
        "maxRetries": retries["max_retries"],
        "retryOnAssetOrOpFailure": retries["retry_on_asset_or_op_failure"],
    }
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert queued["maxConcurrentRuns"] == instance["max_concurrent_runs"]
    assert queued["tagConcurrencyLimits"] == [
        {
            "key": limit["key"],
            **({"value": limit["value"]} if "value" in limit else {}),
            "limit": limit["limit"],
        }
        for limit in instance["tag_concurrency_limits"]
    ]


def test_instance_files_say_which_is_which():
    assert "Production" in (DEPLOY / "dagster.yaml").read_text().splitlines()[0]
    assert "Local" in (PROJECT / "dagster.yaml").read_text().splitlines()[0]
    assert (DEPLOY / "workspace.yaml").read_text().startswith("# Production workspace")
