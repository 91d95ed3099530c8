"""The one place where errors become RFC 9457 application/problem+json responses."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import asyncpg
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from api.jsonio import dumps
from api.service.errors import (
    DATABASE_UNAVAILABLE,
    NotAuthenticated,
    OpenModeRefused,
    RoleNotAllowed,
    ServiceUnavailable,
)
from api.web.auth import authorize
from ledger.errors import (
    ConcurrencyConflict,
    IdempotencyKeyReused,
    IdempotencyRequestInFlight,
    InvalidCommand,
    InvalidTransition,
    LedgerError,
    LedgerIntegrityError,
    NotAllowed,
    NotFound,
    NotYetSealed,
    PreconditionRequired,
    RebuildInProgress,
    RebuildNotPermitted,
)

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:lending-ledger:problem:"


@dataclass(frozen=True, slots=True)
class ProblemType:
    """One problem type: `type` is PROBLEM_TYPE_PREFIX + slug, and never changes."""

    status: int
    slug: str
    title: str
    when: str
    retry: str


# The one table of problem types. Every problem+json the service writes has one of these
# types (problem() refuses any other), and docs/api.md's error table is this table,
# rendered by problem_types_table() (tests/unit/test_problem_types.py keeps them equal).
PROBLEM_TYPES: tuple[ProblemType, ...] = (
    ProblemType(
        400,
        "bad-request",
        "Bad Request",
        "the request could not be read at all (e.g. the connection broke mid-body)",
        "no",
    ),
    ProblemType(
        401,
        "unauthorized",
        "Unauthorized",
        "no API key, or a malformed, unknown, wrong or revoked one (has `WWW-Authenticate: "
        "Bearer`); nothing was written",
        "no, send a valid key",
    ),
    ProblemType(
        403,
        "forbidden",
        "Forbidden",
        "the key's role may not call this operation (`role`, `operation_id`), or an "
        "anonymous caller in open mode tried to create a key; nothing was written",
        "no",
    ),
    ProblemType(
        403,
        "not-allowed",
        "Not allowed for this caller",
        "maker-checker: the submitter reviewing, a non-analyst declining",
        "no",
    ),
    ProblemType(
        404,
        "not-found",
        "Not Found",
        "unknown route (paths are exact: no trailing-slash redirects), application or malformed id",
        "no",
    ),
    ProblemType(
        405,
        "method-not-allowed",
        "Method Not Allowed",
        "wrong method for the path (`Allow` lists every method the path has)",
        "no",
    ),
    ProblemType(
        409,
        "concurrency-conflict",
        "Concurrent modification",
        "another writer changed the stream first, or your `If-Match` / `expected_version` "
        "is stale (`current_version` says what it is now)",
        "re-read, then decide again",
    ),
    ProblemType(
        409,
        "idempotency-request-in-flight",
        "Request with this idempotency key in flight",
        "a request with the same `Idempotency-Key` is still running (has `Retry-After: 1`); "
        "nothing was written",
        "yes, same key, after a moment",
    ),
    ProblemType(
        409,
        "rebuild-in-progress",
        "Rebuild in progress",
        "a rebuild or catch-up of the projection is already running (any process)",
        "yes, once it is done (`GET /admin/projections`)",
    ),
    ProblemType(
        409,
        "rebuild-not-permitted",
        "Rebuild needs the schema owner",
        "the service's database role cannot swap tables; nothing was started",
        "no, run `lending-ledger rebuild` as the schema owner",
    ),
    ProblemType(
        409,
        "invalid-transition",
        "Not allowed in the current status",
        "the command is not allowed in the application's status (`current_status`)",
        "no",
    ),
    ProblemType(
        409,
        "not-yet-sealed",
        "Not sealed yet",
        "the event is not in the latest seal yet, or nothing is sealed yet",
        "yes, after the next seal",
    ),
    ProblemType(
        409,
        "ledger-integrity-error",
        "Ledger integrity problem",
        "the stored ledger or seals were altered behind the triggers; nothing was sealed",
        "no, run `lending-ledger verify`",
    ),
    ProblemType(
        413,
        "body-too-large",
        "Content Too Large",
        "body over `LEDGER_MAX_BODY_BYTES`",
        "no",
    ),
    ProblemType(
        415,
        "unsupported-media-type",
        "Unsupported Media Type",
        "body not sent as JSON",
        "no",
    ),
    ProblemType(
        422,
        "validation-error",
        "Request is invalid",
        "a field, query parameter or header breaks a rule, or the command breaks a "
        "business rule (`errors` names the field); nothing was written",
        "no, fix the request",
    ),
    ProblemType(
        422,
        "idempotency-key-reused",
        "Idempotency key reused",
        "key already used for a different request",
        "no, use a new key",
    ),
    ProblemType(
        428,
        "precondition-required",
        "Precondition required",
        "a review without the version it acts on",
        "add `If-Match`",
    ),
    ProblemType(
        503,
        "service-unavailable",
        "Service Unavailable",
        "database not ready or unreachable (has `Retry-After`); nothing was written",
        "yes, same key",
    ),
    ProblemType(
        503,
        "no-sequencer",
        "No sequencer",
        "`/readyz` only: no process holds the sequencer's lead, so the feed and the seals "
        "stand still",
        "yes, later",
    ),
    ProblemType(
        503,
        "sequencer-lagging",
        "Sequencer lagging",
        "`/readyz` only: the oldest committed event without a seq has waited longer than "
        "`LEDGER_READY_MAX_SEQUENCER_LAG_SECONDS`",
        "yes, later",
    ),
    ProblemType(
        500,
        "internal-error",
        "Internal Server Error",
        "a bug; logged with the correlation id",
        "report it",
    ),
)

PROBLEM_TYPE_BY_SLUG = {kind.slug: kind for kind in PROBLEM_TYPES}

# The problem type of a plain HTTP error (Starlette's, or one raised by a middleware).
SLUG_BY_STATUS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    413: "body-too-large",
    415: "unsupported-media-type",
    422: "validation-error",
    428: "precondition-required",
    500: "internal-error",
    503: "service-unavailable",
}

# The problem type of each domain error (the first class that matches; the base class of a
# domain error that is not here is a bug: 500 internal-error).
SLUG_BY_ERROR: dict[type[LedgerError], str] = {
    InvalidCommand: "validation-error",
    IdempotencyKeyReused: "idempotency-key-reused",
    IdempotencyRequestInFlight: "idempotency-request-in-flight",
    ConcurrencyConflict: "concurrency-conflict",
    InvalidTransition: "invalid-transition",
    NotAllowed: "not-allowed",
    NotFound: "not-found",
    PreconditionRequired: "precondition-required",
    RebuildInProgress: "rebuild-in-progress",
    RebuildNotPermitted: "rebuild-not-permitted",
    NotYetSealed: "not-yet-sealed",
    LedgerIntegrityError: "ledger-integrity-error",
}


def problem_types_table() -> str:
    """docs/api.md's error table (between its `problem-types` markers)."""
    lines = [
        f"| status | type (after `{PROBLEM_TYPE_PREFIX}`) | when | retry? |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| {kind.status} | `{kind.slug}` | {kind.when} | {kind.retry} |" for kind in PROBLEM_TYPES
    ]
    return "\n".join(lines)


