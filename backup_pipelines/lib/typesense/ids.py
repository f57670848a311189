"""The document ids of a Typesense export artifact, for the consistency gate.

The id is read without json.loads when a document starts with `{"id":"` (see _jsonl_ids).
"""

from __future__ import annotations

import json

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


_JSONL_FAST = b'{"id":"'


def _jsonl_ids(buf: bytes, start: int, stop: int) -> list[bytes]:
    """The top-level "id" of every JSON document line in buf[start:stop], as UTF-8 bytes.

    Fast path, without json.loads: a line that starts with `{"id":"` has "id" as the first key
    of the top-level object (nothing before it can open a string or a nested object), and when
    the characters up to the next double quote hold no backslash, that quote closes the value.
    Text such as `"id": "999"` inside another field cannot be taken for it: it is never at the
    start of a line, and inside a JSON string its quotes are escaped anyway. Any other line
    (another key first, whitespace, an escaped id, a nested "id") is parsed with json.loads.
    """
    out: list[bytes] = []
    append, find, startswith = out.append, buf.find, buf.startswith
    fast = len(_JSONL_FAST)
    pos = start
    while pos < stop:
        end = find(b"\n", pos, stop)
        if startswith(_JSONL_FAST, pos, end):
            quote = find(b'"', pos + fast, end)
            value = buf[pos + fast : quote] if quote > 0 else b"\\"
            if b"\\" not in value:
                append(value)
                pos = end + 1
                continue
        line = buf[pos:end]
        if line.strip():
            append(_json_document_id(line))
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
