"""Applications: apply, read one (now or as it stood, by time or position), its events, and
an applicant's history. Handlers stay thin: parse, call a command or a query, render."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, AwareDatetime, BeforeValidator

from api.jsonio import loads_exact
from api.service.commands import submit_application
from api.service.models import Application, ApplyRequest, Event
from api.web.auth import principal_of
from api.web.commands import (
    REPLAYED_HEADER,
    command_context,
    command_response,
    counted,
    render_application,
    request_context,
)
from api.web.dependencies import (
    Digits,
    IdempotencyKey,
    PoolDep,
    ReadPoolDep,
    is_json_media_type,
    parse_application_id,
    problem_responses,
    require_json,
    service_of,
)
from api.web.hot import HotRequest, HotResponse, HotRoute
from api.web.responses import ExactJSONRoute, JSONResponse
from ledger.application import APPLICANT_ID_PATTERN, stream_id_for
from ledger.errors import NotFound
from ledger.store import read_stream
from projections.queries import applicant_history_json, get_application
from projections.time_travel import applicant_history_at, application_at

router = APIRouter(route_class=ExactJSONRoute, default_response_class=JSONResponse)


# --- Time travel: `?as_of=<RFC 3339 time>` and `?at_position=<n>` ---

# RFC 3339 date-time: a full date, a time with seconds, and an offset (Z or +hh:mm).
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def _rfc3339(value: Any) -> Any:
    if isinstance(value, str) and not _RFC3339.fullmatch(value):
        raise ValueError(
            "must be an RFC 3339 time with a time zone, like 2026-11-25T09:06:17Z or "
            "2026-11-25T10:06:17.5+01:00"
        )
    return value


def _in_utc(value: datetime | None) -> datetime | None:
    """The same instant in UTC; an instant outside years 1 to 9999 in UTC is refused."""
    if value is None:
        return None
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range (years 1 to 9999 in UTC)") from None


AsOf = Annotated[
    AwareDatetime | None,
    BeforeValidator(_rfc3339),
    AfterValidator(_in_utc),
    Query(
        description="Answer as the ledger stood at this time (RFC 3339 with a time zone): "
        "folded from the events recorded up to then.",
    ),
]

AtPosition = Annotated[
    int | None,
    Query(
        ge=1,
        le=2**63 - 1,
        description="Answer as the ledger stood right after this global event position: "
        "folded from the events up to it. Not together with `as_of`: both at once are a 422 "
        "`validation-error` naming `at_position` (a rule the schema cannot state).",
    ),
    Digits,
]


def _one_point_in_time(as_of: datetime | None, at_position: int | None) -> None:
    if as_of is not None and at_position is not None:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("query", "at_position"),
                    "msg": "give as_of or at_position, not both",
                    "input": at_position,
                }
            ]
        )


async def application_then(
    pool: asyncpg.Pool,
    application_id: UUID,
    as_of: datetime | None,
    at_position: int | None,
) -> JSONResponse:
    _one_point_in_time(as_of, at_position)
    async with pool.acquire() as connection:
        row = await application_at(connection, application_id, at_position=at_position, as_of=as_of)
    if row is None:
        when = f"at position {at_position}" if at_position is not None else f"at {as_of}"
        raise NotFound(f"application {str(application_id)!r} did not exist {when}")
    return JSONResponse(Application.from_row(row))


async def history_then(
    pool: asyncpg.Pool, applicant_id: str, as_of: datetime, limit: int
) -> JSONResponse:
    async with pool.acquire() as connection:
        rows = await applicant_history_at(connection, applicant_id, as_of, limit)
    return JSONResponse([Application.from_row(row) for row in rows])


# --- Commands ---


@router.post(
    "/lending/apply",
    operation_id="submit_application",
    summary="Submit, score and decide a loan application",
    response_model=Application,
    responses=problem_responses(409, 415, 422),
    dependencies=[Depends(require_json)],
)
async def apply(
    body: ApplyRequest, request: Request, idempotency_key: IdempotencyKey = None
) -> Response:
    """Appends `ApplicationSubmitted`, `ApplicationScored` and `ApplicationDecided` to a new
    stream in one transaction, and updates the read models in the same transaction."""
    # A hot route: the service, pool and principal are read from the request rather than
    # resolved as dependencies (the app-level `authorize` has already set the principal).
    service = service_of(request)
    pool = service.pool  # 503 problem+json while the database is not ready
    context = command_context(request, principal_of(request), idempotency_key, body)
    result = await submit_application(
        pool, body, context, service.scoring_model, datetime.now(UTC), render_application
    )
    return command_response(result)


# --- The same two routes on the hot path (api/web/hot.py) ---
#
# Each answers what it can answer exactly as the route above would, and hands anything else
# (returns None) to it: an invalid body, a query it does not read. The tests send the same
# requests down both paths and compare (tests/integration/test_hot_path.py).

# IdempotencyKey's pattern and length bounds, in one expression.
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,200}")
_HISTORY_LIMIT = re.compile(rb"limit=([1-9][0-9]?|100)")
_REPLAYED = ((REPLAYED_HEADER[0].lower().encode(), REPLAYED_HEADER[1].encode()),)


async def apply_hot(request: HotRequest) -> HotResponse | None:
    key = request.idempotency_key
    if not is_json_media_type(request.content_type) or (
        key is not None and not _IDEMPOTENCY_KEY.fullmatch(key)
    ):
        return None
    try:
        body = ApplyRequest.model_validate(loads_exact(request.body))
    except (ValueError, RecursionError):  # pydantic's ValidationError is a ValueError
        return None
    service = request.service
    context = request_context(
        request.principal,
        request.correlation_id,
        key,
        "POST",
        "/lending/apply",
        body,
        service.settings.idempotency_retention,
    )
    result = await submit_application(
        service.pool, body, context, service.scoring_model, datetime.now(UTC), render_application
    )
    return HotResponse(
        result.response.body,
        result.response.status_code,
        headers=_REPLAYED if counted(result) else (),
    )


async def history_hot(request: HotRequest) -> HotResponse | None:
    applicant_id = request.path_params["applicant_id"]
    query = request.query
    if query:
        limit_given = _HISTORY_LIMIT.fullmatch(query)
        if limit_given is None:
            return None
        limit = int(limit_given[1])
    else:
        limit = 10
    if not APPLICANT_ID_PATTERN.fullmatch(applicant_id):
        return None
    pool = await request.service.read_pool_at(None)
    async with pool.acquire() as connection:
        body = await applicant_history_json(connection, applicant_id, limit)
    return HotResponse(body)


HOT_ROUTES = [
    HotRoute("POST", "/lending/apply", "submit_application", apply_hot),
    HotRoute(
        "GET",
        "/lending/applicants/{applicant_id}/history",
        "get_applicant_history",
        history_hot,
        # Read by ReadPoolDep (checked even without a replica): the full route answers.
        full_stack_headers=frozenset({b"x-min-lsn"}),
    ),
]


# --- Queries ---


@router.get(
    "/lending/applicants/{applicant_id}/history",
    operation_id="get_applicant_history",
    summary="An applicant's applications, newest first",
    response_model=list[Application],
    responses=problem_responses(422),
)
async def history(
    applicant_id: Annotated[str, Path(pattern=f"^{APPLICANT_ID_PATTERN.pattern}$")],
    pool: ReadPoolDep,
    limit: Annotated[int, Query(ge=1, le=100, description="at most this many"), Digits] = 10,
    as_of: AsOf = None,
) -> Response:
    if as_of is not None:
        return await history_then(pool, applicant_id, as_of, limit)
    # PostgreSQL renders the JSON (projections/sql.py); it is passed through as bytes.
    async with pool.acquire() as connection:
        body = await applicant_history_json(connection, applicant_id, limit)
    return Response(body, media_type="application/json")


@router.get(
    "/lending/applications/{application_id}",
    operation_id="get_application",
    summary="An application's current state",
    response_model=Application,
    responses=problem_responses(404),
)
async def application(
    application_id: str, pool: PoolDep, as_of: AsOf = None, at_position: AtPosition = None
) -> JSONResponse:
    parsed = parse_application_id(application_id)
    if as_of is not None or at_position is not None:
        return await application_then(pool, parsed, as_of, at_position)
    async with pool.acquire() as connection:
        row = await get_application(connection, parsed)
    if row is None:
        raise NotFound(f"no application {application_id!r}")
    # The ETag is the stream version: send it back as If-Match when acting on what you saw.
    return JSONResponse(Application.from_row(row), headers={"ETag": f'"{row.state.version}"'})


@router.get(
    "/lending/applications/{application_id}/events",
    operation_id="get_application_events",
    summary="The application's events, in stream order",
    response_model=list[Event],
    responses=problem_responses(404),
)
async def application_events(application_id: str, pool: ReadPoolDep) -> JSONResponse:
    parsed = parse_application_id(application_id)
    async with pool.acquire() as connection:
        events = await read_stream(connection, stream_id_for(parsed))
    if not events:
        raise NotFound(f"no application {application_id!r}")
    return JSONResponse([Event.from_recorded(event) for event in events])
