"""The underwriting workflow: review queue, analyst decisions, withdrawals, manual review
requests and agent actions. Handlers stay thin: build a command, let the pure `decide_*`
rule on it inside `act_on_application`'s transaction, render."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Header, Query, Request, Response

from api.jsonio import dumps, to_plain
from api.service.access import Role
from api.service.commands import Outcome, act_on_application
from api.service.models import (
    AgentAction,
    AgentActionRequest,
    Application,
    ManualReviewRequest,
    ReasonCatalogue,
    ReasonCodeText,
    ReviewQueuePage,
    ReviewRequest,
    WithdrawRequest,
    prompt_digest,
)
from api.web.auth import PrincipalDep
from api.web.commands import command_context, command_response, render_application
from api.web.dependencies import (
    Digits,
    IdempotencyKey,
    PoolDep,
    parse_application_id,
    problem_responses,
    require_json,
)
from api.web.responses import ExactJSONRoute, JSONResponse
from ledger.application import (
    ApplicationState,
    RecordAgentAction,
    RequestManualReview,
    ReviewApplication,
    WithdrawApplication,
    decide_agent_action,
    decide_manual_review,
    decide_review,
    decide_withdrawal,
)
from ledger.errors import InvalidCommand, NotFound, PreconditionRequired
from ledger.events import DomainEvent
from ledger.idempotency import StoredResponse
from ledger.scoring import MODELS, get_model
from projections.queries import review_queue

router = APIRouter(route_class=ExactJSONRoute, default_response_class=JSONResponse)

COMMAND_RESPONSES = problem_responses(403, 404, 409, 415, 422, 428)


# 1 to 2^31 - 1 (a stream version), no leading zeros: exactly what the pattern says.
_VERSION = (
    r"(?:[1-9][0-9]{0,8}|1[0-9]{9}|20[0-9]{8}|21[0-3][0-9]{7}|214[0-6][0-9]{6}"
    r"|2147[0-3][0-9]{5}|21474[0-7][0-9]{4}|214748[0-2][0-9]{3}|2147483[0-5][0-9]{2}"
    r"|21474836[0-3][0-9]|214748364[0-7])"
)
IF_MATCH_PATTERN = rf'^(?:(?:W/)?"{_VERSION}"|{_VERSION})$'


def parse_if_match(value: str | None) -> int | None:
    """The stream version in an If-Match header: `"3"`, `W/"3"` or a bare `3`. The header's
    pattern (IF_MATCH_PATTERN) refuses anything else before this runs."""
    if value is None:
        return None
    if re.fullmatch(IF_MATCH_PATTERN, value) is None:
        raise InvalidCommand(
            'If-Match must be the application\'s stream_version as an ETag, like "3"',
            field="If-Match",
        )
    return int(value.removeprefix("W/").strip('"'))


IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        pattern=IF_MATCH_PATTERN,
        description='The stream_version you saw, as returned in ETag: `"3"`, `W/"3"` or `3` '
        "(1 to 2^31 - 1). If `expected_version` is sent as well, both must be equal (422 "
        "`validation-error` otherwise, a rule the schema cannot state). A stale version is a "
        "409 `concurrency-conflict`.",
    ),
]


def _expected_version(if_match: str | None, in_body: int | None) -> int | None:
    from_header = parse_if_match(if_match)
    if from_header is not None and in_body is not None and from_header != in_body:
        raise InvalidCommand(
            f"If-Match says version {from_header} but expected_version says {in_body}",
            field="expected_version",
        )
    return from_header if from_header is not None else in_body


# --- Commands ---


@router.post(
    "/lending/applications/{application_id}/review",
    operation_id="review_application",
    summary="An analyst approves or declines an application in review",
    response_model=Application,
    responses=COMMAND_RESPONSES,
    dependencies=[Depends(require_json)],
)
async def review(
    application_id: str,
    body: ReviewRequest,
    request: Request,
    pool: PoolDep,
    principal: PrincipalDep,
    if_match: IfMatch = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Appends `ApplicationReviewed`. The version the analyst saw is required (If-Match or
    `expected_version`): a stale one is a 409 and nothing is written, so two analysts never
    silently overwrite each other. A decline needs at least one reason code from the
    catalogue of the model that scored the application, and a justification. Whoever
    submitted an application cannot review it; only an analyst may decline."""
    parsed = parse_application_id(application_id)
    expected = _expected_version(if_match, body.expected_version)
    if expected is None:
        raise PreconditionRequired(
            "send the stream_version you reviewed, as If-Match or expected_version"
        )

    def decision(state: ApplicationState) -> list[DomainEvent]:
        model_key = state.model_key
        catalogue = MODELS[model_key].reason_catalogue if model_key in MODELS else {}
        command = ReviewApplication(
            application_id=parsed,
            outcome=body.outcome,
            reason_codes=tuple(body.reason_codes),
            justification=body.justification,
            reviewer=principal.actor,
            reviewer_is_analyst=principal.role in (Role.ANALYST, None),
            expected_version=expected,
            enforce_maker_checker=principal.role is not None,
        )
        return decide_review(state, command, catalogue)

    context = command_context(request, principal, idempotency_key, body)
    result = await act_on_application(
        pool, context, parsed, decision, datetime.now(UTC), render_application
    )
    return command_response(result)


