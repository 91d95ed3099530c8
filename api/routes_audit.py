"""Audit routes: score reconstruction."""

from __future__ import annotations

from fastapi import APIRouter

from api.audit_models import ScoreReconstruction, ScoreReconstructionReport
from api.jsonio import ExactJSONRoute, JSONResponse
from api.routes import PoolDep, _parse_application_id, _problem_responses
from ledger.application import stream_id_for
from ledger.errors import NotFound
from ledger.reconstruction import reconstruct_stream
from ledger.scoring import MODELS
from ledger.store import read_stream

router = APIRouter(route_class=ExactJSONRoute, default_response_class=JSONResponse)


@router.get(
    "/audit/applications/{application_id}/scores",
    operation_id="get_score_reconstruction",
    summary="Every recorded score of the application, recomputed and compared",
    response_model=ScoreReconstructionReport,
    responses=_problem_responses(404),
)
async def score_reconstruction(application_id: str, pool: PoolDep) -> JSONResponse:
    """For each `ApplicationScored` event: the recorded inputs, model and fingerprint, score,
    reasons and decision, and the same model version from the registry run again on those
    inputs. A model version missing from the registry, or registered with another
    fingerprint, is reported in `status`, never as an error."""
    parsed = _parse_application_id(application_id)
    async with pool.acquire() as connection:
        events = await read_stream(connection, stream_id_for(parsed))
    if not events:
        raise NotFound(f"no application {application_id!r}")
    checks = reconstruct_stream(events, MODELS)
    return JSONResponse(
        ScoreReconstructionReport(
            application_id=parsed,
            scores=[ScoreReconstruction.from_check(check) for check in checks],
        )
    )
