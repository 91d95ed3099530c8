"""HTTP routes. Handlers stay thin: parse, call a command handler or a query, render."""

from __future__ import annotations

import email.message
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response

from api.auth import PrincipalDep
from api.commands import RequestContext, submit_application
from api.errors import PROBLEM_MEDIA_TYPE, UnsupportedMediaType
from api.jsonio import ExactJSONRoute, JSONResponse
from api.models import Application, ApplyRequest, Event, Health, Problem
from api.service import LedgerService
from api.time_travel import AsOf, AtPosition, application_then, history_then
from ledger.application import APPLICANT_ID_PATTERN, stream_id_for
from ledger.errors import NotFound
from ledger.idempotency import request_fingerprint
from ledger.store import read_feed, read_stream
from projections.queries import applicant_history, get_application

router = APIRouter(route_class=ExactJSONRoute, default_response_class=JSONResponse)


def _problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """Problem responses for `codes`, plus those any route may give: 503 (database down),
    422 (else FastAPI documents its own application/json validation error for routes with
    parameters), and 413 for routes taking a JSON body (those that declare 415)."""
    always = (422, 503, 413) if 415 in codes else (422, 503)
    return {
        code: {"model": Problem, "content": {PROBLEM_MEDIA_TYPE: {}}}
        for code in sorted({*codes, *always})
    }


# --- Dependencies ---
# All `async def`, though none awaits: FastAPI runs a plain `def` dependency in its thread
# pool, and that hop (per dependency, per request) cost more than the work in the profile.


async def get_service(request: Request) -> LedgerService:
    service: LedgerService = request.app.state.service
    return service


ServiceDep = Annotated[LedgerService, Depends(get_service)]


async def get_pool(service: ServiceDep) -> asyncpg.Pool:
    return service.pool  # 503 problem+json while the database is not ready


PoolDep = Annotated[asyncpg.Pool, Depends(get_pool)]


async def require_json(request: Request) -> None:
    message = email.message.Message()
    message["content-type"] = request.headers.get("content-type", "")
    subtype = message.get_content_subtype()
    if message.get_content_maintype() != "application" or not (
        subtype == "json" or subtype.endswith("+json")
    ):
        raise UnsupportedMediaType


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        pattern=r"^[\x21-\x7e]+$",
        description="Repeat a request with the same key to get the first response again "
        "without writing anything twice (1 to 200 printable ASCII characters).",
    ),
]


# --- Commands ---


@router.post(
    "/lending/apply",
    operation_id="submit_application",
    summary="Submit, score and decide a loan application",
    response_model=Application,
    responses=_problem_responses(409, 415, 422),
    dependencies=[Depends(require_json)],
)
async def apply(
    body: ApplyRequest,
    request: Request,
    service: ServiceDep,
    pool: PoolDep,
    principal: PrincipalDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Appends `ApplicationSubmitted`, `ApplicationScored` and `ApplicationDecided` to a new
    stream in one transaction, and updates the read models in the same transaction."""
    context = RequestContext(
        actor=principal.actor,
        correlation_id=request.state.correlation_id,
        idempotency_key=idempotency_key,
        fingerprint=request_fingerprint("POST", "/lending/apply", body.model_dump(mode="json")),
        idempotency_retention=service.settings.idempotency_retention,
    )
    result = await submit_application(pool, body, context, service.scoring_model, datetime.now(UTC))
    headers = {"Idempotent-Replayed": "true"} if result.replayed else None
    return Response(
        result.response.body,
        status_code=result.response.status_code,
        media_type="application/json",
        headers=headers,
    )


# --- Queries ---


def _parse_application_id(raw: str) -> UUID:
    try:
        return UUID(raw)
    except ValueError:
        raise NotFound(f"no application {raw!r}") from None


@router.get(
    "/lending/applicants/{applicant_id}/history",
    operation_id="get_applicant_history",
    summary="An applicant's applications, newest first",
    response_model=list[Application],
    responses=_problem_responses(422),
)
async def history(
    applicant_id: Annotated[str, Path(pattern=f"^{APPLICANT_ID_PATTERN.pattern}$")],
    pool: PoolDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    as_of: AsOf = None,
) -> JSONResponse:
    if as_of is not None:
        return await history_then(pool, applicant_id, as_of, limit)
    async with pool.acquire() as connection:
        rows = await applicant_history(connection, applicant_id, limit)
    return JSONResponse([Application.from_row(row) for row in rows])


@router.get(
    "/lending/applications/{application_id}",
    operation_id="get_application",
    summary="An application's current state",
    response_model=Application,
    responses=_problem_responses(404),
)
async def application(
    application_id: str, pool: PoolDep, as_of: AsOf = None, at_position: AtPosition = None
) -> JSONResponse:
    parsed = _parse_application_id(application_id)
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
    responses=_problem_responses(404),
)
async def application_events(application_id: str, pool: PoolDep) -> JSONResponse:
    parsed = _parse_application_id(application_id)
    async with pool.acquire() as connection:
        events = await read_stream(connection, stream_id_for(parsed))
    if not events:
        raise NotFound(f"no application {application_id!r}")
    return JSONResponse([Event.from_recorded(event) for event in events])


@router.get(
    "/events",
    operation_id="get_event_feed",
    summary="The global feed in ledger order (contiguous seq, every event exactly once)",
    response_model=list[Event],
    responses=_problem_responses(422),
)
async def feed(
    pool: PoolDep,
    after: Annotated[
        int, Query(ge=0, le=2**63 - 1, description="last seq seen; 0 from the start")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JSONResponse:
    async with pool.acquire() as connection:
        events = await read_feed(connection, after, limit)
    return JSONResponse([Event.from_recorded(event) for event in events])


# --- Health ---


@router.get(
    "/healthz", operation_id="get_health", summary="The process is alive", response_model=Health
)
async def healthz() -> JSONResponse:
    return JSONResponse(Health(status="ok"))


@router.get(
    "/readyz",
    operation_id="get_readiness",
    summary="The database is reachable and the schema applied",
    response_model=Health,
    responses={503: {"model": Health}},
)
async def readyz(service: ServiceDep) -> JSONResponse:
    if not service.ready:
        return JSONResponse(
            Health(status="starting", detail=service.status_detail), status_code=503
        )
    try:
        async with service.pool.acquire(timeout=2) as connection:
            await connection.fetchval("SELECT 1")
    except Exception as error:  # any failure here means "not ready", never a 500
        return JSONResponse(Health(status="unavailable", detail=str(error)), status_code=503)
    return JSONResponse(Health(status="ok"))
