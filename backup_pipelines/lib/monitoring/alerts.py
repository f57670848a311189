"""Alerts to the people who own the RPO/RTO promise: Slack (dagster-slack) and a JSON webhook.

Channels come from the environment only (`ALERT_WEBHOOK_URL`, `SLACK_TOKEN` + `SLACK_CHANNEL`);
with none configured, alerts are only logged. Delivery never raises: a channel that keeps
failing is logged and its undelivered alerts are handed back, so a sensor can keep them in its
cursor and try again on the next tick instead of crashing or dropping them.

An alert is scrubbed of secrets when it is made (its title and details often quote an
error), so neither a channel, a log line nor a sensor cursor ever holds one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

import requests

from backup_pipelines.lib.secrets import scrub, scrub_value

Log = Callable[[str], None]

KINDS = (
    "rpo_breach",
    "rpo_recovered",
    "copy_rpo_breach",  # the copy store (BACKUP_COPY_STORE_URL) behind its RPO
    "copy_rpo_recovered",
    "run_failed",
    "run_stuck",
    "drill_failed",
    "drill_rto_missed",
    # A workspace gone from the SQL registry (an accidental deletion?): once, with how to
    # restore it.
    "workspace_vanished",
    # The consistency gate refused a restore: the verdict and its evidence.
    "restore_refused",
)
ATTEMPTS = 3
FIRST_DELAY_SECONDS = 0.5
TIMEOUT_SECONDS = (5.0, 15.0)
# Undelivered alerts a sensor keeps for retry; beyond this the oldest are dropped (and logged).
MAX_PENDING = 200


@dataclass(frozen=True)
class Alert:
    """One message. `details` holds the figures (ages, targets, run ids) as JSON values."""

    kind: str
    title: str
    workspace: str | None = None
    asset: str | None = None
    details: dict = field(default_factory=dict)
    url: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown alert kind {self.kind!r}; known: {', '.join(KINDS)}")
        for name in ("title", "workspace", "asset", "details", "url"):
            object.__setattr__(self, name, scrub_value(getattr(self, name)))

    def payload(self) -> dict:
        """The webhook body: flat, stable keys a receiver can route on."""
        return {"source": "backup_pipelines", **asdict(self), "text": self.text()}

    def text(self) -> str:
        lines = [self.title]
        lines += [f"{key}: {value}" for key, value in self.details.items() if _is_scalar(value)]
        if self.url:
            lines.append(self.url)
        return "\n".join(lines)

    @classmethod
    def from_payload(cls, payload: dict) -> Alert:
        fields = ("kind", "title", "workspace", "asset", "details", "url")
        return cls(**{name: payload.get(name) for name in fields if name in payload})


def _is_scalar(value) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


class Channel(Protocol):
    name: str

    def send(self, alert: Alert) -> None: ...


class WebhookChannel:
    """POST the alert as JSON to any URL (PagerDuty/Opsgenie bridges, Teams, a custom hook)."""

    name = "webhook"

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("ALERT_WEBHOOK_URL must be an http(s):// URL")
        self._url = url

        # Only scheme and host are ever shown: webhook paths often embed a token.
        self.where = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"

    def send(self, alert: Alert) -> None:
        try:
            response = requests.post(self._url, json=alert.payload(), timeout=TIMEOUT_SECONDS)
        except requests.RequestException as exc:
            raise RuntimeError(
                f"webhook at {self.where} unreachable ({type(exc).__name__})"
            ) from None
        if response.status_code >= 300:
            raise RuntimeError(f"webhook at {self.where} answered HTTP {response.status_code}")


class SlackChannel:
    """Post through dagster-slack's SlackResource (a slack_sdk WebClient underneath)."""

    name = "slack"

    def __init__(self, token: str, channel: str, api_base_url: str | None = None) -> None:
        from dagster_slack import SlackResource

        self._client = SlackResource(token=token).get_client()
        if api_base_url:  # a Slack-compatible proxy, or a local receiver in tests
            self._client.base_url = api_base_url.rstrip("/") + "/"
        self._channel = channel

    def send(self, alert: Alert) -> None:
        # slack_sdk raises SlackApiError on ok=false; its message holds no token.
        self._client.chat_postMessage(channel=self._channel, text=alert.text())


