"""A TCP proxy on 127.0.0.1 in front of a real server, to make that server fail on command.

- forwarding (the start): bytes pass both ways untouched;
- hang(): every connection, open or new, stops forwarding but stays open — the client sees a
  server that went silent (a stopped process, a black-holed network); nothing is closed;
- stop(): both sides of every connection are closed and new connections are refused — a
  server that died;
- hang_after(n) / stop_after(n): forward until n bytes went from the server to its clients
  (or, with to_server=n, from the clients to the server), then hang or stop — a failure in
  the middle of a transfer;
- stop_once_sent(decide): when decide(state, chunk) picks a chunk a client sends (`state`:
  a dict per connection), forward it to the server, pass no answer back, and stop — the
  connection lost right after a given request reached the server.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading

FORWARDING, HUNG, STOPPED = "forwarding", "hung", "stopped"
POLL_SECONDS = 0.05


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.mode = FORWARDING
        self.bytes_to_clients = 0
        self.bytes_to_server = 0
        self.connections = 0
        # (direction, bytes, action): fail once that many bytes went that way
        self._trigger: tuple[str, int, str] | None = None
        self._stop_once_sent = None  # decide(state, chunk) -> bool, for stop_once_sent
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._accepting = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)

    @classmethod
    def in_front_of(cls, url: str) -> TcpProxy:
        """A started proxy for the host:port of an http(s) or postgresql URL."""
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 80).start()

    def url_for(self, url: str) -> str:
        """`url` with its host:port replaced by the proxy's."""
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = (f"{userinfo}@" if userinfo else "") + f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def start(self) -> TcpProxy:
        self._accepting.start()
        return self

    def hang(self) -> None:
        self.mode = HUNG

    def hang_after(self, to_clients: int | None = None, *, to_server: int | None = None) -> None:
        self._trigger = _trigger(to_clients, to_server, HUNG)

    def stop_after(self, to_clients: int | None = None, *, to_server: int | None = None) -> None:
        self._trigger = _trigger(to_clients, to_server, STOPPED)

    def stop_once_sent(self, decide) -> None:
        self._stop_once_sent = decide

    def stop(self) -> None:
        """Close every connection, both sides, and refuse new ones."""
        self.mode = STOPPED
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.stop()
        self._accepting.join(timeout=5)
        for thread in list(self._threads):
            thread.join(timeout=5)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _accept(self) -> None:
        while self.mode != STOPPED:
            try:
                ready, _, _ = select.select([self._listener], [], [], POLL_SECONDS)
                if not ready:
                    continue
                client, _ = self._listener.accept()
            except (OSError, ValueError):  # closed by stop()
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets += [client, server]
                self.connections += 1
            link: dict = {}  # this connection's, shared by its two directions
            for source, target, downstream in ((client, server, False), (server, client, True)):
                thread = threading.Thread(
                    target=self._pump, args=(source, target, downstream, link), daemon=True
                )
                self._threads.append(thread)
                thread.start()

    def _pump(
        self, source: socket.socket, target: socket.socket, downstream: bool, link: dict
    ) -> None:
        while self.mode != STOPPED:
            if self.mode == HUNG:  # read nothing, send nothing, close nothing
                threading.Event().wait(POLL_SECONDS)
                continue
            try:
                ready, _, _ = select.select([source], [], [], POLL_SECONDS)
                if not ready:
                    continue
                data = source.recv(1 << 16)
            except (OSError, ValueError):
                return
            while self.mode == HUNG:  # hung while this was read: held, never sent
                threading.Event().wait(POLL_SECONDS)
            if self.mode == STOPPED:
                return
            if not data:  # the other side closed: pass the half-close on
                with contextlib.suppress(OSError):
                    target.shutdown(socket.SHUT_WR)
                return
            decide = self._stop_once_sent
            last = not downstream and decide is not None and decide(link, data)
            if last:
                link["muted"] = True  # no answer to it reaches the client
            elif downstream and link.get("muted"):
                return
            try:
                target.sendall(data)
            except OSError:
                return
            self._count(len(data), downstream)
            if last:
                self.stop()
                return

    def _count(self, n: int, downstream: bool) -> None:
        with self._lock:
            if downstream:
                self.bytes_to_clients += n
            else:
                self.bytes_to_server += n
            if self._trigger is None:
                return
            direction, limit, action = self._trigger
            moved = self.bytes_to_clients if direction == "to_clients" else self.bytes_to_server
            if moved < limit:
                return
            self._trigger = None
        if action == HUNG:
            self.mode = HUNG
        else:
            self.stop()


def _trigger(to_clients: int | None, to_server: int | None, action: str) -> tuple[str, int, str]:
    if (to_clients is None) == (to_server is None):
        raise ValueError("give exactly one of to_clients, to_server")
    if to_clients is not None:
        return ("to_clients", to_clients, action)
    return ("to_server", to_server, action)  # type: ignore[return-value]


def outcome_within(seconds: float, call, *args, **kwargs) -> BaseException | object:
    """Run call(*args, **kwargs) on a thread and return what it raised (or returned). Fails
    the test if it is still running after `seconds`: the bound a hung service must not pass.
    A call left running is unblocked when the test closes its proxy."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = call(*args, **kwargs)
        except BaseException as error:
            outcome["value"] = error

    thread = threading.Thread(target=run, name="bounded-call", daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), (
        f"{getattr(call, '__name__', call)} still waiting after {seconds:g} s"
    )
    return outcome["value"]
