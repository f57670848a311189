"""TDS 7.4 wire protocol, server side: packets, PRELOGIN, LOGIN7 and the response tokens.

A message is one or more packets (8-byte header: type, status, length, spid, packet id,
window); status bit 0x01 marks the last packet. Requests: SQL_BATCH 1, RPC 3, ATTENTION 6,
LOGIN7 16, TRANSACTION MANAGER 14, PRELOGIN 18; every response is a TABULAR RESULT (4).
"""

from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass

from .errors import Message
from .sqltypes import SqlType
from .tdscodec import COLLATION, Reader, encode_value, type_info

SQL_BATCH, RPC, ATTENTION, TRANSACTION_MANAGER, LOGIN7, PRELOGIN, REPLY = 1, 3, 6, 14, 16, 18, 4
DONE_FINAL, DONE_MORE, DONE_ERROR, DONE_INXACT, DONE_COUNT, DONE_ATTN = 0, 1, 2, 4, 0x10, 0x20
TOKEN_DONE, TOKEN_DONEPROC, TOKEN_DONEINPROC = 0xFD, 0xFE, 0xFF
CMD_SELECT, CMD_INSERT, CMD_DELETE, CMD_UPDATE = 0xC1, 0xC3, 0xC4, 0xC5
SERVER_NAME = "mssql-standin"
# SQL Server 2022 (16.0.1000); LOGINACK carries major, minor, build high, build low.
PRODUCT_VERSION = (16, 0, 1000)
TDS_74 = 0x74000004


class ClientGone(Exception):
    """The client closed the connection."""


