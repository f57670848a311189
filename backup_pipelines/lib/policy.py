"""Backup policy: RPO targets, retention, which tables and collections belong to a workspace,
and how each index is derived from the SQL rows (the index mapping).

Built-in defaults follow the runbooks and the demo schema; `BACKUP_POLICY_FILE` (YAML)
overrides any of them. The policy is a typed model: a wrong type, a value out of range, an
unknown key or placeholder, or a `null` where a value is required is one ConfigError at load
that lists every problem, each naming its key.
"""

from __future__ import annotations

import os
import re
import shlex
import string
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator
from pydantic import model_validator as _model_validator

from backup_pipelines.lib.errors import ConfigError
from backup_pipelines.lib.workspaces import validate_workspace_id

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
TABLE_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}\*?$")
FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,127}$")
COLLECTION_PLACEHOLDERS = frozenset({"workspace"})
REBUILD_PLACEHOLDERS = frozenset({"workspace", "collection"})
# Typesense field types (https://typesense.org/docs/latest/api/collections.html#field-types).
TYPESENSE_TYPES = frozenset(
    {
        "string", "int32", "int64", "float", "bool", "geopoint", "object", "auto",
        "string[]", "int32[]", "int64[]", "float[]", "bool[]", "geopoint[]", "object[]",
        "string*",
    }
)  # fmt: skip


@dataclass(frozen=True)
class TableRule:
    """A table (or `prefix*` wildcard) holding workspace rows, and the column naming the workspace."""

    pattern: str
    workspace_column: str = "workspace_id"

    @classmethod
    def parse(cls, spec: str | dict) -> TableRule:
        if isinstance(spec, TableRule):
            return spec
        if isinstance(spec, dict):
            unknown = sorted(set(spec) - {"table", "workspace_column"})
            if unknown:
                raise ConfigError(
                    f"policy workspace_tables: {spec!r} has unknown key(s) {', '.join(unknown)}; "
                    "known: table, workspace_column"
                )
            pattern, column = spec.get("table"), spec.get("workspace_column", "workspace_id")
        elif isinstance(spec, str):
            pattern, _, column = spec.partition(":")
            column = column or "workspace_id"
        else:
            raise ConfigError(
                f"policy workspace_tables: {spec!r} is a {type(spec).__name__}; expected a table "
                "name, 'table:workspace_column' or {table: ..., workspace_column: ...}"
            )
        if not isinstance(pattern, str) or not TABLE_PATTERN.fullmatch(pattern):
            raise ConfigError(
                f"policy workspace_tables: {spec!r} is not a table name or 'prefix*' wildcard"
            )
        if not isinstance(column, str) or not IDENTIFIER.fullmatch(column):
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


# ---------------------------------------------------------------------------------------------
# Value types: strict (a quoted "24" is not a number), with ranges


def _identifier(value: str) -> str:
    if not IDENTIFIER.fullmatch(value):
        raise ValueError(
            f"{value!r} is not an identifier (letters, digits and _, not starting with a digit)"
        )
    return value


def _placeholders(template: str) -> set[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:  # a lone { or }
        raise ValueError(
            f"{template!r} is not a valid template ({exc}); write {{{{ for a brace"
        ) from None
    names = set()
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if spec or conversion:
            raise ValueError(f"{template!r}: placeholder {{{name}}} takes no format or conversion")
        names.add(name)
    return names


def _collection_template(value: str) -> str:
    found = _placeholders(value)
    unknown = sorted(found - COLLECTION_PLACEHOLDERS)
    if unknown:
        raise ValueError(
            f"collection template {value!r} has unknown placeholder(s) "
            + ", ".join(f"{{{n}}}" for n in unknown)
            + "; the only one is {workspace}"
        )
    if "workspace" not in found:
        raise ValueError(
            f"collection template {value!r} lacks {{workspace}}: every workspace needs its own collection"
        )
    return value


# Strict: a value of another type is an error, never converted ("24" is no number; a whole
# number is accepted where a float is expected).
Text = Annotated[str, Strict()]
Flag = Annotated[bool, Strict()]
Positive = Annotated[float, Strict(), Field(gt=0)]
NonNegative = Annotated[float, Strict(), Field(ge=0)]
Count = Annotated[int, Strict(), Field(ge=0)]
AssetKey = Annotated[str, Strict(), Field(pattern=r"^[a-z0-9_]+(/[a-z0-9_]+)+$")]
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=False)


