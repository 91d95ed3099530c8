"""`GET /metrics`: Prometheus text format, for an auditor's or admin's key (never anonymous
in production: production never runs in open mode). Names in docs/operations.md."""

from __future__ import annotations

import asyncpg
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.service.errors import DATABASE_UNAVAILABLE, ServiceUnavailable
from api.service.metrics import ledger_families, scrape_registry
from api.web.dependencies import ServiceDep
from ledger.log_status import LogStatus

router = APIRouter()


@router.get(
    "/metrics",
    operation_id="get_metrics",
    summary="Service and ledger metrics in the Prometheus text format",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
)
async def get_metrics(service: ServiceDep) -> Response:
    status: LogStatus | None = None
    lag = 0.0
    try:
        status, lag = await service.log_status()
    except (ServiceUnavailable, TimeoutError, asyncpg.PostgresError, *DATABASE_UNAVAILABLE):
        status = None  # exposed as ledger_database_up 0; the process metrics still answer
    service.sample_process_metrics()
    replica_lag = await service.replica_lag()
    registry = scrape_registry(ledger_families(status, lag, replica_lag))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
