"""Small real servers on loopback that misbehave the way production networks do (test tooling,
not fakes of project code):

- GatewayTimeoutProxy: a reverse proxy in front of a Qdrant server that passes every request
  through, except snapshot uploads: it reads the whole upload, forwards it, and answers the
  client 504 at once without waiting for the server (a proxy whose timeout is shorter than
  the recovery). The server goes on recovering, like behind a real proxy.
- ShortBodyServer: answers every GET 200 with a Content-Length it then does not deliver.
"""

from __future__ import annotations

import http.client
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: GatewayTimeoutProxy

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._relay()

    def do_POST(self) -> None:
        self._relay()

    def do_PUT(self) -> None:
        self._relay()

    def do_DELETE(self) -> None:
        self._relay()

    def _relay(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        if self.command == "POST" and "/snapshots/upload" in self.path:
            forward = threading.Thread(target=self.server.forward, args=(self, body, headers))
            forward.start()
            self.server.forwards.append(forward)
            self._answer(504, b"<html>504 Gateway Time-out</html>", {"Content-Type": "text/html"})
            return
        status, content, response_headers = self.server.forward(self, body, headers)
        self._answer(status, content, response_headers)

    def _answer(self, status: int, content: bytes, headers: dict) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)


class GatewayTimeoutProxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = urlsplit(upstream)
        self.forwards: list[threading.Thread] = []
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def forward(self, handler: _ProxyHandler, body: bytes, headers: dict) -> tuple:
        connection = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, 600)
        try:
            connection.request(handler.command, handler.path, body=body, headers=headers)
            response = connection.getresponse()
            kept = {k: v for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP}
            return response.status, response.read(), kept
        finally:
            connection.close()

    def __enter__(self) -> GatewayTimeoutProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        for forward in self.forwards:
            forward.join()
        self.shutdown()
        self.server_close()
        self._thread.join()


class ShortBodyServer:
    """Every request gets `200`, `Content-Length: promised` and `delivered` bytes, then EOF."""

    def __init__(self, promised: int, delivered: int) -> None:
        self.promised, self.delivered = promised, delivered
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._socket.getsockname()[1]}"

    def _serve(self) -> None:
        self._socket.settimeout(0.2)
        while not self._stop.is_set():
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            with connection:
                connection.recv(65536)  # the request head (GETs have no body)
                head = (
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                    f"Content-Length: {self.promised}\r\nConnection: close\r\n\r\n"
                )
                connection.sendall(head.encode() + b"x" * self.delivered)

    def __enter__(self) -> ShortBodyServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self._socket.close()
