"""The benchmark's app: the product's app (api.web.app.create_app) plus two reference routes.

`python -m bench.app --port P --workers N` serves it the way `lending-ledger serve` serves
the product (api.web.server.run: uvicorn, TCP_NODELAY on every connection), with the same
middleware, error handling, authorisation and JSON rendering, so the references differ
from the product's routes only in the work the handler does:

- `GET /bench/noop`: nothing at all (the HTTP ceiling of this stack). It is served by the
  hot path (api/web/hot.py), as the product's hot routes are: what it measures is what
  every apply and history request pays besides its own work (the correlation id, the
  caller's key and role, the metrics and the access line);
- `POST /bench/naive`: validates the same `ApplyRequest` body as `POST /lending/apply` and
  does one pooled single-row INSERT into `bench.naive_applications` (what a service
  without event sourcing, hash chains or read models would do).

These routes are never part of the product app.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import datetime

from fastapi import APIRouter, Depends, FastAPI
from pydantic import BaseModel

from api.service.models import ApplyRequest, MoneyOut
from api.web.app import LedgerApp, create_app
from api.web.dependencies import PoolDep, require_json
from api.web.hot import HotRequest, HotResponse, HotRoute
from api.web.responses import ExactJSONRoute, JSONResponse
from api.web.server import run
from bench import sql

router = APIRouter(route_class=ExactJSONRoute, default_response_class=JSONResponse)


class NoopResponse(BaseModel):
    status: str


class NaiveApplication(BaseModel):
    id: int
    applicant_id: str
    amount: MoneyOut
    income: MoneyOut
    employment_years: int
    created_at: datetime


@router.get("/bench/noop", operation_id="bench_noop", response_model=NoopResponse)
async def noop() -> JSONResponse:
    return JSONResponse(NoopResponse(status="ok"))


@router.post(
    "/bench/naive",
    operation_id="bench_naive",
    response_model=NaiveApplication,
    dependencies=[Depends(require_json)],
)
async def naive(body: ApplyRequest, pool: PoolDep) -> JSONResponse:
    async with pool.acquire() as connection:
        row = await connection.fetchrow(
            sql.INSERT_NAIVE_APPLICATION,
            body.applicant_id,
            body.amount,
            body.income,
            body.employment_years,
        )
    assert row is not None
    return JSONResponse(
        NaiveApplication(
            id=row["id"],
            applicant_id=body.applicant_id,
            amount=body.amount,
            income=body.income,
            employment_years=body.employment_years,
            created_at=row["created_at"],
        )
    )


_NOOP_BODY = b'{"status":"ok"}'


async def noop_hot(request: HotRequest) -> HotResponse:
    return HotResponse(_NOOP_BODY)


NOOP_ROUTE = HotRoute("GET", "/bench/noop", "bench_noop", noop_hot)


def add_bench_routes(app: LedgerApp) -> None:
    """The reference routes, on the full stack and (the no-op) on the hot path."""
    app.include_router(router)
    if app.hot_path is not None:
        app.hot_path.add(NOOP_ROUTE)


def create_bench_app() -> FastAPI:
    app = create_app()
    add_bench_routes(app)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the bench app on loopback, as `lending-ledger serve` serves the product."""
    parser = argparse.ArgumentParser(prog="python -m bench.app")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--access-log", action="store_true")
    args = parser.parse_args(argv)
    run(
        "bench.app:create_bench_app",
        factory=True,
        sequencer_process=True,
        host="127.0.0.1",
        port=args.port,
        workers=args.workers,
        log_level="warning",
        access_log=args.access_log,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
