"""T-SQL data types: how each is stored in SQLite, typed on the way out, and encoded in TDS.

A column of T-SQL type X is declared in SQLite with a made-up type name (its *decltype*, e.g.
``INT_32``, ``TEXT_NVARCHAR_200``, ``NUM_25_0``) chosen for the right SQLite affinity. The
session's SQLite connections are opened with ``PARSE_DECLTYPES`` and a converter per decltype,
so values read from table columns come back as subclasses of the Python type (``TInt``,
``TStr``, ...) that carry their T-SQL type; the TDS layer encodes them with it. Values computed
by expressions have no decltype and are typed from their Python value.

Canonical storage: datetime2/datetime ``YYYY-MM-DD HH:MM:SS.ffffff``, datetimeoffset the same
plus `` +HH:MM``, date ``YYYY-MM-DD``, uniqueidentifier upper-case text, decimal as a SQLite
number (exact up to 15 significant digits for fractions, 19 digits for integers), bit 0/1.
"""

from __future__ import annotations

import re
import sqlite3
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal

# system_type_id of each type (sys.types), and whether it is a character/binary type.
SYSTEM_TYPE_IDS = {
    "image": 34,
    "text": 35,
    "uniqueidentifier": 36,
    "date": 40,
    "time": 41,
    "datetime2": 42,
    "datetimeoffset": 43,
    "tinyint": 48,
    "smallint": 52,
    "int": 56,
    "smalldatetime": 58,
    "real": 59,
    "money": 60,
    "datetime": 61,
    "float": 62,
    "ntext": 99,
    "bit": 104,
    "decimal": 106,
    "numeric": 108,
    "bigint": 127,
    "varbinary": 165,
    "varchar": 167,
    "binary": 173,
    "char": 175,
    "nvarchar": 231,
    "nchar": 239,
    "sysname": 231,
}
ALIASES = {"integer": "int", "double": "float", "rowversion": "binary", "sysname": "nvarchar"}
CHAR_TYPES = {"varchar", "char", "text"}
NCHAR_TYPES = {"nvarchar", "nchar", "ntext"}
BINARY_TYPES = {"varbinary", "binary", "image"}
INT_SIZES = {"tinyint": 1, "smallint": 2, "int": 4, "bigint": 8}
MAX = -1


@dataclass(frozen=True)
class SqlType:
    """A T-SQL type: name, length in characters/bytes (MAX = -1), precision and scale."""

    name: str
    length: int = 0
    precision: int = 0
    scale: int = 0

    # ---- catalog facts -------------------------------------------------------------------
    @property
    def system_type_id(self) -> int:
        return SYSTEM_TYPE_IDS.get(self.name, 231)

    @property
    def max_length(self) -> int:
        """sys.columns.max_length: bytes, -1 for MAX."""
        if self.length == MAX:
            return -1
        if self.name in NCHAR_TYPES:
            return self.length * 2
        if self.name in CHAR_TYPES | BINARY_TYPES:
            return self.length
        fixed = {
            "bit": 1,
            "float": 8,
            "real": 4,
            "datetime": 8,
            "date": 3,
            "money": 8,
            "uniqueidentifier": 16,
            "datetimeoffset": 10,
            "datetime2": 8,
            "time": 5,
        }
        if self.name in INT_SIZES:
            return INT_SIZES[self.name]
        if self.name in ("decimal", "numeric"):
            return decimal_size(self.precision)
        return fixed.get(self.name, 0)

    def sql(self) -> str:
        """The type as T-SQL writes it (INFORMATION_SCHEMA and messages)."""
        if self.name in CHAR_TYPES | NCHAR_TYPES | BINARY_TYPES and self.name not in (
            "text",
            "ntext",
            "image",
        ):
            return f"{self.name}({'max' if self.length == MAX else self.length})"
        if self.name in ("decimal", "numeric"):
            return f"{self.name}({self.precision},{self.scale})"
        if self.name in ("datetime2", "datetimeoffset", "time"):
            return f"{self.name}({self.scale})"
        return self.name

    # ---- SQLite declaration ---------------------------------------------------------------
    def decltype(self) -> str:
        n = self.name
        if n in INT_SIZES or n == "bit":
            return f"INT_{n.upper()}"
        if n in ("float", "real"):
            return f"REAL_{n.upper()}"
        if n in ("decimal", "numeric", "money"):
            p, s = (19, 4) if n == "money" else (self.precision, self.scale)
            return f"NUM_{n.upper()}_{p}_{s}"
        if n in BINARY_TYPES:
            return f"BLOB_{n.upper()}_{'MAX' if self.length == MAX else self.length}"
        suffix = "MAX" if self.length == MAX else str(self.length or self.scale)
        return f"TEXT_{n.upper()}_{suffix}"


