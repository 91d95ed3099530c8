"""Between HTTP and the command handlers (api/service/commands.py): the context of a
request, the rendering of an outcome, and the response (replays flagged)."""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response

from api.jsonio import dumps, to_plain
from api.service import metrics
from api.service.access import Principal
from api.service.commands import CommandResult, Outcome, RequestContext
from api.service.models import Application
from ledger.idempotency import StoredResponse, request_fingerprint


def command_context(
    request: Request, principal: Principal, idempotency_key: str | None, body: Any
) -> RequestContext:
    """`body` is the validated request body in JSON form: with the method and path it is
    the fingerprint that tells a retry from a different request under the same key."""
    return RequestContext(
        actor=principal.actor,
        correlation_id=request.state.correlation_id,
        idempotency_key=idempotency_key,
        fingerprint=request_fingerprint(request.method, request.url.path, body),
        idempotency_retention=request.app.state.service.settings.idempotency_retention,
    )


def render_application(outcome: Outcome) -> StoredResponse:
    return StoredResponse(200, dumps(to_plain(Application.from_row(outcome.row))))


def command_response(result: CommandResult[Outcome]) -> Response:
    if result.outcome is None:
        metrics.IDEMPOTENT_REPLAYS.inc()
        headers: dict[str, str] | None = {"Idempotent-Replayed": "true"}
    else:
        metrics.count_events(event.event_type for event in result.outcome.events)
        headers = None
    return Response(
        result.response.body,
        status_code=result.response.status_code,
        media_type="application/json",
        headers=headers,
    )
