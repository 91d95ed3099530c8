"""Operations for admins: projections against the log head, unsequenced events, the latest
seal's age, and API keys (create, shown once; revoke)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Form, Query, Request, Response

from api.service.access import Authenticator, Role
from api.service.keystore import KEY_NAME_PATTERN, KEY_NAME_RULE, create_key, list_keys, revoke_key
from api.web.console import sql
from api.web.console.base import (
    PREFIX,
    ConsoleRoute,
    age,
    console_state,
    principal_of,
    redirect,
    render,
    service_of,
)
from ledger.seals import latest_seal
from projections.rebuild import last_rebuild, live_checkpoint, log_head
from projections.runner import all_projectors, is_inline

logger = logging.getLogger(__name__)

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

ROLES = [role.value for role in Role]


@dataclass(frozen=True, slots=True)
class ProjectionLine:
    name: str
    mode: str
    checkpoint: int | None
    behind: int | None
    last_rebuild: str


async def _page(
    request: Request,
    status_code: int = 200,
    created: tuple[str, str, str] | None = None,
    problem: str | None = None,
    notice: str | None = None,
) -> Response:
    service = service_of(request)
    async with service.pool.acquire() as connection:
        head = await log_head(connection)
        lines = []
        for projector in all_projectors():
            inline = is_inline(projector)
            checkpoint = None if inline else await live_checkpoint(connection, projector.name)
            rebuild = await last_rebuild(connection, projector.name)
            lines.append(
                ProjectionLine(
                    name=projector.name,
                    mode="inline" if inline else "runner",
                    checkpoint=checkpoint,
                    behind=None if checkpoint is None else head - checkpoint,
                    last_rebuild="never"
                    if rebuild is None
                    else f"{rebuild.status}, started {rebuild.started_at:%Y-%m-%d %H:%M:%S}",
                )
            )
        unsequenced: int = await connection.fetchval(sql.COUNT_UNSEQUENCED)
        seal = await latest_seal(connection)
        keys = await list_keys(connection)
    return render(
        request,
        "operations.html",
        status_code,
        head=head,
        projections=lines,
        unsequenced=unsequenced,
        seal=seal,
        seal_age=age(seal.sealed_at) if seal is not None else None,
        unsealed=head - (seal.tree_size if seal is not None else 0),
        keys=keys,
        roles=ROLES,
        created=created,
        problem=problem,
        notice=notice,
        name_rule=KEY_NAME_RULE,
        now=datetime.now(UTC),
    )


@router.get(f"{PREFIX}/operations", operation_id="console_operations")
async def operations(
    request: Request, revoked: Annotated[str | None, Query(max_length=40)] = None
) -> Response:
    notice = (
        f"Key {revoked} revoked: it stops working everywhere within seconds." if revoked else None
    )
    return await _page(request, notice=notice)


@router.post(f"{PREFIX}/operations/keys", operation_id="console_create_key")
async def create(
    request: Request,
    role: Annotated[str, Form(max_length=20)] = "",
    name: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    """The new key is on this response's page only (no-store): it is stored only hashed."""
    if role not in ROLES:
        return await _page(request, 422, problem=f"Choose a role: {', '.join(ROLES)}.")
    if not KEY_NAME_PATTERN.fullmatch(name):
        return await _page(request, 422, problem=f"A key name must be {KEY_NAME_RULE}.")
    async with service_of(request).pool.acquire() as connection:
        record, key = await create_key(connection, name, role)
    logger.info(
        "API key %s (%s) created by %s (console)",
        record.id,
        record.role,
        principal_of(request).actor,
    )
    return await _page(request, 201, created=(record.id, f"{record.role}:{record.name}", key))


@router.post(f"{PREFIX}/operations/keys/{{key_id}}/revoke", operation_id="console_revoke_key")
async def revoke(request: Request, key_id: str) -> Response:
    async with service_of(request).pool.acquire() as connection:
        record = await revoke_key(connection, key_id)
    if record is None:
        return await _page(request, 404, problem=f"No API key {key_id!r}.")
    authenticator: Authenticator = request.app.state.authenticator
    authenticator.forget(record.id)
    console_state(request).keys.forget(record.id)
    logger.info(
        "API key %s (%s) revoked by %s (console)",
        record.id,
        record.role,
        principal_of(request).actor,
    )
    return redirect(f"{PREFIX}/operations?revoked={record.id}")
