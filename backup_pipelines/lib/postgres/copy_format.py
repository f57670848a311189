"""Which COPY format a workspace dump's table file has, and reading PostgreSQL's binary one.

Binary COPY loads about 7x faster than text for embedding-heavy rows (the server parses no
float text), so a workspace dump writes a table in binary when every column allows it:

- the column's type is built in (OID below FirstNormalObjectId, 16384). A user-defined type
  (an enum, a domain, a composite, an extension's type) gets a new OID in every database, and
  the binary form of an array or a record carries its element types' OIDs, which the target's
  receive functions check: a scratch database created from the DDL would refuse them. Text
  COPY names no OID, so such tables stay text;
- the type (and an array's element type) has binary send and receive functions
  (pg_type.typsend / typreceive; a few built-in types, such as aclitem, have none);
- every primary-key column is of a type the consistency gate can read ids from (integers,
  uuid, text).

PostgreSQL documents binary COPY as "less portable across machine architectures and
PostgreSQL versions" than text (Tom Lane: "fast dump and reload between similar server
versions"), so a binary table records the server's major version, and a restore into a server
of another major version is refused before anything is written (load.check_binary_target).

Binary data read back from a store is untrusted: the server's receive functions check every
value, and `binary_column` (the gate's id reader) checks the framing and names what is wrong.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterable, Iterator

import numpy as np
import psycopg

from backup_pipelines.lib.postgres.catalog import Table, primary_key

TEXT, BINARY = "text", "binary"
SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
FIRST_USER_OID = 16384  # FirstNormalObjectId: every OID below is built in, the same everywhere
ID_TYPES = {"int2", "int4", "int8", "uuid", "text", "varchar", "bpchar", "name"}
_INT_FORMATS = {"int2": ">i2", "int4": ">i4", "int8": ">i8"}


class BinaryCopyError(ValueError):
    """A binary COPY stream that does not frame as PostgreSQL writes it."""


def column_types(conn: psycopg.Connection, table: Table, columns: list[str]) -> list[dict]:
    """Per column (in `columns` order): its type name and whether binary COPY is safe for it."""
    rows = conn.execute(
        """
        SELECT a.attname, t.typname,
               t.oid < %(first)s AND t.typsend::oid <> 0 AND t.typreceive::oid <> 0
               AND (t.typelem = 0 OR (e.oid < %(first)s AND e.typsend::oid <> 0
                                      AND e.typreceive::oid <> 0))
        FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
        LEFT JOIN pg_type e ON e.oid = t.typelem
        WHERE a.attrelid = %(table)s::regclass AND a.attnum > 0 AND NOT a.attisdropped
        """,
        {"first": FIRST_USER_OID, "table": table.identifier.as_string(conn)},
    ).fetchall()
    by_name = {name: {"type": typname, "binary": bool(ok)} for name, typname, ok in rows}
    return [by_name[c] for c in columns]


def choose_format(conn: psycopg.Connection, table: Table, columns: list[str]) -> tuple[str, list]:
    """(format, column type names) for one table's dump: binary when every column allows it."""
    types = column_types(conn, table, columns)
    names = [t["type"] for t in types]
    if not all(t["binary"] for t in types):
        return TEXT, names
    by_column = dict(zip(columns, names, strict=True))
    key = primary_key(conn, table.schema, table.name)
    if any(by_column.get(c) not in ID_TYPES for c in key):
        return TEXT, names
    return BINARY, names


def server_major(conn: psycopg.Connection) -> int:
    return int(conn.execute("SHOW server_version_num").fetchone()[0]) // 10000


# --------------------------------------------------------------------------------------------
# Reading one column out of a binary COPY stream (the consistency gate's ids)


