"""The global feed: `GET /events` (pages) and `GET /events/stream` (Server-Sent Events,
catch-up then live).

The stream follows the ledger log exactly like `GET /events` (contiguous `seq`, each event
once), so `id:` is the `seq`: a client that reconnects with `Last-Event-ID` (or
`?after=`) gets everything after the last event it saw, and nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse
from pydantic import BeforeValidator

from api.jsonio import dumps, to_plain
from api.service.errors import DATABASE_UNAVAILABLE, NotAuthenticated, ServiceUnavailable
from api.service.live import LedgerTail
from api.service.models import Event
from api.web.auth import KeyCheck, KeyCheckDep
from api.web.dependencies import Digits, PoolDep, ReadPoolDep, ServiceDep, problem_responses
from api.web.problems import problem_body
from api.web.responses import ExactJSONRoute, JSONResponse
from ledger.events import RecordedEvent
from ledger.store import read_feed

logger = logging.getLogger(__name__)

router = APIRouter(route_class=ExactJSONRoute, default_response_class=JSONResponse)

PAGE_SIZE = 500
MAX_SEQ = 2**63 - 1
EVENT_STREAM = "text/event-stream"
# Reconnect after a second if the connection drops (EventSource honours this).
RETRY_MILLISECONDS = 1000


def _seq_header(value: Any) -> Any:
    # Only plain ASCII digits: int() would also take " 7", "+7", "7_0" and non-ASCII digits.
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError("must be a non-negative integer (the id of the last event received)")
    return value


LastEventId = Annotated[
    int | None,
    BeforeValidator(_seq_header),
    Header(
        alias="Last-Event-ID",
        ge=0,
        le=MAX_SEQ,
        description="the `id` (seq) of the last event received; wins over `after`",
    ),
]


def sse_frame(event: RecordedEvent) -> bytes:
    """One SSE event. The JSON is a single line (orjson never writes a raw newline)."""
    assert event.seq is not None, "the feed only has sequenced events"
    data = dumps(to_plain(Event.from_recorded(event)))
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.seq, event.event_type.encode(), data)


def revoked_frame(refusal: NotAuthenticated) -> bytes:
    """The stream's last event when its key stops being valid: `event: revoked`, the 401
    problem as data, no `id` (it is not a ledger event)."""
    body = problem_body(401, f"{refusal.detail}; the stream has ended")
    return b"event: revoked\ndata: %s\n\n" % dumps(body)


async def _still_authorized(check: KeyCheck | None) -> NotAuthenticated | bool:
    """True when the key still holds; the refusal when it does not; False when the
    database cannot say right now (deliver nothing, ask again at the next poll)."""
    if check is None:
        return True
    try:
        await check()
    except NotAuthenticated as refusal:
        return refusal
    except (ServiceUnavailable, asyncpg.PostgresError, *DATABASE_UNAVAILABLE) as error:
        logger.warning("event stream cannot check its API key: %r", error)
        return False
    return True


async def follow_ledger(
    tail: LedgerTail,
    pool: Callable[[], asyncpg.Pool],
    after: int,
    types: frozenset[str] | None = None,
    key_check: KeyCheck | None = None,
) -> AsyncIterator[bytes]:
    """Events after `after` in `seq` order, then new ones as they are sequenced, until the
    tail closes (the service stops) or the client goes away (the response is cancelled).

    `pool` is called for every page, so a stream outlives a database restart.

    `key_check` runs before every page is read (a cache hit, except once every
    KEY_CACHE_SECONDS): once the caller's key is revoked (or open mode ends, for a stream
    opened without a key) the stream sends `event: revoked` and ends, and nothing read
    after the revocation reached this process is delivered.
    """
    settings = tail.settings
    last_seq = after
    last_sent = time.monotonic()
    tail.subscribers += 1
    try:
        yield b"retry: %d\n\n" % RETRY_MILLISECONDS
        while not tail.closed:
            changed = tail.next_change()  # before the read: a wake-up during it is kept
            authorized = await _still_authorized(key_check)
            if isinstance(authorized, NotAuthenticated):
                yield revoked_frame(authorized)
                return
            if not authorized:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), settings.poll_interval)
                continue
            try:
                async with pool().acquire() as connection:
                    events = await read_feed(connection, last_seq, PAGE_SIZE)
            except (ServiceUnavailable, asyncpg.PostgresError, *DATABASE_UNAVAILABLE) as error:
                # Keep the stream open and try again at the next poll.
                logger.warning("event stream cannot read the ledger log: %r", error)
                events = []
            frames = []
            for event in events:
                assert event.seq == last_seq + 1, "the ledger log is contiguous"
                last_seq = event.seq
                if types is None or event.event_type in types:
                    frames.append(sse_frame(event))
            if frames:
                yield b"".join(frames)
                last_sent = time.monotonic()
            if len(events) == PAGE_SIZE:
                continue  # catching up: the next page at once
            keep_alive_due = last_sent + settings.keep_alive_interval - time.monotonic()
            timeout = max(0.0, min(settings.poll_interval, keep_alive_due))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout)
            if time.monotonic() - last_sent >= settings.keep_alive_interval:
                yield b": keep-alive\n\n"
                last_sent = time.monotonic()
    finally:
        tail.subscribers -= 1


@router.get(
    "/events",
    operation_id="get_event_feed",
    summary="The global feed in ledger order (contiguous seq, every event exactly once)",
    response_model=list[Event],
    responses=problem_responses(422),
)
async def feed(
    pool: ReadPoolDep,
    after: Annotated[
        int, Query(ge=0, le=MAX_SEQ, description="last seq seen; 0 from the start"), Digits
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="at most this many"), Digits] = 100,
) -> JSONResponse:
    async with pool.acquire() as connection:
        events = await read_feed(connection, after, limit)
    return JSONResponse([Event.from_recorded(event) for event in events])


@router.get(
    "/events/stream",
    operation_id="stream_events",
    summary="The global feed as Server-Sent Events: catch-up from a seq, then live",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "`text/event-stream`: one event per ledger entry, "
            "`id` = seq, `event` = event type, `data` = the event (as in GET /events). "
            "When the caller's key is revoked the stream ends with `event: revoked`, whose "
            "`data` is a 401 `unauthorized` problem.",
            "content": {EVENT_STREAM: {"schema": {"type": "string"}}},
        },
        **problem_responses(),
    },
)
async def stream_events(
    service: ServiceDep,
    key_check: KeyCheckDep,
    pool: PoolDep,  # 503 problem+json before the stream starts while the database is down
    after: Annotated[
        int, Query(ge=0, le=MAX_SEQ, description="last seq seen; 0 from the start"), Digits
    ] = 0,
    types: Annotated[
        list[str] | None,
        Query(description="only these event types (repeat the parameter for several)"),
    ] = None,
    last_event_id: LastEventId = None,
) -> StreamingResponse:
    """Catch-up from `Last-Event-ID` (or `?after=`), then live. A reconnecting client that
    sends the last `id` it received misses nothing and sees nothing twice."""
    start = after if last_event_id is None else last_event_id
    return StreamingResponse(
        follow_ledger(
            service.tail,
            lambda: service.pool,
            start,
            frozenset(types) if types else None,
            key_check,
        ),
        media_type=EVENT_STREAM,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
