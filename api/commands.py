"""Command handlers. Each owns its transaction: events, inline read models and the
idempotency record of one command commit together or not at all."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID, uuid4

import asyncpg

from api.jsonio import dumps, to_plain
from api.models import Application, ApplyRequest
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
class CommandResult:
    response: StoredResponse
    replayed: bool


Work = Callable[[Connection], Awaitable[StoredResponse]]


async def execute(pool: asyncpg.Pool, context: RequestContext, work: Work) -> CommandResult:
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
                return CommandResult(stored, replayed=True)
        response = await work(connection)
        if key is not None:
            await idempotency.save(connection, context.actor, key, response)
        return CommandResult(response, replayed=False)


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
) -> CommandResult:
    command = SubmitApplication(
        application_id=uuid4(),
        applicant_id=request.applicant_id,
        amount=request.amount,
        income=request.income,
        employment_years=request.employment_years,
        submitted_by=context.actor,
    )

    async def work(connection: Connection) -> StoredResponse:
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
        return StoredResponse(
            200, dumps(to_plain(Application.from_row(rows[command.application_id])))
        )

    return await execute(pool, context, work)


Decision = Callable[[ApplicationState], Sequence[DomainEvent]]
Render = Callable[[ApplicationRow, list[RecordedEvent]], StoredResponse]


def render_application(row: ApplicationRow, recorded: list[RecordedEvent]) -> StoredResponse:
    return StoredResponse(200, dumps(to_plain(Application.from_row(row))))


async def act_on_application(
    pool: asyncpg.Pool,
    context: RequestContext,
    application_id: UUID,
    decision: Decision,
    now: datetime,
    render: Render = render_application,
) -> CommandResult:
    """Load an application's state from its events, decide, append, project, respond.

    The append expects the version that was folded: if another writer appended in between,
    the stream's UNIQUE (stream_id, stream_version) refuses this one (409), so a decision is
    never made on a state that was already out of date.
    """

    async def work(connection: Connection) -> StoredResponse:
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
        return render(row, recorded)

    return await execute(pool, context, work)
