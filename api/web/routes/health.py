"""Liveness and readiness probes; they carry no key."""

from __future__ import annotations

from fastapi import APIRouter

from api.web.dependencies import ServiceDep
from api.web.models import Health
from api.web.responses import ExactJSONRoute, JSONResponse

router = APIRouter(route_class=ExactJSONRoute, default_response_class=JSONResponse)


@router.get(
    "/healthz", operation_id="get_health", summary="The process is alive", response_model=Health
)
async def healthz() -> JSONResponse:
    return JSONResponse(Health(status="ok"))


@router.get(
    "/readyz",
    operation_id="get_readiness",
    summary="The database is reachable and the schema applied",
    response_model=Health,
    responses={503: {"model": Health}},
)
async def readyz(service: ServiceDep) -> JSONResponse:
    if not service.ready:
        return JSONResponse(
            Health(status="starting", detail=service.status_detail), status_code=503
        )
    try:
        async with service.pool.acquire(timeout=2) as connection:
            await connection.fetchval("SELECT 1")
    except Exception as error:  # any failure here means "not ready", never a 500
        return JSONResponse(Health(status="unavailable", detail=str(error)), status_code=503)
    return JSONResponse(Health(status="ok"))
