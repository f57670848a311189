"""A real HTTP server on 127.0.0.1 that receives alerts: the JSON webhook (any path) and
Slack's Web API `chat.postMessage` (so the real slack_sdk client talks to it)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs


class AlertReceiver:
    def __init__(self) -> None:
        self.webhook: list[dict] = []
        self.slack: list[dict] = []
        self.failures_left = 0  # answer HTTP 500 to this many requests (a channel down)
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    if receiver.failures_left > 0:
                        receiver.failures_left -= 1
                        self._answer(500, {"error": "down"})
                        return
                    if self.path.endswith("/chat.postMessage"):
                        receiver.slack.append(_slack_fields(self.headers, body))
                        self._answer(200, {"ok": True, "ts": "1.0"})
                    else:
                        receiver.webhook.append(json.loads(body))
                        self._answer(200, {"received": True})

            def _answer(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> AlertReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def clear(self) -> None:
        with self._lock:
            self.webhook.clear()
            self.slack.clear()


def _slack_fields(headers, body: bytes) -> dict:
    if headers.get("Content-Type", "").startswith("application/json"):
        fields = json.loads(body)
    else:
        fields = {k: v[0] for k, v in parse_qs(body.decode()).items()}
    fields["authorization"] = headers.get("Authorization", "")
    return fields
