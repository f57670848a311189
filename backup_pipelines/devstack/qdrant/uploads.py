"""Request bodies: JSON, and streamed multipart uploads written to disk without buffering."""

from __future__ import annotations

import re
from pathlib import Path
from typing import BinaryIO

from backup_pipelines.devstack.qdrant.models import COPY_CHUNK, bad_request

# ---------------------------------------------------------------------------------------------
# Request bodies: JSON and streamed multipart uploads
# ---------------------------------------------------------------------------------------------


class BodyReader:
    """Reads at most Content-Length bytes of a request body, with push-back for parsing."""

    def __init__(self, stream: BinaryIO, length: int):
        self.stream = stream
        self.remaining = length
        self.pending = b""

    def read(self, size: int) -> bytes:
        data, self.pending = self.pending[:size], self.pending[size:]
        if len(data) < size and self.remaining > 0:
            more = self.stream.read(min(size - len(data), self.remaining))
            self.remaining -= len(more)
            data += more
        return data

    def unread(self, data: bytes) -> None:
        self.pending = data + self.pending

    def readline(self) -> bytes:
        line = b""
        while not line.endswith(b"\n"):
            chunk = self.read(1024)
            if not chunk:
                break
            cut = chunk.find(b"\n")
            if cut >= 0:
                self.unread(chunk[cut + 1 :])
                chunk = chunk[: cut + 1]
            line += chunk
            if len(line) > 65536:
                raise bad_request("multipart header line too long")
        return line

    def drain(self) -> None:
        while self.read(COPY_CHUNK):
            pass


def multipart_boundary(content_type: str) -> bytes:
    match = re.search(r'boundary="?([^";]+)"?', content_type or "")
    if not content_type.startswith("multipart/form-data") or match is None:
        raise bad_request("expected a multipart/form-data body with a `snapshot` field")
    return match.group(1).encode()


def read_part_headers(body: BodyReader) -> dict[str, str]:
    headers = {}
    while (line := body.readline().strip()) != b"":
        key, _, value = line.decode("latin-1").partition(":")
        headers[key.strip().lower()] = value.strip()
    return headers


def copy_until(body: BodyReader, delimiter: bytes, sink: BinaryIO | None) -> None:
    """Copy body bytes to `sink` until `delimiter`, keeping only a delimiter's length in memory."""
    keep = len(delimiter) - 1
    buffer = b""
    while True:
        chunk = body.read(COPY_CHUNK)
        if not chunk:
            raise bad_request("multipart body ended before its closing boundary")
        buffer += chunk
        found = buffer.find(delimiter)
        if found >= 0:
            if sink:
                sink.write(buffer[:found])
            body.unread(buffer[found + len(delimiter) :])
            return
        if len(buffer) > keep:
            if sink:
                sink.write(buffer[:-keep])
            buffer = buffer[-keep:]


def save_multipart_file(body: BodyReader, boundary: bytes, field: str, target: Path) -> str | None:
    """Stream the named file field of a multipart body to `target`; returns the file name the
    client gave for it (None without one)."""
    copy_until(body, b"--" + boundary, None)
    delimiter = b"\r\n--" + boundary
    while True:
        if body.read(2) == b"--":
            raise bad_request(f"multipart body has no `{field}` field")
        headers = read_part_headers(body)
        disposition = headers.get("content-disposition", "")
        if re.search(rf'(^|;)\s*name="?{re.escape(field)}"?(;|$)', disposition):
            with target.open("wb") as sink:
                copy_until(body, delimiter, sink)
            file_name = re.search(r'filename="([^"]*)"', disposition)
            return file_name.group(1) if file_name else None
        copy_until(body, delimiter, None)
