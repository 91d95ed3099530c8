"""The analysts' pages: the review inbox (with a live count), an application, and deciding it.

A decision goes through the same command handler as POST /lending/applications/{id}/review
(`act_on_application` with `decide_review`), with the stream version the analyst saw as the
expected version, so a decision recorded by someone else in between is a conflict shown on
the page, never a silent overwrite.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import StreamingResponse

from api.service.access import Principal, Role
from api.service.commands import RequestContext, act_on_application
from api.service.errors import DATABASE_UNAVAILABLE, ServiceUnavailable
from api.service.live import LedgerTail
from api.service.records import read_decision_record
from api.web.commands import render_application
from api.web.console import sql
from api.web.console.base import (
    PREFIX,
    ConsoleRoute,
    allowed,
    error_page,
    principal_of,
    query_string,
    ratio,
    redirect,
    render,
    service_of,
)
from ledger.application import ApplicationState, ReviewApplication, decide_review
from ledger.errors import (
    ConcurrencyConflict,
    InvalidCommand,
    InvalidTransition,
    NotAllowed,
)
from ledger.events import DomainEvent
from ledger.idempotency import request_fingerprint
from ledger.scoring import MODELS
from projections.applications import ApplicationRow
from projections.queries import get_application

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

PAGE_SIZE = 20
_START = (datetime(1, 1, 1, tzinfo=UTC), UUID(int=0))
RECOMMENDATIONS = ("approved", "declined", "none")


# --- The inbox ---


def _cursor(moment: datetime, application_id: UUID) -> str:
    raw = f"{moment.astimezone(UTC).isoformat()}|{application_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _after(cursor: str | None) -> tuple[datetime, UUID] | None:
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        moment, application_id = raw.split("|")
        parsed = datetime.fromisoformat(moment)
        if parsed.tzinfo is None:
            return None
        return parsed, UUID(application_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None


def _decimal(raw: str | None) -> Decimal | None:
    if raw is None or not raw.strip():
        return None
    try:
        value = Decimal(raw.strip())
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


@dataclass(frozen=True, slots=True)
class InboxRow:
    row: ApplicationRow
    ratio: str


@router.get(f"{PREFIX}/inbox", operation_id="console_inbox")
async def inbox(
    request: Request,
    applicant: Annotated[str | None, Query(max_length=100)] = None,
    min_amount: Annotated[str | None, Query(max_length=40)] = None,
    max_amount: Annotated[str | None, Query(max_length=40)] = None,
    min_score: Annotated[str | None, Query(max_length=40)] = None,
    max_score: Annotated[str | None, Query(max_length=40)] = None,
    recommended: Annotated[str | None, Query(max_length=20)] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    decided: Annotated[str | None, Query(max_length=40)] = None,
    outcome: Annotated[str | None, Query(max_length=20)] = None,
) -> Response:
    filters = {
        "applicant": (applicant or "").strip() or None,
        "min_amount": min_amount,
        "max_amount": max_amount,
        "min_score": min_score,
        "max_score": max_score,
        "recommended": recommended if recommended in RECOMMENDATIONS else None,
    }
    moment, after_id = _after(cursor) or _START
    service = service_of(request)
    async with service.pool.acquire() as connection:
        records = await connection.fetch(
            sql.SELECT_INBOX,
            moment,
            after_id,
            filters["applicant"],
            _decimal(min_amount),
            _decimal(max_amount),
            _decimal(min_score),
            _decimal(max_score),
            filters["recommended"],
            PAGE_SIZE + 1,
        )
        pending: int = await connection.fetchval(sql.COUNT_PENDING)
    rows = [ApplicationRow.from_record(record) for record in records]
    page, more = rows[:PAGE_SIZE], len(rows) > PAGE_SIZE
    next_url = None
    if more and page[-1].in_review_since is not None:
        last = page[-1]
        assert last.in_review_since is not None
        next_url = f"{PREFIX}/inbox?" + query_string(
            {**filters, "cursor": _cursor(last.in_review_since, last.state.application_id)}
        )
    flash = None
    if decided and outcome in ("approved", "declined"):
        flash = f"Application {decided} {outcome}. It has left the inbox."
    return render(
        request,
        "inbox.html",
        rows=[InboxRow(row, ratio(row.state.amount, row.state.income)) for row in page],
        filters=filters,
        pending=pending,
        next_url=next_url,
        first_url=f"{PREFIX}/inbox?" + query_string(filters) if cursor else None,
        flash=flash,
        now=datetime.now(UTC),
    )


async def _pending_counts(
    tail: LedgerTail, pool: Callable[[], asyncpg.Pool]
) -> AsyncIterator[bytes]:
    """The number of pending reviews now, then again each time the ledger log grows (the
    same notification that drives GET /events/stream), only when it changed."""
    last: int | None = None
    settings = tail.settings
    yield b"retry: 2000\n\n"
    while not tail.closed:
        changed = tail.next_change()
        try:
            async with pool().acquire() as connection:
                count: int = await connection.fetchval(sql.COUNT_PENDING)
        except (ServiceUnavailable, asyncpg.PostgresError, *DATABASE_UNAVAILABLE):
            count = -1
        if count >= 0 and count != last:
            last = count
            yield b"event: pending\ndata: %d\n\n" % count
        else:
            yield b": keep-alive\n\n"
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), settings.keep_alive_interval)


@router.get(f"{PREFIX}/inbox/count", operation_id="console_inbox_count")
async def inbox_count(request: Request) -> Response:
    service = service_of(request)
    service.pool  # noqa: B018 (503 before the stream starts while the database is down)
    return StreamingResponse(
        _pending_counts(service.tail, lambda: service.pool),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


# --- One application ---


@dataclass(frozen=True, slots=True)
class Action:
    """A decision the page offers, and why it is disabled when it is."""

    outcome: str
    label: str
    disabled_reason: str | None


def actions_for(principal: Principal, row: ApplicationRow) -> tuple[list[Action], str | None]:
    """The approve/decline actions, each with why it is unavailable (if it is), and why no
    decision is possible at all (then the page shows the actions disabled, or none)."""
    state = row.state
    if not allowed(principal, "console_decide"):
        return [], f"Your role ({principal.role}) may read applications but not decide them."
    if state.status != "in_review":
        return [], f"The application is {state.status}, not in review: nothing to decide."
    if principal.role is not None and principal.actor == state.submitted_by:
        why = (
            f"Maker-checker: you ({principal.actor}) submitted this application, so another "
            "analyst must decide it."
        )
        return [Action("approved", "Approve", why), Action("declined", "Decline", why)], why
    decline_reason = None
    if principal.role not in (Role.ANALYST, None):
        decline_reason = "Only an analyst may decline an application."
    return [
        Action("approved", "Approve", None),
        Action("declined", "Decline", decline_reason),
    ], None


async def _application_page(
    request: Request,
    application_id: UUID,
    status_code: int = 200,
    conflict: str | None = None,
    problem: str | None = None,
    entered: dict[str, object] | None = None,
) -> Response:
    service = service_of(request)
    async with service.pool.acquire() as connection:
        record = await read_decision_record(
            connection, application_id, [service.signing_key.public_key], MODELS
        )
        row = await get_application(connection, application_id)
    if record is None or row is None:
        return error_page(request, 404, "Not found", f"No application {application_id}.")
    principal = principal_of(request)
    actions, no_actions = actions_for(principal, row)
    model = MODELS.get(row.state.model_key or "")
    catalogue = dict(model.reason_catalogue) if model is not None else {}
    return render(
        request,
        "application.html",
        status_code,
        record=record,
        row=row,
        ratio=ratio(row.state.amount, row.state.income),
        actions=actions,
        no_actions=no_actions,
        catalogue=catalogue,
        conflict=conflict,
        problem=problem,
        entered=entered or {},
        describe=describe,
        is_auditor=allowed(principal, "console_event"),
    )


@router.get(f"{PREFIX}/applications/{{application_id}}", operation_id="console_application")
async def application(request: Request, application_id: str) -> Response:
    try:
        parsed = UUID(application_id)
    except ValueError:
        return error_page(request, 404, "Not found", f"No application {application_id!r}.")
    return await _application_page(request, parsed)


@router.post(f"{PREFIX}/applications/{{application_id}}/decision", operation_id="console_decide")
async def decide(
    request: Request,
    application_id: str,
    expected_version: Annotated[int, Form(ge=1, le=2**31 - 1)],
    outcome: Annotated[str, Form(max_length=20)] = "",
    justification: Annotated[str, Form(max_length=4000)] = "",
    reason_codes: Annotated[list[str] | None, Form()] = None,
) -> Response:
    try:
        parsed = UUID(application_id)
    except ValueError:
        return error_page(request, 404, "Not found", f"No application {application_id!r}.")
    principal = principal_of(request)
    codes = tuple(reason_codes or ())
    entered: dict[str, object] = {
        "outcome": outcome,
        "justification": justification,
        "reason_codes": list(codes),
    }

    def decision(state: ApplicationState) -> list[DomainEvent]:
        model_key = state.model_key
        catalogue = MODELS[model_key].reason_catalogue if model_key in MODELS else {}
        command = ReviewApplication(
            application_id=parsed,
            outcome=outcome,
            reason_codes=codes,
            justification=justification,
            reviewer=principal.actor,
            reviewer_is_analyst=principal.role in (Role.ANALYST, None),
            expected_version=expected_version,
            enforce_maker_checker=principal.role is not None,
        )
        return decide_review(state, command, catalogue)

    body = {
        "outcome": outcome,
        "reason_codes": list(codes),
        "justification": justification,
        "expected_version": expected_version,
    }
    context = RequestContext(
        actor=principal.actor,
        correlation_id=request.state.correlation_id,
        idempotency_key=None,
        fingerprint=request_fingerprint(request.method, request.url.path, body),
        idempotency_retention=service_of(request).settings.idempotency_retention,
    )
    try:
        await act_on_application(
            service_of(request).pool,
            context,
            parsed,
            decision,
            datetime.now(UTC),
            render_application,
        )
    except ConcurrencyConflict as conflict:
        now = conflict.current_version
        message = (
            f"Conflict: this application changed after you opened it (you saw version "
            f"{expected_version}, it is now at version {now}). Your decision was NOT "
            "recorded. Read what happened meanwhile below before you decide again."
        )
        return await _application_page(request, parsed, 409, conflict=message, entered=entered)
    except NotAllowed as refused:
        return await _application_page(request, parsed, 403, problem=str(refused), entered=entered)
    except (InvalidCommand, InvalidTransition) as invalid:
        return await _application_page(request, parsed, 422, problem=str(invalid), entered=entered)
    return redirect(f"{PREFIX}/inbox?" + query_string({"decided": parsed, "outcome": outcome}))


# --- Describing events on the page ---


def describe(event_type: str, data: dict[str, object]) -> str:
    get = data.get
    match event_type:
        case "ApplicationSubmitted":
            return (
                f"Applied for {get('amount')} (income {get('income')}, "
                f"{get('employment_years')} years employed)"
            )
        case "ApplicationScored":
            codes = get("reason_codes")
            listed = ", ".join(map(str, codes)) if isinstance(codes, list) else str(codes)
            return (
                f"Scored {get('risk_score')} by {get('model_name')}-{get('model_version')}; "
                f"reasons: {listed or 'none'}"
            )
        case "ApplicationDecided":
            return f"Automatic decision: {get('decision')} ({get('rule')})"
        case "ManualReviewRequested":
            return f"Manual review requested: {get('reason')}"
        case "ApplicationReviewed":
            codes = get("reason_codes")
            cited = (
                ", ".join(str(r.get("code")) for r in codes if isinstance(r, dict))
                if isinstance(codes, list)
                else str(codes)
            )
            return f"Reviewed: {get('outcome')} ({cited or 'no codes'}): {get('justification')}"
        case "AgentActionRecorded":
            return f"Agent {get('agent_id')} ({get('model_name')}): {get('action')}"
        case "ApplicationWithdrawn":
            return f"Withdrawn via {get('channel')}: {get('reason')}"
    return event_type