class UnsupportedMediaType(Exception):
    pass


def problem_body(
    status: int, detail: str, *, slug: str | None = None, title: str | None = None, **extra: Any
) -> dict[str, Any]:
    """A problem's JSON object. `slug` defaults to the type of `status`; it must be one of
    PROBLEM_TYPES (a KeyError otherwise: a type missing from the table is a bug)."""
    kind = PROBLEM_TYPE_BY_SLUG[slug or SLUG_BY_STATUS.get(status, "internal-error")]
    return {
        "type": PROBLEM_TYPE_PREFIX + kind.slug,
        "title": title or kind.title,
        "status": status,
        "detail": detail,
        **extra,
    }


def problem(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    """An application/problem+json response (see problem_body)."""
    body = problem_body(status, detail, slug=slug, title=title, **extra)
    return Response(dumps(body), status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


_LOCATIONS = ("body", "query", "path", "header")


def _field_name(location: tuple[Any, ...], error_type: str) -> str:
    if error_type == "json_invalid":
        return "body"
    parts = location[1:] if location and location[0] in _LOCATIONS else location
    return ".".join(str(part) for part in parts) or "body"


def _validation_errors(error: RequestValidationError) -> list[dict[str, str]]:
    errors = []
    for item in error.errors():
        location = tuple(item.get("loc", ()))
        error_type = str(item.get("type", "invalid"))
        message = str(item.get("msg", "invalid"))
        if error_type == "json_invalid":
            context = item.get("ctx") or {}
            message = f"request body is not valid JSON: {context.get('error', message)}"
        errors.append(
            {
                "field": _field_name(location, error_type),
                "location": str(location[0]) if location else "body",
                "message": message.removeprefix("Value error, "),
                "type": error_type,
            }
        )
    return errors


async def _on_validation_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, RequestValidationError)
    refused = await _refusal_before_validation(request)
    if refused is not None:
        return refused
    errors = _validation_errors(error)
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return problem(
        422,
        summary or "invalid request",
        slug="validation-error",
        errors=errors,
    )


async def _refusal_before_validation(request: Request) -> Response | None:
    """FastAPI parses a JSON body before it runs any dependency, so a malformed body is
    reported before the caller was authorised. Authorise first: a caller without a valid
    key or without the right gets 401/403, never a description of the request."""
    if hasattr(request.state, "principal") or "route" not in request.scope:
        return None  # authorised already, or not a route of ours
    try:
        await authorize(request)
    except NotAuthenticated as refusal:
        return await _on_not_authenticated(request, refusal)
    except RoleNotAllowed as refusal:
        return await _on_role_not_allowed(request, refusal)
    except OpenModeRefused as refusal:
        return await _on_open_mode_refused(request, refusal)
    except (ServiceUnavailable, *DATABASE_UNAVAILABLE) as unavailable:
        return await _on_unavailable(request, unavailable)
    return None


async def _on_not_authenticated(request: Request, error: Exception) -> Response:
    assert isinstance(error, NotAuthenticated)
    # RFC 6750: a sent key that failed is an invalid_token; no key gets the bare challenge.
    challenge = 'Bearer realm="lending-ledger"'
    if error.key_sent:
        challenge += ', error="invalid_token"'
    return problem(401, error.detail, headers={"WWW-Authenticate": challenge})


async def _on_role_not_allowed(request: Request, error: Exception) -> Response:
    assert isinstance(error, RoleNotAllowed)
    return problem(403, str(error), role=str(error.role), operation_id=error.operation_id)


async def _on_open_mode_refused(request: Request, error: Exception) -> Response:
    assert isinstance(error, OpenModeRefused)
    return problem(403, error.detail, operation_id=error.operation_id)


def _allowed_methods(request: Request) -> str:
    """Every method the request's path supports. Starlette's 405 names only the methods of
    the first route whose path matched, and a path may have one route per method."""
    methods = []
    for method in ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT"):
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes):
            methods.append(method)
    return ", ".join(methods)


