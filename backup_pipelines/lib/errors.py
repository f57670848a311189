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


class Refusals:
    """The entries an index refused during one restore into `collection` (a document Typesense
    answered with success false, a point Qdrant would not take, a row that cannot become
    either): every one counted, the first KEPT named by id with the index's reason. An entry's
    content is never kept: it may be private."""

    KEPT = 100
    SHOWN = 5

    def __init__(self, label: str, collection: str) -> None:
        self.label = label
        self.collection = collection
        self.count = 0
        self.entries: list[tuple[str, str]] = []

    def add(self, entry_id: object, reason: str) -> None:
        self.count += 1
        if len(self.entries) < self.KEPT:
            shown_id = "?" if entry_id is None else str(entry_id)
            self.entries.append((shown_id, scrub(str(reason))[:300]))

    def ids(self) -> list[str]:
        return [entry_id for entry_id, _reason in self.entries]

    def described(self, shown: int = SHOWN) -> str:
        """ "1 entry refused: id 'a': reason" / "...; and 7 more"."""
        named = "; ".join(f"id {i!r}: {reason}" for i, reason in self.entries[:shown])
        more = self.count - min(shown, len(self.entries))
        noun = "entry" if self.count == 1 else "entries"
        return f"{self.count} {noun} refused: {named}" + (f"; and {more} more" if more else "")

    def to_dict(self) -> dict:
        return {
            "collection": self.collection,
            "count": self.count,
            "entries": [{"id": i, "error": reason} for i, reason in self.entries],
        }


class EntriesRefused(BackupError):
    """An index refused entries nobody asked to skip; every other entry was imported."""

    def __init__(self, refusals: Refusals, note: str = "") -> None:
        self.refusals = refusals
        super().__init__(
            f"{refusals.label} collection {refusals.collection}: {refusals.described()}"
            + (f" ({note})" if note else "; every other entry was imported")
        )


class CommitOutcomeUnknown(BackupError):
    """The connection was lost during a COMMIT: the transaction may have committed or not."""


class PartialRestore(BackupError):
    """A restore that stopped after writing something. `states` says per store (sql,
    typesense, qdrant, ...) what it holds now, as data (for run metadata); the message says
    the same and how to finish (lib/recovery/partial.py builds both)."""

    def __init__(self, message: str, states: dict[str, dict]) -> None:
        self.states = states
        super().__init__(message)
