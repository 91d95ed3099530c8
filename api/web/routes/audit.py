"""Audit routes: score reconstruction and the decision record."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse, Response

from api.service.audit_models import ScoreReconstruction, ScoreReconstructionReport
from api.service.records import DecisionRecord, read_decision_record, render_html
from api.web.dependencies import (
    ReadPoolDep,
    ServiceDep,
    parse_application_id,
    problem_responses,
)
from api.web.responses import ExactJSONRoute, JSONResponse
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
    responses=problem_responses(404),
)
async def score_reconstruction(application_id: str, pool: ReadPoolDep) -> JSONResponse:
    """For each `ApplicationScored` event: the recorded inputs, model and fingerprint, score,
    reasons and decision, and the same model version from the registry run again on those
    inputs. A model version missing from the registry, or registered with another
    fingerprint, is reported in `status`, never as an error."""
    parsed = parse_application_id(application_id)
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


@router.get(
    "/audit/applications/{application_id}/record",
    operation_id="get_decision_record",
    summary="The full decision record of the application, verified",
    response_model=DecisionRecord,
    responses={
        200: {
            "description": "the record as JSON, or with ?format=html a one-page HTML report",
            "content": {"text/html": {"schema": {"type": "string"}}},
        },
        **problem_responses(404),
    },
)
async def decision_record(
    application_id: str,
    pool: ReadPoolDep,
    service: ServiceDep,
    format: Annotated[
        Literal["json", "html"], Query(description="json (default) or html")
    ] = "json",
) -> Response:
    """Every event with its hashes and metadata; the recorded inputs, model, score and
    reasons (with their catalogue text); the automatic and analyst decisions, agent actions
    and withdrawal; and the verification: the stream's hash chain recomputed, every score
    reconstructed, and each event's inclusion proof in the latest seal checked against the
    public key (`not_yet_sealed` for events after it). Read from one consistent snapshot."""
    parsed = parse_application_id(application_id)
    async with pool.acquire() as connection:
        record = await read_decision_record(
            connection, parsed, [service.signing_key.public_key], MODELS
        )
    if record is None:
        raise NotFound(f"no application {application_id!r}")
    if format == "html":
        return HTMLResponse(render_html(record))
    return JSONResponse(record)
