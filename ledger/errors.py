"""Domain errors. The API maps each to one problem+json response, in one place."""

from __future__ import annotations


class LedgerError(Exception):
    """Base of every error the ledger reports on purpose."""

    title = "Ledger error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidCommand(LedgerError):
    """A command broke a business rule; nothing was written."""

    title = "Invalid command"

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.field = field


class ConcurrencyConflict(LedgerError):
    """The stream moved on since the writer read it (optimistic concurrency)."""

    title = "Concurrent modification"

    def __init__(self, stream_id: str, expected_version: int) -> None:
        super().__init__(
            f"stream {stream_id!r} is no longer at version {expected_version}: "
            "another writer appended first; re-read and retry"
        )
        self.stream_id = stream_id
        self.expected_version = expected_version


class NotFound(LedgerError):
    title = "Not found"


class IdempotencyKeyReused(LedgerError):
    """The same Idempotency-Key was sent with a different request."""

    title = "Idempotency key reused"


class UnknownEventType(LedgerError):
    """A stored event has a type or schema version that no registry entry decodes."""

    title = "Unknown event type"
