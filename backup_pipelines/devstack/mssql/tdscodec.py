"""TDS 7.4 data encoding: TYPE_INFO and values of result columns (server -> client) and of RPC
parameters (client -> server). MS-TDS sections 2.2.5.4 (data types) and 2.2.5.5 (type info)."""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal

from .sqltypes import BINARY_TYPES, CHAR_TYPES, INT_SIZES, MAX, NCHAR_TYPES, SqlType

# Latin1_General / SQL_Latin1_General_CP1_CI_AS (LCID 0x0409, sort id 52): what the server's
# default collation looks like on the wire.
COLLATION = b"\x09\x04\xd0\x00\x34"
PLP_NULL = 0xFFFFFFFFFFFFFFFF
PLP_UNKNOWN = 0xFFFFFFFFFFFFFFFE
EPOCH_1900 = datetime(1900, 1, 1)
PLP_CHUNK = 8000


def _time_bytes(scale: int) -> int:
    return 3 if scale <= 2 else 4 if scale <= 4 else 5


def type_info(t: SqlType) -> bytes:
    """TYPE_INFO of a result column (or RETURNVALUE)."""
    n = t.name
    if n in INT_SIZES:
        return bytes([0x26, INT_SIZES[n]])
    if n == "bit":
        return b"\x68\x01"
    if n == "float":
        return b"\x6d\x08"
    if n == "real":
        return b"\x6d\x04"
    if n in ("decimal", "numeric", "money"):
        p, s = (19, 4) if n == "money" else (t.precision, t.scale)
        code = 0x6C if n == "numeric" else 0x6A
        return bytes([code, _dec_size(p), p, s])
    if n == "uniqueidentifier":
        return b"\x24\x10"
    if n == "datetime2":
        return bytes([0x2A, t.scale])
    if n == "datetimeoffset":
        return bytes([0x2B, t.scale])
    if n == "time":
        return bytes([0x29, t.scale])
    if n == "date":
        return b"\x28"
    if n in ("datetime", "smalldatetime"):
        return b"\x6f\x08"
    if n in NCHAR_TYPES:
        size = 0xFFFF if t.length == MAX or t.length > 4000 else t.length * 2
        return b"\xe7" + struct.pack("<H", size) + COLLATION
    if n in CHAR_TYPES:
        size = 0xFFFF if t.length == MAX or t.length > 8000 else t.length
        return b"\xa7" + struct.pack("<H", size) + COLLATION
    if n in BINARY_TYPES:
        size = 0xFFFF if t.length == MAX or t.length > 8000 else t.length
        return b"\xa5" + struct.pack("<H", size)
    return b"\xe7\xff\xff" + COLLATION


def _dec_size(p: int) -> int:
    return 5 if p <= 9 else 9 if p <= 19 else 13 if p <= 28 else 17


def _plp(data: bytes | None) -> bytes:
    if data is None:
        return struct.pack("<Q", PLP_NULL)
    out = [struct.pack("<Q", len(data))]
    for i in range(0, len(data), PLP_CHUNK):
        chunk = data[i : i + PLP_CHUNK]
        out.append(struct.pack("<I", len(chunk)) + chunk)
    out.append(b"\x00\x00\x00\x00")
    return b"".join(out)


def _is_plp(t: SqlType) -> bool:
    if t.name in NCHAR_TYPES:
        return t.length == MAX or t.length > 4000
    if t.name in CHAR_TYPES | BINARY_TYPES:
        return t.length == MAX or t.length > 8000
    return False


def encode_datetime2_parts(value: datetime | time, scale: int) -> bytes:
    seconds = value.hour * 3600 + value.minute * 60 + value.second
    ticks = (seconds * 10**6 + value.microsecond) * 10**scale // 10**6
    return ticks.to_bytes(_time_bytes(scale), "little")


def _date_bytes(value: date) -> bytes:
    return (value.toordinal() - 1).to_bytes(3, "little")