def decimal_size(precision: int) -> int:
    return 5 if precision <= 9 else 9 if precision <= 19 else 13 if precision <= 28 else 17


_TYPE_RE = re.compile(
    r"^\s*(?:\[?(?:dbo|sys)\]?\.)?\[?([A-Za-z_][A-Za-z0-9_ ]*?)\]?\s*(?:\(\s*([^)]*)\))?\s*$"
)
DEFAULT_LENGTH = {"varchar": 1, "char": 1, "nvarchar": 1, "nchar": 1, "varbinary": 1, "binary": 1}


def parse_type(text: str) -> SqlType:
    """'NVARCHAR(MAX)', 'decimal(18, 2)', 'datetime2(3)', 'int' -> SqlType (ValueError if not)."""
    m = _TYPE_RE.match(text)
    if not m:
        raise ValueError(text)
    name = m.group(1).strip().lower()
    name = {"double precision": "float", "character varying": "varchar"}.get(name, name)
    name = ALIASES.get(name, name) if name != "sysname" else "nvarchar"
    args = [a.strip().lower() for a in (m.group(2) or "").split(",") if a.strip()]
    if text.strip().lower().endswith("sysname"):
        return SqlType("nvarchar", 128)
    if name in CHAR_TYPES | NCHAR_TYPES | BINARY_TYPES:
        if name in ("text", "ntext", "image"):
            return SqlType(name, MAX)
        length = MAX if args and args[0] == "max" else int(args[0]) if args else 1
        return SqlType(name, length)
    if name in ("decimal", "numeric", "dec"):
        p = int(args[0]) if args else 18
        return SqlType(
            "numeric" if name == "numeric" else "decimal",
            0,
            p,
            int(args[1]) if len(args) > 1 else 0,
        )
    if name in ("datetime2", "datetimeoffset", "time"):
        return SqlType(name, 0, 0, int(args[0]) if args else 7)
    if name == "float" and args and int(args[0]) <= 24:
        return SqlType("real")
    if name in INT_SIZES or name in (
        "bit",
        "float",
        "real",
        "date",
        "datetime",
        "smalldatetime",
        "uniqueidentifier",
        "money",
        "xml",
    ):
        return SqlType(
            {"smalldatetime": "datetime", "xml": "nvarchar"}.get(name, name),
            MAX if name == "xml" else 0,
        )
    raise ValueError(text)


def from_decltype(decl: str) -> SqlType | None:
    """Inverse of SqlType.decltype()."""
    parts = decl.upper().split("_")
    if len(parts) < 2:
        return None
    kind, name = parts[0], parts[1].lower()
    if kind == "INT":
        return SqlType(name)
    if kind == "REAL":
        return SqlType(name)
    if kind == "NUM":
        return SqlType(name, 0, int(parts[2]), int(parts[3]))
    size = parts[2] if len(parts) > 2 else "0"
    if name in ("datetime2", "datetimeoffset", "time"):
        return SqlType(name, 0, 0, int(size))
    return SqlType(name, MAX if size == "MAX" else int(size))


# ---- typed values -------------------------------------------------------------------------
class TInt(int):
    sqltype: SqlType


class TFloat(float):
    sqltype: SqlType


class TStr(str):
    sqltype: SqlType


class TBytes(bytes):
    sqltype: SqlType


class TDecimal(Decimal):
    sqltype: SqlType


class TDateTime(datetime):
    sqltype: SqlType


class TDate(date):
    sqltype: SqlType


class TTime(time):
    sqltype: SqlType


def typed(value, sqltype: SqlType):
    """Wrap a Python value so the TDS layer knows its T-SQL type."""
    if value is None:
        return None
    cls = {
        int: TInt,
        bool: TInt,
        float: TFloat,
        str: TStr,
        bytes: TBytes,
        Decimal: TDecimal,
        datetime: TDateTime,
        date: TDate,
        time: TTime,
    }.get(type(value))
    if cls is None:
        return value
    if cls is TDateTime:
        out = TDateTime(*value.timetuple()[:6], value.microsecond, value.tzinfo)
    elif cls is TDate:
        out = TDate(value.year, value.month, value.day)
    elif cls is TTime:
        out = TTime(value.hour, value.minute, value.second, value.microsecond)
    else:
        out = cls(value)
    out.sqltype = sqltype
    return out


# ---- canonical storage and parsing --------------------------------------------------------
_DT_RE = re.compile(
    r"^\s*(\d{4})-(\d{1,2})-(\d{1,2})(?:[T ](\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?)?"
    r"\s*(Z|[+-]\d{2}:?\d{2})?\s*$"
)


