"""Rows as Typesense documents, by the policy's mapping (`indexes.typesense`): the collection
schema and one document per row. Null values are left out of a document (Typesense's way of
saying a field is absent; such fields must be `optional`)."""

from __future__ import annotations

import json
from collections.abc import Iterator

from backup_pipelines.lib.errors import BackupError, Refusals
from backup_pipelines.lib.mapping import Row, typed_value
from backup_pipelines.lib.policy import IndexMapping


def typesense_schema(collection: str, mapping: IndexMapping) -> dict:
    """The collection's schema, for when it has to be created (a rebuild into a missing one)."""
    fields = []
    for spec in mapping.fields:
        field = {"name": spec.field, "type": spec.type or "auto"}
        if spec.facet:
            field["facet"] = True
        if spec.optional:
            field["optional"] = True
        fields.append(field)
    schema = {"name": collection, "fields": fields}
    if getattr(mapping, "default_sorting_field", None):
        schema["default_sorting_field"] = mapping.default_sorting_field
    return schema


def document_id(value) -> str:
    return str(value)


def to_typesense_document(row: Row, mapping: IndexMapping) -> dict:
    document = {"id": document_id(row[mapping.id_column])}
    for spec in mapping.fields:
        value = typed_value(row[spec.column], spec.type)
        if value is not None:
            document[spec.field] = value
    return document


def typesense_jsonl(
    rows: Iterator[Row], mapping: IndexMapping, refused: Refusals | None = None
) -> Iterator[bytes]:
    """The rows as Typesense import lines (JSONL), one document per row. A row that cannot
    become a document (a value its field's type cannot hold) is added to `refused` by id and
    left out; without `refused` it is an error naming the row."""
    for row in rows:
        try:
            document = to_typesense_document(row, mapping)
            line = json.dumps(document, ensure_ascii=False, allow_nan=False).encode() + b"\n"
        except (ValueError, TypeError, ArithmeticError) as error:
            reason = f"cannot be a document by indexes.typesense: {type(error).__name__}: {error}"
            if refused is None:
                raise BackupError(
                    f"{mapping.table} row {row.get(mapping.id_column)!r} {reason}"
                ) from error
            refused.add(row.get(mapping.id_column), reason)
            continue
        yield line


def ensure_typesense_collection(client, collection: str, mapping: IndexMapping) -> None:
    if not client.collection_exists(collection):
        client.create_collection(typesense_schema(collection, mapping))


def index_into_typesense(
    client, collection: str, rows: Iterator[Row], mapping: IndexMapping
) -> int:
    """Create the collection when missing and upsert every row's document; returns the count."""
    ensure_typesense_collection(client, collection, mapping)
    return client.import_jsonl(collection, typesense_jsonl(rows, mapping), action="upsert")


def probe_filter(probe: Row, mapping: IndexMapping) -> str:
    """`filter_by` narrowing a search to the probe's value of the probe column."""
    spec = mapping.field_for(mapping.probe_column)
    value = typed_value(probe[mapping.probe_column], spec.type)
    if isinstance(value, str):
        return f"{spec.field}:=`{value.replace('`', '')}`"
    if isinstance(value, bool):
        return f"{spec.field}:={'true' if value else 'false'}"
    return f"{spec.field}:={value}"


def probe_query_by(mapping: IndexMapping) -> str:
    return ",".join(mapping.field_for(column).field for column in mapping.text_columns)