def encode_value(t: SqlType, v) -> bytes:
    """One column value of a ROW token (or RETURNVALUE)."""
    n = t.name
    plp = _is_plp(t)
    if v is None:
        if plp:
            return _plp(None)
        if n in NCHAR_TYPES | CHAR_TYPES | BINARY_TYPES:
            return b"\xff\xff"
        return b"\x00"
    if n in INT_SIZES:
        size = INT_SIZES[n]
        return bytes([size]) + int(v).to_bytes(size, "little", signed=n != "tinyint")
    if n == "bit":
        return b"\x01" + (b"\x01" if v else b"\x00")
    if n == "float":
        return b"\x08" + struct.pack("<d", float(v))
    if n == "real":
        return b"\x04" + struct.pack("<f", float(v))
    if n in ("decimal", "numeric", "money"):
        p, s = (19, 4) if n == "money" else (t.precision, t.scale)
        size = _dec_size(p)
        unscaled = int(
            (Decimal(v) if not isinstance(v, Decimal) else v).scaleb(s).to_integral_value()
        )
        sign = b"\x01" if unscaled >= 0 else b"\x00"
        return bytes([size]) + sign + abs(unscaled).to_bytes(size - 1, "little")
    if n == "uniqueidentifier":
        u = v if isinstance(v, uuid.UUID) else uuid.UUID(str(v))
        return b"\x10" + u.bytes_le
    if n in ("datetime2", "datetimeoffset", "date", "time", "datetime", "smalldatetime"):
        return _encode_temporal(t, v)
    if n in NCHAR_TYPES:
        data = str(v).encode("utf-16-le")
    elif n in CHAR_TYPES:
        data = str(v).encode("cp1252", "replace")
    else:
        data = bytes(v)
    if plp:
        return _plp(data)
    return struct.pack("<H", len(data)) + data


