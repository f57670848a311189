"""The manifest: the commit point of an artifact, and — read back — untrusted input.

Storage can be tampered with or damaged, so a manifest read from a store is parsed into the
validated model below before anyone uses it (DESIGN "Artifact layout"): JSON of bounded size,
the required keys with their types, bounded numbers and string lengths, file names that are
plain names (never a path), `path` equal to `<generation>/<name>` with a generation as the
writer makes them, the partition matching the folder the manifest was read from, and the
sections the product reads for each asset (a workspace dump's `tables`, a Qdrant artifact's
`collections`, a Typesense export's flags, the full dump's row counts). Unknown extra keys
are kept (forward compatibility) but nothing ever builds a path from them.

What a consumer gets is a plain dict (the validated model dumped), as before; the only place
that turns a name from a manifest into a store key is `BackupStore.file_key`.
"""

from __future__ import annotations

import json
import re
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from backup_pipelines.lib.errors import StoreError
from backup_pipelines.lib.store.cipher import KEY_ID, SCHEME
from backup_pipelines.lib.workspaces import WORKSPACE_ID_PATTERN

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT_VERSION = 1
# Every artifact's files live under a generation folder named g-<UTC stamp>-<hex>.
GENERATION_PREFIX = "g-"
GENERATION_PATTERN = re.compile(r"g-[0-9]{8}T[0-9]{6}-[0-9a-f]{8}")

# Bounds: far above anything this project writes, far below what could exhaust memory or time.
MAX_MANIFEST_BYTES = 16 << 20
MAX_FILES = 10_000
MAX_TABLES = 10_000
MAX_COLUMNS = 1_600  # PostgreSQL's own limit per table
MAX_COLLECTIONS = 1_000
MAX_NAME_BYTES = 255  # a file name on every common file system
MAX_IDENTIFIER_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1
MAX_TIMESTAMP_CHARS = 64
MAX_FILE_BYTES = 1 << 50  # 1 PiB
MAX_COUNT = (1 << 63) - 1


class ManifestInvalid(StoreError):
    """A manifest that is not what this project writes: damaged, tampered with, or foreign."""


class UnsafeObject(StoreError):
    """A store object that is not a regular file inside the store (a device, FIFO, symlink,
    or a key leading outside): refused, never read."""


class UnsafeName(StoreError, ValueError):
    """A name (from a manifest or a server) that would leave its folder if made a path."""


# --------------------------------------------------------------------------------------------
# Names


# Unicode category Cc is exactly U+0000-U+001F and U+007F-U+009F (one regex search instead of
# a category lookup per character: manifests are validated 30,000 at a time at scale).
_CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f]")


def _has_control_characters(value: str) -> bool:
    return _CONTROL_CHARACTERS.search(value) is not None


