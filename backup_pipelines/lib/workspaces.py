"""Workspace ids: the one gate every id passes before it reaches SQL, a URL or a path."""

import re

from backup_pipelines.lib.errors import InvalidWorkspaceId

WORKSPACE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def is_valid_workspace_id(value: object) -> bool:
    return isinstance(value, str) and WORKSPACE_ID_PATTERN.fullmatch(value) is not None


def validate_workspace_id(value: object) -> str:
    """Return the id unchanged, or raise naming it and the rule it breaks."""
    if is_valid_workspace_id(value):
        return value  # type: ignore[return-value]
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    raise InvalidWorkspaceId(
        f"invalid workspace id {shown}: a workspace id is 1-64 characters, letters, digits, "
        "'_' or '-', starting with a letter or digit (pattern "
        f"{WORKSPACE_ID_PATTERN.pattern}); it is refused before any SQL, URL or path is built"
    )
