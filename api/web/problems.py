"""The one place where errors become RFC 9457 application/problem+json responses."""

from __future__ import annotations

import logging
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

# Stable problem types for plain HTTP errors (status phrases differ between Python versions).
SLUG_BY_STATUS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    413: "body-too-large",
    415: "unsupported-media-type",
    428: "precondition-required",
    422: "validation-error",
    500: "internal-error",
    503: "service-unavailable",
}

STATUS_BY_ERROR: dict[type[LedgerError], int] = {
    InvalidCommand: 422,
    IdempotencyKeyReused: 422,
    IdempotencyRequestInFlight: 409,
    ConcurrencyConflict: 409,
    InvalidTransition: 409,
    NotAllowed: 403,
    NotFound: 404,
    PreconditionRequired: 428,
    RebuildInProgress: 409,
    RebuildNotPermitted: 409,
    NotYetSealed: 409,
    LedgerIntegrityError: 409,
}


class UnsupportedMediaType(Exception):
    pass


def problem(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    phrase = HTTPStatus(status).phrase
    body = {
        "type": PROBLEM_TYPE_PREFIX
        + (slug or SLUG_BY_STATUS.get(status) or phrase.lower().replace(" ", "-")),
        "title": title or phrase,
        "status": status,
        "detail": detail,
        **extra,
    }
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
        title="Request is invalid",
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
    return problem(403, str(error), role=error.role, operation_id=error.operation_id)


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
    status = next((code for kind, code in STATUS_BY_ERROR.items() if isinstance(error, kind)), 500)
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
    headers = None
    if isinstance(error, IdempotencyRequestInFlight):
        headers = {"Retry-After": str(error.retry_after_seconds)}
    slug = type(error).__name__
    slug = "".join("-" + c.lower() if c.isupper() else c for c in slug).lstrip("-")
    return problem(status, error.detail, slug=slug, title=error.title, headers=headers, **extra)


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
        title="Request is invalid",
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
    for kind in DATABASE_UNAVAILABLE:
        app.add_exception_handler(kind, _on_unavailable)
    for unstorable in UNSTORABLE_TEXT:
        app.add_exception_handler(unstorable, _on_unstorable_text)
    app.add_exception_handler(Exception, _on_unexpected)
