"""Key management over HTTP (admin only, see api/auth.ALLOWED_ROLES). The same store as
`lending-ledger keys`; the CLI is the way in when no admin key exists yet."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from api.service.access import Authenticator, Role
from api.service.keystore import (
    KEY_NAME_PATTERN,
    KEY_NAME_RULE,
    ApiKey,
    create_key,
    list_keys,
    revoke_key,
)
from api.web.auth import PrincipalDep
from api.web.dependencies import PoolDep, problem_responses, require_json
from api.web.responses import ExactJSONRoute, JSONResponse
from ledger.errors import NotFound

logger = logging.getLogger(__name__)

router = APIRouter(route_class=ExactJSONRoute, default_response_class=JSONResponse)


class CreateApiKeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role
    name: Annotated[
        str,
        Field(
            pattern=f"^{KEY_NAME_PATTERN.pattern}$",
            description=f"Who holds the key ({KEY_NAME_RULE}); events record the caller "
            "as `<role>:<name>`.",
        ),
    ]


class ApiKeyInfo(BaseModel):
    id: str
    name: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def from_record(cls, record: ApiKey) -> ApiKeyInfo:
        return cls(
            id=record.id,
            name=record.name,
            role=Role(record.role),
            created_at=record.created_at,
            revoked_at=record.revoked_at,
        )


class CreatedApiKey(ApiKeyInfo):
    key: str = Field(description="The key itself. Shown this once: it is stored only hashed.")


@router.post(
    "/admin/keys",
    operation_id="create_api_key",
    summary="Create an API key (the key is in this response only)",
    status_code=201,
    response_model=CreatedApiKey,
    responses=problem_responses(401, 403, 415, 422),
    dependencies=[Depends(require_json)],
)
async def create_api_key(
    body: CreateApiKeyRequest, pool: PoolDep, principal: PrincipalDep
) -> JSONResponse:
    """Not idempotent on purpose: replaying the response to a retry would mean storing the
    key. A retry that may have succeeded leaves an extra key: list and revoke it.

    Never without a key: in open mode (no key exists yet) an anonymous request is a 403
    `forbidden` whose detail says how to create the first admin key, on the service's
    host: `lending-ledger keys create --role admin --name <you>`."""
    async with pool.acquire() as connection:
        record, key = await create_key(connection, body.name, body.role.value)
    logger.info("API key %s (%s) created by %s", record.id, record.role, principal.actor)
    info = ApiKeyInfo.from_record(record)
    return JSONResponse(CreatedApiKey(**info.model_dump(), key=key), status_code=201)


@router.get(
    "/admin/keys",
    operation_id="list_api_keys",
    summary="Every API key, revoked ones included (never a secret or hash)",
    response_model=list[ApiKeyInfo],
    responses=problem_responses(401, 403),
)
async def list_api_keys(pool: PoolDep) -> JSONResponse:
    async with pool.acquire() as connection:
        records = await list_keys(connection)
    return JSONResponse([ApiKeyInfo.from_record(record) for record in records])


@router.delete(
    "/admin/keys/{key_id}",
    operation_id="revoke_api_key",
    summary="Revoke an API key (effective in every worker within 5 s)",
    response_model=ApiKeyInfo,
    responses=problem_responses(401, 403, 404),
)
async def revoke_api_key(
    key_id: Annotated[str, Path(description="The key's id (16 hex digits; any other id is a 404)")],
    request: Request,
    pool: PoolDep,
    principal: PrincipalDep,
) -> JSONResponse:
    async with pool.acquire() as connection:
        record = await revoke_key(connection, key_id)
    if record is None:
        raise NotFound(f"no API key {key_id!r}")
    authenticator: Authenticator = request.app.state.authenticator
    authenticator.forget(record.id)
    logger.info("API key %s (%s) revoked by %s", record.id, record.role, principal.actor)
    return JSONResponse(ApiKeyInfo.from_record(record))