@router.post(
    "/lending/applications/{application_id}/withdraw",
    operation_id="withdraw_application",
    summary="Withdraw an application (for the applicant, or by an analyst)",
    response_model=Application,
    responses=COMMAND_RESPONSES,
    dependencies=[Depends(require_json)],
)
async def withdraw(
    application_id: str,
    body: WithdrawRequest,
    request: Request,
    pool: PoolDep,
    principal: PrincipalDep,
    if_match: IfMatch = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Appends `ApplicationWithdrawn`. Allowed until the application is declined or
    withdrawn (409 naming the status then). Agents withdraw on the applicant's behalf
    (channel `applicant`); analysts and admins withdraw as staff (channel `analyst`)."""
    parsed = parse_application_id(application_id)
    command = WithdrawApplication(
        application_id=parsed,
        reason=body.reason,
        withdrawn_by=principal.actor,
        channel="analyst" if principal.role in (Role.ANALYST, Role.ADMIN) else "applicant",
        expected_version=_expected_version(if_match, body.expected_version),
    )
    context = command_context(request, principal, idempotency_key, body)
    result = await act_on_application(
        pool,
        context,
        parsed,
        lambda state: decide_withdrawal(state, command),
        datetime.now(UTC),
        render_application,
    )
    return command_response(result)


@router.post(
    "/lending/applications/{application_id}/manual-review",
    operation_id="request_manual_review",
    summary="Send an automatically approved application to an analyst",
    response_model=Application,
    responses=COMMAND_RESPONSES,
    dependencies=[Depends(require_json)],
)
async def manual_review(
    application_id: str,
    body: ManualReviewRequest,
    request: Request,
    pool: PoolDep,
    principal: PrincipalDep,
    if_match: IfMatch = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Appends `ManualReviewRequested`: the application goes back to `in_review` and joins
    the review queue. Only for applications approved automatically by the scoring policy."""
    parsed = parse_application_id(application_id)
    command = RequestManualReview(
        application_id=parsed,
        reason=body.reason,
        requested_by=principal.actor,
        expected_version=_expected_version(if_match, body.expected_version),
    )
    context = command_context(request, principal, idempotency_key, body)
    result = await act_on_application(
        pool,
        context,
        parsed,
        lambda state: decide_manual_review(state, command),
        datetime.now(UTC),
        render_application,
    )
    return command_response(result)


def _render_agent_action(outcome: Outcome) -> StoredResponse:
    event = outcome.events[0]
    data = event.data
    action = AgentAction(
        application_id=outcome.row.state.application_id,
        event_id=event.event_id,
        position=event.position,
        stream_version=event.stream_version,
        agent_id=data["agent_id"],
        model_name=data["model_name"],
        action=data["action"],
        prompt_sha256=data["prompt_sha256"],
        recorded_at=event.recorded_at,
    )
    return StoredResponse(201, dumps(to_plain(action)))


@router.post(
    "/lending/applications/{application_id}/agent-actions",
    operation_id="record_agent_action",
    summary="Record what an AI agent did on an application, and why",
    status_code=201,
    response_model=AgentAction,
    responses=COMMAND_RESPONSES,
    dependencies=[Depends(require_json)],
)
async def record_agent_action(
    application_id: str,
    body: AgentActionRequest,
    request: Request,
    pool: PoolDep,
    principal: PrincipalDep,
    if_match: IfMatch = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Appends `AgentActionRecorded` to the application's stream, so an audit shows the
    agent's prompt (or its SHA-256 and a reference), output, action and rationale beside the
    scores and decisions, in order. Does not change the application's status."""
    parsed = parse_application_id(application_id)
    command = RecordAgentAction(
        application_id=parsed,
        agent_id=body.agent_id,
        model_name=body.model_name,
        prompt=body.prompt,
        prompt_sha256=body.prompt_sha256 or prompt_digest(body.prompt or ""),
        prompt_ref=body.prompt_ref,
        output=body.output,
        action=body.action,
        rationale=body.rationale,
        expected_version=_expected_version(if_match, body.expected_version),
    )
    context = command_context(request, principal, idempotency_key, body)
    result = await act_on_application(
        pool,
        context,
        parsed,
        lambda state: decide_agent_action(state, command),
        datetime.now(UTC),
        _render_agent_action,
    )
    return command_response(result)


# --- Queries ---


# A position in the queue's order: microseconds since 1970 (UTC) of the time the
# application entered review (or was reviewed), a dot, and its id in 32 hex digits. Every
# string of this pattern is a position, so every one is a valid cursor (one past the end is
# an empty page); anything else is a 422 naming `cursor`.
CURSOR_PATTERN = r"^[0-9]{1,18}\.[0-9a-f]{32}$"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LAST_MOMENT = datetime.max.replace(tzinfo=UTC)


def encode_cursor(moment: datetime, application_id: UUID) -> str:
    micros = (moment - _EPOCH) // timedelta(microseconds=1)
    return f"{micros}.{application_id.hex}"


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    """The cursor's position (the query parameter's pattern has been checked)."""
    micros, _, application_id = cursor.partition(".")
    try:
        moment = _EPOCH + timedelta(microseconds=int(micros))
    except OverflowError:
        moment = _LAST_MOMENT  # after every application: an empty page
    return moment, UUID(hex=application_id)


@router.get(
    "/lending/reviews",
    operation_id="get_review_queue",
    summary="The review queue, oldest first",
    response_model=ReviewQueuePage,
    responses=problem_responses(422),
)
async def reviews(
    pool: PoolDep,
    status: Annotated[
        Literal["pending", "completed"],
        Query(description="pending: waiting for an analyst; completed: reviewed"),
    ] = "pending",
    limit: Annotated[int, Query(ge=1, le=100, description="at most this many"), Digits] = 20,
    cursor: Annotated[
        str | None,
        Query(
            pattern=CURSOR_PATTERN,
            description="where the previous page ended: its `next_cursor`, unchanged (opaque; "
            "any string of this pattern is a valid position)",
        ),
    ] = None,
) -> JSONResponse:
    """Pending applications in the order they entered review (completed ones in the order
    they were reviewed), `limit` at a time; follow `next_cursor` for the next page. The
    cursor is a position in that order, so pages never repeat or skip an application."""
    after = decode_cursor(cursor) if cursor else None
    async with pool.acquire() as connection:
        rows = await review_queue(connection, status == "pending", after, limit + 1)
    page, more = rows[:limit], len(rows) > limit
    next_cursor = None
    if more:
        last = page[-1]
        moment = last.in_review_since if status == "pending" else last.reviewed_at
        assert moment is not None
        next_cursor = encode_cursor(moment, last.state.application_id)
    return JSONResponse(
        ReviewQueuePage(items=[Application.from_row(row) for row in page], next_cursor=next_cursor)
    )


@router.get(
    "/lending/reason-codes",
    operation_id="get_reason_codes",
    summary="The reason-code catalogue of every scoring model",
    response_model=list[ReasonCatalogue],
    responses=problem_responses(404),
)
async def reason_codes(
    model: Annotated[
        str | None, Query(max_length=100, description="one model, e.g. ratio-v1")
    ] = None,
) -> JSONResponse:
    """The codes an analyst may cite when deciding an application scored by each model,
    with the text an adverse-action notice shows."""
    keys = sorted(MODELS) if model is None else [model]
    catalogues = []
    for key in keys:
        try:
            scoring_model = get_model(key)
        except ValueError as error:
            raise NotFound(str(error)) from None
        catalogues.append(
            ReasonCatalogue(
                model=key,
                fingerprint=scoring_model.fingerprint,
                reasons=[
                    ReasonCodeText(code=code, text=text)
                    for code, text in scoring_model.reason_catalogue.items()
                ],
            )
        )
    return JSONResponse(catalogues)
