"""The auditors' ledger browser: events in ledger order (seq) with filters, one event, and a
live tail over the same feed as GET /events/stream (`follow_ledger`)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from api.service.models import Event
from api.web.console import sql
from api.web.console.base import (
    PREFIX,
    ConsoleRoute,
    error_page,
    query_string,
    render,
    service_of,
)
from api.web.routes.events import EVENT_STREAM, follow_ledger
from ledger.events import (
    AgentActionRecorded,
    ApplicationDecided,
    ApplicationReviewed,
    ApplicationScored,
    ApplicationSubmitted,
    ApplicationWithdrawn,
    ManualReviewRequested,
)
from ledger.store import recorded_event_from_row

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

PAGE_SIZE = 50
STREAM_PREFIX = "loan-application-"
# The live tail listens for these SSE event names (the feed names each frame by its type).
KNOWN_TYPES = tuple(
    kind.event_type
    for kind in (
        ApplicationSubmitted,
        ApplicationScored,
        ApplicationDecided,
        ManualReviewRequested,
        ApplicationReviewed,
        AgentActionRecorded,
        ApplicationWithdrawn,
    )
)
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def application_of(stream_id: str) -> str | None:
    """The application id of a loan-application stream (for a link to its page)."""
    rest = stream_id.removeprefix(STREAM_PREFIX)
    return rest if rest != stream_id and _UUID.fullmatch(rest) else None


def _moment(raw: str | None) -> datetime | None:
    """A time from a filter field: ISO 8601; without an offset it is taken as UTC."""
    if not raw or not raw.strip():
        return None
    try:
        parsed = datetime.fromisoformat(raw.strip())
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


@router.get(f"{PREFIX}/ledger", operation_id="console_ledger")
async def ledger(
    request: Request,
    type: Annotated[str | None, Query(max_length=200)] = None,
    stream: Annotated[str | None, Query(max_length=200)] = None,
    applicant: Annotated[str | None, Query(max_length=100)] = None,
    since: Annotated[str | None, Query(max_length=40)] = None,
    until: Annotated[str | None, Query(max_length=40)] = None,
    after: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
) -> Response:
    filters = {
        "type": (type or "").strip() or None,
        "stream": (stream or "").strip() or None,
        "applicant": (applicant or "").strip() or None,
        "since": (since or "").strip() or None,
        "until": (until or "").strip() or None,
    }
    problems = [
        f"{name} is not a time (use e.g. 2026-12-01T09:00:00Z)"
        for name in ("since", "until")
        if filters[name] and _moment(filters[name]) is None
    ]
    service = service_of(request)
    async with service.pool.acquire() as connection:
        rows = await connection.fetch(
            sql.SELECT_LEDGER,
            after,
            filters["type"],
            filters["stream"],
            filters["applicant"],
            _moment(filters["since"]),
            _moment(filters["until"]),
            PAGE_SIZE + 1,
        )
        types = [row["event_type"] for row in await connection.fetch(sql.SELECT_EVENT_TYPES)]
    events = [recorded_event_from_row(row) for row in rows]
    page, more = events[:PAGE_SIZE], len(events) > PAGE_SIZE
    next_url = None
    if more and page and page[-1].seq is not None:
        next_url = f"{PREFIX}/ledger?" + query_string({**filters, "after": page[-1].seq})
    last_seq = page[-1].seq if page else after
    return render(
        request,
        "ledger.html",
        events=page,
        filters=filters,
        types=types,
        tail_types=" ".join(sorted({*types, *KNOWN_TYPES})),
        problems=problems,
        next_url=next_url,
        first_url=f"{PREFIX}/ledger?" + query_string(filters) if after else None,
        application_of=application_of,
        last_seq=last_seq,
        live=not more,
    )


@router.get(f"{PREFIX}/ledger/stream", operation_id="console_ledger_stream")
async def ledger_stream(
    request: Request,
    after: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
    type: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """The live tail: GET /events/stream's feed for a signed-in auditor (cookie, not key)."""
    service = service_of(request)
    service.pool  # noqa: B018 (503 before the stream starts while the database is down)
    types = frozenset({type}) if type else None
    return StreamingResponse(
        follow_ledger(service.tail, lambda: service.pool, after, types),
        media_type=EVENT_STREAM,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get(f"{PREFIX}/ledger/events/{{position}}", operation_id="console_event")
async def event_page(request: Request, position: str) -> Response:
    if not position.isascii() or not position.isdigit() or not 1 <= int(position) < 2**63:
        return error_page(request, 404, "Not found", f"No event at position {position!r}.")
    service = service_of(request)
    async with service.pool.acquire() as connection:
        row = await connection.fetchrow(sql.SELECT_EVENT, int(position))
    if row is None:
        return error_page(request, 404, "Not found", f"No event at position {position}.")
    event = recorded_event_from_row(row)
    plain = Event.from_recorded(event).model_dump(mode="json")
    as_json = json.dumps(plain, indent=2, ensure_ascii=False)
    application_id = application_of(event.stream_id)
    return render(
        request,
        "event.html",
        event=event,
        event_json=as_json,
        application_id=UUID(application_id) if application_id else None,
    )
