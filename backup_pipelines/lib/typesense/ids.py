"""The document ids of a Typesense export artifact, for the consistency gate.

The id is read without json.loads where a regular expression can find it (see _PLAIN_ID).
"""

from __future__ import annotations

import json
import re

import numpy as np

from backup_pipelines.lib.ids import (
    IdCollector,
    Side,
    declared_count,
    decompressed,
    index_name,
    line_blocks,
)
from backup_pipelines.lib.store import ArtifactRef, BackupStore

TYPESENSE_FILE = "documents.jsonl.zst"


# A document line whose top-level "id" is a plain string, found without json.loads. Typesense
# exports keys in sorted order, so "id" usually follows other fields ("content", "created_at"):
# the pattern steps over the members before it, each a key string and a value that is a string
# or a number/true/false/null, strings read escape by escape (so "id": inside a value is never
# taken for the key). A nested object or array before "id", spaces, an id with escapes or a
# line that is not such an object at all does not match, and is parsed with json.loads. No
# part of the pattern but its last matches a newline: a match never runs into the next line.
_STRING = rb'"[^"\\\n]*(?:\\.[^"\\\n]*)*"'  # unrolled: one character class per run
_SCALAR = rb"(?:-?[0-9][0-9.eE+-]*|true|false|null)"
_PLAIN_ID = re.compile(
    # the rest of the line is taken too, so a search goes on from the next line's start
    rb'^\{(?:%s:(?:%s|%s),)*?"id":"([^"\\\n]*)"[^\n]*\n' % (_STRING, _STRING, _SCALAR),
    re.MULTILINE,
)


def _jsonl_ids(buf: bytes, start: int, stop: int) -> list[bytes]:
    """The top-level "id" of every JSON document line in buf[start:stop] (whole lines, each
    ending in a newline), as UTF-8 bytes. A block whose every line matches _PLAIN_ID is read
    in one regex pass; else line by line, json.loads for the lines that do not match."""
    found = _PLAIN_ID.findall(buf, start, stop)
    if len(found) == buf.count(b"\n", start, stop):
        return found
    out: list[bytes] = []
    append, find, match = out.append, buf.find, _PLAIN_ID.match
    pos = start
    while pos < stop:
        end = find(b"\n", pos, stop)
        plain = match(buf, pos, end + 1)
        if plain is not None:
            append(plain.group(1))
        elif buf[pos:end].strip():
            append(_json_document_id(buf[pos:end]))
        pos = end + 1
    return out


def _json_document_id(line: bytes) -> bytes:
    document = json.loads(line)
    value = document.get("id") if isinstance(document, dict) else None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"a document without a string id in the export: {line[:200]!r}")
    return str(value).encode()


def ids_from_typesense_export(
    store: BackupStore, ref: ArtifactRef, manifest: dict, name: str | None = None
) -> Side:
    """The document ids of a Typesense export artifact (documents.jsonl.zst)."""
    collector = IdCollector()
    for buf, start, stop in line_blocks(decompressed(store, ref, manifest, TYPESENSE_FILE)):
        collector.add(_jsonl_ids(buf, start, stop))
    return Side(
        index_name("typesense", ref, manifest, name),
        manifest["captured_at"],
        collector.array(),
        declared_count(manifest, "documents"),
        manifest.get("export_started_at"),
    )


def typesense_side(store: BackupStore, ref: ArtifactRef, manifest: dict, collection: str) -> Side:
    """The export's ids; an export of a collection that did not exist is an empty index."""
    name = f"typesense:{collection}"
    if not manifest.get("collection_exists", True):
        return Side(name, manifest["captured_at"], np.empty(0, np.int64), 0)
    return ids_from_typesense_export(store, ref, manifest, name)


def ids_in_collection(client, collection: str) -> np.ndarray:
    """The document ids a live collection holds (its id-only export, streamed); empty when the
    collection does not exist."""
    if not client.collection_exists(collection):
        return np.empty(0, np.int64)
    collector = IdCollector()
    for buf, start, stop in line_blocks(client.export_ids(collection)):
        collector.add(_jsonl_ids(buf, start, stop))
    return collector.array()