class PacketStream:
    """Reads whole request messages from a socket and writes response packets to it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.packet_size = 4096
        self._send_lock = threading.Lock()

    def _recv_exact(self, n: int) -> bytes:
        parts, got = [], 0
        while got < n:
            chunk = self.sock.recv(n - got)
            if not chunk:
                raise ClientGone
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def read_message(self) -> tuple[int, bytes]:
        """(packet type, payload) of the next complete request message."""
        parts, ptype = [], None
        while True:
            header = self._recv_exact(8)
            ptype_now, status, length = struct.unpack(">BBH", header[:4])
            ptype = ptype_now if ptype is None else ptype
            parts.append(self._recv_exact(length - 8))
            if status & 0x01:
                return ptype, b"".join(parts)

    def send(self, payload: bytes, last: bool = True, ptype: int = REPLY) -> None:
        """Send payload as packets; `last` puts END OF MESSAGE on the final one."""
        room = self.packet_size - 8
        chunks = [payload[i : i + room] for i in range(0, len(payload), room)] or [b""]
        with self._send_lock:
            for i, chunk in enumerate(chunks):
                status = 0x01 if last and i == len(chunks) - 1 else 0x00
                header = struct.pack(">BBHHBB", ptype, status, len(chunk) + 8, 0, (i + 1) & 0xFF, 0)
                self.sock.sendall(header + chunk)


# ---- PRELOGIN and LOGIN7 --------------------------------------------------------------------
def prelogin_response() -> bytes:
    """VERSION, ENCRYPTION = NOT_SUP (no TLS on loopback), INSTOPT, THREADID, MARS off."""
    major, minor, build = PRODUCT_VERSION
    options = [
        (0x00, bytes([major, minor]) + struct.pack(">H", build) + b"\x00\x00"),
        (0x01, b"\x02"),
        (0x02, b"\x00"),
        (0x03, b""),
        (0x04, b"\x00"),
    ]
    offset = len(options) * 5 + 1
    head, body = b"", b""
    for token, value in options:
        head += struct.pack(">BHH", token, offset + len(body), len(value))
        body += value
    return head + b"\xff" + body


def prelogin_wants_encryption(payload: bytes) -> bool:
    """True when the client insists on TLS (ENCRYPT_REQ), which the stand-in cannot do."""
    pos = 0
    while pos < len(payload) and payload[pos] != 0xFF:
        token, off, length = struct.unpack(">BHH", payload[pos : pos + 5])
        if token == 0x01 and length >= 1:
            return payload[off] == 0x03
        pos += 5
    return False


@dataclass
class Login:
    user: str
    password: str
    database: str
    app_name: str
    host_name: str
    packet_size: int
    tds_version: int


def _unscramble(data: bytes) -> str:
    out = bytearray()
    for b in data:
        b ^= 0xA5
        out.append(((b & 0x0F) << 4) | (b >> 4))
    return out.decode("utf-16-le")


def parse_login7(payload: bytes) -> Login:
    tds_version = struct.unpack("<I", payload[4:8])[0]
    packet_size = struct.unpack("<I", payload[8:12])[0]

    def field(index: int, scrambled: bool = False) -> str:
        off, length = struct.unpack("<HH", payload[36 + index * 4 : 40 + index * 4])
        raw = payload[off : off + length * 2]
        return _unscramble(raw) if scrambled else raw.decode("utf-16-le")

    # 0 HostName, 1 UserName, 2 Password, 3 AppName, 4 ServerName, 5 Extension,
    # 6 CltIntName, 7 Language, 8 Database
    return Login(
        user=field(1),
        password=field(2, scrambled=True),
        database=field(8),
        app_name=field(3),
        host_name=field(0),
        packet_size=packet_size,
        tds_version=tds_version,
    )


# ---- tokens -------------------------------------------------------------------------------
def b_varchar(text: str) -> bytes:
    data = text.encode("utf-16-le")
    return bytes([len(data) // 2]) + data


def us_varchar(text: str) -> bytes:
    data = text.encode("utf-16-le")
    return struct.pack("<H", len(data) // 2) + data


def done(status: int = DONE_FINAL, rows: int = 0, cmd: int = 0, token: int = TOKEN_DONE) -> bytes:
    return bytes([token]) + struct.pack("<HHQ", status, cmd, rows)


def message(msg: Message, proc: str = "", line: int = 1) -> bytes:
    token = 0xAA if msg.severity > 10 else 0xAB
    body = struct.pack("<iBB", msg.number, msg.state, msg.severity)
    body += (
        us_varchar(msg.text) + b_varchar(SERVER_NAME) + b_varchar(proc) + struct.pack("<i", line)
    )
    return bytes([token]) + struct.pack("<H", len(body)) + body


def envchange(kind: int, new: str, old: str = "") -> bytes:
    body = bytes([kind]) + b_varchar(new) + b_varchar(old)
    return b"\xe3" + struct.pack("<H", len(body)) + body


def envchange_bytes(kind: int, new: bytes, old: bytes = b"") -> bytes:
    body = bytes([kind, len(new)]) + new + bytes([len(old)]) + old
    return b"\xe3" + struct.pack("<H", len(body)) + body


def collation_envchange() -> bytes:
    return envchange_bytes(7, COLLATION)


def loginack() -> bytes:
    major, minor, build = PRODUCT_VERSION
    body = b"\x01" + struct.pack(">I", TDS_74) + b_varchar("Microsoft SQL Server")
    body += bytes([major, minor]) + struct.pack(">H", build)
    return b"\xad" + struct.pack("<H", len(body)) + body


def returnstatus(value: int) -> bytes:
    return b"\x79" + struct.pack("<i", value)


def colmetadata(columns: list[tuple[str, SqlType]]) -> bytes:
    out = [b"\x81", struct.pack("<H", len(columns))]
    for name, sqltype in columns:
        out.append(struct.pack("<IH", 0, 0x0009))  # user type; flags: nullable, updatable=unknown
        out.append(type_info(sqltype))
        out.append(b_varchar(name))
    return b"".join(out)


def row(types: list[SqlType], values) -> bytes:
    return b"\xd1" + b"".join(encode_value(t, v) for t, v in zip(types, values, strict=True))


def returnvalue(ordinal: int, name: str, sqltype: SqlType, value) -> bytes:
    body = struct.pack("<H", ordinal) + b_varchar(name) + b"\x01" + struct.pack("<IH", 0, 0x0009)
    body += type_info(sqltype) + encode_value(sqltype, value)
    return b"\xac" + body


# ---- request headers ------------------------------------------------------------------------
def skip_all_headers(payload: bytes) -> tuple[int, bytes]:
    """(offset after ALL_HEADERS, transaction descriptor) of a batch, RPC or TM request."""
    if len(payload) < 4:
        return 0, b""
    total = struct.unpack("<I", payload[:4])[0]
    if total < 4 or total > len(payload):
        return 0, b""
    descriptor = b""
    pos = 4
    while pos < total:
        length, kind = struct.unpack("<IH", payload[pos : pos + 6])
        if kind == 2:
            descriptor = payload[pos + 6 : pos + 14]
        pos += max(length, 6)
    return total, descriptor


@dataclass
class RpcParam:
    name: str
    value: object
    output: bool
    type_code: int
    scale: int = 0


@dataclass
class RpcCall:
    proc: str
    params: list[RpcParam]


PROC_IDS = {
    10: "sp_executesql",
    11: "sp_prepare",
    12: "sp_execute",
    13: "sp_prepexec",
    14: "sp_prepexecrpc",
    15: "sp_unprepare",
    1: "sp_cursor",
    2: "sp_cursoropen",
}


def parse_rpc(payload: bytes) -> list[RpcCall]:
    """The RPC calls of one RPC request (several are separated by 0xFF in TDS 7.2+)."""
    from .tdscodec import read_type_info, read_value

    start, _ = skip_all_headers(payload)
    r = Reader(payload, start)
    calls = []
    while not r.done:
        length = r.u16()
        proc = (
            PROC_IDS.get(r.u16(), "?")
            if length == 0xFFFF
            else r.take(length * 2).decode("utf-16-le")
        )
        r.u16()  # option flags
        params = []
        while not r.done and r.data[r.pos] not in (0x80, 0xFF, 0xFE):
            name = r.b_varchar()
            status = r.u8()
            ptype = read_type_info(r)
            params.append(
                RpcParam(name, read_value(r, ptype), bool(status & 1), ptype.code, ptype.scale)
            )
        calls.append(RpcCall(proc, params))
        if not r.done:
            r.u8()
    return calls