class _Buffer:
    """Bytes not yet parsed; chunks appended at the end, parsed bytes dropped at the front."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self.data = b""
        self.pos = 0
        self.ended = False

    def more(self) -> bool:
        chunk = next(self._chunks, None)
        if chunk is None:
            self.ended = True
            return False
        self.data = self.data[self.pos :] + bytes(chunk)
        self.pos = 0
        return True


def _skip_header(buffer: _Buffer) -> None:
    while len(buffer.data) < len(SIGNATURE) + 8 and buffer.more():
        pass
    data = buffer.data
    if data[: len(SIGNATURE)] != SIGNATURE:
        raise BinaryCopyError("it does not start with the binary COPY signature PGCOPY")
    flags, extension = struct.unpack_from(">iI", data, len(SIGNATURE))
    if flags & 0x10000:
        raise BinaryCopyError("it has OIDs (a header flag no workspace dump writes)")
    buffer.pos = len(SIGNATURE) + 8 + extension
    while len(buffer.data) < buffer.pos and buffer.more():
        pass
    if len(buffer.data) < buffer.pos:
        raise BinaryCopyError("it ends inside its header")


def _rows(data: bytes, pos: int, columns: int, column: int, out: list) -> tuple[int, bool]:
    """Append field `column` of every whole row of data[pos:] to `out` (None for NULL); returns
    (where the first incomplete row starts, whether the trailer was reached)."""
    unpack_h, unpack_i = struct.Struct(">h").unpack_from, struct.Struct(">i").unpack_from
    end = len(data)
    append = out.append
    while pos + 2 <= end:
        (count,) = unpack_h(data, pos)
        if count == -1:
            return pos + 2, True
        if count != columns:
            raise BinaryCopyError(f"a row has {count} fields where {columns} columns were dumped")
        p = pos + 2
        value = None
        for field in range(count):
            if p + 4 > end:
                return pos, False
            (length,) = unpack_i(data, p)
            p += 4
            if length < 0:
                if length != -1:
                    raise BinaryCopyError(f"a field has the negative length {length}")
                continue
            if field == column:
                value = data[p : p + length]
            p += length
        if p > end:
            return pos, False
        append(value)
        pos = p
    return pos, False


def binary_column(chunks: Iterable[bytes], columns: int, column: int) -> Iterator[list]:
    """Field `column` (raw binary values; None for NULL) of every row, a block at a time.
    Raises BinaryCopyError when the framing is wrong, the trailer is missing (a cut stream)
    or bytes follow it."""
    buffer = _Buffer(chunks)
    _skip_header(buffer)
    while True:
        values: list = []
        buffer.pos, done = _rows(buffer.data, buffer.pos, columns, column, values)
        if values:
            yield values
        if done:
            if buffer.pos != len(buffer.data) or (buffer.more() and buffer.data[buffer.pos :]):
                raise BinaryCopyError("bytes follow its end-of-data trailer")
            return
        if not buffer.more():
            raise BinaryCopyError("it ends before its end-of-data trailer (a cut stream)")


def decode_ids(values: list, type_name: str) -> np.ndarray | list[bytes]:
    """Binary id values as the gate compares them: int64 for integer types, else the text
    form PostgreSQL would print (uuid with hyphens, text as its bytes)."""
    if any(v is None for v in values):
        raise BinaryCopyError("a NULL id (the id column is the primary key)")
    if type_name in _INT_FORMATS:
        width = int(_INT_FORMATS[type_name][-1])
        if any(len(v) != width for v in values):
            raise BinaryCopyError(f"a {type_name} id that is not {width} bytes long")
        return np.frombuffer(b"".join(values), _INT_FORMATS[type_name]).astype(np.int64)
    if type_name == "uuid":
        if any(len(v) != 16 for v in values):
            raise BinaryCopyError("a uuid id that is not 16 bytes long")
        return [str(uuid.UUID(bytes=v)).encode() for v in values]
    if type_name in ID_TYPES:
        return values
    raise BinaryCopyError(
        f"ids of type {type_name} cannot be read from binary COPY (integers, uuid and text can)"
    )