def _encode_temporal(t: SqlType, v) -> bytes:
    from .sqltypes import parse_datetime

    n = t.name
    if isinstance(v, str):
        v = parse_datetime(v)
    if n == "date":
        d = v if not isinstance(v, datetime) else v.date()
        return b"\x03" + _date_bytes(d)
    if n == "time":
        tm = v if isinstance(v, time) else v.time()
        body = encode_datetime2_parts(tm, t.scale)
        return bytes([len(body)]) + body
    if not isinstance(v, datetime):
        v = datetime(v.year, v.month, v.day)
    if n in ("datetime", "smalldatetime"):
        v = v.replace(tzinfo=None)
        delta = v - EPOCH_1900
        days = delta.days
        ticks = round((delta.seconds + delta.microseconds / 1e6) * 300)
        if ticks >= 300 * 86400:
            days, ticks = days + 1, 0
        return b"\x08" + struct.pack("<iI", days, ticks)
    if n == "datetimeoffset":
        if v.tzinfo is None:
            v = v.replace(tzinfo=UTC)
        offset = int(v.utcoffset().total_seconds() // 60)
        utc = v.astimezone(UTC).replace(tzinfo=None)
        body = encode_datetime2_parts(utc, t.scale) + _date_bytes(utc.date())
        body += struct.pack("<h", offset)
        return bytes([len(body)]) + body
    v = v.replace(tzinfo=None)
    body = encode_datetime2_parts(v, t.scale) + _date_bytes(v.date())
    return bytes([len(body)]) + body


# ---- client -> server: RPC parameter values ------------------------------------------------
@dataclass
class ParamType:
    code: int
    size: int = 0
    precision: int = 0
    scale: int = 0
    collation: bytes = b""


class Reader:
    """A cursor over a request payload."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("truncated TDS request")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack("<H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def b_varchar(self) -> str:
        return self.take(self.u8() * 2).decode("utf-16-le")

    def us_varchar(self) -> str:
        return self.take(self.u16() * 2).decode("utf-16-le")

    @property
    def done(self) -> bool:
        return self.pos >= len(self.data)


FIXED = {
    0x30: 1,
    0x32: 1,
    0x34: 2,
    0x38: 4,
    0x7F: 8,
    0x3B: 4,
    0x3E: 8,
    0x3A: 4,
    0x3D: 8,
    0x3C: 8,
    0x7A: 4,
    0x1F: 0,
}
BYTELEN = {0x24, 0x26, 0x68, 0x6D, 0x6E, 0x6F, 0x6A, 0x6C, 0x37, 0x3F, 0x25, 0x27, 0x2D, 0x2F}
USHORTLEN = {0xA5, 0xA7, 0xAD, 0xAF, 0xE7, 0xEF}
LONGLEN = {0x22, 0x23, 0x63}


def read_type_info(r: Reader) -> ParamType:
    code = r.u8()
    if code in FIXED:
        return ParamType(code, FIXED[code])
    if code in (0x6A, 0x6C, 0x37, 0x3F):
        return ParamType(code, r.u8(), r.u8(), r.u8())
    if code in (0x29, 0x2A, 0x2B):
        return ParamType(code, 0, 0, r.u8())
    if code == 0x28:
        return ParamType(code)
    if code in BYTELEN:
        size = r.u8()
        coll = r.take(5) if code in (0x27, 0x2F) else b""
        return ParamType(code, size, collation=coll)
    if code in USHORTLEN:
        size = r.u16()
        coll = r.take(5) if code in (0xA7, 0xAF, 0xE7, 0xEF) else b""
        return ParamType(code, size, collation=coll)
    if code in LONGLEN:
        size = r.u32()
        coll = r.take(5) if code in (0x23, 0x63) else b""
        return ParamType(code, size, collation=coll)
    if code == 0xF1:  # XML
        if r.u8():
            r.b_varchar(), r.b_varchar(), r.us_varchar()
        return ParamType(code, 0xFFFF)
    raise ValueError(f"unsupported TDS parameter type 0x{code:02X}")


def _read_plp(r: Reader) -> bytes | None:
    total = r.u64()
    if total == PLP_NULL:
        return None
    parts = []
    while True:
        n = r.u32()
        if n == 0:
            return b"".join(parts)
        parts.append(r.take(n))


def read_value(r: Reader, t: ParamType):
    """Decode one parameter value into a Python value (str, int, bytes, datetime, ...)."""
    c = t.code
    if c == 0x1F:
        return None
    if c in FIXED:
        return _fixed(c, r.take(t.size))
    if c in USHORTLEN:
        if t.size == 0xFFFF:
            data = _read_plp(r)
        else:
            n = r.u16()
            data = None if n == 0xFFFF else r.take(n)
        return _bytes_value(c, data)
    if c in LONGLEN:
        n = r.u32()
        return None if n == 0xFFFFFFFF else _bytes_value(c, r.take(n))
    if c == 0xF1:
        data = _read_plp(r)
        return None if data is None else data.decode("utf-16-le")
    n = r.u8()
    if n == 0:
        return None
    body = r.take(n)
    if c == 0x26:
        return int.from_bytes(body, "little", signed=True)
    if c == 0x68:
        return bool(body[0])
    if c == 0x6D:
        return struct.unpack("<f" if n == 4 else "<d", body)[0]
    if c in (0x6A, 0x6C, 0x37, 0x3F):
        value = Decimal(int.from_bytes(body[1:], "little")).scaleb(-t.scale)
        return value if body[0] else -value
    if c == 0x6E:
        return _fixed(0x3C if n == 8 else 0x7A, body)
    if c == 0x6F:
        return _fixed(0x3D if n == 8 else 0x3A, body)
    if c == 0x24:
        return uuid.UUID(bytes_le=body)
    if c in (0x25, 0x2D):
        return body
    if c in (0x27, 0x2F):
        return body.decode("cp1252", "replace")
    if c == 0x28:
        return date.fromordinal(int.from_bytes(body, "little") + 1)
    tb = _time_bytes(t.scale)
    ticks = int.from_bytes(body[:tb], "little")
    micro = ticks * 10**6 // 10**t.scale
    clock = (datetime.min + timedelta(microseconds=micro)).time()
    if c == 0x29:
        return clock
    day = date.fromordinal(int.from_bytes(body[tb : tb + 3], "little") + 1)
    value = datetime.combine(day, clock)
    if c == 0x2B:
        offset = struct.unpack("<h", body[tb + 3 : tb + 5])[0]
        value = value.replace(tzinfo=UTC).astimezone(timezone(timedelta(minutes=offset)))
    return value


def _fixed(code: int, body: bytes):
    if code == 0x30:
        return body[0]
    if code == 0x32:
        return bool(body[0])
    if code in (0x34, 0x38, 0x7F):
        return int.from_bytes(body, "little", signed=True)
    if code == 0x3B:
        return struct.unpack("<f", body)[0]
    if code == 0x3E:
        return struct.unpack("<d", body)[0]
    if code == 0x3D:
        days, ticks = struct.unpack("<iI", body)
        return EPOCH_1900 + timedelta(days=days, microseconds=round(ticks * 10**6 / 300))
    if code == 0x3A:
        days, minutes = struct.unpack("<HH", body)
        return EPOCH_1900 + timedelta(days=days, minutes=minutes)
    if code == 0x3C:
        hi, lo = struct.unpack("<iI", body)
        return Decimal((hi << 32) + lo).scaleb(-4)
    if code == 0x7A:
        return Decimal(struct.unpack("<i", body)[0]).scaleb(-4)
    return None


def _bytes_value(code: int, data: bytes | None):
    if data is None:
        return None
    if code in (0xE7, 0xEF, 0x63):
        return data.decode("utf-16-le")
    if code in (0xA7, 0xAF, 0x23):
        return data.decode("cp1252", "replace")
    return data
