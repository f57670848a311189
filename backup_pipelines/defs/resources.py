"""Resources by role, built from the environment. Secrets stay in EnvVar references, so the
UI and run config show the variable's name, never its value."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from typing import Any

import dagster as dg

from backup_pipelines.lib.engines import configured_engines
from backup_pipelines.lib.errors import ConfigError
from backup_pipelines.lib.policy import Policy, load_policy
from backup_pipelines.lib.store import BackupStore, store_from_url


class BackupStoreResource(dg.ConfigurableResource):
    """Where artifacts go: `file:///absolute/dir` or `s3://bucket/prefix` (BACKUP_STORE_URL)."""

    url: str = ""

    def get_store(self) -> BackupStore:
        return store_from_url(self.url)


class PostgresResource(dg.ConfigurableResource):
    """The PostgreSQL source of truth (DATABASE_URL)."""

    database_url: str


class TypesenseResource(dg.ConfigurableResource):
    """The Typesense search index (TYPESENSE_URL + TYPESENSE_API_KEY)."""

    url: str
    api_key: str

    def client(self):
        from backup_pipelines.lib.typesense.client import TypesenseClient

        return TypesenseClient(self.url, self.api_key)


class QdrantResource(dg.ConfigurableResource):
    """The Qdrant vector index (QDRANT_URL, optional QDRANT_API_KEY)."""

    url: str
    api_key: str = ""

    def client(self):
        from backup_pipelines.lib.qdrant.client import QdrantHttp

        return QdrantHttp(self.url, self.api_key or None)


class MssqlResource(dg.ConfigurableResource):
    """The platform's SQL Server (MSSQL_CONNECTION_STRING, an ODBC string; its DATABASE= is the
    database backed up) and the folder SQL Server writes backups to: MSSQL_BACKUP_DIR as the
    server sees it, MSSQL_BACKUP_LOCAL_DIR as this process sees it (default: the same path)."""

    connection_string: str
    backup_dir: str
    backup_local_dir: str = ""

    def database(self) -> str:
        from backup_pipelines.lib.mssql.connection import database_of

        return database_of(self.connection_string)

    def folders(self):
        from pathlib import Path

        from backup_pipelines.lib.mssql.backup import Folders

        return Folders(self.backup_dir, Path(self.backup_local_dir or self.backup_dir))


class PolicyResource(dg.ConfigurableResource):
    """RPO targets, retention, workspace tables and collection names (BACKUP_POLICY_FILE)."""

    policy_file: str = ""

    def load(self) -> Policy:
        return load_policy(self.policy_file or None)


class WorkspaceRegistryResource(dg.ConfigurableResource):
    """Which workspaces exist: the platform's SQL truth. `postgres`: the policy's
    workspace_registry_table (DATABASE_URL); `mssql`: the agents table
    (MSSQL_CONNECTION_STRING); empty: no SQL source in this deployment (nothing to check)."""

    source: str = ""
    database_url: str = ""
    connection_string: str = ""
    policy_file: str = ""

    def workspaces(self) -> set[str]:
        """Every valid workspace id the registry lists now (one query)."""
        if self.source == "postgres":
            from backup_pipelines.lib.postgres.catalog import list_workspaces

            valid, _invalid = list_workspaces(
                self.database_url, load_policy(self.policy_file or None)
            )
            return set(valid)
        return self._mssql_agents()

    def lists(self, workspace: str) -> bool:
        """Whether the registry lists `workspace` now: on PostgreSQL one row looked up, so a
        day of 10,000 backups, three steps each, does not read the whole table every step."""
        if self.source == "postgres":
            from backup_pipelines.lib.postgres.catalog import list_workspaces

            valid, _invalid = list_workspaces(
                self.database_url, load_policy(self.policy_file or None), only=workspace
            )
            return workspace in valid
        return workspace in self._mssql_agents()

    def _mssql_agents(self) -> set[str]:
        if self.source == "mssql":
            from backup_pipelines.lib.mssql.agent import AgentSchema, agents_in
            from backup_pipelines.lib.mssql.connection import database_of
            from backup_pipelines.lib.workspaces import is_valid_workspace_id

            ids = agents_in(
                self.connection_string, database_of(self.connection_string), AgentSchema()
            )
            return {i for i in ids if is_valid_workspace_id(i)}
        raise ConfigError(
            "no workspace registry: neither DATABASE_URL nor MSSQL_CONNECTION_STRING is set"
        )

    def refuse_unknown(self, workspace: str, log=None) -> None:
        """Fail a backup of a workspace the registry does not list, at once and writing nothing
        (the UI's "Add a partition" accepts any name; a typo must not become a green, empty
        backup). Nothing to check without a SQL source. The decision is logged first (`log`:
        the step's logger), so the run page shows it as a line of its own, not only under the
        failure's stack trace."""
        if not self.source or self.lists(workspace):
            return
        decision = (
            f"workspace {workspace} is not in {self.describe()}: nothing backed up, nothing "
            "written. A partition added by hand stays until removed (`backup-pipelines "
            f"workspaces remove {workspace}`); a workspace deleted from SQL keeps its "
            "backups, and workspace_restore_job restores it."
        )
        if log is not None:
            log.error(decision)
        raise dg.Failure(description=decision, allow_retries=False)

    def describe(self) -> str:
        """Where the registry is, for messages (no secret: the table or the agents table)."""
        if self.source == "postgres":
            policy = load_policy(self.policy_file or None)
            return f"the workspace registry table {policy.schema}.{policy.workspace_registry_table}"
        if self.source == "mssql":
            return "the SQL Server agents table"
        return "no workspace registry"


def configured_stores(env: dict[str, str] | None = None) -> set[str]:
    """Which source stores this deployment backs up: those whose variables are set."""
    env = os.environ if env is None else env
    stores = set()
    if env.get("DATABASE_URL"):
        stores.add("postgres")
    if env.get("MSSQL_CONNECTION_STRING"):
        stores.add("mssql")
    stores.update(engine.name for engine in configured_engines(env))
    return stores


def build_resources(env: dict[str, str] | None = None) -> dict[str, dg.ConfigurableResource]:
    env = os.environ if env is None else env
    resources: dict[str, dg.ConfigurableResource] = {
        "backup_store": BackupStoreResource(url=env.get("BACKUP_STORE_URL", "")),
        "policy": PolicyResource(policy_file=env.get("BACKUP_POLICY_FILE", "")),
    }
    stores = configured_stores(env)
    resources["workspace_registry"] = registry_resource(stores, env)
    if "postgres" in stores:
        resources["postgres_db"] = PostgresResource(database_url=dg.EnvVar("DATABASE_URL"))
    if "mssql" in stores:
        if not env.get("MSSQL_BACKUP_DIR"):
            raise ConfigError(
                "MSSQL_CONNECTION_STRING is set but MSSQL_BACKUP_DIR is not: name the folder SQL "
                "Server writes backups to (as the server sees it; MSSQL_BACKUP_LOCAL_DIR if this "
                "process sees it under another path)"
            )
        resources["mssql"] = MssqlResource(
            connection_string=dg.EnvVar("MSSQL_CONNECTION_STRING"),
            backup_dir=env["MSSQL_BACKUP_DIR"],
            backup_local_dir=env.get("MSSQL_BACKUP_LOCAL_DIR", ""),
        )
    if "typesense" in stores:
        resources["typesense"] = TypesenseResource(
            url=env["TYPESENSE_URL"], api_key=dg.EnvVar("TYPESENSE_API_KEY")
        )
    if "qdrant" in stores:
        api_key = dg.EnvVar("QDRANT_API_KEY") if env.get("QDRANT_API_KEY") else ""
        resources["qdrant"] = QdrantResource(url=env["QDRANT_URL"], api_key=api_key)
    return resources


def registry_resource(stores: set[str], env) -> WorkspaceRegistryResource:
    """The registry the workspaces come from: PostgreSQL when it is the source of truth, else
    the SQL Server agents table (agents are the workspaces there)."""
    policy_file = env.get("BACKUP_POLICY_FILE", "")
    if "postgres" in stores:
        return WorkspaceRegistryResource(
            source="postgres", database_url=dg.EnvVar("DATABASE_URL"), policy_file=policy_file
        )
    if "mssql" in stores:
        return WorkspaceRegistryResource(
            source="mssql", connection_string=dg.EnvVar("MSSQL_CONNECTION_STRING")
        )
    return WorkspaceRegistryResource()


@contextlib.contextmanager
def index_clients(resources, names: Iterable[str]) -> Iterator[dict[str, Any]]:
    """A client for each named index engine, from its resource (named like the engine);
    all closed on exit."""
    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(getattr(resources, name).client()) for name in names}
