"""Rows and the values in them: what the indexes are derived from (SQL is the truth).

A row is a plain mapping column -> value, read with the columns an index mapping names
(backup_pipelines.lib.policy.IndexMapping). Every index engine turns rows into its own entries
(a Typesense document, a Qdrant point) with the helpers here; the platform's indexer, the
restore's index rebuild and the sample indexer all use the same mapping, so a rebuilt index
is the index the platform would have built.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from backup_pipelines.lib.errors import BackupError

Row = Mapping[str, Any]


def batched(rows: Iterator, size: int) -> Iterator[list]:
    batch: list = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def json_value(value: Any) -> Any:
    """A SQL value as JSON: timestamps as ISO 8601, numerics as numbers, uuids as text,
    bytes as base64, json/jsonb and arrays as they are."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        # numeric(p, 0) stays an integer; any other scale is a number with a fraction
        return int(value) if value.as_tuple().exponent == 0 else float(value)
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    return str(value)  # an enum, a range, an inet...: its text form


def epoch_seconds(value: Any) -> Any:
    """Timestamps and dates as integer seconds since the epoch (dates at 00:00 UTC)."""
    if isinstance(value, datetime):
        return int(value.timestamp())
    if isinstance(value, date):
        return int(datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp())
    return value


def typed_value(value: Any, kind: str | None) -> Any:
    """A SQL value as a field of type `kind` (Typesense's type names); None: as JSON."""
    if value is None:
        return None
    if kind is None or kind in ("auto", "object", "object[]", "geopoint", "geopoint[]"):
        return json_value(value)
    if kind.endswith("[]"):
        items = value if isinstance(value, list | tuple) else [value]
        return [typed_value(item, kind[:-2]) for item in items]
    if kind in ("int32", "int64"):
        value = epoch_seconds(value)
        return int(value)
    if kind == "float":
        return float(epoch_seconds(value))
    if kind == "bool":
        return bool(value)
    # string, string*
    if isinstance(value, str):
        return value
    converted = json_value(value)
    if isinstance(converted, dict | list):
        return json.dumps(converted, ensure_ascii=False, sort_keys=True)
    if isinstance(converted, bool):
        return "true" if converted else "false"
    return str(converted)


def vector_value(value: Any, encoding: str, where: str) -> list[float]:
    """The vector column's value as floats: a numeric array (real[], float8[], numeric[]), a
    pgvector value read as text ("[1,2,3]"), or a bytea of packed little-endian floats."""
    if value is None:
        raise BackupError(f"{where} is NULL: a point needs a vector")
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        width, code = (4, "f") if encoding != "float64le" else (8, "d")
        if encoding == "array" or len(data) % width:
            raise BackupError(
                f"{where} is {len(data)} bytes: set vector_encoding to float32le or float64le "
                "to match how the vectors are packed"
            )
        return list(struct.unpack(f"<{len(data) // width}{code}", data))
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{") and text.endswith("}"):  # a PostgreSQL array literal
            text = "[" + text[1:-1] + "]"
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise BackupError(f"{where} is not a vector: {value[:60]!r}") from exc
    try:
        return [float(x) for x in value]
    except (TypeError, ValueError) as exc:
        raise BackupError(f"{where} is not a list of numbers: {exc}") from exc


def type_problem(kind: str | None, column) -> str | None:
    """Why a column (postgres.catalog.ColumnInfo: category, base, element_category) cannot
    become a field of type `kind`; None when it can."""
    if kind is None or kind in ("auto", "string", "string*"):
        return None
    if kind.endswith("[]"):
        if column.category != "A":
            return f"column {column.name} is {column.type}, not an array: it cannot be {kind}"
        return type_problem(kind[:-2], _Element(column))
    accepted = {
        "int32": "NDB",
        "int64": "NDB",
        "float": "ND",
        "bool": "B",
        "object": "",
        "geopoint": "",
    }.get(kind, "")
    if column.category in accepted:
        return None
    if kind in ("object", "geopoint") and column.base in ("json", "jsonb", "_json", "_jsonb"):
        return None
    return f"column {column.name} is {column.type}: it cannot be {kind}"


class _Element:
    """An array column's element, for type_problem."""

    def __init__(self, column) -> None:
        self.name = f"{column.name}[]"
        self.type = column.type.removesuffix("[]")
        self.base = column.base.removeprefix("_")
        self.category = column.element_category or ""
        self.element_category = None
