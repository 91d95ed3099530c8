"""The benchmark's app: the product's app (api.app.create_app) plus two reference routes.

`uvicorn bench.app:create_bench_app --factory` runs the same middleware, error handling,
authorisation and JSON rendering as the service, so the references differ from the
product's routes only in the work the handler does:

- `GET /bench/noop`: nothing at all (the HTTP ceiling of this stack);
- `POST /bench/naive`: validates the same `ApplyRequest` body as `POST /lending/apply` and
  does one pooled single-row INSERT into `bench.naive_applications` (what a service
  without event sourcing, hash chains or read models would do).

These routes are never part of the product app.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, FastAPI
from pydantic import BaseModel

from api.app import create_app
from api.jsonio import ExactJSONRoute, JSONResponse
from api.models import ApplyRequest, MoneyOut
from api.routes import PoolDep, require_json
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


def create_bench_app() -> FastAPI:
    app = create_app()
    app.include_router(router)
    return app
