"""Errors an operator reads: each names the thing that is wrong and what to do about it.

Every message is scrubbed of secrets when the error is made (lib/secrets.py), so no
handler, log or alert downstream can leak a password that reached a message.
"""

from backup_pipelines.lib.secrets import scrub


class BackupError(RuntimeError):
    """Base of every error this project raises on purpose."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(scrub(arg) if isinstance(arg, str) else arg for arg in args))


class InvalidWorkspaceId(BackupError, ValueError):
    pass


class ConfigError(BackupError):
    pass


class StoreError(BackupError):
    pass


class ArtifactNotFound(StoreError):
    pass


class ChecksumMismatch(StoreError):
    pass


class SourceError(BackupError):
    """The database or index being backed up is unreachable or not what the policy says."""


class ServiceStalled(BackupError):
    """A service stopped answering mid-operation (hung, or the network to it is gone): the
    operation was abandoned after the configured wait instead of waiting forever."""
