"""Command handlers. Each owns its transaction: events, inline read models and the
idempotency record of one command commit together or not at all. For the commands on
applications that transaction is one statement (projections/inline.py): everything that
needs no database is done first, in Python, and written in one round trip.

Commands return values (`Outcome`); the caller renders them. The caller passes its renderer
in, because the rendered bytes are stored with the idempotency key in the same transaction.
"""

from __future__ import annotations

import random
import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Generic, TypeVar
from uuid import UUID, uuid4

import asyncpg

from api.service.models import ApplyRequest
from ledger import idempotency
from ledger.application import ApplicationState, SubmitApplication, decide, stream_id_for
from ledger.canonical import GENESIS_HASH
from ledger.chain import ChainedEvent, chain_new_events_encoded
from ledger.db import Connection
from ledger.errors import InvalidCommand, LedgerError, NotFound
from ledger.events import DomainEvent, EventMetadata, NewEvent, RecordedEvent, new_ids
from ledger.idempotency import StoredResponse
from ledger.scoring import ScoringModel
from ledger.store import read_stream
from projections.applications import ApplicationRow, fold_into
from projections.inline import IdempotencyClaim, ResponseTemplate, write_command


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
    for event, event_id in zip(events, new_ids(len(events)), strict=True):
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
    """Submit, score and decide: one statement, one round trip (docs/architecture.md,
    "Commands"). A new application opens a new stream, so its three events chain from the
    genesis hash and everything is known before the database is asked anything."""
    command = SubmitApplication(
        application_id=uuid4(),
        applicant_id=request.applicant_id,
        amount=request.amount,
        income=request.income,
        employment_years=request.employment_years,
        submitted_by=context.actor,
    )
    events = decide(None, command, now, model)
    stream_id = stream_id_for(command.application_id)
    chained = chain_new_events_encoded(
        stream_id, 0, GENESIS_HASH, with_metadata(events, context), now
    )
    async with pool.acquire() as connection:
        return await _write(connection, context, {}, chained, 0, render)


Decision = Callable[[ApplicationState], Sequence[DomainEvent]]


async def act_on_application(
    pool: asyncpg.Pool,
    context: RequestContext,
    application_id: UUID,
    decision: Decision,
    now: datetime,
    render: Render,
) -> CommandResult[Outcome]:
    """Read the application's stream, fold, decide, and write: two round trips.

    The write expects the version that was folded: if another writer appended in between,
    the stream's UNIQUE (stream_id, stream_version) refuses this one (409), so a decision is
    never made on a state that was already out of date. The read is outside the write's
    transaction for that reason: the unique index, not a lock, is the guard.

    A retry of a keyed request may find the application moved on by its own first attempt,
    so that deciding again fails (a review of a reviewed application). A decision that
    fails therefore looks up the key before reporting: a live record is replayed (or is a
    422 if it was for another request), as it would have been had the decision succeeded.
    """
    stream_id = stream_id_for(application_id)
    async with pool.acquire() as connection:
        history = await read_stream(connection, stream_id)
        if not history:
            raise NotFound(f"no application {str(application_id)!r}")
        rows: dict[str, ApplicationRow] = {}
        fold_into(rows, history)
        state = rows[stream_id].state
        try:
            events = decision(state)
        except LedgerError:
            key = context.idempotency_key
            if key is not None:
                stored = await idempotency.lookup(
                    connection,
                    context.actor,
                    key,
                    context.fingerprint,
                    context.idempotency_retention,
                )
                if stored is not None:
                    return CommandResult(stored, outcome=None)
            raise
        chained = chain_new_events_encoded(
            stream_id, state.version, history[-1].hash, with_metadata(events, context), now
        )
        return await _write(connection, context, rows, chained, state.version, render)


async def _write(
    connection: Connection,
    context: RequestContext,
    rows: dict[str, ApplicationRow],
    chained: Sequence[ChainedEvent],
    expected_version: int,
    render: Render,
) -> CommandResult[Outcome]:
    """Fold the new events into `rows` (the stream's row before them; empty for a new
    stream), render, and write it all in one statement (projections/inline.py)."""
    if not chained:
        raise InvalidCommand("the command appends no event")
    stream_id = chained[0].event.stream_id
    history = fold_into(rows, [c.event for c in chained], [c.domain_event for c in chained])
    row = rows[stream_id]
    key = context.idempotency_key
    # A keyed response is stored with its key by the same statement, so it is rendered
    # before it, as a template the database completes with the positions it assigns; a
    # keyless one is rendered after, from the positions the statement returns.
    template = _response_template(render, row, chained) if key is not None else None
    claim = (
        IdempotencyClaim(context.actor, key, context.fingerprint, context.idempotency_retention)
        if key is not None
        else None
    )
    written = await write_command(
        connection, claim, chained, expected_version, row, history, template
    )
    if written.outcome == "replayed":
        assert written.status_code is not None
        assert written.body is not None
        return CommandResult(StoredResponse(written.status_code, written.body), outcome=None)
    if key is not None and written.outcome == "reused":
        raise idempotency.key_reused(key)
    if key is not None and written.outcome == "in_flight":
        raise idempotency.request_in_flight(key)
    assert written.outcome == "applied", written.outcome
    positions = written.positions
    recorded = [c.event.at_position(p) for c, p in zip(chained, positions, strict=True)]
    outcome = Outcome(replace(row, last_event_position=positions[-1]), recorded)
    if template is None:
        return CommandResult(render(outcome), outcome)
    body = written.body if written.body is not None else template.body(positions)
    return CommandResult(StoredResponse(template.status_code, body), outcome)


_SENTINEL_LOW = 10**17
# Stand-ins only need to be unlikely to occur in a body by chance (they never leave the
# process: the database replaces each before anyone sees the body), so a seeded PRNG does,
# without a system call per draw.
_STAND_INS = random.Random(secrets.randbits(128))  # noqa: S311 - not a secret (above)


def _response_template(
    render: Render, row: ApplicationRow, chained: Sequence[ChainedEvent]
) -> ResponseTemplate:
    """Render before the database has assigned positions. Each event gets a random 18-digit
    stand-in for its position; where a stand-in appears in the body, the database puts the
    real position (ResponseTemplate). A body naming no position is one part."""
    stand_ins = [_SENTINEL_LOW + _STAND_INS.randrange(9 * _SENTINEL_LOW) for _ in chained]
    events = [c.event.at_position(p) for c, p in zip(chained, stand_ins, strict=True)]
    response = render(Outcome(replace(row, last_event_position=stand_ins[-1]), events))
    slot_of = {str(p).encode(): slot for slot, p in enumerate(stand_ins, start=1)}
    if not any(token in response.body for token in slot_of):
        return ResponseTemplate(response.status_code, (response.body,))
    pieces = re.split(b"(" + b"|".join(slot_of) + b")", response.body)
    return ResponseTemplate(
        response.status_code,
        tuple(pieces[0::2]),
        tuple(slot_of[token] for token in pieces[1::2]),
    )
