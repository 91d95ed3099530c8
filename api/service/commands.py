"""Command handlers. Each owns its transaction: events, inline read models and the
idempotency record of one command commit together or not at all.

Commands return values (`Outcome`); the caller renders them. The caller passes its renderer
in, because the rendered bytes are stored with the idempotency key in the same transaction.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, TypeVar
from uuid import UUID, uuid4

import asyncpg

from api.service.models import ApplyRequest
from ledger import idempotency
from ledger.application import ApplicationState, SubmitApplication, decide, fold, stream_id_for
from ledger.db import Connection
from ledger.errors import NotFound
from ledger.events import DomainEvent, EventMetadata, NewEvent, RecordedEvent
from ledger.idempotency import StoredResponse
from ledger.scoring import ScoringModel
from ledger.store import append, read_stream
from projections.applications import ApplicationRow, fold_applications
from projections.queries import get_application
from projections.runner import project_inline


@dataclass(frozen=True, slots=True)
class RequestContext:
    actor: str
    correlation_id: str
    idempotency_key: str | None
    fingerprint: bytes
    # Routes pass the service's setting (Settings.idempotency_retention).
    idempotency_retention: timedelta = idempotency.DEFAULT_RETENTION


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a command on an application did: the application's read-model row after it, and
    the events it appended (in stream order)."""

    row: ApplicationRow
    events: list[RecordedEvent]


T = TypeVar("T")

Render = Callable[[Outcome], StoredResponse]
"""The caller's rendering of an outcome. It runs inside the command's transaction, because
the idempotency record stores exactly the bytes the first caller received."""


@dataclass(frozen=True, slots=True)
class CommandResult(Generic[T]):
    """`outcome` is None when the response is a replay of an earlier call with the same
    idempotency key (nothing ran; `response` is what that call returned)."""

    response: StoredResponse
    outcome: T | None

    @property
    def replayed(self) -> bool:
        return self.outcome is None


async def execute(
    pool: asyncpg.Pool,
    context: RequestContext,
    work: Callable[[Connection], Awaitable[T]],
    render: Callable[[T], StoredResponse],
) -> CommandResult[T]:
    """Run `work` in one transaction, behind the request's idempotency key (if any).

    Keys are scoped to the caller (`context.actor`). A retry with the same key gets the
    stored response and runs nothing; one that arrives while the first is still running
    gets IdempotencyRequestInFlight (409). An error raised by `work` rolls everything back,
    the key's claim included, so a retry runs afresh. See ledger/idempotency.py.
    """
    async with pool.acquire() as connection, connection.transaction():
        key = context.idempotency_key
        if key is not None:
            stored = await idempotency.claim(
                connection,
                context.actor,
                key,
                context.fingerprint,
                context.idempotency_retention,
            )
            if stored is not None:
                return CommandResult(stored, outcome=None)
        outcome = await work(connection)
        response = render(outcome)
        if key is not None:
            await idempotency.save(connection, context.actor, key, response)
        return CommandResult(response, outcome)


def with_metadata(events: Sequence[DomainEvent], context: RequestContext) -> list[NewEvent]:
    """Envelopes for the events of one command: each is caused by the one before it."""
    causation: UUID | None = None
    new_events = []
    for event in events:
        event_id = uuid4()
        metadata = EventMetadata(
            actor=context.actor,
            correlation_id=context.correlation_id,
            causation_id=str(causation) if causation else None,
            idempotency_key=context.idempotency_key,
        )
        new_events.append(NewEvent(event_id, event, metadata))
        causation = event_id
    return new_events


async def submit_application(
    pool: asyncpg.Pool,
    request: ApplyRequest,
    context: RequestContext,
    model: ScoringModel,
    now: datetime,
    render: Render,
) -> CommandResult[Outcome]:
    command = SubmitApplication(
        application_id=uuid4(),
        applicant_id=request.applicant_id,
        amount=request.amount,
        income=request.income,
        employment_years=request.employment_years,
        submitted_by=context.actor,
    )

    async def work(connection: Connection) -> Outcome:
        events = decide(None, command, now, model)
        recorded = await append(
            connection,
            stream_id_for(command.application_id),
            0,
            with_metadata(events, context),
            now,
        )
        await project_inline(connection, recorded)
        rows, _ = fold_applications(recorded)
        return Outcome(rows[command.application_id], recorded)

    return await execute(pool, context, work, render)


Decision = Callable[[ApplicationState], Sequence[DomainEvent]]


async def act_on_application(
    pool: asyncpg.Pool,
    context: RequestContext,
    application_id: UUID,
    decision: Decision,
    now: datetime,
    render: Render,
) -> CommandResult[Outcome]:
    """Load an application's state from its events, decide, append, project.

    The append expects the version that was folded: if another writer appended in between,
    the stream's UNIQUE (stream_id, stream_version) refuses this one (409), so a decision is
    never made on a state that was already out of date.
    """

    async def work(connection: Connection) -> Outcome:
        stream_id = stream_id_for(application_id)
        history = await read_stream(connection, stream_id)
        state = fold([event.decode() for event in history])
        if state is None:
            raise NotFound(f"no application {str(application_id)!r}")
        events = decision(state)
        recorded = await append(
            connection, stream_id, state.version, with_metadata(events, context), now
        )
        await project_inline(connection, recorded)
        row = await get_application(connection, application_id)
        assert row is not None, "projected in this transaction"
        return Outcome(row, recorded)

    return await execute(pool, context, work, render)
