"""Admin HTTP routes for projections: their status, and rebuilding one in the background.

A rebuild started here runs in this service process on a dedicated connection that holds
the projection's advisory lock, so a second request, from any process, gets 409 while it
runs. It needs a database role that owns the read-model tables (see projections/rebuild.py);
the service's restricted role gets 409 `rebuild-not-permitted` at once, before anything
starts. Progress and the outcome are in `projection_rebuilds`, read by GET /admin/projections.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, Field

from api.web.dependencies import PoolDep, ServiceDep, get_pool, problem_responses
from api.web.responses import ExactJSONRoute, JSONResponse
from ledger.db import Connection, connect
from ledger.errors import NotFound, RebuildInProgress
from projections.rebuild import (
    RebuildStatus,
    check_rebuild_privileges,
    last_rebuild,
    live_checkpoint,
    log_head,
    rebuild_locked,
    record_rebuild_start,
    try_lock_projection,
    unlock_projection,
)
from projections.runner import Projector, all_projectors, find_projector, is_inline

logger = logging.getLogger(__name__)

router = APIRouter(route_class=ExactJSONRoute, default_response_class=JSONResponse)

STATUS_PATH = "/admin/projections"

ProjectionName = Annotated[str, Path(max_length=100, description="the projection's name")]


class LastRebuild(BaseModel):
    status: str = Field(description="running | succeeded | failed | interrupted")
    started_at: datetime
    finished_at: datetime | None
    events: int = Field(description="events folded into the rebuilt tables")
    through_seq: int | None = Field(description="the last ledger seq the rebuild covered")
    rows: dict[str, int] | None = Field(
        description="rows per table, counted right after the swap; null until counted (a "
        "moment after the status turns succeeded) and for rebuilds that did not succeed"
    )
    error: str | None


class ProjectionStatus(BaseModel):
    name: str
    mode: str = Field(
        description="inline: written in every append transaction; runner: written only by "
        "the projection runner (catch-up)"
    )
    tables: list[str]
    checkpoint: int | None = Field(
        description="the last seq the runner applied (runner projections; null for inline)"
    )
    log_head: int = Field(description="the last seq in the ledger log")
    last_rebuild: LastRebuild | None


class RebuildAccepted(BaseModel):
    projection: str
    status: str = Field(description="always `running`")
    status_url: str = Field(description="where to follow it: GET /admin/projections")


def _projector(name: str) -> Projector:
    projector = find_projector(name)
    if projector is None:
        raise NotFound(f"no projection {name!r}")
    return projector


@router.get(
    "/admin/projections",
    operation_id="get_projections",
    summary="Every projection: mode, checkpoint and its last rebuild",
    response_model=list[ProjectionStatus],
    responses=problem_responses(),
)
async def projections(pool: PoolDep) -> JSONResponse:
    statuses = []
    async with pool.acquire() as connection:
        head = await log_head(connection)
        for projector in all_projectors():
            rebuild = await last_rebuild(connection, projector.name)
            inline = is_inline(projector)
            statuses.append(
                ProjectionStatus(
                    name=projector.name,
                    mode="inline" if inline else "runner",
                    tables=list(projector.tables),
                    checkpoint=None
                    if inline
                    else await live_checkpoint(connection, projector.name),
                    log_head=head,
                    last_rebuild=None if rebuild is None else _last_rebuild(rebuild),
                )
            )
    return JSONResponse(statuses)


def _last_rebuild(rebuild: RebuildStatus) -> LastRebuild:
    return LastRebuild(
        status=rebuild.status,
        started_at=rebuild.started_at,
        finished_at=rebuild.finished_at,
        events=rebuild.events,
        through_seq=rebuild.through_seq,
        rows=rebuild.rows,
        error=rebuild.error,
    )


@router.post(
    "/admin/projections/{name}/rebuild",
    operation_id="rebuild_projection",
    summary="Rebuild a projection from the events in the background (202; follow the status)",
    status_code=202,
    response_model=RebuildAccepted,
    responses=problem_responses(404, 409),
    dependencies=[Depends(get_pool)],  # 503 problem+json while the database is not ready
)
async def rebuild_projection(name: ProjectionName, service: ServiceDep) -> JSONResponse:
    """Starts the rebuild and answers at once. 409 `rebuild-in-progress` while a rebuild or
    catch-up of the projection runs anywhere; 409 `rebuild-not-permitted` when the
    service's database role cannot swap tables (rebuild with the CLI as the schema owner)."""
    projector = _projector(name)
    connection = await connect(service.database_url)
    try:
        await check_rebuild_privileges(connection, projector)
        if not await try_lock_projection(connection, projector.name):
            raise RebuildInProgress(
                f"a rebuild or catch-up of projection {projector.name!r} is already running"
            )
        # Visible as running before the answer: the status URL never shows the last one.
        await record_rebuild_start(connection, projector.name)
    except BaseException:
        await connection.close()
        raise
    service.run_in_background(_rebuild(connection, projector), name=f"rebuild-{projector.name}")
    return JSONResponse(
        RebuildAccepted(projection=projector.name, status="running", status_url=STATUS_PATH),
        status_code=202,
        headers={"Location": STATUS_PATH},
    )


async def _rebuild(connection: Connection, projector: Projector) -> None:
    """The background rebuild; the outcome is recorded in projection_rebuilds and logged."""
    try:
        result = await rebuild_locked(connection, projector)
        logger.info(
            "rebuilt projection %s: %d events in %.2f s",
            projector.name,
            result.events,
            result.seconds,
        )
    except Exception:
        logger.exception("rebuild of projection %s failed", projector.name)
    finally:
        try:
            if not connection.is_closed():
                await unlock_projection(connection, projector.name)
        finally:
            await connection.close()
