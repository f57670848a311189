"""DigitalOcean Managed PostgreSQL: the provider's daily backups and its point-in-time restore,
through the official client `pydo`.

A restore always creates a NEW cluster (`POST /v2/databases` with `backup_restore:
{database_name: <source cluster name>, backup_created_at: T}`), like the control panel's fork;
this waits for it to be `online` (progress in the log, bounded), recreates the source's
connection pools (PgBouncer) on it and reports the new host, port, database and user — never
a password.

Configuration from the environment: DIGITALOCEAN_TOKEN, DIGITALOCEAN_DATABASE_ID (the source
cluster's uuid), DIGITALOCEAN_API_URL (optional: another endpoint, e.g. the local stand-in).
Every call has a bounded timeout; 429 is retried after the `retry-after` the API sends
(bounded); 401, 404 and 422 are clear errors naming the operation.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from backup_pipelines.lib.errors import BackupError, ConfigError

Log = Callable[[str], None]

DEFAULT_API_URL = "https://api.digitalocean.com"
PITR_WINDOW = timedelta(days=7)  # DigitalOcean keeps PostgreSQL backups (and PITR) 7 days
POOL_FIELDS = ("name", "mode", "size", "db", "user")


class DigitalOceanError(BackupError):
    """A DigitalOcean API call failed; the message names the operation and the API's answer."""


def _quiet(_message: str) -> None:
    pass