# ---------------------------------------------------------------------------------------------
# The index mapping: how an index's entries are derived from SQL rows


class FieldMap(_Model):
    """One SQL column that becomes a document field (Typesense) or a payload key (Qdrant)."""

    column: Text
    name: Text | None = None  # default: the column's name
    type: Text | None = None  # Typesense field type; converts the value
    facet: Flag = False
    optional: Flag = False

    @field_validator("column")
    @classmethod
    def _column(cls, value: str) -> str:
        return _identifier(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not FIELD_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a field name")
        if value == "id":
            raise ValueError("'id' is reserved: the entry's id comes from id_column")
        return value

    @field_validator("type")
    @classmethod
    def _type(cls, value: str | None) -> str | None:
        if value is not None and value not in TYPESENSE_TYPES:
            raise ValueError(
                f"unknown field type {value!r}; known: {', '.join(sorted(TYPESENSE_TYPES))}"
            )
        return value

    @property
    def field(self) -> str:
        return self.name or self.column


def _field_spec(value: Any) -> Any:
    """`column`, `column:type`, or a mapping with column, name, type, facet, optional."""
    if isinstance(value, str):
        column, _, kind = value.partition(":")
        return {"column": column, **({"type": kind} if kind else {})}
    return value


def _command(value: Any) -> Any:
    """A command line: a list of arguments, or one string split like a shell would (no shell
    runs it)."""
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} cannot be split into arguments: {exc}") from exc
    return value


class IndexMapping(_Model):
    """Which table an index is derived from, and how a row becomes an entry. `table` and
    `workspace_column` default to the policy's memory_table and that table's workspace column
    (from workspace_tables)."""

    engine: ClassVar[str] = ""
    table: Text | None = None
    id_column: Text = "id"
    workspace_column: Text | None = None
    # The newest row by this column is the probe a search must find after a restore; None: no
    # search probe, the verification checks counts only.
    probe_column: Text | None = "created_at"
    # The row's last-change timestamp: a point-in-time restore re-derives the entries of rows
    # changed after the index artifact it starts from (recovery/instant.py); None, or a table
    # without this column: every row at the target instant is re-derived.
    updated_column: Text | None = "updated_at"
    fields: tuple[FieldMap, ...] = ()
    # The platform's own reindexer instead of the built-in mapping, e.g.
    # ["reindex", "--workspace", "{workspace}"]; placeholders {workspace} and {collection}.
    rebuild_command: tuple[Text, ...] | None = None
    rebuild_timeout_seconds: Positive = 3600.0

    @field_validator("fields", mode="before")
    @classmethod
    def _fields(cls, value: Any) -> Any:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ValueError(f"expected a list of columns, got {type(value).__name__} {value!r}")
        return tuple(_field_spec(v) for v in value)

    @field_validator("rebuild_command", mode="before")
    @classmethod
    def _rebuild_command(cls, value: Any) -> Any:
        value = _command(value)
        if value is None:
            return None
        if not isinstance(value, list | tuple) or not value:
            raise ValueError("expected a command: a list of arguments or one string")
        for part in value:
            if isinstance(part, str):
                unknown = sorted(_placeholders(part) - REBUILD_PLACEHOLDERS)
                if unknown:
                    raise ValueError(
                        f"argument {part!r} has unknown placeholder(s) "
                        + ", ".join(f"{{{n}}}" for n in unknown)
                        + "; known: {workspace}, {collection}"
                    )
        return tuple(value)

    @field_validator("table", "id_column", "workspace_column", "probe_column", "updated_column")
    @classmethod
    def _identifiers(cls, value: str | None) -> str | None:
        return None if value is None else _identifier(value)

    @_model_validator(mode="after")
    def _consistent(self) -> IndexMapping:
        names = [f.field for f in self.fields]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"fields: field name(s) {', '.join(repeated)} appear twice")
        return self

    def field_for(self, column: str) -> FieldMap | None:
        return next((f for f in self.fields if f.column == column), None)

    def columns(self) -> list[str]:
        """The SQL columns a row of this mapping needs, each once, in a stable order."""
        return list(dict.fromkeys(column for _key, column in self.column_keys()))

    def column_keys(self) -> list[tuple[str, str]]:
        """(policy key, column) of every column the mapping names: what a check against the
        database reports a missing column by."""
        keys = [("id_column", self.id_column), ("workspace_column", self.workspace_column)]
        if self.probe_column:
            keys.append(("probe_column", self.probe_column))
        if self.updated_column and "updated_column" in self.model_fields_set:
            keys.append(("updated_column", self.updated_column))  # the default may be absent
        keys += self._engine_column_keys()
        keys += [(f"fields[{i}].column", f.column) for i, f in enumerate(self.fields)]
        return [(key, column) for key, column in keys if column]

    def _engine_column_keys(self) -> list[tuple[str, str]]:
        return []

    def described(self, key: str) -> str:
        """The policy key of one setting, as errors name it: `indexes.typesense.id_column`."""
        return f"indexes.{self.engine}.{key}"


