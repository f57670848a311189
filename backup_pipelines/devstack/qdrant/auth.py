"""API keys the way a real server checks them (src/actix/auth.rs, src/common/auth/mod.rs).

- `/`, `/healthz`, `/readyz*` and `/livez*` are open.
- No key: HTTP 401 with a PLAIN-TEXT body (the auth middleware answers before the JSON layer).
  A key that matches neither configured key: 401 "Invalid API key or JWT", plain text too.
- The key comes from the `api-key` header or `Authorization: Bearer <key>`.
- `read_only_api_key` grants global read access: reading collections, points and snapshot
  files works; anything that writes (creating, deleting or recovering collections and
  snapshots, upserting points, changing aliases) is a 403 in the usual JSON error envelope,
  "Forbidden: Global manage access is required".
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from enum import Enum
from http import HTTPStatus

from backup_pipelines.devstack.qdrant.models import OPEN_PATHS, OPEN_PREFIXES, ApiError

MISSING_KEY = "Must provide an API key or an Authorization bearer token"
WRONG_KEY = "Invalid API key or JWT"
READ_ONLY_REFUSAL = "Forbidden: Global manage access is required"

# Handlers a read-only key may call; every other handler writes.
READ_HANDLERS = frozenset(
    {
        "root",
        "healthz",
        "readyz",
        "list_collections",
        "list_aliases",
        "get_collection",
        "collection_exists",
        "collection_aliases",
        "retrieve_points",
        "get_point",
        "count_points",
        "scroll_points",
        "query_points",
        "search_points",
        "list_snapshots",
        "download_snapshot",
        "cluster_status",
        "collection_cluster_info",
    }
)


class Access(Enum):
    OPEN = "open"  # no key configured, or an open path
    READ_WRITE = "rw"
    READ_ONLY = "ro"


class PlainTextError(Exception):
    """An answer the auth layer gives before any handler runs: a status and a text body."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


class ApiKeys:
    def __init__(self, api_key: str | None = None, read_only_api_key: str | None = None):
        self.api_key = api_key or None
        self.read_only_api_key = read_only_api_key or None

    @property
    def enabled(self) -> bool:
        return self.api_key is not None or self.read_only_api_key is not None

    def access(self, path: str, headers: Mapping[str, str]) -> Access:
        """The access a request has; raises PlainTextError(401) like the auth middleware."""
        if not self.enabled or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return Access.OPEN
        given = headers.get("api-key")
        bearer = headers.get("Authorization") or ""
        if given is None and bearer.startswith("Bearer "):
            given = bearer[len("Bearer ") :]
        if given is None:
            raise PlainTextError(HTTPStatus.UNAUTHORIZED, MISSING_KEY)
        if _matches(given, self.api_key):
            return Access.READ_WRITE
        if _matches(given, self.read_only_api_key):
            return Access.READ_ONLY
        raise PlainTextError(HTTPStatus.UNAUTHORIZED, WRONG_KEY)


def check_allowed(access: Access, handler: str) -> None:
    """A read-only key calling a handler that writes gets the server's 403."""
    if access is Access.READ_ONLY and handler not in READ_HANDLERS:
        raise ApiError(HTTPStatus.FORBIDDEN, READ_ONLY_REFUSAL)


def _matches(given: str, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(given.encode(), expected.encode())
