"""Between HTTP and the command handlers (api/service/commands.py): the context of a
request, the rendering of an outcome, and the response (replays flagged)."""

from __future__ import annotations

from datetime import timedelta

from fastapi import Request, Response
from pydantic import BaseModel

from api.jsonio import dumps
from api.service import metrics
from api.service.access import Principal
from api.service.commands import CommandResult, Outcome, RequestContext
from ledger.idempotency import StoredResponse, request_fingerprint
from projections.applications import ApplicationRow


def command_context(
    request: Request, principal: Principal, idempotency_key: str | None, body: BaseModel
) -> RequestContext:
    return request_context(
        principal,
        request.state.correlation_id,
        idempotency_key,
        request.method,
        request.url.path,
        body,
        request.app.state.service.settings.idempotency_retention,
    )


def request_context(
    principal: Principal,
    correlation_id: str,
    idempotency_key: str | None,
    method: str,
    path: str,
    body: BaseModel,
    retention: timedelta,
) -> RequestContext:
    """`body` is the validated request body: in JSON form, with the method and path, it is
    the fingerprint that tells a retry from a different request under the same key."""
    # The fingerprint is only ever compared under a key: no key, no hashing.
    fingerprint = (
        request_fingerprint(method, path, body.model_dump(mode="json"))
        if idempotency_key is not None
        else b""
    )
    return RequestContext(
        actor=principal.actor,
        correlation_id=correlation_id,
        idempotency_key=idempotency_key,
        fingerprint=fingerprint,
        idempotency_retention=retention,
    )


def application_json(row: ApplicationRow) -> bytes:
    """`Application.from_row(row)` as JSON, without the model pass: the same keys in the
    model's order and the same values, so the same bytes (tests/integration/test_api.py
    holds the two equal). The model stays the route's documented `response_model`."""
    state = row.state
    return dumps(
        {
            "application_id": state.application_id,
            "applicant_id": state.applicant_id,
            "amount": state.amount,
            "income": state.income,
            "employment_years": state.employment_years,
            "risk_score": state.risk_score,
            "decision": state.decision,
            "status": state.status,
            "scoring_model": state.model_key,
            "reason_codes": list(state.reason_codes),
            "recommended_outcome": state.recommended_outcome,
            "submitted_by": state.submitted_by,
            "decided_by": state.decided_by,
            "in_review_since": row.in_review_since,
            "reviewed_at": row.reviewed_at,
            "created_at": row.created_at,
            "updated_at": row.updated_at,
            "stream_version": state.version,
        }
    )


def render_application(outcome: Outcome) -> StoredResponse:
    return StoredResponse(200, application_json(outcome.row))


REPLAYED_HEADER = ("Idempotent-Replayed", "true")


def counted(result: CommandResult[Outcome]) -> bool:
    """Count the command's events (or its replay) in the metrics; whether it was a replay."""
    if result.outcome is None:
        metrics.IDEMPOTENT_REPLAYS.inc()
        return True
    metrics.count_events(event.event_type for event in result.outcome.events)
    return False


def command_response(result: CommandResult[Outcome]) -> Response:
    return Response(
        result.response.body,
        status_code=result.response.status_code,
        media_type="application/json",
        headers=dict([REPLAYED_HEADER]) if counted(result) else None,
    )