def parse_datetime(text: str) -> datetime:
    m = _DT_RE.match(text)
    if not m:
        raise ValueError(f"Conversion failed when converting date and/or time from '{text}'.")
    y, mo, d, h, mi, s, frac, tz = m.groups()
    us = int((frac or "0")[:6].ljust(6, "0"))
    tzinfo = None
    if tz:
        if tz == "Z":
            tzinfo = UTC
        else:
            sign = -1 if tz[0] == "-" else 1
            digits = tz[1:].replace(":", "")
            tzinfo = timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))
    return datetime(int(y), int(mo), int(d), int(h or 0), int(mi or 0), int(s or 0), us, tzinfo)


def store_datetime(value: datetime, with_offset: bool = False) -> str:
    text = value.strftime("%Y-%m-%d %H:%M:%S.%f")
    if with_offset:
        off = value.utcoffset() or timedelta(0)
        minutes = int(off.total_seconds() // 60)
        sign = "-" if minutes < 0 else "+"
        text += f" {sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    return text


def to_storage(value):
    """A Python parameter value as SQLite stores it (the canonical forms above)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, datetime):
        return store_datetime(value, value.tzinfo is not None)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, time):
        return value.strftime("%H:%M:%S.%f")
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, uuid.UUID):
        return str(value).upper()
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    return value


def _converter(sqltype: SqlType):
    n = sqltype.name

    def conv(raw: bytes):
        text = raw.decode("utf-8", "replace") if n not in BINARY_TYPES else None
        if n in INT_SIZES or n == "bit":
            value = int(float(text)) if "." in text or "e" in text.lower() else int(text)
            return typed(value, sqltype)
        if n in ("float", "real"):
            return typed(float(text), sqltype)
        if n in ("decimal", "numeric", "money"):
            q = Decimal(1).scaleb(-sqltype.scale)
            return typed(Decimal(text).quantize(q), sqltype)
        if n in BINARY_TYPES:
            return typed(bytes(raw), sqltype)
        if n in ("datetime2", "datetime", "smalldatetime"):
            return typed(parse_datetime(text).replace(tzinfo=None), sqltype)
        if n == "datetimeoffset":
            value = parse_datetime(text)
            return typed(value if value.tzinfo else value.replace(tzinfo=UTC), sqltype)
        if n == "date":
            return typed(parse_datetime(text).date(), sqltype)
        if n == "time":
            return typed(time.fromisoformat(text.strip()), sqltype)
        if n == "uniqueidentifier":
            return typed(text.upper(), sqltype)
        return typed(text, sqltype)

    return conv


_registered: set[str] = set()


def register_decltype(decl: str) -> None:
    """Make sqlite3 convert values of columns declared `decl` (process-wide, idempotent)."""
    key = decl.upper()
    if key in _registered:
        return
    sqltype = from_decltype(key)
    if sqltype is not None:
        sqlite3.register_converter(key, _converter(sqltype))
        _registered.add(key)


def infer_type(values: list) -> SqlType:
    """The T-SQL type of a result column from its values (typed values win)."""
    kinds = set()
    longest = 0
    big = False
    scale = 0
    for v in values:
        if v is None:
            continue
        if hasattr(v, "sqltype"):
            return v.sqltype
        if isinstance(v, bool):
            kinds.add("bit")
        elif isinstance(v, int):
            kinds.add("int")
            big = big or not -(2**31) <= v < 2**31
        elif isinstance(v, float):
            kinds.add("float")
        elif isinstance(v, Decimal):
            kinds.add("decimal")
            scale = max(scale, -v.as_tuple().exponent if v.as_tuple().exponent < 0 else 0)
        elif isinstance(v, (bytes, bytearray)):
            kinds.add("varbinary")
            longest = max(longest, len(v))
        elif isinstance(v, datetime):
            kinds.add("datetimeoffset" if v.tzinfo else "datetime2")
        elif isinstance(v, uuid.UUID):
            kinds.add("uniqueidentifier")
        else:
            kinds.add("nvarchar")
            longest = max(longest, len(str(v)))
    if kinds == {"int"}:
        return SqlType("bigint" if big else "int")
    if kinds <= {"int", "float"} and kinds:
        return SqlType("float")
    if len(kinds) == 1:
        (kind,) = kinds
        if kind == "decimal":
            return SqlType("numeric", 0, 38, scale)
        if kind == "varbinary":
            return SqlType("varbinary", MAX if longest > 8000 else 8000)
        if kind in ("datetime2", "datetimeoffset"):
            return SqlType(kind, 0, 0, 7)
        if kind != "nvarchar":
            return SqlType(kind)
    return SqlType("nvarchar", MAX if longest > 4000 else 4000)