def channels_from_env(env: dict | None = None) -> list[Channel]:
    env = os.environ if env is None else env
    channels: list[Channel] = []
    if env.get("ALERT_WEBHOOK_URL"):
        channels.append(WebhookChannel(env["ALERT_WEBHOOK_URL"]))
    if env.get("SLACK_TOKEN"):
        if not env.get("SLACK_CHANNEL"):
            raise ValueError("SLACK_TOKEN is set but SLACK_CHANNEL is not (e.g. #backups)")
        channels.append(
            SlackChannel(env["SLACK_TOKEN"], env["SLACK_CHANNEL"], env.get("SLACK_API_BASE_URL"))
        )
    return channels


def ui_url(path: str, env: dict | None = None) -> str | None:
    """A link into the Dagster UI (DAGSTER_UI_URL, e.g. https://dagster.example.com)."""
    base = (os.environ if env is None else env).get("DAGSTER_UI_URL", "").rstrip("/")
    return f"{base}{path}" if base else None


def deliver(
    alerts: Iterable[Alert],
    channels: list[Channel],
    log: Log,
    attempts: int = ATTEMPTS,
    sleep: Callable[[float], None] = time.sleep,
) -> list[tuple[str, Alert]]:
    """Send each alert to each channel with retries; never raises. Returns what could not be
    delivered as (channel name, alert), for the caller to retry later."""
    undelivered: list[tuple[str, Alert]] = []
    for alert in alerts:
        log(f"ALERT {alert.kind}: {alert.title}")
        for channel in channels:
            if not _send_with_retries(channel, alert, log, attempts, sleep):
                undelivered.append((channel.name, alert))
    return undelivered


def redeliver(
    pending: list[tuple[str, Alert]],
    channels: list[Channel],
    log: Log,
    attempts: int = 1,
    sleep: Callable[[float], None] = time.sleep,
) -> list[tuple[str, Alert]]:
    """Retry what an earlier tick could not deliver, on the channel that failed it only."""
    by_name = {channel.name: channel for channel in channels}
    still: list[tuple[str, Alert]] = []
    for name, alert in pending:
        channel = by_name.get(name)
        if channel is None:  # the channel was removed from the configuration: drop it
            continue
        if not _send_with_retries(channel, alert, log, attempts, sleep):
            still.append((name, alert))
    return still


def _send_with_retries(channel: Channel, alert: Alert, log: Log, attempts: int, sleep) -> bool:
    for attempt in range(1, attempts + 1):
        try:
            channel.send(alert)
            return True
        except Exception as exc:  # any channel failure is logged, never propagated
            log(
                f"alert channel {channel.name} failed ({attempt}/{attempts}) for "
                f"{alert.kind} {alert.workspace or ''}: {type(exc).__name__}: "
                f"{scrub(str(exc))[:200]}"
            )
            if attempt < attempts:
                sleep(FIRST_DELAY_SECONDS * 2 ** (attempt - 1))
    return False


def pending_to_json(pending: list[tuple[str, Alert]]) -> list[dict]:
    return [{"channel": name, "alert": alert.payload()} for name, alert in pending]


def pending_from_json(items: list[dict]) -> list[tuple[str, Alert]]:
    return [(item["channel"], Alert.from_payload(item["alert"])) for item in items]


def configured_channels(log: Log) -> list[Channel]:
    """The channels of the environment; a misconfigured one is logged, never fatal."""
    try:
        return channels_from_env()
    except (ValueError, ImportError) as exc:
        log(f"alert channels misconfigured, alerts are only logged: {scrub(str(exc))}")
        return []


def send_keeping_pending(new_alerts: list[Alert], pending: list[dict], log: Log) -> list[dict]:
    """Deliver new alerts and retry earlier undelivered ones; what still fails comes back as
    JSON for a sensor cursor (bounded), so a down channel neither crashes a sensor nor loses
    a message."""
    if not new_alerts and not pending:  # the usual tick: nothing to build a client for
        return []
    channels = configured_channels(log)
    still = redeliver(pending_from_json(pending), channels, log)
    still += deliver(new_alerts, channels, log)
    if len(still) > MAX_PENDING:
        log(f"dropping {len(still) - MAX_PENDING} undelivered alert(s): channel down too long")
        still = still[-MAX_PENDING:]
    return pending_to_json(still)
