"""Backup policy: RPO targets, retention, which tables and collections belong to a workspace.

Built-in defaults follow the runbooks; `BACKUP_POLICY_FILE` (YAML) overrides any of them.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from backup_pipelines.lib.errors import ConfigError
from backup_pipelines.lib.workspaces import validate_workspace_id

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
TABLE_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}\*?$")


@dataclass(frozen=True)
class TableRule:
    """A table (or `prefix*` wildcard) holding workspace rows, and the column naming the workspace."""

    pattern: str
    workspace_column: str = "workspace_id"

    @classmethod
    def parse(cls, spec: str | dict) -> TableRule:
        if isinstance(spec, dict):
            pattern, column = spec.get("table"), spec.get("workspace_column", "workspace_id")
        else:
            pattern, _, column = str(spec).partition(":")
            column = column or "workspace_id"
        if not isinstance(pattern, str) or not TABLE_PATTERN.fullmatch(pattern):
            raise ConfigError(
                f"policy workspace_tables: {spec!r} is not a table name or 'prefix*' wildcard"
            )
        if not IDENTIFIER.fullmatch(column):
            raise ConfigError(
                f"policy workspace_tables: column {column!r} of {pattern!r} is not an identifier"
            )
        return cls(pattern, column)

    @property
    def is_wildcard(self) -> bool:
        return self.pattern.endswith("*")

    def matches(self, table: str) -> bool:
        if self.is_wildcard:
            return table.startswith(self.pattern[:-1])
        return table == self.pattern


@dataclass(frozen=True)
class Policy:
    schema: str = "public"
    # The registry row of the workspace itself comes first: every other table refers to it.
    workspace_tables: tuple[TableRule, ...] = (
        TableRule("workspaces"),
        TableRule("sessions"),
        TableRule("turns"),
        TableRule("memory_entries"),
        TableRule("knowledge_graph_*"),
    )
    workspace_registry_table: str = "workspaces"
    workspace_registry_column: str = "workspace_id"
    memory_table: str = "memory_entries"  # the rows the indexes are derived from
    typesense_collection: str = "memory_{workspace}"
    qdrant_collections: tuple[str, ...] = ("agent_{workspace}",)
    rpo_hours: float = 24.0
    rpo_grace_minutes: float = 60.0
    # Assets with an RPO of their own (minutes): the SQL Server runbook's schedule.
    asset_rpo_minutes: dict = field(
        default_factory=lambda: {
            "mssql/full_backup": 24 * 60,
            "mssql/diff_backup": 4 * 60,
            "mssql/log_backup": 15,
        }
    )
    asset_rpo_grace_minutes: dict = field(
        default_factory=lambda: {
            "mssql/full_backup": 60,
            "mssql/diff_backup": 30,
            "mssql/log_backup": 10,
        }
    )
    keep_daily_days: int = 30
    keep_weekly_days: int = 90
    # Restore time objective of one workspace, proved weekly by the restore drill.
    rto_minutes: float = 15.0
    drill_sample_size: int = 3
    # A run is stuck when it runs longer than factor x its job's usual (median) duration, and
    # at least the minimum; or waits in the queue longer than queued_max_minutes.
    stuck_run_factor: float = 3.0
    stuck_run_min_minutes: float = 60.0
    queued_max_minutes: float = 60.0
    # Uploads and generation folders without a manifest older than this are crashed runs'.
    incomplete_max_age_hours: float = 24.0
    max_clock_skew_seconds: float = 900.0
    zstd_level: int = 1
    # Point-in-time tier (pgBackRest): WAL archive RPO, PITR window (repository retention),
    # the weekday of the weekly full physical backup (differential on the other days), stanza.
    wal_rpo_minutes: float = 5.0
    pitr_window_days: int = 7
    physical_full_weekday: str = "sunday"
    pgbackrest_stanza: str = "main"
    extra: dict = field(default_factory=dict)

    def rpo_for(self, asset: str) -> tuple[float, float]:
        """(RPO hours, grace minutes) of one asset: its own, else the policy-wide ones."""
        minutes = self.asset_rpo_minutes.get(asset)
        if minutes is None:
            return self.rpo_hours, self.rpo_grace_minutes
        return minutes / 60, self.asset_rpo_grace_minutes.get(asset, self.rpo_grace_minutes)

    def typesense_collection_for(self, workspace: str) -> str:
        return self.typesense_collection.format(workspace=validate_workspace_id(workspace))

    def qdrant_collections_for(self, workspace: str) -> list[str]:
        workspace = validate_workspace_id(workspace)
        return [template.format(workspace=workspace) for template in self.qdrant_collections]


KNOWN_KEYS = {f.name for f in dataclasses.fields(Policy)} - {"extra"}


def load_policy(path: str | os.PathLike | None = None) -> Policy:
    """The policy from `path` (or BACKUP_POLICY_FILE), else the built-in defaults."""
    path = path or os.environ.get("BACKUP_POLICY_FILE") or None
    if not path:
        return Policy()
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"BACKUP_POLICY_FILE {path} does not exist") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"BACKUP_POLICY_FILE {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"BACKUP_POLICY_FILE {path}: expected a mapping at the top level")
    unknown = sorted(set(raw) - KNOWN_KEYS)
    if unknown:
        raise ConfigError(
            f"BACKUP_POLICY_FILE {path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(KNOWN_KEYS))}"
        )
    values = dict(raw)
    if "workspace_tables" in values:
        values["workspace_tables"] = tuple(TableRule.parse(s) for s in values["workspace_tables"])
    if "qdrant_collections" in values:
        values["qdrant_collections"] = tuple(values["qdrant_collections"])
    templates = [values.get("typesense_collection", Policy.typesense_collection)]
    for template in [*templates, *values.get("qdrant_collections", ())]:
        if "{workspace}" not in str(template):
            raise ConfigError(
                f"BACKUP_POLICY_FILE {path}: collection template {template!r} lacks {{workspace}}"
            )
    for key in ("schema", "memory_table", "workspace_registry_table", "workspace_registry_column"):
        if key in values and not IDENTIFIER.fullmatch(str(values[key])):
            raise ConfigError(
                f"BACKUP_POLICY_FILE {path}: {key} {values[key]!r} is not an identifier"
            )
    try:
        return Policy(**values)
    except TypeError as exc:
        raise ConfigError(f"BACKUP_POLICY_FILE {path}: {exc}") from exc
