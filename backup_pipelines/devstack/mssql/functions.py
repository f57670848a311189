"""T-SQL built-in functions registered on every SQLite connection under their T-SQL names.

Functions that need server or session state (DB_ID, OBJECT_ID, SCOPE_IDENTITY, ...) ask the
`context` object given at registration (a Session); plain connections get None and answer NULL.
"""

from __future__ import annotations

import hashlib
import sqlite3
import uuid
import zlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from .sqltypes import SqlType, parse_datetime, parse_type, store_datetime, to_storage

SCHEMAS = {1: "dbo", 2: "guest", 3: "INFORMATION_SCHEMA", 4: "sys"}
TYPE_NAMES = {
    34: "image",
    35: "text",
    36: "uniqueidentifier",
    40: "date",
    41: "time",
    42: "datetime2",
    43: "datetimeoffset",
    48: "tinyint",
    52: "smallint",
    56: "int",
    58: "smalldatetime",
    59: "real",
    60: "money",
    61: "datetime",
    62: "float",
    99: "ntext",
    104: "bit",
    106: "decimal",
    108: "numeric",
    127: "bigint",
    165: "varbinary",
    167: "varchar",
    173: "binary",
    175: "char",
    231: "nvarchar",
    239: "nchar",
    256: "sysname",
}
DATE_PARTS = {
    "year": "years",
    "yy": "years",
    "yyyy": "years",
    "month": "months",
    "mm": "months",
    "m": "months",
    "day": "days",
    "dd": "days",
    "d": "days",
    "hour": "hours",
    "hh": "hours",
    "minute": "minutes",
    "mi": "minutes",
    "n": "minutes",
    "second": "seconds",
    "ss": "seconds",
    "s": "seconds",
    "millisecond": "milliseconds",
    "ms": "milliseconds",
    "microsecond": "microseconds",
    "mcs": "microseconds",
    "week": "weeks",
    "wk": "weeks",
}


def now_utc() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _len(value):
    return (
        None
        if value is None
        else len(str(value).rstrip(" "))
        if not isinstance(value, bytes)
        else len(value)
    )


def _datalength(value):
    if value is None:
        return None
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, str):
        return len(value.encode("utf-16-le"))
    return 8


def _hashbytes(algorithm, data):
    if data is None:
        return None
    raw = data if isinstance(data, bytes) else str(data).encode("utf-16-le")
    name = {
        "SHA2_256": "sha256",
        "SHA2_512": "sha512",
        "SHA1": "sha1",
        "SHA": "sha1",
        "MD5": "md5",
    }.get(str(algorithm).upper())
    return hashlib.new(name, raw).digest() if name else None


def _checksum(*values):
    text = "\x1f".join("\x00" if v is None else repr(v) for v in values).encode()
    value = zlib.crc32(text)
    return value - 2**32 if value >= 2**31 else value


def _charindex(needle, haystack, start=1):
    if needle is None or haystack is None:
        return None
    return str(haystack).lower().find(str(needle).lower(), max(int(start) - 1, 0)) + 1


def _concat(*values):
    return "".join("" if v is None else str(v) for v in values)


def _dateadd(part, number, value):
    if value is None or number is None:
        return None
    unit = DATE_PARTS.get(str(part).lower())
    if unit is None:
        return None
    dt = parse_datetime(str(value))
    if unit in ("years", "months"):
        months = int(number) * (12 if unit == "years" else 1) + dt.month - 1
        year, month = dt.year + months // 12, months % 12 + 1
        day = min(
            dt.day,
            [
                31,
                29 if year % 4 == 0 and (year % 100 or year % 400 == 0) else 28,
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ][month - 1],
        )
        dt = dt.replace(year=year, month=month, day=day)
    else:
        dt = dt + timedelta(**{unit: int(number)})
    return store_datetime(dt, dt.tzinfo is not None)


