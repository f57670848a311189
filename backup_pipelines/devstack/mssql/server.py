"""The TDS server: one thread per client connection (plus a reader thread that notices ATTENTION
packets while a request runs), SQL batches, RPCs (sp_executesql, sp_prepare/sp_execute,
sp_prepexec, sp_unprepare) and transaction-manager requests."""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import socketserver
import struct
import threading
from pathlib import Path

from . import tds
from .admin import begin_transaction, commit_transaction
from .engine import Engine
from .errors import Cancelled, Message, SqlError
from .session import Session
from .sqltypes import SqlType, parse_type
from .statements import Params, execute_batch, rollback_transaction

log = logging.getLogger(__name__)
FLUSH_AT = 64 * 1024


class Response:
    """Token stream of one request; implements statements.Output."""

    def __init__(self, stream: tds.PacketStream, session: Session, rpc: bool = False) -> None:
        self.stream, self.session, self.rpc = stream, session, rpc
        self.buf = bytearray()
        self.pending: tuple[int, int, int] | None = None
        self.any_error = False
        self.return_values: list[bytes] = []

    def _emit(self, data: bytes) -> None:
        self._flush_pending(more=True)
        self.buf += data

    def _flush_pending(self, more: bool) -> None:
        if self.pending is not None:
            status, count, cmd = self.pending
            token = tds.TOKEN_DONEINPROC if self.rpc else tds.TOKEN_DONE
            self.buf += tds.done(status | (tds.DONE_MORE if more else 0), count, cmd, token)
            self.pending = None

    def info(self, number: int, text: str, state: int = 1) -> None:
        self._emit(tds.message(Message(number, text, 10 if number else 0, state)))

    def error(self, err: SqlError) -> None:
        self.any_error = True
        for msg in err.messages:
            self._emit(tds.message(msg))

    def result(self, columns: list[tuple[str, SqlType]], rows: list) -> None:
        self._emit(tds.colmetadata(columns))
        types = [t for _, t in columns]
        for values in rows:
            self.buf += tds.row(types, values)
            if len(self.buf) >= FLUSH_AT:
                if self.cancelled():
                    raise Cancelled
                self.flush()

    def envchange_database(self, new: str, old: str) -> None:
        self._emit(tds.envchange(1, new, old))

    def transaction(self, begin: bool, descriptor: bytes, rollback: bool = False) -> None:
        if begin:
            self._emit(tds.envchange_bytes(8, descriptor))
        else:
            self._emit(tds.envchange_bytes(10 if rollback else 9, b"", descriptor))

    def done(self, count: int | None, cmd: int = 0, error: bool = False) -> None:
        self._flush_pending(more=True)
        status = (tds.DONE_COUNT if count is not None else 0) | (tds.DONE_ERROR if error else 0)
        if self.session.trancount:
            status |= tds.DONE_INXACT
        self.pending = (status, count or 0, cmd)

    def flush(self) -> None:
        if self.buf:
            self.stream.send(bytes(self.buf), last=False)
            self.buf.clear()

    def cancelled(self) -> bool:
        return self.session.cancel.is_set()

    def finish(self) -> None:
        if self.rpc:
            self._flush_pending(more=True)
            self.buf += tds.returnstatus(0)
            for value in self.return_values:
                self.buf += value
            status = tds.DONE_ERROR if self.any_error else 0
            self.buf += tds.done(status, 0, 0, tds.TOKEN_DONEPROC)
        elif self.pending is not None:
            self._flush_pending(more=False)
        else:
            self.buf += tds.done(tds.DONE_ERROR if self.any_error else 0)
        self.stream.send(bytes(self.buf), last=True)
        self.buf.clear()

    def acknowledge_attention(self) -> None:
        self.buf.clear()
        self.pending = None
        self.stream.send(tds.done(tds.DONE_ATTN), last=True)