def _parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(str(text).replace("Z", "+00:00").replace(" ", "T", 1))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def iso_z(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class ManagedBackup:
    created_at: datetime
    size_gigabytes: float


@dataclass
class ManagedRestore:
    """The cluster a point-in-time restore created (no password: fetch it from the control
    panel or the API with `database:view_credentials`)."""

    cluster_id: str
    name: str
    status: str
    host: str = ""
    port: int = 0
    database: str = ""
    user: str = ""
    private_host: str = ""
    backup_created_at: str = ""
    pools: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def display_url(self) -> str:
        return (
            f"postgresql://{self.user}:***@{self.host}:{self.port}/{self.database}?sslmode=require"
        )

    def to_dict(self) -> dict:
        return {
            "cluster_id": self.cluster_id,
            "name": self.name,
            "status": self.status,
            "host": self.host,
            "port": self.port,
            "database": self.database,
            "user": self.user,
            "private_host": self.private_host,
            "backup_created_at": self.backup_created_at,
            "pools": self.pools,
            "seconds": round(self.seconds, 1),
            "url": self.display_url,
        }


def configured(env: dict[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return bool(env.get("DIGITALOCEAN_TOKEN") and env.get("DIGITALOCEAN_DATABASE_ID"))


class ManagedDatabases:
    """DigitalOcean's database API for one source cluster."""

    def __init__(
        self,
        token: str,
        cluster_id: str,
        api_url: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 5,
        max_retry_wait: float = 120.0,
        log: Log = _quiet,
    ) -> None:
        import pydo
        from azure.core.pipeline.policies import RetryPolicy

        if not token:
            raise ConfigError("DIGITALOCEAN_TOKEN is not set")
        if not cluster_id:
            raise ConfigError("DIGITALOCEAN_DATABASE_ID (the source cluster's uuid) is not set")
        self.cluster_id = cluster_id
        self.api_url = (api_url or DEFAULT_API_URL).rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self.log = log
        self._secret = token
        # Retries are ours (logged, bounded, honouring retry-after): azure-core's are off.
        self._client = pydo.Client(
            token=token, endpoint=self.api_url, retry_policy=RetryPolicy.no_retries()
        )
        self._plain_http = self.api_url.startswith("http://")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **kwargs) -> ManagedDatabases:
        env = os.environ if env is None else env
        return cls(
            env.get("DIGITALOCEAN_TOKEN", ""),
            env.get("DIGITALOCEAN_DATABASE_ID", ""),
            env.get("DIGITALOCEAN_API_URL") or None,
            **kwargs,
        )

    def describe(self) -> str:
        host = re.sub(r"^https?://", "", self.api_url)
        return f"DigitalOcean API ({host})"

    # ---- calls ----------------------------------------------------------------------------

    def _call(self, what: str, method, *args, **kwargs):
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ServiceRequestError,
            ServiceResponseError,
        )

        kwargs.setdefault("connection_timeout", min(10.0, self.timeout))
        kwargs.setdefault("read_timeout", self.timeout)
        if self._plain_http:
            kwargs["enforce_https"] = False  # azure-core refuses a bearer token over HTTP
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                result = method(*args, **kwargs)
            except ClientAuthenticationError as exc:
                raise DigitalOceanError(
                    f"{self.describe()} refused the token while trying to {what} "
                    f"(401 {self._error_text(exc)}): check DIGITALOCEAN_TOKEN and its scopes"
                ) from None
            except (ServiceRequestError, ServiceResponseError) as exc:
                waited = time.monotonic() - started
                raise DigitalOceanError(
                    f"{self.describe()} did not answer while trying to {what} "
                    f"(after {waited:.0f} s, timeout {self.timeout:.0f} s): {type(exc).__name__}"
                ) from None
            except HttpResponseError as exc:
                status = exc.status_code or 0
                retryable = status == 429 or status >= 500
                if retryable and attempt < self.max_retries:
                    wait = self._retry_after(exc, attempt)
                    attempt += 1
                    self.log(
                        f"{self.describe()} answered {status} to {what}; retrying in {wait:.0f} s "
                        f"(attempt {attempt + 1} of {self.max_retries + 1})"
                    )
                    time.sleep(wait)
                    continue
                raise DigitalOceanError(
                    f"{self.describe()} refused to {what} ({status} {self._error_text(exc)})"
                    + (f" after {attempt + 1} attempts" if retryable else "")
                ) from None
            if isinstance(result, dict) and result.get("id") == "not_found":
                # pydo returns documented 404 bodies instead of raising
                raise DigitalOceanError(
                    f"{self.describe()} could not {what}: 404 not_found: {result.get('message', '')}"
                )
            return result

    def _retry_after(self, exc, attempt: int) -> float:
        headers = exc.response.headers if exc.response is not None else {}
        value = headers.get("retry-after")
        try:
            wait = float(value) if value is not None else 2.0**attempt
        except ValueError:
            wait = 2.0**attempt
        return max(0.0, min(wait, self.max_retry_wait))

    def _error_text(self, exc) -> str:
        try:
            body = exc.response.json()
            text = f"{body.get('id', '')}: {body.get('message', '')}".strip(": ")
        except Exception:
            text = exc.reason or ""
        return text.replace(self._secret, "***")

    # ---- reads ----------------------------------------------------------------------------

    def get_cluster(self, cluster_id: str | None = None) -> dict:
        cluster_id = cluster_id or self.cluster_id
        return self._call(
            f"get database cluster {cluster_id}",
            self._client.databases.get_cluster,
            cluster_id,
        )["database"]

    def list_backups(self, cluster_id: str | None = None) -> list[ManagedBackup]:
        cluster_id = cluster_id or self.cluster_id
        raw = self._call(
            f"list the backups of database cluster {cluster_id}",
            self._client.databases.list_backups,
            cluster_id,
        )
        backups = [
            ManagedBackup(_parse_time(b["created_at"]), float(b.get("size_gigabytes") or 0))
            for b in raw.get("backups") or []
        ]
        return sorted(backups, key=lambda b: b.created_at)

    def list_pools(self, cluster_id: str | None = None) -> list[dict]:
        cluster_id = cluster_id or self.cluster_id
        raw = self._call(
            f"list the connection pools of database cluster {cluster_id}",
            self._client.databases.list_connection_pools,
            cluster_id,
        )
        return list(raw.get("pools") or [])

    # ---- restore --------------------------------------------------------------------------

    def restorable_window(
        self, backups: list[ManagedBackup] | None = None, now: datetime | None = None
    ) -> tuple[datetime, datetime]:
        """(oldest, newest) instant a restore can name: the oldest backup still kept (at most
        7 days back) to now."""
        now = now or datetime.now(UTC)
        backups = self.list_backups() if backups is None else backups
        if not backups:
            raise DigitalOceanError(
                f"database cluster {self.cluster_id} has no backup yet: nothing to restore"
            )
        return max(backups[0].created_at, now - PITR_WINDOW), now

    def restore_to_time(
        self,
        target: datetime,
        name: str | None = None,
        wait_timeout: float = 1800.0,
        poll_seconds: float = 10.0,
        recreate_pools: bool = True,
    ) -> ManagedRestore:
        """Create a new cluster from the source's backups at `target`, wait for it to be
        online, recreate the source's connection pools on it."""
        if target.tzinfo is None:
            raise ConfigError(f"target time {target.isoformat()} has no time zone: add +00 or Z")
        started = time.monotonic()
        source = self.get_cluster()
        oldest, newest = self.restorable_window()
        if target < oldest or target > newest:
            raise DigitalOceanError(
                f"target {iso_z(target)} is outside what DigitalOcean can restore for cluster "
                f"{source['name']}: {iso_z(oldest)} (oldest backup kept) to now ({iso_z(newest)})"
            )
        name = name or f"{source['name']}-pitr-{target.astimezone(UTC):%Y%m%d%H%M%S}"[:63]
        body = {
            "name": name,
            "engine": source["engine"],
            "version": source.get("version"),
            "size": source["size"],
            "region": source["region"],
            "num_nodes": source["num_nodes"],
            "backup_restore": {
                "database_name": source["name"],
                "backup_created_at": iso_z(target),
            },
        }
        for optional in ("private_network_uuid", "tags", "project_id"):
            if source.get(optional):
                body[optional] = source[optional]
        self.log(
            f"creating cluster {name} from {source['name']} at {iso_z(target)} "
            f"({body['engine']} {body['version']}, {body['size']}, {body['region']}, "
            f"{body['num_nodes']} node(s))"
        )
        created = self._call(
            f"create cluster {name} restored from {source['name']} at {iso_z(target)}",
            self._client.databases.create_cluster,
            body=body,
        )["database"]
        restored = ManagedRestore(created["id"], name, created.get("status", ""))
        restored.backup_created_at = iso_z(target)
        cluster = self.wait_online(created["id"], name, wait_timeout, poll_seconds)
        self._fill_connection(restored, cluster)
        if recreate_pools:
            restored.pools = self.recreate_pools(created["id"])
        restored.seconds = time.monotonic() - started
        self.log(
            f"cluster {name} ({restored.cluster_id}) online in {restored.seconds:.0f} s: "
            f"{restored.display_url}"
            + (f"; pools {', '.join(restored.pools)}" if restored.pools else "")
        )
        return restored

    def wait_online(
        self, cluster_id: str, name: str, timeout: float, poll_seconds: float = 10.0
    ) -> dict:
        deadline = time.monotonic() + timeout
        started = time.monotonic()
        last_status = None
        while True:
            cluster = self.get_cluster(cluster_id)
            status = cluster.get("status", "")
            elapsed = time.monotonic() - started
            if status == "online":
                return cluster
            if status != last_status or int(elapsed) % 60 < poll_seconds:
                self.log(f"cluster {name} ({cluster_id}) is {status} after {elapsed:.0f} s")
            last_status = status
            if time.monotonic() + poll_seconds > deadline:
                raise DigitalOceanError(
                    f"cluster {name} ({cluster_id}) was not online within {timeout:.0f} s "
                    f"(status {status}); it may still come up: check it in the control panel, "
                    "or delete it"
                )
            time.sleep(poll_seconds)

    def recreate_pools(self, new_cluster_id: str) -> list[str]:
        """The source's connection pools (name, mode, size, db, user) on the new cluster."""
        existing = {p["name"] for p in self.list_pools(new_cluster_id)}
        made = []
        for pool in self.list_pools():
            if pool["name"] in existing:
                continue
            body = {k: pool[k] for k in POOL_FIELDS if pool.get(k) not in (None, "")}
            self._call(
                f"create connection pool {pool['name']} on cluster {new_cluster_id}",
                self._client.databases.add_connection_pool,
                new_cluster_id,
                body=body,
            )
            made.append(pool["name"])
        return made

    @staticmethod
    def _fill_connection(restored: ManagedRestore, cluster: dict) -> None:
        conn = cluster.get("connection") or {}
        restored.status = cluster.get("status", "")
        restored.host = conn.get("host", "")
        restored.port = int(conn.get("port") or 0)
        restored.database = conn.get("database", "")
        restored.user = conn.get("user", "")
        restored.private_host = (cluster.get("private_connection") or {}).get("host", "")
