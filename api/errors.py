"""The one place where errors become RFC 9457 application/problem+json responses."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import asyncpg
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.jsonio import dumps
from ledger.errors import (
    ConcurrencyConflict,
    IdempotencyKeyReused,
    InvalidCommand,
    LedgerError,
    NotFound,
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
    422: "validation-error",
    500: "internal-error",
    503: "service-unavailable",
}

STATUS_BY_ERROR: dict[type[LedgerError], int] = {
    InvalidCommand: 422,
    IdempotencyKeyReused: 422,
    ConcurrencyConflict: 409,
    NotFound: 404,
}

# The database is down, restarting, or refusing connections: the request did nothing and
# may be retried.
DATABASE_UNAVAILABLE = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    asyncpg.AdminShutdownError,
    TimeoutError,
)


class ServiceUnavailable(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


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
    errors = _validation_errors(error)
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return problem(
        422,
        summary or "invalid request",
        slug="validation-error",
        title="Request is invalid",
        errors=errors,
    )


async def _on_http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, StarletteHTTPException)
    detail = error.detail if isinstance(error.detail, str) else HTTPStatus(error.status_code).phrase
    return problem(error.status_code, detail, headers=dict(error.headers or {}))


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
    if status == 500:
        logger.error("unmapped ledger error: %r", error)
    slug = type(error).__name__
    slug = "".join("-" + c.lower() if c.isupper() else c for c in slug).lstrip("-")
    return problem(status, error.detail, slug=slug, title=error.title, **extra)


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
    for kind in DATABASE_UNAVAILABLE:
        app.add_exception_handler(kind, _on_unavailable)
    app.add_exception_handler(Exception, _on_unexpected)