class Handler(socketserver.BaseRequestHandler):
    server: StandinServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream = tds.PacketStream(sock)
        try:
            session = self._login(stream)
        except (tds.ClientGone, OSError, ValueError):
            return
        if session is None:
            return
        session.on_kill = lambda: _shutdown(sock)
        requests: queue.Queue = queue.Queue()
        reader = threading.Thread(target=self._read, args=(stream, session, requests), daemon=True)
        reader.start()
        try:
            while True:
                item = requests.get()
                if item is None:
                    return
                ptype, payload = item
                if ptype == tds.ATTENTION:
                    log.debug(
                        "spid %d: attention (pending: %s)", session.spid, session.cancel.is_set()
                    )
                    if session.cancel.is_set():
                        session.cancel.clear()
                        Response(stream, session).acknowledge_attention()
                    continue
                self._serve(stream, session, ptype, payload)
        except (tds.ClientGone, OSError):
            pass
        finally:
            session.close()
            _shutdown(sock)

    def _read(self, stream: tds.PacketStream, session: Session, requests: queue.Queue) -> None:
        try:
            while True:
                ptype, payload = stream.read_message()
                if ptype == tds.ATTENTION:
                    session.cancel.set()
                requests.put((ptype, payload))
        except (tds.ClientGone, OSError, struct.error):
            requests.put(None)

    def _login(self, stream: tds.PacketStream) -> Session | None:
        ptype, payload = stream.read_message()
        if ptype != tds.PRELOGIN:
            return None
        stream.send(tds.prelogin_response())
        ptype, payload = stream.read_message()
        if ptype != tds.LOGIN7:
            return None
        login = tds.parse_login7(payload)
        engine = self.server.engine

        def refuse(*messages: Message) -> None:
            stream.send(b"".join(tds.message(m) for m in messages) + tds.done(tds.DONE_ERROR))

        failed = Message(18456, f"Login failed for user '{login.user}'.", 14, 1)
        if login.password != engine.password or login.user.lower() != "sa":
            refuse(failed)
            return None
        database = login.database or "master"
        db = engine.get(database)
        if db is None or db.state != "ONLINE":
            refuse(
                Message(
                    4060,
                    f'Cannot open database "{database}" requested by the login. The login failed.',
                    11,
                    1,
                ),
                failed,
            )
            return None
        if login.packet_size and 512 <= login.packet_size <= 32767:
            stream.packet_size = login.packet_size
        session = Session(engine, login.user, login.host_name, login.app_name)
        session.current_db = db.name
        session.alias(db)
        stream.send(
            tds.envchange(1, db.name, "master")
            + tds.message(Message(5701, f"Changed database context to '{db.name}'.", 10, 2))
            + tds.envchange(2, "us_english")
            + tds.message(Message(5703, "Changed language setting to us_english.", 10, 1))
            + tds.collation_envchange()
            + tds.loginack()
            + tds.envchange(4, str(stream.packet_size), str(stream.packet_size))
            + tds.done()
        )
        return session

    def _serve(
        self, stream: tds.PacketStream, session: Session, ptype: int, payload: bytes
    ) -> None:
        response = Response(stream, session, rpc=ptype == tds.RPC)
        try:
            if ptype == tds.SQL_BATCH:
                start, _ = tds.skip_all_headers(payload)
                sql = payload[start:].decode("utf-16-le")
                log.debug("spid %d: batch %r", session.spid, sql[:500])
                execute_batch(session, sql, response)
            elif ptype == tds.RPC:
                for call in tds.parse_rpc(payload):
                    self._rpc(session, call, response)
            elif ptype == tds.TRANSACTION_MANAGER:
                self._transaction_manager(session, payload, response)
            else:
                response.error(
                    SqlError(
                        4002,
                        "The incoming tabular data stream (TDS) protocol stream is incorrect.",
                        16,
                        1,
                    )
                )
            if session.cancel.is_set():
                raise Cancelled
            response.finish()
        except Cancelled:
            log.debug("spid %d: request cancelled", session.spid)
            session.rollback_sqlite() if session.trancount == 0 else None
            session.cancel.clear()
            response.acknowledge_attention()
        except (tds.ClientGone, OSError):
            raise
        except Exception as exc:  # a bug in the stand-in: report it as an error, keep serving
            log.exception("request failed")
            response.error(SqlError(50000, f"SQL Server stand-in internal error: {exc!r}", 16, 1))
            response.finish()

    def _rpc(self, session: Session, call: tds.RpcCall, response: Response) -> None:
        proc = call.proc.lower().split(".")[-1]
        log.debug("spid %d: RPC %s (%d parameters)", session.spid, proc, len(call.params))
        values = call.params
        if proc == "sp_executesql":
            sql = str(values[0].value)
            decl = str(values[1].value) if len(values) > 1 else ""
            execute_batch(session, sql, response, _params(decl, values[2:]))
        elif proc in ("sp_prepexec", "sp_prepare"):
            handle = self.server.next_handle()
            decl, sql = str(values[1].value or ""), str(values[2].value)
            session.prepared[handle] = (sql, decl)
            response.return_values.append(
                tds.returnvalue(0, values[0].name, SqlType("int"), handle)
            )
            if proc == "sp_prepexec":
                execute_batch(session, sql, response, _params(decl, values[3:]))
        elif proc == "sp_execute":
            handle = int(values[0].value)
            if handle not in session.prepared:
                raise_error = SqlError(
                    8179, f"Could not find prepared statement with handle {handle}.", 16, 4
                )
                response.error(raise_error)
                response.done(None, error=True)
                return
            sql, decl = session.prepared[handle]
            execute_batch(session, sql, response, _params(decl, values[1:]))
        elif proc == "sp_unprepare":
            session.prepared.pop(int(values[0].value), None)
        elif proc == "sp_describe_undeclared_parameters":
            _describe_parameters(str(values[0].value), response)
        else:
            response.error(
                SqlError(2812, f"Could not find stored procedure '{call.proc}'.", 16, 62)
            )
            response.done(None, error=True)

    def _transaction_manager(self, session: Session, payload: bytes, response: Response) -> None:
        start, _ = tds.skip_all_headers(payload)
        body = payload[start:]
        request = struct.unpack("<H", body[:2])[0]
        try:
            if request == 5:  # TM_BEGIN_XACT
                begin_transaction(session, response)
            elif request in (7, 8):  # TM_COMMIT_XACT, TM_ROLLBACK_XACT
                name_len = body[2]
                begin_again = len(body) > 3 + name_len * 2 and body[3 + name_len * 2] & 1
                if session.trancount:
                    if request == 7:
                        session.trancount = 1
                        commit_transaction(session, response)
                    else:
                        rollback_transaction(session, response)
                if begin_again:
                    begin_transaction(session, response)
            else:
                raise SqlError(
                    50000,
                    f"The SQL Server stand-in does not support transaction manager request {request}.",
                    16,
                    1,
                )
        except SqlError as err:
            response.error(err)
            response.done(None, error=True)


