"""What routes share: the service and its pool as `Annotated` dependencies, the JSON
media-type check, the Idempotency-Key header, application ids in paths, and the problem
responses each route documents."""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Annotated, Any
from uuid import UUID

import asyncpg
from fastapi import Depends, Header, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BeforeValidator

from api.service.runtime import LedgerService
from api.web.models import Problem
from api.web.problems import PROBLEM_MEDIA_TYPE, UnsupportedMediaType
from ledger.errors import NotFound


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """Problem responses for `codes`, plus those any route may give: 503 (database down),
    422 (else FastAPI documents its own application/json validation error for routes with
    parameters), and 413 for routes taking a JSON body (those that declare 415).

    The one place problem responses are declared: 401 and 403 come from here too, added to
    each operation by api/web/openapi.py from the roles table."""
    always = (422, 503, 413) if 415 in codes else (422, 503)
    return {code: problem_response(code) for code in sorted({*codes, *always})}


def problem_response(code: int) -> dict[str, Any]:
    """One documented problem response (FastAPI's `responses=` form)."""
    return {
        "model": Problem,
        "content": {PROBLEM_MEDIA_TYPE: {}},
        "description": PROBLEM_DESCRIPTIONS.get(code, HTTPStatus(code).phrase),
    }


PROBLEM_DESCRIPTIONS = {
    401: "No API key, or a malformed, unknown, wrong or revoked one (`unauthorized`).",
    403: "The key's role may not call this operation (`forbidden`), or a rule about who may "
    "do what refused it (`not-allowed`).",
    404: "Not found (`not-found`).",
    409: "Conflict: see the operation's description for which problem types.",
    413: "The body is over the size limit (`body-too-large`).",
    415: "The body is not JSON (`unsupported-media-type`).",
    422: "The request breaks a rule (`validation-error`; `errors` names each field).",
    428: "The version acted on is missing (`precondition-required`).",
    503: "The database is not ready or unreachable (`service-unavailable`); nothing was "
    "written; retry.",
}


# --- Integers in query and path parameters: ASCII digits only ---


def _digits_only(value: Any) -> Any:
    """Python's int() also reads " 5", "+5", "5_0" and non-ASCII digits: refuse them, as
    the headers do. Only what arrives as text is checked (defaults are ints)."""
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError("must be a whole number written in ASCII digits only (like 5)")
    return value


Digits = BeforeValidator(_digits_only)
"""Every integer query or path parameter is `Annotated[int, Query(...), Digits]`: strict
ASCII digits. (After Query or Path: in front of them, pydantic would drop the bounds
from the published schema.)"""


# All `async def`, though none awaits: FastAPI runs a plain `def` dependency in its thread
# pool, and that hop (per dependency, per request) cost more than the work in the profile.


def service_of(request: Request) -> LedgerService:
    """The service, for handlers on hot routes that read it from the request instead of
    resolving a dependency."""
    service: LedgerService = request.app.state.service
    return service


async def get_service(request: Request) -> LedgerService:
    return service_of(request)


ServiceDep = Annotated[LedgerService, Depends(get_service)]


async def get_pool(service: ServiceDep) -> asyncpg.Pool:
    return service.pool  # 503 problem+json while the database is not ready


PoolDep = Annotated[asyncpg.Pool, Depends(get_pool)]

_LSN = re.compile(r"[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}")


async def get_read_pool(request: Request, service: ServiceDep) -> asyncpg.Pool:
    """For reads that may come from the replica (api/web/replicas.py): the replica, or the
    primary when there is none or it has not replayed up to the request's `X-Min-LSN`."""
    min_lsn = request.headers.get("x-min-lsn")
    if min_lsn is not None and not _LSN.fullmatch(min_lsn):
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("header", "X-Min-LSN"),
                    "msg": "must be a WAL position like 0/16B3748 (an X-Ledger-LSN value)",
                    "input": min_lsn,
                }
            ]
        )
    return await service.read_pool_at(min_lsn)


ReadPoolDep = Annotated[asyncpg.Pool, Depends(get_read_pool)]


async def require_json(request: Request) -> None:
    if not is_json_media_type(request.headers.get("content-type", "")):
        raise UnsupportedMediaType


def is_json_media_type(content_type: str) -> bool:
    """`application/json` or `application/<anything>+json`, parameters allowed; read the way
    the standard library's email.message reads a Content-Type (a value that is not one
    `type/subtype` counts as text/plain)."""
    media = content_type.partition(";")[0].strip().lower()
    if media.count("/") != 1:
        return False
    maintype, _, subtype = media.partition("/")
    return maintype == "application" and (subtype == "json" or subtype.endswith("+json"))


IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]+$"

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description="Repeat a request with the same key to get the first response again "
        "without writing anything twice (1 to 200 printable ASCII characters).",
    ),
]


def parse_application_id(raw: str) -> UUID:
    try:
        return UUID(raw)
    except ValueError:
        raise NotFound(f"no application {raw!r}") from None
