"""Catalog objects: small indexes a store keeps about its own artifacts under `_catalog/`
(monitoring's captured-at catalog, retention's verification record), one per asset, each a
zstd-compressed JSON object `{"format": N, "asset": "<asset>", "entries": {folder: entry}}`.

This code writes them, but reads them back as untrusted input: the decompressed size and the
number of entries are bounded and the format and asset checked here; each module type-checks
its own entries."""

from __future__ import annotations

import json

import zstandard


def encode_catalog(format_version: int, asset: str, entries: dict) -> bytes:
    body = json.dumps({"format": format_version, "asset": asset, "entries": entries})
    return zstandard.ZstdCompressor(level=3).compress(body.encode())


def decode_catalog(
    data: bytes, *, format_version: int, asset: str, what: str, max_bytes: int, max_entries: int
) -> dict:
    """The entries, not yet checked one by one. Raises ValueError (zstandard.ZstdError for
    bytes that are not zstd) when `data` is not the `what` of `asset` in `format_version`."""
    text = zstandard.ZstdDecompressor().stream_reader(data).read(max_bytes + 1)
    if len(text) > max_bytes:
        raise ValueError(f"larger than {max_bytes} bytes decompressed")
    raw = json.loads(text)
    if not isinstance(raw, dict) or raw.get("format") != format_version:
        raise ValueError(f"not a {what} of format {format_version}")
    if raw.get("asset") != asset or not isinstance(raw.get("entries"), dict):
        raise ValueError(f"not the {what} of {asset}")
    if len(raw["entries"]) > max_entries:
        raise ValueError(f"more than {max_entries} entries")
    return raw["entries"]
