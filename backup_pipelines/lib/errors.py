"""Errors an operator reads: each names the thing that is wrong and what to do about it."""


class BackupError(RuntimeError):
    """Base of every error this project raises on purpose."""


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
