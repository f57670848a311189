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


@contextlib.contextmanager
def index_clients(resources, names: Iterable[str]) -> Iterator[dict[str, Any]]:
    """A client for each named index engine, from its resource (named like the engine);
    all closed on exit."""
    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(getattr(resources, name).client()) for name in names}
