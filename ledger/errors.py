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

    def __init__(
        self, stream_id: str, expected_version: int, *, current_version: int | None = None
    ) -> None:
        now = f" (it is at version {current_version})" if current_version is not None else ""
        super().__init__(
            f"stream {stream_id!r} is no longer at version {expected_version}{now}: "
            "another writer appended first; re-read and retry"
        )
        self.stream_id = stream_id
        self.expected_version = expected_version
        self.current_version = current_version


class InvalidTransition(LedgerError):
    """The command is not allowed in the application's current status."""

    title = "Not allowed in the current status"

    def __init__(self, detail: str, *, current_status: str) -> None:
        super().__init__(detail)
        self.current_status = current_status


class NotAllowed(LedgerError):
    """A rule about who may do what refused the command (maker-checker)."""

    title = "Not allowed for this caller"


class PreconditionRequired(LedgerError):
    """A write that must name the version it acts on did not (If-Match / expected_version)."""

    title = "Precondition required"


class NotFound(LedgerError):
    title = "Not found"


class IdempotencyKeyReused(LedgerError):
    """The same Idempotency-Key was sent with a different request."""

    title = "Idempotency key reused"


class IdempotencyRequestInFlight(LedgerError):
    """Another request with the same Idempotency-Key is still running; nothing was done."""

    title = "Request with this idempotency key in flight"
    retry_after_seconds = 1


class RebuildInProgress(LedgerError):
    """A rebuild or catch-up of the projection is already running, here or in another
    process (it holds the projection's advisory lock)."""

    title = "Rebuild in progress"


class RebuildNotPermitted(LedgerError):
    """The service's database role may not rebuild: swapping tables needs their owner."""

    title = "Rebuild needs the schema owner"


class UnknownEventType(LedgerError):
    """A stored event has a type or schema version that no registry entry decodes."""

    title = "Unknown event type"


class NotYetSealed(LedgerError):
    """No seal covers this event yet (or nothing has been sealed at all)."""

    title = "Not sealed yet"


class LedgerIntegrityError(LedgerError):
    """The stored ledger or seal data is not what the service wrote (rows missing or
    altered behind the triggers): the service refuses to seal or prove over it."""

    title = "Ledger integrity problem"
