"""After the whole database came back: the index collections the servers lack, the runbooks'
manual steps around a restore, and a final health check."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Mapping
from typing import Any

from backup_pipelines.lib.engines import index_engines
from backup_pipelines.lib.errors import BackupError
from backup_pipelines.lib.policy import Policy
from backup_pipelines.lib.postgres.connection import connect
from backup_pipelines.lib.store import BackupStore
from backup_pipelines.lib.streams import Log


def restore_missing_indexes(
    store: BackupStore,
    date: str,
    policy: Policy,
    indexes: Mapping[str, Any] | None = None,
    log: Log | None = None,
) -> dict:
    """Every workspace's collections of `date` that the index servers lack, recreated from
    their artifacts (existing collections are left alone: newer data wins). `indexes` maps
    engine names to clients; returns workspace -> engine -> collection -> entries."""
    log = log or (lambda _m: None)
    done: dict[str, dict] = {}
    for engine in index_engines(indexes or {}):
        client = indexes[engine.name]
        for ref in store.list_artifacts(engine.asset):
            if ref.date != date:
                continue
            manifest = store.require_manifest(ref)
            result = done.setdefault(ref.workspace, {})
            restored = engine.restore_missing(client, store, ref, manifest, policy, log)
            if restored:
                result[engine.name] = restored
            log(f"{ref}: {result}")
    return done


def run_commands(commands: list[str], log: Log, what: str, timeout: float = 3600) -> None:
    """The runbooks' manual steps around a restore (stop the gateway, run migrations, restart)."""
    for command in commands:
        log(f"{what}: running {command!r}")
        done = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=timeout)
        if done.stdout.strip():
            log(done.stdout.strip()[-2000:])
        if done.returncode != 0:
            raise BackupError(
                f"{what} command {command!r} failed (exit {done.returncode}): {done.stderr.strip()[-1000:]}"
            )


def health_check(database_url: str, indexes: Mapping[str, Any] | None = None) -> dict:
    """Every store answers (the runbooks' final checklist)."""
    health: dict[str, str] = {}
    with connect(database_url) as conn:
        health["postgres"] = conn.execute("SHOW server_version").fetchone()[0]
    for engine in index_engines(indexes or {}):
        health[engine.name] = indexes[engine.name].server_version()
    return health