def _datediff(part, start, end):
    if start is None or end is None:
        return None
    a, b = parse_datetime(str(start)), parse_datetime(str(end))
    unit = DATE_PARTS.get(str(part).lower(), "")
    if unit == "years":
        return b.year - a.year
    if unit == "months":
        return (b.year - a.year) * 12 + b.month - a.month
    if unit == "days":
        return (b.date() - a.date()).days
    seconds = {
        "hours": 3600,
        "minutes": 60,
        "seconds": 1,
        "milliseconds": 0.001,
        "microseconds": 1e-6,
        "weeks": 604800,
    }.get(unit)
    if seconds is None:
        return None
    return int((b - a).total_seconds() // seconds)


def cast_value(type_text: str, value):
    """CAST(value AS type) / CONVERT(type, value) into the storage form of `type`."""
    if value is None:
        return None
    t = parse_type(type_text)
    n = t.name
    try:
        if n in ("int", "bigint", "smallint", "tinyint"):
            return (
                int(Decimal(str(value).strip()))
                if not isinstance(value, bytes)
                else int.from_bytes(value, "big")
            )
        if n == "bit":
            if isinstance(value, str):
                return {"true": 1, "false": 0}.get(value.strip().lower(), 1 if float(value) else 0)
            return 1 if value else 0
        if n in ("float", "real"):
            return float(value)
        if n in ("decimal", "numeric", "money"):
            return to_storage(Decimal(str(value)).quantize(Decimal(1).scaleb(-t.scale)))
        if n in ("datetime2", "datetime", "smalldatetime", "datetimeoffset", "date", "time"):
            dt = parse_datetime(str(value)) if n != "time" else None
            if n == "date":
                return dt.date().isoformat()
            if n == "time":
                return str(value)
            if n == "datetimeoffset":
                return store_datetime(dt if dt.tzinfo else dt.replace(tzinfo=UTC), True)
            return store_datetime(dt.replace(tzinfo=None))
        if n == "uniqueidentifier":
            return str(uuid.UUID(str(value))).upper()
        if n in ("varbinary", "binary", "image"):
            return value if isinstance(value, bytes) else str(value).encode("utf-8")
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else _text(value)
        return text if t.length in (0, -1) else text[: t.length]
    except (ValueError, ArithmeticError) as exc:
        raise ValueError(
            f"Conversion failed when converting the value '{value}' to data type {n}."
        ) from exc


def _text(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(value)
    return str(value)


class ChecksumAgg:
    """CHECKSUM_AGG: an order-independent XOR of the CHECKSUM values of a group."""

    def __init__(self) -> None:
        self.value = 0

    def step(self, value) -> None:
        if value is not None:
            self.value ^= int(value)

    def finalize(self) -> int:
        return self.value


def register_functions(conn: sqlite3.Connection, context) -> None:
    def ctx(name: str, *args):
        if context is None:
            return None
        return getattr(context, "fn_" + name)(*args)

    now = now_utc
    fns = [
        ("SYSUTCDATETIME", 0, lambda: store_datetime(now())),
        ("SYSDATETIME", 0, lambda: store_datetime(now())),
        (
            "GETUTCDATE",
            0,
            lambda: store_datetime(now().replace(microsecond=now().microsecond // 1000 * 1000)),
        ),
        (
            "GETDATE",
            0,
            lambda: store_datetime(now().replace(microsecond=now().microsecond // 1000 * 1000)),
        ),
        ("CURRENT_TIMESTAMP", 0, lambda: store_datetime(now())),
        ("SYSDATETIMEOFFSET", 0, lambda: store_datetime(datetime.now(UTC), True)),
        ("NEWID", 0, lambda: str(uuid.uuid4()).upper()),
        ("LEN", 1, _len),
        ("DATALENGTH", 1, _datalength),
        ("ISNULL", 2, lambda a, b: b if a is None else a),
        ("CHARINDEX", 2, _charindex),
        ("CHARINDEX", 3, _charindex),
        ("CONCAT", -1, _concat),
        ("HASHBYTES", 2, _hashbytes),
        ("CHECKSUM", -1, _checksum),
        ("BINARY_CHECKSUM", -1, _checksum),
        ("DATEADD", 3, _dateadd),
        ("DATEDIFF", 3, _datediff),
        ("DATEDIFF_BIG", 3, _datediff),
        ("__CAST", 2, cast_value),
        ("TYPE_NAME", 1, lambda i: TYPE_NAMES.get(i)),
        ("SCHEMA_NAME", 0, lambda: "dbo"),
        ("SCHEMA_NAME", 1, lambda i: SCHEMAS.get(i)),
        ("SCHEMA_ID", 1, lambda n: {v.lower(): k for k, v in SCHEMAS.items()}.get(str(n).lower())),
        ("SUSER_SNAME", 0, lambda: ctx("user")),
        ("SUSER_NAME", 0, lambda: ctx("user")),
        ("ORIGINAL_LOGIN", 0, lambda: ctx("user")),
        ("USER_NAME", 0, lambda: "dbo"),
        ("HOST_NAME", 0, lambda: ctx("host")),
        ("APP_NAME", 0, lambda: ctx("app")),
        ("DB_ID", 0, lambda: ctx("db_id", None)),
        ("DB_ID", 1, lambda n: ctx("db_id", n)),
        ("DB_NAME", 0, lambda: ctx("db_name", None)),
        ("DB_NAME", 1, lambda i: ctx("db_name", i)),
        ("OBJECT_ID", 1, lambda n: ctx("object_id", n, None)),
        ("OBJECT_ID", 2, lambda n, t: ctx("object_id", n, t)),
        ("OBJECT_NAME", 1, lambda i: ctx("object_name", i, None)),
        ("OBJECT_NAME", 2, lambda i, d: ctx("object_name", i, d)),
        ("SERVERPROPERTY", 1, lambda p: ctx("serverproperty", p)),
        ("DATABASEPROPERTYEX", 2, lambda d, p: ctx("databasepropertyex", d, p)),
        ("SCOPE_IDENTITY", 0, lambda: ctx("scope_identity")),
        ("IDENT_CURRENT", 1, lambda n: ctx("ident_current", n)),
    ]
    for name, nargs, fn in fns:
        conn.create_function(name, nargs, fn)
    conn.create_aggregate("CHECKSUM_AGG", 1, ChecksumAgg)


# Result types of expressions the stand-in can type statically (select lists).
STATIC_TYPES = {
    "SYSUTCDATETIME": SqlType("datetime2", 0, 0, 7),
    "SYSDATETIME": SqlType("datetime2", 0, 0, 7),
    "GETUTCDATE": SqlType("datetime"),
    "GETDATE": SqlType("datetime"),
    "CURRENT_TIMESTAMP": SqlType("datetime"),
    "SYSDATETIMEOFFSET": SqlType("datetimeoffset", 0, 0, 7),
    "NEWID": SqlType("uniqueidentifier"),
    "COUNT": SqlType("int"),
    "COUNT_BIG": SqlType("bigint"),
    "LEN": SqlType("int"),
    "DATALENGTH": SqlType("int"),
    "DB_ID": SqlType("smallint"),
    "DB_NAME": SqlType("nvarchar", 128),
    "OBJECT_ID": SqlType("int"),
    "OBJECT_NAME": SqlType("nvarchar", 128),
    "SCHEMA_NAME": SqlType("nvarchar", 128),
    "TYPE_NAME": SqlType("nvarchar", 128),
    "SCOPE_IDENTITY": SqlType("numeric", 0, 38, 0),
    "IDENT_CURRENT": SqlType("numeric", 0, 38, 0),
    "HASHBYTES": SqlType("varbinary", 8000),
    "CHECKSUM": SqlType("int"),
    "BINARY_CHECKSUM": SqlType("int"),
    "CHECKSUM_AGG": SqlType("int"),
    "SUSER_SNAME": SqlType("nvarchar", 128),
    "DATEDIFF": SqlType("int"),
    "DATEDIFF_BIG": SqlType("bigint"),
    "SERVERPROPERTY": SqlType("nvarchar", 128),
    "@@TRANCOUNT": SqlType("int"),
    "@@SPID": SqlType("smallint"),
    "@@VERSION": SqlType("nvarchar", 300),
    "@@SERVERNAME": SqlType("nvarchar", 128),
    "@@ROWCOUNT": SqlType("int"),
    "@@IDENTITY": SqlType("numeric", 0, 38, 0),
}
