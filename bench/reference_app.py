"""The tutorial references (issue 12): what the product is compared against.

Two stand-alone FastAPI apps, written the way the FastAPI and asyncpg tutorials write them,
and served in processes of their own exactly as the bench serves the product
(`api.web.server.run`: uvicorn with the same workers, the same loop and HTTP parser settings,
and the same TCP_NODELAY listener):

- `reference`: one `loan_applications` table in a database of its own on the bench's
  PostgreSQL server (so both compete for the same server), a pydantic body model with
  Decimal money, `POST /lending/apply` doing one `INSERT ... RETURNING` on an asyncpg pool
  (with the trivial ratio score computed in Python), and
  `GET /lending/applicants/{applicant_id}/history` doing one indexed
  `SELECT ... ORDER BY created_at DESC LIMIT 10`. Responses are FastAPI's defaults:
  `response_model` pydantic models rendered by the default JSONResponse.
- `bare`: FastAPI with one route returning a small dict (`GET /bench/noop`), the HTTP
  ceiling of plain FastAPI, against which the product's own no-op route is compared.

Neither has event sourcing, hash chains, read models, middleware, authorisation or
problem+json errors: that is the point of a reference. They never import the product's app.

`python -m bench.reference_app --app reference|bare --port P --workers N`; the reference
reads `DATABASE_URL` and `REFERENCE_POOL_SIZE` (connections per worker) from the environment.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from decimal import Decimal
from typing import Annotated

import asyncpg
from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel, Field

from api.web.server import run
from bench import sql

APPROVAL_THRESHOLD = Decimal(80)
SCORE_PLACES = Decimal("0.01")


# --- the bare no-op app ---


def create_bare_app() -> FastAPI:
    app = FastAPI()

    @app.get("/bench/noop")
    async def noop() -> dict[str, str]:
        return {"status": "ok"}

    return app


# --- the tutorial lending app ---


class LoanApplicationIn(BaseModel):
    applicant_id: str = Field(min_length=1, max_length=200)
    amount: Decimal = Field(gt=0)
    income: Decimal = Field(ge=0)
    employment_years: int = Field(ge=0, le=80)


class LoanApplicationOut(BaseModel):
    id: int
    applicant_id: str
    amount: Decimal
    income: Decimal
    employment_years: int
    score: Decimal
    decision: str
    created_at: datetime


def ratio_score(amount: Decimal, income: Decimal, employment_years: int) -> tuple[Decimal, str]:
    """income / amount * 100 + employment_years * 5, approved from 80 (else review)."""
    score = (income / amount * 100 + employment_years * 5).quantize(SCORE_PLACES)
    return score, "approved" if score >= APPROVAL_THRESHOLD else "review"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    pool_size = int(os.environ.get("REFERENCE_POOL_SIZE", "10"))
    app.state.pool = await asyncpg.create_pool(
        os.environ["DATABASE_URL"], min_size=1, max_size=pool_size
    )
    try:
        yield
    finally:
        await app.state.pool.close()


async def get_pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


Pool = Annotated[asyncpg.Pool, Depends(get_pool)]


def create_reference_app() -> FastAPI:
    app = FastAPI(lifespan=lifespan)

    @app.post("/lending/apply", response_model=LoanApplicationOut, status_code=201)
    async def apply(body: LoanApplicationIn, pool: Pool) -> LoanApplicationOut:
        score, decision = ratio_score(body.amount, body.income, body.employment_years)
        row = await pool.fetchrow(
            sql.REFERENCE_INSERT_APPLICATION,
            body.applicant_id,
            body.amount,
            body.income,
            body.employment_years,
            score,
            decision,
        )
        assert row is not None
        return LoanApplicationOut(**dict(row))

    @app.get("/lending/applicants/{applicant_id}/history", response_model=list[LoanApplicationOut])
    async def history(applicant_id: str, pool: Pool) -> list[LoanApplicationOut]:
        rows = await pool.fetch(sql.REFERENCE_APPLICANT_HISTORY, applicant_id)
        return [LoanApplicationOut(**dict(row)) for row in rows]

    return app


FACTORIES = {
    "reference": "bench.reference_app:create_reference_app",
    "bare": "bench.reference_app:create_bare_app",
}


def main(argv: Sequence[str] | None = None) -> None:
    """Serve one reference app on loopback, as the bench serves the product."""
    parser = argparse.ArgumentParser(prog="python -m bench.reference_app")
    parser.add_argument("--app", choices=sorted(FACTORIES), required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--access-log", action="store_true")
    args = parser.parse_args(argv)
    run(
        FACTORIES[args.app],
        factory=True,
        host="127.0.0.1",
        port=args.port,
        workers=args.workers,
        log_level="warning",
        access_log=args.access_log,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