_DESCRIBE = [
    ("parameter_ordinal", SqlType("int")),
    ("name", SqlType("nvarchar", 128)),
    ("suggested_system_type_id", SqlType("int")),
    ("suggested_system_type_name", SqlType("nvarchar", 256)),
    ("suggested_max_length", SqlType("smallint")),
    ("suggested_precision", SqlType("tinyint")),
    ("suggested_scale", SqlType("tinyint")),
    ("suggested_user_type_id", SqlType("int")),
    ("suggested_is_input", SqlType("bit")),
    ("suggested_is_output", SqlType("bit")),
    ("formal_parameter_name", SqlType("nvarchar", 128)),
    ("suggested_tds_type_id", SqlType("int")),
    ("suggested_tds_length", SqlType("int")),
]


def _describe_parameters(sql: str, response: Response) -> None:
    """sp_describe_undeclared_parameters (newer FreeTDS asks it for SQLDescribeParam): every
    parameter is suggested as nvarchar(4000), which SQL Server converts implicitly."""
    import re

    names = list(dict.fromkeys(re.findall(r"@\w+", sql)))
    rows = [
        (i, n, 231, "nvarchar(4000)", 8000, 0, 0, 231, True, False, None, 231, 8000)
        for i, n in enumerate(names, 1)
    ]
    response.result(_DESCRIBE, rows)
    response.done(len(rows), 0xC1)


def _params(declaration: str, values: list[tds.RpcParam]) -> Params:
    """Values by name: named RPC parameters (@P1=..) or positional ones matched to the declaration."""
    declared = _parse_declaration(declaration)
    names = [n for n, _ in declared]
    result = {}
    for i, param in enumerate(values):
        name = (
            param.name[1:]
            if param.name.startswith("@")
            else (names[i] if i < len(names) else f"P{i + 1}")
        )
        result[name] = param.value
    return Params(result, dict(declared))


def _parse_declaration(text: str) -> list[tuple[str, SqlType]]:
    out = []
    depth, current, parts = 0, "", []
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    for part in parts:
        bits = part.strip().split(None, 1)
        if len(bits) == 2 and bits[0].startswith("@"):
            type_text = bits[1].upper().replace(" OUTPUT", "").replace(" OUT", "").strip()
            try:
                out.append((bits[0][1:], parse_type(type_text)))
            except ValueError:
                continue
    return out


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class StandinServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, port: int, storage: Path, password: str) -> None:
        self.engine = Engine(storage, password)
        self._handle_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), Handler)

    def next_handle(self) -> int:
        with self._handle_lock:
            self.engine.prepared_handle += 1
            return self.engine.prepared_handle
