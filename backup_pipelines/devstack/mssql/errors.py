"""SQL Server errors and informational messages, with the real numbers, severities and texts."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Message:
    """One INFO (severity <= 10) or ERROR token."""

    number: int
    text: str
    severity: int = 10
    state: int = 1


class SqlError(Exception):
    """A T-SQL error: one or more ERROR tokens (the last is the one that ends the statement).

    `batch_abort` says whether the rest of the batch is skipped (compile errors, 208, 207, ...);
    statement-level errors (2627, 547, 515, BACKUP/RESTORE failures) let the batch continue.
    """

    def __init__(
        self,
        number: int,
        text: str,
        severity: int = 16,
        state: int = 1,
        batch_abort: bool = False,
        more: list[Message] | None = None,
    ) -> None:
        super().__init__(f"Msg {number}: {text}")
        self.messages: list[Message] = [Message(number, text, severity, state), *(more or [])]
        self.batch_abort = batch_abort

    @property
    def number(self) -> int:
        return self.messages[0].number

    def then(self, number: int, text: str, severity: int = 16, state: int = 1) -> SqlError:
        self.messages.append(Message(number, text, severity, state))
        return self


@dataclass
class Notices:
    """INFO messages collected while a statement runs (sent before its DONE)."""

    items: list[Message] = field(default_factory=list)

    def info(self, number: int, text: str, state: int = 1) -> None:
        self.items.append(Message(number, text, 10, state))


def syntax_error(near: str) -> SqlError:
    return SqlError(102, f"Incorrect syntax near '{near}'.", 15, 1, batch_abort=True)


def invalid_object(name: str) -> SqlError:
    return SqlError(208, f"Invalid object name '{name}'.", 16, 1, batch_abort=True)


def invalid_column(name: str) -> SqlError:
    return SqlError(207, f"Invalid column name '{name}'.", 16, 1, batch_abort=True)


def not_supported(what: str) -> SqlError:
    """Something real SQL Server accepts but the stand-in does not (error 40000-range is ours)."""
    return SqlError(
        50000, f"The SQL Server stand-in does not support {what}.", 16, 1, batch_abort=True
    )


def terminating(verb: str) -> tuple[int, str]:
    """3013: '<BACKUP DATABASE|BACKUP LOG|RESTORE DATABASE|...> is terminating abnormally.'"""
    return 3013, f"{verb} is terminating abnormally."


def backup_failure(verb: str, number: int, text: str, severity: int = 16) -> SqlError:
    """An error of BACKUP/RESTORE followed by 3013, as SQL Server reports them."""
    err = SqlError(number, text, severity)
    return err.then(*terminating(verb))


def db_missing(name: str) -> SqlError:
    return SqlError(
        911,
        f"Database '{name}' does not exist. Make sure that the name is entered correctly.",
        16,
        1,
        batch_abort=True,
    )


def db_restoring(name: str) -> SqlError:
    return SqlError(
        927,
        f"Database '{name}' cannot be opened. It is in the middle of a restore.",
        14,
        1,
        batch_abort=True,
    )


def lock_timeout() -> SqlError:
    return SqlError(1222, "Lock request time out period exceeded.", 16, 51)


def deadlock(spid: int) -> SqlError:
    return SqlError(
        1205,
        f"Transaction (Process ID {spid}) was deadlocked on lock resources with another "
        "process and has been chosen as the deadlock victim. Rerun the transaction.",
        13,
        51,
        batch_abort=True,
    )


class Cancelled(Exception):
    """The client sent an ATTENTION: stop the request and acknowledge it."""