async def _on_http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, StarletteHTTPException)
    detail = error.detail if isinstance(error.detail, str) else HTTPStatus(error.status_code).phrase
    headers = dict(error.headers or {})
    if error.status_code == 405 and (allowed := _allowed_methods(request)):
        headers["Allow"] = allowed
    return problem(error.status_code, detail, headers=headers)


async def _on_ledger_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, LedgerError)
    slug = next(
        (slug for kind, slug in SLUG_BY_ERROR.items() if isinstance(error, kind)), "internal-error"
    )
    status = PROBLEM_TYPE_BY_SLUG[slug].status
    extra: dict[str, Any] = {}
    if isinstance(error, InvalidCommand) and error.field:
        extra["errors"] = [
            {
                "field": error.field,
                "location": "body",
                "message": error.detail,
                "type": "value_error",
            }
        ]
    if isinstance(error, InvalidTransition):
        extra["current_status"] = error.current_status
    if isinstance(error, ConcurrencyConflict) and error.current_version is not None:
        extra["current_version"] = error.current_version
    if status == 500:
        logger.error("unmapped ledger error: %r", error)
        return problem(500, "an unexpected error occurred; it has been logged")
    headers = None
    if isinstance(error, IdempotencyRequestInFlight):
        headers = {"Retry-After": str(error.retry_after_seconds)}
    return problem(status, error.detail, slug=slug, headers=headers, **extra)


async def _on_unavailable(request: Request, error: Exception) -> Response:
    detail = error.detail if isinstance(error, ServiceUnavailable) else "database unavailable"
    if not isinstance(error, ServiceUnavailable):
        logger.warning(
            "database unavailable during %s %s: %r", request.method, request.url.path, error
        )
    return problem(
        503,
        f"{detail}; nothing was written, retry later",
        slug="service-unavailable",
        headers={"Retry-After": "1"},
    )


async def _on_unsupported_media_type(request: Request, error: Exception) -> Response:
    return problem(415, "send the request body as application/json")


# PostgreSQL text and jsonb cannot hold NUL (\u0000): a request carrying one in a field no
# pattern excludes fails when it is written or compared. The transaction is rolled back, so
# it is bad input with nothing written: 422, never a 500.
UNSTORABLE_TEXT = (asyncpg.CharacterNotInRepertoireError, asyncpg.UntranslatableCharacterError)


async def _on_unstorable_text(request: Request, error: Exception) -> Response:
    message = "a text value contains NUL (\\u0000), which cannot be stored"
    where = "query" if request.method in ("GET", "HEAD", "DELETE") else "body"
    return problem(
        422,
        f"{message}; nothing was written",
        slug="validation-error",
        errors=[{"field": where, "location": where, "message": message, "type": "value_error"}],
    )


async def _on_unexpected(request: Request, error: Exception) -> Response:
    logger.exception(
        "unexpected error during %s %s (correlation id %s)",
        request.method,
        request.url.path,
        getattr(request.state, "correlation_id", None),
    )
    return problem(500, "an unexpected error occurred; it has been logged")


def register_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(LedgerError, _on_ledger_error)
    app.add_exception_handler(ServiceUnavailable, _on_unavailable)
    app.add_exception_handler(UnsupportedMediaType, _on_unsupported_media_type)
    app.add_exception_handler(NotAuthenticated, _on_not_authenticated)
    app.add_exception_handler(RoleNotAllowed, _on_role_not_allowed)
    app.add_exception_handler(OpenModeRefused, _on_open_mode_refused)
    for kind in DATABASE_UNAVAILABLE:
        app.add_exception_handler(kind, _on_unavailable)
    for unstorable in UNSTORABLE_TEXT:
        app.add_exception_handler(unstorable, _on_unstorable_text)
    app.add_exception_handler(Exception, _on_unexpected)
