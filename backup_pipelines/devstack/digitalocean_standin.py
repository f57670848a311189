"""A stand-in of DigitalOcean's API v2 (managed databases) on 127.0.0.1, for tests and the demo.

It implements the documented endpoints the product uses, with DigitalOcean's shapes:

    GET  /v2/databases                      {"databases": [...], "meta": {"total": n}}
    GET  /v2/databases/{uuid}               {"database": {...}}
    GET  /v2/databases/{uuid}/backups       {"backups": [{"created_at", "size_gigabytes"}], "scheduled_backup_time": {...}}
    POST /v2/databases                      201 {"database": {...}} (status "creating"), with
                                            optional "backup_restore": {"database_name", "backup_created_at"}
    GET  /v2/databases/{uuid}/pools         {"pools": [...]}
    POST /v2/databases/{uuid}/pools         201 {"pool": {...}}

Errors are DigitalOcean's body `{"id": "...", "message": "..."}` (plus `request_id`): 401
without the right bearer token, 404 for an unknown cluster, 422 for a body the API refuses
(missing fields, a name in use, a `backup_created_at` before the oldest backup, outside the
7-day window or in the future), 429 with `ratelimit-*` and `retry-after` headers when told to
(`rate_limit_next`). Every answer carries `ratelimit-limit/-remaining/-reset`.

A new cluster is `creating` and becomes `online` `online_after` seconds later (None: never).
Every request is recorded (method, path, JSON body; never the Authorization header) in
`requests` so tests can check what a client sent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from backup_pipelines.devstack.ports import LOOPBACK

PITR_WINDOW = timedelta(days=7)  # PostgreSQL backups are kept (and restorable) for 7 days
RATE_LIMIT = 5000  # requests per hour, DigitalOcean's documented default


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "T", 1))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass
class RecordedRequest:
    method: str
    path: str
    body: Any
    had_bearer_token: bool


@dataclass
class _Cluster:
    doc: dict
    created_monotonic: float
    online_after: float | None
    backups: list[dict] = field(default_factory=list)
    pools: list[dict] = field(default_factory=list)
    restored_from: dict | None = None


class DigitalOceanStandin:
    def __init__(self, token: str | None = None, online_after: float | None = 0.5) -> None:
        self.token = token or secrets.token_hex(16)
        self.online_after = online_after  # default delay of new clusters; None = never online
        self.requests: list[RecordedRequest] = []
        self._clusters: dict[str, _Cluster] = {}
        self._rate_limited: list[int] = []  # retry-after seconds of the next 429 answers
        self._lock = threading.Lock()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                standin._handle(self, "GET")

            def do_POST(self) -> None:
                standin._handle(self, "POST")

            def do_DELETE(self) -> None:
                standin._handle(self, "DELETE")

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="digitalocean-standin", daemon=True
        )

    # ---- life cycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> DigitalOceanStandin:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> DigitalOceanStandin:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- test controls ----------------------------------------------------------------------

    def add_cluster(
        self,
        name: str,
        *,
        backup_days: int = 7,
        backup_hour: int = 3,
        pools: list[dict] | None = None,
        version: str = "15",
        size: str = "db-s-1vcpu-2gb",
        region: str = "fra1",
        num_nodes: int = 1,
        now: datetime | None = None,
    ) -> str:
        """An online PostgreSQL cluster with one daily backup (at backup_hour UTC) for each of
        the last backup_days days, and the given connection pools. Returns its uuid."""
        now = now or datetime.now(UTC)
        doc = self._new_doc(name, "pg", version, size, region, num_nodes, status="online")
        cluster = _Cluster(doc, time.monotonic(), 0.0)
        day = now.replace(hour=backup_hour, minute=0, second=0, microsecond=0)
        if day > now:
            day -= timedelta(days=1)
        for age in range(backup_days):
            created = day - timedelta(days=age)
            cluster.backups.append(
                {"created_at": _iso(created), "size_gigabytes": round(0.03 + 0.001 * age, 4)}
            )
        cluster.backups.sort(key=lambda b: b["created_at"])
        for pool in pools or []:
            cluster.pools.append(self._pool_doc(doc, pool))
        with self._lock:
            self._clusters[doc["id"]] = cluster
        return doc["id"]

    def rate_limit_next(self, count: int = 1, retry_after: int = 1) -> None:
        """Answer the next `count` requests with 429 and `retry-after: retry_after`."""
        with self._lock:
            self._rate_limited.extend([retry_after] * count)

    def cluster(self, cluster_id: str) -> dict:
        with self._lock:
            return json.loads(json.dumps(self._refresh(self._clusters[cluster_id]).doc))

    def restored_from(self, cluster_id: str) -> dict | None:
        with self._lock:
            return self._clusters[cluster_id].restored_from

    def set_online_after(self, cluster_id: str, seconds: float | None) -> None:
        with self._lock:
            self._clusters[cluster_id].online_after = seconds

    def requests_to(self, method: str, path_prefix: str) -> list[RecordedRequest]:
        with self._lock:
            return [
                r for r in self.requests if r.method == method and r.path.startswith(path_prefix)
            ]

    # ---- documents --------------------------------------------------------------------------

    def _new_doc(
        self, name, engine, version, size, region, num_nodes, status, tags=None, db_names=None
    ) -> dict:
        cluster_id = str(uuid.uuid4())
        password = secrets.token_urlsafe(12)
        host = f"{name}-do-user-0.k.db.ondigitalocean.invalid"
        connection = {
            "protocol": "postgresql",
            "uri": f"postgresql://doadmin:{password}@{host}:25060/defaultdb?sslmode=require",
            "database": "defaultdb",
            "host": host,
            "port": 25060,
            "user": "doadmin",
            "password": password,
            "ssl": True,
        }
        private = {
            **connection,
            "host": f"private-{host}",
            "uri": connection["uri"].replace(host, f"private-{host}"),
        }
        return {
            "id": cluster_id,
            "name": name,
            "engine": engine,
            "version": version,
            "semantic_version": f"{version}.8",
            "num_nodes": num_nodes,
            "size": size,
            "region": region,
            "status": status,
            "created_at": _iso(datetime.now(UTC)),
            "private_network_uuid": str(uuid.uuid4()),
            "tags": list(tags or []),
            "db_names": list(db_names or ["defaultdb"]),
            "connection": connection,
            "private_connection": private,
            "users": [{"name": "doadmin", "role": "primary", "password": password}],
            "maintenance_window": {"day": "sunday", "hour": "02:00:00", "pending": False},
            "storage_size_mib": 30720,
        }

    def _pool_doc(self, cluster_doc: dict, pool: dict) -> dict:
        conn = cluster_doc["connection"]
        user = pool.get("user") or conn["user"]
        uri = f"postgresql://{user}:{conn['password']}@{conn['host']}:25061/{pool['name']}?sslmode=require"
        connection = {**conn, "port": 25061, "database": pool["name"], "user": user, "uri": uri}
        return {
            "name": pool["name"],
            "mode": pool["mode"],
            "size": pool["size"],
            "db": pool["db"],
            "user": user,
            "connection": connection,
            "private_connection": {**connection, "host": f"private-{conn['host']}"},
        }

    def _refresh(self, cluster: _Cluster) -> _Cluster:
        if (
            cluster.doc["status"] == "creating"
            and cluster.online_after is not None
            and time.monotonic() - cluster.created_monotonic >= cluster.online_after
        ):
            cluster.doc["status"] = "online"
        return cluster

    # ---- HTTP -------------------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        path = handler.path.split("?", 1)[0].rstrip("/")
        auth = handler.headers.get("Authorization", "")
        with self._lock:
            self.requests.append(RecordedRequest(method, handler.path, body, bool(auth)))
            if self._rate_limited:
                retry_after = self._rate_limited.pop(0)
                self._error(
                    handler,
                    429,
                    "too_many_requests",
                    "API Rate limit exceeded.",
                    {"retry-after": str(retry_after), "ratelimit-remaining": "0"},
                )
                return
            if auth != f"Bearer {self.token}":
                self._error(handler, 401, "Unauthorized", "Unable to authenticate you.")
                return
            if isinstance(body, str):
                self._error(handler, 400, "bad_request", "The request body is not valid JSON.")
                return
            parts = path.split("/")[1:]  # ["v2", "databases", uuid, sub]
            if parts[:2] != ["v2", "databases"] or len(parts) > 4:
                self._not_found(handler)
                return
            if len(parts) == 2:
                if method == "GET":
                    docs = [self._refresh(c).doc for c in self._clusters.values()]
                    self._json(handler, 200, {"databases": docs, "meta": {"total": len(docs)}})
                elif method == "POST":
                    self._create(handler, body or {})
                else:
                    self._method_not_allowed(handler)
                return
            cluster = self._clusters.get(parts[2])
            if cluster is None:
                self._not_found(handler)
                return
            self._refresh(cluster)
            sub = parts[3] if len(parts) == 4 else ""
            if sub == "" and method == "GET":
                self._json(handler, 200, {"database": cluster.doc})
            elif sub == "" and method == "DELETE":
                del self._clusters[parts[2]]
                self._json(handler, 204, None)
            elif sub == "backups" and method == "GET":
                self._json(
                    handler,
                    200,
                    {
                        "backups": cluster.backups,
                        "scheduled_backup_time": {
                            "backup_hour": 3,
                            "backup_minute": 0,
                            "backup_interval_hours": 24,
                        },
                    },
                )
            elif sub == "pools" and method == "GET":
                self._json(handler, 200, {"pools": cluster.pools})
            elif sub == "pools" and method == "POST":
                self._add_pool(handler, cluster, body or {})
            else:
                self._not_found(handler)

    def _create(self, handler, body: dict) -> None:
        missing = [k for k in ("name", "engine", "num_nodes", "region", "size") if k not in body]
        if missing:
            self._unprocessable(handler, f"missing required field(s): {', '.join(missing)}")
            return
        if any(c.doc["name"] == body["name"] for c in self._clusters.values()):
            self._unprocessable(handler, f"a database cluster named {body['name']} already exists")
            return
        restore = body.get("backup_restore")
        restored_from = None
        if restore is not None:
            source = next(
                (
                    c
                    for c in self._clusters.values()
                    if c.doc["name"] == restore.get("database_name")
                ),
                None,
            )
            if source is None:
                self._unprocessable(
                    handler, f"source database cluster {restore.get('database_name')!r} not found"
                )
                return
            if not source.backups:
                self._unprocessable(handler, "the source database cluster has no backups")
                return
            oldest = _parse_iso(source.backups[0]["created_at"])
            now = datetime.now(UTC)
            at = restore.get("backup_created_at")
            if at is None:
                target = _parse_iso(source.backups[-1]["created_at"])
            else:
                try:
                    target = _parse_iso(str(at))
                except ValueError:
                    self._unprocessable(handler, f"backup_created_at {at!r} is not ISO 8601")
                    return
                if target < oldest or target < now - PITR_WINDOW or target > now:
                    self._unprocessable(
                        handler,
                        f"backup_created_at {at} is outside the restorable window "
                        f"({_iso(max(oldest, now - PITR_WINDOW))} to {_iso(now)})",
                    )
                    return
            restored_from = {"database_name": source.doc["name"], "backup_created_at": _iso(target)}
        doc = self._new_doc(
            body["name"],
            body["engine"],
            str(body.get("version") or "15"),
            body["size"],
            body["region"],
            int(body["num_nodes"]),
            status="creating",
            tags=body.get("tags"),
        )
        if restored_from:
            source_doc = next(
                c.doc
                for c in self._clusters.values()
                if c.doc["name"] == restored_from["database_name"]
            )
            doc["db_names"] = list(source_doc["db_names"])
        cluster = _Cluster(doc, time.monotonic(), self.online_after, restored_from=restored_from)
        self._clusters[doc["id"]] = cluster
        self._json(handler, 201, {"database": doc})

    def _add_pool(self, handler, cluster: _Cluster, body: dict) -> None:
        missing = [k for k in ("name", "mode", "size", "db") if k not in body]
        if missing:
            self._unprocessable(handler, f"missing required field(s): {', '.join(missing)}")
            return
        if body["mode"] not in ("session", "transaction", "statement"):
            self._unprocessable(
                handler, f"mode {body['mode']!r} is not session, transaction or statement"
            )
            return
        if any(p["name"] == body["name"] for p in cluster.pools):
            self._unprocessable(handler, f"a connection pool named {body['name']} already exists")
            return
        if cluster.doc["status"] != "online":
            self._unprocessable(handler, "the database cluster is not online yet")
            return
        pool = self._pool_doc(cluster.doc, body)
        cluster.pools.append(pool)
        self._json(handler, 201, {"pool": pool})

    def _unprocessable(self, handler, message: str) -> None:
        self._error(handler, 422, "unprocessable_entity", message)

    def _not_found(self, handler) -> None:
        self._error(
            handler, 404, "not_found", "The resource you were accessing could not be found."
        )

    def _method_not_allowed(self, handler) -> None:
        self._error(handler, 405, "method_not_allowed", "Method not allowed.")

    def _error(self, handler, status: int, error_id: str, message: str, headers=None) -> None:
        body = {"id": error_id, "message": message, "request_id": str(uuid.uuid4())}
        self._json(handler, status, body, headers)

    def _json(self, handler, status: int, payload, headers: dict | None = None) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json; charset=utf-8")
        handler.send_header("Content-Length", str(len(data)))
        limits = {
            "ratelimit-limit": str(RATE_LIMIT),
            "ratelimit-remaining": str(RATE_LIMIT - 1),
            "ratelimit-reset": str(int(time.time()) + 60),
            **(headers or {}),
        }
        for key, value in limits.items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(data)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", default="agent-memory-db", help="name of a seeded cluster")
    parser.add_argument("--online-after", type=float, default=5.0)
    parser.add_argument("--token", required=True, help="the bearer token clients must send")
    args = parser.parse_args(argv)
    with DigitalOceanStandin(args.token, online_after=args.online_after) as standin:
        cluster_id = standin.add_cluster(
            args.cluster,
            pools=[{"name": "agent-pool", "mode": "transaction", "size": 10, "db": "defaultdb"}],
        )
        print(f"DIGITALOCEAN_API_URL={standin.url}")
        print(f"DIGITALOCEAN_DATABASE_ID={cluster_id}")
        print("DIGITALOCEAN_TOKEN=<the --token given>", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