class TypesenseMapping(IndexMapping):
    engine: ClassVar[str] = "typesense"
    # Fields searched by the probe (Typesense `query_by`): string fields of `fields`.
    text_columns: tuple[Text, ...] = ("content",)
    default_sorting_field: Text | None = "created_at"
    fields: tuple[FieldMap, ...] = (
        FieldMap(column="workspace_id", type="string", facet=True),
        FieldMap(column="session_id", type="int64", optional=True),
        FieldMap(column="kind", type="string", facet=True),
        FieldMap(column="content", type="string"),
        FieldMap(column="importance", type="float"),
        FieldMap(column="created_at", type="int64"),
        FieldMap(column="updated_at", type="int64"),
    )

    @field_validator("text_columns", mode="before")
    @classmethod
    def _text_columns(cls, value: Any) -> Any:
        if isinstance(value, str):
            return (value,)
        return value

    @field_validator("text_columns")
    @classmethod
    def _text_identifiers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one text column is needed (the search's query_by)")
        return tuple(_identifier(v) for v in value)

    @_model_validator(mode="after")
    def _typesense_fields(self) -> TypesenseMapping:
        problems = []
        untyped = [f.column for f in self.fields if f.type is None]
        if untyped:
            problems.append(
                f"fields: {', '.join(untyped)} need a type (the collection may have to be created)"
            )
        for column in self.text_columns:
            spec = self.field_for(column)
            if spec is None or spec.type not in {"string", "string[]", None}:
                problems.append(
                    f"text_columns: {column!r} must be one of the fields, with type string"
                )
        if self.probe_column and self.field_for(self.probe_column) is None:
            problems.append(
                f"probe_column: {self.probe_column!r} must be one of the fields (the search "
                "filters on it); or null for no search probe"
            )
        if self.default_sorting_field is not None:
            spec = next((f for f in self.fields if f.field == self.default_sorting_field), None)
            if spec is None or spec.type not in {"int32", "int64", "float"} or spec.optional:
                problems.append(
                    f"default_sorting_field: {self.default_sorting_field!r} must be a required "
                    "int32, int64 or float field of `fields` (or null)"
                )
        if problems:  # one line per key (describe_error names each)
            raise ValueError("\n".join(problems))
        return self

    def _engine_column_keys(self) -> list[tuple[str, str]]:
        return [(f"text_columns[{i}]", c) for i, c in enumerate(self.text_columns)]


class QdrantMapping(IndexMapping):
    engine: ClassVar[str] = "qdrant"
    vector_column: Text = "embedding"
    # How the vector column is stored: a numeric array (real[], float8[], pgvector), or a
    # bytea of little-endian float32 / float64 values.
    vector_encoding: Literal["array", "float32le", "float64le"] = "array"
    distance: Literal["Cosine", "Dot", "Euclid", "Manhattan"] = "Cosine"
    fields: tuple[FieldMap, ...] = (
        FieldMap(column="workspace_id"),
        FieldMap(column="session_id"),
        FieldMap(column="kind"),
        FieldMap(column="importance"),
        FieldMap(column="created_at"),
        FieldMap(column="updated_at"),
    )

    @field_validator("vector_column")
    @classmethod
    def _vector(cls, value: str) -> str:
        return _identifier(value)

    def _engine_column_keys(self) -> list[tuple[str, str]]:
        return [("vector_column", self.vector_column)]


class IndexMappings(_Model):
    typesense: TypesenseMapping = TypesenseMapping()
    qdrant: QdrantMapping = QdrantMapping()


# ---------------------------------------------------------------------------------------------
# The policy


DEFAULT_TABLES = (
    TableRule("workspaces"),
    TableRule("sessions"),
    TableRule("turns"),
    TableRule("memory_entries"),
    TableRule("knowledge_graph_*"),
)


class PolicyError(ConfigError):
    """Every problem of a policy, each naming its key."""

    def __init__(self, problems: list[str], source: str = "policy") -> None:
        self.problems = problems
        if len(problems) == 1:
            super().__init__(f"{source}: {problems[0]}")
        else:
            super().__init__(f"{source}: {len(problems)} problems:\n  - " + "\n  - ".join(problems))


class _DefaultsOnTheClass(type(BaseModel)):
    """`Policy.rpo_hours` gives the default, as it did when the policy was a dataclass."""

    def __getattr__(cls, name: str) -> Any:
        fields = cls.__dict__.get("__pydantic_fields__") or {}
        if name in fields and not fields[name].is_required():
            return fields[name].get_default(call_default_factory=True)
        return super().__getattr__(name)


class Policy(_Model, metaclass=_DefaultsOnTheClass):
    schema_: Annotated[str, Strict(), Field(alias="schema")] = "public"
    # The registry row of the workspace itself comes first: every other table refers to it.
    workspace_tables: tuple[TableRule, ...] = DEFAULT_TABLES
    workspace_registry_table: Text = "workspaces"
    workspace_registry_column: Text = "workspace_id"
    memory_table: Text = "memory_entries"  # the rows the indexes derive from
    typesense_collection: Text = "memory_{workspace}"
    qdrant_collections: tuple[Text, ...] = ("agent_{workspace}",)
    indexes: IndexMappings = IndexMappings()
    rpo_hours: Positive = 24.0
    rpo_grace_minutes: NonNegative = 60.0
    # Assets with an RPO of their own (minutes): the SQL Server runbook's schedule.
    asset_rpo_minutes: dict[AssetKey, Positive] = {
        "mssql/full_backup": 24 * 60,
        "mssql/diff_backup": 4 * 60,
        "mssql/log_backup": 15,
    }
    asset_rpo_grace_minutes: dict[AssetKey, NonNegative] = {
        "mssql/full_backup": 60,
        "mssql/diff_backup": 30,
        "mssql/log_backup": 10,
    }
    keep_daily_days: Count = 30
    keep_weekly_days: Count = 90
    # Restore time objective of one workspace, proved weekly by the restore drill.
    rto_minutes: Positive = 15.0
    drill_sample_size: Annotated[int, Strict(), Field(ge=1)] = 3
    # A run is stuck when it runs longer than factor x its job's usual (median) duration, and
    # at least the minimum; or waits in the queue longer than queued_max_minutes.
    stuck_run_factor: Positive = 3.0
    stuck_run_min_minutes: NonNegative = 60.0
    queued_max_minutes: Positive = 60.0
    # Uploads and generation folders without a manifest older than this are crashed runs'.
    incomplete_max_age_hours: Positive = 24.0
    # Retention trusts its own verification of an artifact (every file re-read, sha256
    # matched) for this long while the artifact's objects are unchanged; 0: re-read each run.
    reverify_after_days: NonNegative = 7.0
    max_clock_skew_seconds: NonNegative = 900.0
    zstd_level: Annotated[int, Strict(), Field(ge=1, le=22)] = 1
    # Point-in-time tier (pgBackRest): WAL archive RPO, PITR window (repository retention),
    # the weekday of the weekly full physical backup (differential on the other days), stanza.
    wal_rpo_minutes: Positive = 5.0
    pitr_window_days: Annotated[int, Strict(), Field(ge=1)] = 7
    physical_full_weekday: Text = "sunday"
    pgbackrest_stanza: Annotated[str, Strict(), Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")] = (
        "main"
    )
    # First date of the partitions (YYYY-MM-DD, quoted or not); empty: the first day of the
    # month keep_weekly_days before today (defs/partitions.py), so a new deployment does not
    # open on a year of never-filled partitions.
    partitions_start: str = ""

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, validate_default=False
    )

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise PolicyError(describe_errors(exc)) from None

    @property
    def schema(self) -> str:  # `schema` is a BaseModel attribute name; stored as schema_
        return self.schema_

    @field_validator("workspace_tables", mode="before")
    @classmethod
    def _tables(cls, value: Any) -> Any:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ValueError(f"expected a list of tables, got {type(value).__name__} {value!r}")
        if not value:
            raise ValueError("expected at least one table")
        try:
            return tuple(TableRule.parse(spec) for spec in value)
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("policy workspace_tables: ")) from None

    @field_validator("qdrant_collections", mode="before")
    @classmethod
    def _collection_list(cls, value: Any) -> Any:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ValueError(
                f"expected a list of collection templates, got {type(value).__name__} {value!r}"
            )
        if not value:
            raise ValueError("expected at least one collection template")
        return tuple(value)

    @field_validator("typesense_collection")
    @classmethod
    def _typesense_template(cls, value: str) -> str:
        return _collection_template(value)

    @field_validator("qdrant_collections")
    @classmethod
    def _qdrant_templates(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_collection_template(v) for v in value)

    @field_validator(
        "schema_", "memory_table", "workspace_registry_table", "workspace_registry_column"
    )
    @classmethod
    def _identifiers(cls, value: str) -> str:
        return _identifier(value)

    @_model_validator(mode="after")
    def _resolve_mappings(self) -> Policy:
        """Fill each mapping's table and workspace column from memory_table and
        workspace_tables (whether the table is backed up is checked against the database,
        for the index engines a deployment has: see mapping_problems)."""
        resolved = {}
        for name in IndexMappings.model_fields:
            mapping = getattr(self.indexes, name)
            table = mapping.table or self.memory_table
            column = mapping.workspace_column or self.workspace_column_of(table) or "workspace_id"
            resolved[name] = mapping.model_copy(update={"table": table, "workspace_column": column})
        object.__setattr__(self, "indexes", self.indexes.model_copy(update=resolved))
        return self

    def workspace_column_of(self, table: str) -> str | None:
        """The workspace column of `table` by the first workspace_tables rule matching it."""
        rule = next((r for r in self.workspace_tables if r.matches(table)), None)
        return rule.workspace_column if rule else None

    @field_validator("partitions_start", mode="before")
    @classmethod
    def _calendar_date(cls, value: Any) -> str:
        text = value.isoformat() if isinstance(value, date) else value
        if text == "":
            return text
        if not isinstance(text, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            raise ValueError(f"{value!r} is not a date YYYY-MM-DD")
        date.fromisoformat(text)  # a ValueError names the impossible day
        return text

    @field_validator("physical_full_weekday")
    @classmethod
    def _weekday(cls, value: str) -> str:
        if value.strip().lower() not in WEEKDAYS:
            raise ValueError(f"{value!r} is not a weekday; one of {', '.join(WEEKDAYS)}")
        return value

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

    def index_mapping(self, engine: str) -> IndexMapping:
        """How index engine `engine` ("typesense", "qdrant") derives its entries from SQL."""
        mapping = getattr(self.indexes, engine, None)
        if not isinstance(mapping, IndexMapping):
            raise ConfigError(f"policy indexes: no mapping for index engine {engine!r}")
        return mapping


KNOWN_KEYS = {field.alias or name for name, field in Policy.model_fields.items()}


# ---------------------------------------------------------------------------------------------
# Errors that name the key and the value's problem


def _key(location: tuple) -> str:
    parts: list[str] = []
    for part in location:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif part == "[key]":  # the key of a mapping, not its value
            parts.append(" (the key)")
        else:
            parts.append(("." if parts else "") + ("schema" if part == "schema_" else str(part)))
    return "".join(parts) or "(top level)"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def describe_error(error: dict) -> str:
    key, kind, value = _key(error["loc"]), error["type"], error.get("input")
    if not error["loc"]:  # a check across keys: its message names them
        return error["msg"].removeprefix("Value error, ")
    if kind == "extra_forbidden":
        return f"{key}: unknown key"
    if kind == "missing":
        return f"{key}: required"
    if value is None and kind not in ("value_error", "assertion_error"):
        return f"{key}: is null; give a value, or leave the key out for the default"
    message = error["msg"].removeprefix("Value error, ").replace("Input should be", "should be")
    if kind.endswith("_type") or kind in ("literal_error",):
        return f"{key}: {message}, got {type(value).__name__} {_shown(value)}"
    if kind == "string_pattern_mismatch":
        return f"{key}: {_shown(value)} does not match {error['ctx']['pattern']}"
    if kind.startswith(("greater", "less")):
        return f"{key}: {message}, got {_shown(value)}"
    return f"{key}: {message}"


def describe_errors(exc: ValidationError) -> list[str]:
    """One line per problem; a check across several keys of one model reports one line per
    key (`<key>: <problem>` lines under the model's own key)."""
    problems: list[str] = []
    for error in exc.errors():
        described = describe_error(error)
        if "\n" in described:
            key, _, lines = described.partition(": ")
            problems += [f"{key}.{line}" for line in lines.splitlines()]
        else:
            problems.append(described)
    return list(dict.fromkeys(problems))


def _known_keys_hint(problems: list[str]) -> list[str]:
    if any(p.endswith(": unknown key") and "." not in p.split(":")[0] for p in problems):
        return [*problems, f"known keys: {', '.join(sorted(KNOWN_KEYS))}"]
    return problems


class _PolicyLoader(yaml.SafeLoader):
    """YAML's safe loader with dates left as text: PyYAML turns an impossible date
    (2025-02-30) into a bare ValueError naming no key; as text, the key's validator names it."""


_PolicyLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_policy(path: str | os.PathLike | None = None) -> Policy:
    """The policy from `path` (or BACKUP_POLICY_FILE), else the built-in defaults."""
    path = path or os.environ.get("BACKUP_POLICY_FILE") or None
    if not path:
        return Policy()
    try:
        raw = yaml.load(Path(path).read_text(), Loader=_PolicyLoader) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"BACKUP_POLICY_FILE {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"BACKUP_POLICY_FILE {path} cannot be read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"BACKUP_POLICY_FILE {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"BACKUP_POLICY_FILE {path}: expected a mapping at the top level")
    try:
        return Policy(**{str(key): value for key, value in raw.items()})
    except PolicyError as exc:
        raise PolicyError(_known_keys_hint(exc.problems), f"BACKUP_POLICY_FILE {path}") from None
