"""Secrets out of every text a person or a machine reads: errors, logs, alerts, CLI output.

`scrub(text)` is the one function every error path goes through. It removes

- the values of the secret environment variables this project reads (API keys, tokens, the
  password inside DATABASE_URL, the path of ALERT_WEBHOOK_URL, PWD= of a SQL Server
  connection string), as written and percent- or JSON-encoded;
- anything shaped like a credential, wherever it came from: the password of a URL's user
  info (also without a scheme, as in a malformed `user:password@host`), `password=` /
  `PWD=` / `api_key:` pairs, bearer tokens, Slack and DigitalOcean tokens.

Shapes are matched without parsing, on purpose: the texts that leak are the ones a parser
refused (a DATABASE_URL with no scheme, a broken IPv6 host). The user name and host stay, so
the message still says which connection failed.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from functools import lru_cache
from urllib.parse import quote, quote_plus, unquote, urlsplit

MASK = "***"

# Whole values that are secret.
SECRET_VARIABLES = (
    "TYPESENSE_API_KEY",
    "QDRANT_API_KEY",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "SLACK_TOKEN",
    "DIGITALOCEAN_TOKEN",
    "DAGSTER_PG_PASSWORD",
    "PGPASSWORD",
)
# URLs and connection strings whose password part is secret.
CONNECTION_VARIABLES = (
    "DATABASE_URL",
    "DRILL_DATABASE_URL",
    "MSSQL_CONNECTION_STRING",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "BACKUP_STORE_URL",
    "TYPESENSE_URL",
    "QDRANT_URL",
    "SLACK_API_BASE_URL",
    "PGBACKREST_REPO_URL",
    "DIGITALOCEAN_API_URL",
)
# Webhook URLs carry their token in the path (Slack, Teams, PagerDuty bridges).
WEBHOOK_VARIABLES = ("ALERT_WEBHOOK_URL",)
# Lists of `id:secret` pairs, comma- or line-separated.
KEY_LIST_VARIABLES = ("BACKUP_ENCRYPTION_KEYS",)
# Shorter values are not replaced wherever they occur (a 3-character "secret" would mangle
# every number in a message); the shapes below still catch them in URLs and key=value pairs.
MIN_SECRET_LENGTH = 4

_SCHEME_USERINFO = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:@/\s'\"<>]*):(?P<secret>[^\s'\"<>]*)@"
)
# user:password@host with no scheme (a DATABASE_URL missing `postgresql://`).
_BARE_USERINFO = re.compile(
    r"(?<![\w/:.@%+-])(?P<user>[A-Za-z0-9._%+-]+):(?P<secret>(?!/)[^\s'\"<>]+)@(?=[\w\[.-])"
)
_KEY_VALUE = re.compile(
    r"(?i)(?P<key>\b[\w-]*?(?:password|passwd|pwd|secret|token|api[_-]?key|apikey|signature)"
    r"['\"]?\s*[=:]\s*)"
    r"(?P<value>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|\{[^}]*\}|[^\s;,&'\"]+)"
)
_BEARER = re.compile(r"(?i)\b(?P<kind>bearer|basic)\s+(?P<value>[A-Za-z0-9._~+/=-]{8,})")
_TOKENS = re.compile(r"\b(?:xox[abposr]-[A-Za-z0-9-]+|dop_v1_[a-f0-9]{16,}|ghp_[A-Za-z0-9]{20,})")
_SLACK_HOOK = re.compile(r"(hooks\.slack\.com/services/)[A-Za-z0-9/_-]+")


def scrub(text: str, env: Mapping[str, str] | None = None) -> str:
    """`text` without secrets: known secret values and anything shaped like a credential."""
    if not text:
        return text
    env = os.environ if env is None else env
    for secret in _known_secrets(_secret_inputs(env)):
        if secret in text:
            text = text.replace(secret, MASK)
    text = _SCHEME_USERINFO.sub(_mask_userinfo, text)
    text = _BARE_USERINFO.sub(_mask_userinfo, text)
    text = _KEY_VALUE.sub(_mask_value, text)
    text = _BEARER.sub(lambda m: f"{m['kind']} {MASK}", text)
    text = _TOKENS.sub(MASK, text)
    return _SLACK_HOOK.sub(rf"\1{MASK}", text)


def scrub_value(value):
    """A JSON-like value (dicts, lists, strings) with every string scrubbed."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, Mapping):
        return {key: scrub_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(scrub_value(item) for item in value)
    return value


def scrub_exception(error: BaseException) -> str:
    """`Type: message` of an exception, scrubbed: what a top-level handler may print."""
    return scrub(f"{type(error).__name__}: {error}")


def _mask_userinfo(match: re.Match) -> str:
    return f"{match.groupdict().get('head') or ''}{match['user']}:{MASK}@"


def _mask_value(match: re.Match) -> str:
    value = match["value"]
    if value == MASK or value.startswith(MASK):
        return match[0]
    return f"{match['key']}{MASK}"


def _secret_inputs(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    names = SECRET_VARIABLES + CONNECTION_VARIABLES + WEBHOOK_VARIABLES + KEY_LIST_VARIABLES
    return tuple((name, env[name]) for name in names if env.get(name))


@lru_cache(maxsize=16)
def _known_secrets(inputs: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    """Every form in which the secrets of these variables could appear in a text, longest
    first (so a secret containing another is replaced whole)."""
    raw: set[str] = set()
    for name, value in inputs:
        if name in SECRET_VARIABLES:
            raw.add(value.strip())
        elif name in CONNECTION_VARIABLES:
            raw.update(passwords_in(value))
        elif name in KEY_LIST_VARIABLES:
            raw.update(_listed_keys(value))
        else:
            raw.update(_webhook_secrets(value))
    forms = set()
    for secret in raw:
        if len(secret) < MIN_SECRET_LENGTH:
            continue
        forms.update(
            {secret, quote(secret, safe=""), quote_plus(secret), unquote(secret)}
            | {json.dumps(secret)[1:-1], repr(secret)[1:-1]}
        )
    return tuple(sorted((f for f in forms if len(f) >= MIN_SECRET_LENGTH), key=len, reverse=True))


_CONNINFO_PASSWORD = re.compile(
    r"(?i)\b(?:password|pwd)\s*=\s*('(?:[^'\\]|\\.)*'|\"[^\"]*\"|\{[^}]*\}|[^\s;&]+)"
)


def passwords_in(connection: str) -> set[str]:
    """Passwords in a URL or connection string, found without parsing it (it may be broken):
    the user info's password (to the last `@`, and to the first, since parsers differ) and
    `password=` / `PWD=` values."""
    found = set()
    head = connection.split("://", 1)[-1]
    if "@" in head:
        userinfo_last = head.rsplit("@", 1)[0]
        userinfo_first = head.split("@", 1)[0]
        for userinfo in (userinfo_last, userinfo_first):
            if ":" in userinfo:
                found.add(userinfo.split(":", 1)[1])
    for match in _CONNINFO_PASSWORD.finditer(connection):
        found.add(match.group(1).strip("'\"{}"))
    return {secret for secret in found if secret}


def _listed_keys(text: str) -> set[str]:
    pairs = (item.strip().partition(":") for item in re.split(r"[,\n]", text))
    return {text.strip()} | {key.strip() for _id, _sep, key in pairs if key.strip()}


def _webhook_secrets(url: str) -> set[str]:
    parts = urlsplit(url)
    found = {url} if parts.path.strip("/") or parts.query else set()
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    if path.strip("/?"):
        found.add(path)
    found.update(passwords_in(url))
    return found