def plain_name_problem(value: object) -> str | None:
    """Why `value` is not a plain file name (one path component, nothing special), or None."""
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    if not value:
        return "must not be empty"
    if len(value.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    if value in {".", ".."}:
        return f"{value!r} is not a file name"
    if "/" in value or "\\" in value:
        return "must be a plain file name, without '/' or '\\'"
    if _has_control_characters(value):
        return "must not contain NUL or other control characters"
    return None


def is_plain_name(value: object) -> bool:
    return plain_name_problem(value) is None


def require_plain_name(value: object, what: str) -> str:
    """`value` unchanged when it is a plain file name; else ValueError naming `what`."""
    problem = plain_name_problem(value)
    if problem is not None:
        raise UnsafeName(f"{what} {_shown(value)} {problem}; refused")
    return value  # type: ignore[return-value]


def is_generation(value: object) -> bool:
    return isinstance(value, str) and GENERATION_PATTERN.fullmatch(value) is not None


def _shown(value: object, limit: int = 80) -> str:
    if isinstance(value, dict | list) and len(value) > 8:
        return f"{_json_type(value)} of {len(value)} items"
    shown = repr(value)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------
# Field types


def _plain_name(value: str) -> str:
    problem = plain_name_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _generation(value: str) -> str:
    if not is_generation(value):
        raise ValueError(
            "must look like g-<YYYYMMDDTHHMMSS>-<8 hex digits>, as the writer names it"
        )
    return value


def _timestamp(value: str) -> str:
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("must be an ISO 8601 timestamp") from None
    return value


def _day(value: str) -> str:
    try:
        date.fromisoformat(value)
    except ValueError:
        raise ValueError("must be a date YYYY-MM-DD") from None
    if len(value) != 10:
        raise ValueError("must be a date YYYY-MM-DD")
    return value


def _workspace(value: str) -> str:
    if not WORKSPACE_ID_PATTERN.fullmatch(value):
        raise ValueError(f"is not a workspace id (pattern {WORKSPACE_ID_PATTERN.pattern})")
    return value


def _identifier(value: str) -> str:
    if not value or len(value.encode("utf-8", "surrogatepass")) > MAX_IDENTIFIER_BYTES:
        raise ValueError(f"must be a SQL identifier of 1-{MAX_IDENTIFIER_BYTES} bytes")
    if _has_control_characters(value):
        raise ValueError("must not contain NUL or other control characters")
    return value


def _qualified_table(value: str) -> str:
    schema, dot, name = value.partition(".")
    if not dot:
        raise ValueError("must be schema.table")
    _identifier(schema)
    _identifier(name)
    return value


def _short_text(value: str) -> str:
    if _has_control_characters(value):
        raise ValueError("must not contain NUL or other control characters")
    return value


def _counts(value: dict) -> dict:
    """`counts` holds numbers, or maps of names to numbers (rows per table, points per
    collection): what every consumer (CLI listing, metadata, the gate) expects."""
    for key, item in value.items():
        numbers = item.values() if isinstance(item, dict) else [item]
        if isinstance(item, dict) and len(item) > MAX_TABLES:
            raise ValueError(f"{key}: more than {MAX_TABLES} entries")
        for name in item if isinstance(item, dict) else []:
            if not isinstance(name, str) or len(name) > 4 * MAX_NAME_BYTES:
                raise ValueError(
                    f"{key}: a key is not a name of at most {4 * MAX_NAME_BYTES} chars"
                )
        for number in numbers:
            if isinstance(number, bool) or not isinstance(number, int):
                raise ValueError(f"{key}: {_shown(number)} is not a whole number")
            if not 0 <= number <= MAX_COUNT:
                raise ValueError(f"{key}: {number} is out of range 0..{MAX_COUNT}")
    return value


PlainName = Annotated[StrictStr, AfterValidator(_plain_name)]
Generation = Annotated[StrictStr, AfterValidator(_generation)]
Timestamp = Annotated[StrictStr, Field(max_length=MAX_TIMESTAMP_CHARS), AfterValidator(_timestamp)]
Sha256 = Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{64}$")]
Count = Annotated[StrictInt, Field(ge=0, le=MAX_COUNT)]
ByteCount = Annotated[StrictInt, Field(ge=0, le=MAX_FILE_BYTES)]
Identifier = Annotated[StrictStr, AfterValidator(_identifier)]
QualifiedTable = Annotated[
    StrictStr, Field(max_length=2 * MAX_IDENTIFIER_BYTES + 1), AfterValidator(_qualified_table)
]
ShortText = Annotated[StrictStr, Field(max_length=MAX_NAME_BYTES), AfterValidator(_short_text)]


class _Model(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


# --------------------------------------------------------------------------------------------
# The manifest every artifact has


class FileEncryption(BaseModel):
    """How a file was encrypted (cipher.py): one known scheme and the id (a plain short name,
    never a key) of the key it needs. Nothing else is accepted: a reader must not guess."""

    model_config = ConfigDict(strict=True, extra="forbid")
    scheme: Literal[SCHEME]  # type: ignore[valid-type]
    key_id: Annotated[StrictStr, Field(max_length=64, pattern=KEY_ID.pattern)]


class FileEntry(_Model):
    name: PlainName
    path: Annotated[StrictStr, Field(max_length=2 * MAX_NAME_BYTES)]
    bytes: ByteCount  # as stored: the ciphertext's when the file is encrypted
    sha256: Sha256  # idem, so `verify` needs no key
    encryption: FileEncryption | None = None  # absent: stored as written (older artifacts)


class PartitionModel(_Model):
    date: Annotated[StrictStr, AfterValidator(_day)]
    workspace: Annotated[StrictStr, AfterValidator(_workspace)] | None
    window: Annotated[StrictStr, Field(pattern=r"^([01][0-9]|2[0-3])[0-5][0-9]$")] | None = None


class Manifest(_Model):
    format_version: StrictInt
    asset: Annotated[StrictStr, Field(max_length=200)]
    partition: PartitionModel
    created_at: Timestamp
    captured_at: Timestamp
    generation: Generation
    files: Annotated[list[FileEntry], Field(max_length=MAX_FILES)]
    counts: Annotated[dict[StrictStr, Any], AfterValidator(_counts)]
    source: dict[StrictStr, Any]
    tool: dict[StrictStr, Any]

    @model_validator(mode="after")
    def _files_live_in_the_generation(self) -> Manifest:
        seen: set[str] = set()
        for number, entry in enumerate(self.files):
            if entry.name in seen:
                raise ValueError(f"files.{number}.name: {entry.name!r} is listed twice")
            seen.add(entry.name)
            if entry.path != f"{self.generation}/{entry.name}":
                raise ValueError(
                    f"files.{number}.path: {_shown(entry.path)} is not "
                    f"'<generation>/<name>' ({self.generation}/{entry.name})"
                )
        return self

    def file_names(self) -> set[str]:
        return {entry.name for entry in self.files}


# --------------------------------------------------------------------------------------------
# The sections each asset's readers use


class TableEntry(_Model):
    table: QualifiedTable
    columns: Annotated[list[Identifier], Field(min_length=1, max_length=MAX_COLUMNS)]
    workspace_column: Identifier
    rows: Count
    file: PlainName
    # How the file's rows are written: COPY text (every artifact before binary COPY) or
    # binary, with the built-in type of each column and the dumping server's major version.
    copy_format: Literal["text", "binary"] = "text"
    column_types: Annotated[list[Identifier], Field(max_length=MAX_COLUMNS)] | None = None
    server_major: Annotated[StrictInt, Field(ge=7, le=999)] | None = None
    # A binary table's primary-key values in COPY text, for the consistency gate.
    ids_file: PlainName | None = None
    ids_column: Identifier | None = None

    @model_validator(mode="after")
    def _consistent(self) -> TableEntry:
        if len(set(self.columns)) != len(self.columns):
            raise ValueError("columns: a column is listed twice")
        if self.copy_format == "binary" and (
            self.column_types is None
            or len(self.column_types) != len(self.columns)
            or self.server_major is None
        ):
            raise ValueError("a binary table needs column_types (one per column) and server_major")
        if self.workspace_column not in self.columns:
            raise ValueError(f"workspace_column {self.workspace_column!r} is not one of columns")
        return self


class WorkspaceDumpManifest(Manifest):
    tables: Annotated[list[TableEntry], Field(max_length=MAX_TABLES)]

    @model_validator(mode="after")
    def _tables_name_listed_files(self) -> WorkspaceDumpManifest:
        names, seen = self.file_names(), set()
        for number, entry in enumerate(self.tables):
            if entry.table in seen:
                raise ValueError(f"tables.{number}.table: {entry.table!r} is listed twice")
            seen.add(entry.table)
            if entry.file not in names:
                raise ValueError(f"tables.{number}.file: {entry.file!r} is not a listed file")
            if entry.ids_file is not None and (
                entry.ids_file not in names or entry.ids_column not in entry.columns
            ):
                raise ValueError(
                    f"tables.{number}.ids_file: {entry.ids_file!r} is not a listed file, or "
                    f"ids_column {entry.ids_column!r} is not one of the table's columns"
                )
        return self


class FullDumpCounts(_Model):
    rows: Annotated[
        dict[Annotated[StrictStr, Field(max_length=4 * MAX_NAME_BYTES)], Count],
        Field(max_length=MAX_TABLES),
    ]

    @model_validator(mode="after")
    def _numbers(self) -> FullDumpCounts:
        _counts(self.model_dump())
        return self


class FullDumpManifest(Manifest):
    counts: FullDumpCounts  # type: ignore[assignment]  # rows per table: what a restore checks


class TypesenseExportManifest(Manifest):
    collection_exists: StrictBool = True
    aliases: Annotated[list[ShortText], Field(max_length=MAX_COLLECTIONS)] = []
    export_started_at: Timestamp | None = None


class QdrantSnapshotInfo(_Model):
    name: PlainName
    creation_time: Timestamp | None = None
    checksum: Sha256 | None = None


class QdrantCollection(_Model):
    points: Count
    sha256_uncompressed: Sha256
    snapshot: QdrantSnapshotInfo
    aliases: Annotated[list[ShortText | None], Field(max_length=MAX_COLLECTIONS)] = []


class QdrantSnapshotManifest(Manifest):
    collections: Annotated[
        dict[PlainName, QdrantCollection], Field(max_length=MAX_COLLECTIONS)
    ] = {}
    collections_missing: Annotated[list[PlainName], Field(max_length=MAX_COLLECTIONS)] = []


MODELS: dict[str, type[Manifest]] = {
    "postgres/workspace_dump": WorkspaceDumpManifest,
    "postgres/full_dump": FullDumpManifest,
    "typesense/collection_export": TypesenseExportManifest,
    "qdrant/collection_snapshot": QdrantSnapshotManifest,
}


# --------------------------------------------------------------------------------------------
# Parsing


def validate_manifest(raw: object, ref, where: str, committing: bool = False) -> dict:
    """The validated manifest as a plain dict, or ManifestInvalid naming `where` (the
    manifest's location) and the offending key. `ref` is the ArtifactRef of the folder it
    was read from: asset and partition must match it. `committing`: the writer checks what
    it is about to commit (a refusal then is a bug or bad source data, not a damaged store)."""
    if not isinstance(raw, dict):
        raise _invalid(where, [f"(top level): must be a JSON object, not {_json_type(raw)}"])
    if raw.get("format_version") != MANIFEST_FORMAT_VERSION:
        raise ManifestInvalid(
            f"{where}: manifest format_version {_shown(raw.get('format_version'))} is not "
            f"supported (expected {MANIFEST_FORMAT_VERSION}); written by another version of "
            "this project, or damaged"
        )
    model = (
        MODELS.get(raw.get("asset"), Manifest) if isinstance(raw.get("asset"), str) else Manifest
    )
    try:
        manifest = model.model_validate(raw)
    except ValidationError as exc:
        raise _invalid(where, _problems(exc), committing) from None
    mismatched = _partition_mismatch(manifest, ref)
    if mismatched:
        raise _invalid(where, mismatched, committing)
    return manifest.model_dump(exclude_unset=True)


def parse_manifest(body: bytes, ref, where: str) -> dict:
    """JSON bytes from the store -> the validated manifest dict (see validate_manifest)."""
    if len(body) > MAX_MANIFEST_BYTES:
        raise _invalid(where, [f"(size): larger than {MAX_MANIFEST_BYTES >> 20} MiB"])
    try:
        raw = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise ManifestInvalid(
            f"{where}: manifest.json is not valid JSON ({str(exc)[:200]}); the artifact cannot "
            "be trusted: restore another date, or re-run the backup of this partition"
        ) from None
    return validate_manifest(raw, ref, where)


def _partition_mismatch(manifest: Manifest, ref) -> list[str]:
    if ref is None:
        return []
    problems = []
    if manifest.asset != ref.asset:
        problems.append(f"asset: {manifest.asset!r} but the folder is {ref.asset!r}")
    if manifest.partition.date != ref.date:
        problems.append(
            f"partition.date: {manifest.partition.date!r} but the folder is {ref.date!r}"
        )
    if manifest.partition.workspace != ref.workspace:
        problems.append(
            f"partition.workspace: {manifest.partition.workspace!r} but the folder is "
            f"{ref.workspace!r}"
        )
    if manifest.partition.window != getattr(ref, "window", None):
        problems.append(
            f"partition.window: {manifest.partition.window!r} but the folder is {ref.window!r}"
        )
    return problems


def _invalid(where: str, problems: list[str], committing: bool = False) -> ManifestInvalid:
    shown = problems[:5] + ([f"... and {len(problems) - 5} more"] if len(problems) > 5 else [])
    if committing:
        return ManifestInvalid(
            f"{where}: refusing to commit a manifest a reader would refuse: {'; '.join(shown)}"
        )
    return ManifestInvalid(
        f"{where}: invalid manifest, it does not have the expected shape: {'; '.join(shown)}. "
        "The artifact cannot be trusted "
        "(damaged or tampered with): do not restore from it — restore another date, or re-run "
        "the backup of this partition (a new backup replaces this manifest)"
    )


def _problems(exc: ValidationError) -> list[str]:
    problems = []
    for error in exc.errors(include_url=False):
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            problems.append(f"{key}: required key is missing")
        elif error["type"] in {"value_error", "assertion_error"}:
            problems.append(f"{key}: {message}" if key != "(top level)" else message)
        else:
            problems.append(f"{key}: {message} (got {_shown(error.get('input'), 60)})")
    return problems


def _json_type(value: object) -> str:
    return {
        list: "an array",
        dict: "an object",
        str: "a string",
        int: "a number",
        float: "a number",
    }.get(type(value), "null" if value is None else type(value).__name__)
