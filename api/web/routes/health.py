"""Liveness and readiness probes; they carry no key.

/healthz is liveness only: the process answers. /readyz is readiness: the database answers
with the schema applied, some process leads the sequencer, and the oldest committed event
without a seq has waited at most LEDGER_READY_MAX_SEQUENCER_LAG_SECONDS. It recovers by
itself when these hold again.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.web.dependencies import ServiceDep
from api.web.models import Health
from api.web.problems import problem
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
    responses={
        503: {
            "model": Health,
            "description": "Not ready: this Health body while starting or while the database "
            "is unreachable; application/problem+json (types no-sequencer, "
            "sequencer-lagging) while no sequencer leads or it is behind.",
        }
    },
)
async def readyz(service: ServiceDep) -> Response:
    if not service.ready:
        return JSONResponse(
            Health(status="starting", detail=service.status_detail), status_code=503
        )
    try:
        status, lag = await service.log_status()
    except Exception as error:  # any failure here means "not ready", never a 500
        return JSONResponse(Health(status="unavailable", detail=str(error)), status_code=503)
    # The sequencer falling behind, or no sequencer at all: the ledger takes writes but the
    # feed, the SSE stream and the seals stand still. 503 problem+json saying which.
    threshold = service.settings.ready_max_sequencer_lag_seconds
    if not status.sequencer_leads:
        return problem(
            503,
            "no sequencer holds the lead: committed events get no seq, the feed and the "
            "seals stand still (docs/operations.md, 'The sequencer and the ledger log')",
            slug="no-sequencer",
            title="No sequencer",
            headers={"Retry-After": "1"},
            unsequenced=status.unsequenced,
        )
    if threshold and lag > threshold:
        return problem(
            503,
            f"the oldest of {status.unsequenced} committed events without a seq has waited "
            f"{lag:.0f} s (more than {threshold} s): a long transaction holds the sequencer "
            "back (docs/operations.md, 'Sequencer lag')",
            slug="sequencer-lagging",
            title="Sequencer lagging",
            headers={"Retry-After": "5"},
            unsequenced=status.unsequenced,
            lag_seconds=round(lag, 3),
        )
    return JSONResponse(Health(status="ok"))
