"""Command handlers. Each owns its transaction: events, inline read models and the
idempotency record of one command commit together or not at all."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID, uuid4

import asyncpg

from api.jsonio import dumps, to_plain
from api.models import Application, ApplyRequest
from ledger import idempotency
from ledger.application import SubmitApplication, decide, stream_id_for
from ledger.db import Connection
from ledger.events import DomainEvent, EventMetadata, NewEvent
from ledger.idempotency import StoredResponse
from ledger.scoring import ScoringModel
from ledger.store import append
from projections.applications import fold_applications
from projections.runner import project_inline


@dataclass(frozen=True, slots=True)
class RequestContext:
    actor: str
    correlation_id: str
    idempotency_key: str | None
    fingerprint: bytes


@dataclass(frozen=True, slots=True)
class CommandResult:
    response: StoredResponse
    replayed: bool


Work = Callable[[Connection], Awaitable[StoredResponse]]


async def execute(pool: asyncpg.Pool, context: RequestContext, work: Work) -> CommandResult:
    """Run `work` in one transaction, behind the request's idempotency key (if any).

    A retry with the same key gets the stored response and runs nothing. An error raised
    by `work` rolls everything back, the key's claim included, so a retry runs afresh.
    """
    async with pool.acquire() as connection, connection.transaction():
        key = context.idempotency_key
        if key is not None:
            stored = await idempotency.claim(connection, key, context.fingerprint)
            if stored is not None:
                return CommandResult(stored, replayed=True)
        response = await work(connection)
        if key is not None:
            await idempotency.save(connection, key, response)
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
