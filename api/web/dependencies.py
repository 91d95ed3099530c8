"""What routes share: the service and its pool as `Annotated` dependencies, the JSON
media-type check, the Idempotency-Key header, application ids in paths, and the problem
responses each route documents."""

from __future__ import annotations

import email.message
import re
from typing import Annotated, Any
from uuid import UUID

import asyncpg
from fastapi import Depends, Header, Request
from fastapi.exceptions import RequestValidationError

from api.service.runtime import LedgerService
from api.web.models import Problem
from api.web.problems import PROBLEM_MEDIA_TYPE, UnsupportedMediaType
from ledger.errors import NotFound


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """Problem responses for `codes`, plus those any route may give: 503 (database down),
    422 (else FastAPI documents its own application/json validation error for routes with
    parameters), and 413 for routes taking a JSON body (those that declare 415)."""
    always = (422, 503, 413) if 415 in codes else (422, 503)
    return {
        code: {"model": Problem, "content": {PROBLEM_MEDIA_TYPE: {}}}
        for code in sorted({*codes, *always})
    }


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


def parse_application_id(raw: str) -> UUID:
    try:
        return UUID(raw)
    except ValueError:
        raise NotFound(f"no application {raw!r}") from None
