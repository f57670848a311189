"""Resources by role, built from the environment. Secrets stay in EnvVar references, so the
UI and run config show the variable's name, never its value."""

from __future__ import annotations

import os

import dagster as dg

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
    return stores


def build_resources(env: dict[str, str] | None = None) -> dict[str, dg.ConfigurableResource]:
    env = os.environ if env is None else env
    resources: dict[str, dg.ConfigurableResource] = {
        "backup_store": BackupStoreResource(url=env.get("BACKUP_STORE_URL", "")),
        "policy": PolicyResource(policy_file=env.get("BACKUP_POLICY_FILE", "")),
    }
    if env.get("DATABASE_URL"):
        resources["postgres_db"] = PostgresResource(database_url=dg.EnvVar("DATABASE_URL"))
    return resources
