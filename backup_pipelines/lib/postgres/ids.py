"""The memory-entry ids of a workspace dump, read from its COPY file for the consistency gate.

A binary COPY table's ids come from the ids file the dump wrote beside it (its primary key in
COPY text, same snapshot, `ids_file`); without one (no one-column key, or the gate's id column
is another) the binary file is walked field by field (copy_format.binary_column) and its ids
decoded by the column's recorded type. For COPY text:

Parsing uses bytes.find (memchr) from line to line and never looks at the rest of a row: the
COPY id field is the text up to the tab that ends it (raw tabs and newlines only ever separate
fields and rows; a tab or newline inside a value is escaped).
"""

from __future__ import annotations

import re

from backup_pipelines.lib.ids import IdCollector, Side, decompressed, line_blocks
from backup_pipelines.lib.postgres.copy_format import (
    BINARY,
    BinaryCopyError,
    binary_column,
    decode_ids,
)
from backup_pipelines.lib.store import ArtifactRef, BackupStore

MEMORY_TABLE = "public.memory_entries"


def _copy_fields(buf: bytes, start: int, stop: int, column: int) -> list[bytes]:
    """Field `column` of every COPY-text line in buf[start:stop], still COPY-escaped.

    A tab or newline inside a value is written as the two characters backslash-t / backslash-n,
    so every raw tab separates fields and every raw newline ends a row.
    """
    out: list[bytes] = []
    append, find = out.append, buf.find
    pos = start
    while pos < stop:
        end = find(b"\n", pos, stop)
        begin = pos
        for _ in range(column):
            begin = find(b"\t", begin, end) + 1
            if begin == 0:
                raise ValueError(f"a COPY row has fewer than {column + 1} columns")
        tab = find(b"\t", begin, end)
        append(buf[begin : end if tab < 0 else tab])
        pos = end + 1
    return out


_COPY_ESCAPE = re.compile(rb"\\(?:([0-7]{1,3})|x([0-9A-Fa-f]{1,2})|(.))", re.S)
_COPY_SIMPLE = {b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v"}


def _copy_unescape(value: bytes) -> bytes:
    if b"\\" not in value:
        return value
    if value == rb"\N":
        raise ValueError("a NULL id in the COPY data (the id column is the primary key)")

    def one(match: re.Match) -> bytes:
        octal, hexa, char = match.groups()
        if octal:
            return bytes([int(octal, 8) & 0xFF])
        if hexa:
            return bytes([int(hexa, 16)])
        return _COPY_SIMPLE.get(char, char)

    return _COPY_ESCAPE.sub(one, value)


def sql_ids_from_workspace_dump(
    store: BackupStore,
    ref: ArtifactRef,
    manifest: dict,
    table: str = MEMORY_TABLE,
    id_column: str = "id",
) -> Side:
    """The ids of `table` in a workspace dump (its `id_column`, found through the manifest)."""
    entry = next((t for t in manifest.get("tables", []) if t["table"] == table), None)
    if entry is None:
        raise ValueError(
            f"{store.location(ref)}: the backup holds no table {table} (the table an index "
            "mapping of the policy derives the index from)"
        )
    if id_column not in entry["columns"]:
        raise ValueError(
            f"{store.location(ref)}: table {table} of the backup has no column {id_column!r} "
            f"(the policy's index mapping id_column); its columns: {', '.join(entry['columns'])}"
        )
    column = entry["columns"].index(id_column)
    collector = IdCollector()
    if entry.get("copy_format") == BINARY and entry.get("ids_column") == id_column:
        # the dump wrote the key's values beside the binary rows, in COPY text
        chunks = decompressed(store, ref, manifest, entry["ids_file"])
        for buf, start, stop in line_blocks(chunks):
            collector.add(_copy_fields(buf, start, stop, 0), _copy_unescape)
    elif entry.get("copy_format") == BINARY:
        chunks = decompressed(store, ref, manifest, entry["file"])
        _collect_binary(collector, chunks, entry, column, store.location(ref))
    else:
        chunks = decompressed(store, ref, manifest, entry["file"])
        for buf, start, stop in line_blocks(chunks):
            collector.add(_copy_fields(buf, start, stop, column), _copy_unescape)
    return Side(f"postgres:{table}", manifest["captured_at"], collector.array(), entry.get("rows"))


def _collect_binary(collector: IdCollector, chunks, entry: dict, column: int, where: str) -> None:
    type_name = entry["column_types"][column]
    try:
        for values in binary_column(chunks, len(entry["columns"]), column):
            ids = decode_ids(values, type_name)
            if isinstance(ids, list):
                collector.add(ids)
            else:
                collector.add_ints(ids)
    except BinaryCopyError as error:
        raise ValueError(
            f"{where}: the binary COPY file {entry['file']} of table {entry['table']} is "
            f"damaged: {error}"
        ) from error
