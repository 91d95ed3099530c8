"""A service on a database of its own, and random workloads of commands through its HTTP API,
for the rebuild, verify and time-travel tests.

Workflow commands may be refused (a withdrawn application cannot be reviewed, a review needs
the application in review): a refusal writes nothing, which is part of what is under test.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI
from hypothesis import strategies as st

from api.service.settings import Settings
from api.web.app import create_app
from ledger.db import create_pool
from tests.conftest import FAST_SEQUENCER, MakeDatabase
from tests.support.keyed import lifespan_in_own_task
from tests.support.strategies import any_money, years


@dataclass(frozen=True)
class Service:
    app: FastAPI
    client: httpx.AsyncClient
    pool: asyncpg.Pool  # the test's own pool (the schema owner), for looking at the data
    url: str


@asynccontextmanager
async def service_on(url: str) -> AsyncIterator[Service]:
    """The app (open mode, fast sequencer) on `url`, an HTTP client and a pool."""
    app = create_app(Settings(app_env="test"), database_url=url, sequencer_settings=FAST_SEQUENCER)
    pool = await create_pool(url, min_size=1, max_size=6)
    try:
        async with lifespan_in_own_task(app):
            await app.state.service.wait_ready(30)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://ledger.test") as c:
                yield Service(app, c, pool, url)
    finally:
        await pool.close()


@asynccontextmanager
async def fresh_service(make_database: MakeDatabase) -> AsyncIterator[Service]:
    async with service_on(await make_database()) as service:
        yield service


# --- Commands ---


@dataclass(frozen=True)
class Apply:
    applicant: int
    amount: Decimal
    income: Decimal
    employment_years: int


@dataclass(frozen=True)
class Act:
    """A workflow command on the `target`-th application submitted so far (modulo)."""

    kind: str  # manual-review | review-approve | review-decline | withdraw | agent-action
    target: int


Command = Apply | Act

applies = st.builds(
    Apply,
    applicant=st.integers(0, 2),
    amount=st.one_of(any_money, st.sampled_from([Decimal(100), Decimal(250000)])),
    income=any_money,
    employment_years=years,
)
acts = st.builds(
    Act,
    kind=st.sampled_from(
        ["manual-review", "review-approve", "review-decline", "withdraw", "agent-action"]
    ),
    target=st.integers(0, 50),
)
commands = st.lists(st.one_of(applies, applies, acts), min_size=1, max_size=10)


def _act_request(kind: str) -> tuple[str, dict[str, Any]]:
    if kind == "manual-review":
        return "manual-review", {"reason": "an agent wants a person to look"}
    if kind in ("review-approve", "review-decline"):
        return "review", {
            "outcome": "approved" if kind == "review-approve" else "declined",
            "reason_codes": ["INCOME_LOW_FOR_AMOUNT"],
            "justification": "checked by hand",
        }
    if kind == "withdraw":
        return "withdraw", {"reason": "the applicant changed their mind"}
    return "agent-actions", {
        "agent_id": "test-agent",
        "model_name": "test-model",
        "prompt": "assess",
        "output": "looks fine",
        "action": "other",
        "rationale": "testing",
    }


@dataclass
class Outcome:
    """What one command did: the application it touched (None if none), and whether it
    was accepted."""

    application_id: str | None
    accepted: bool


async def run_command(
    client: httpx.AsyncClient, run: str, command: Command, submitted: list[str]
) -> Outcome:
    """Send one command; `submitted` collects the ids of accepted applications."""
    if isinstance(command, Apply):
        response = await client.post(
            "/lending/apply",
            json={
                "applicant_id": f"w_{run}_{command.applicant}",
                "amount": str(command.amount),
                "income": str(command.income),
                "employment_years": command.employment_years,
            },
        )
        assert response.status_code == 200, response.text
        application_id = response.json()["application_id"]
        submitted.append(application_id)
        return Outcome(application_id, True)
    if not submitted:
        return Outcome(None, False)
    application_id = submitted[command.target % len(submitted)]
    path, body = _act_request(command.kind)
    headers = {}
    if path == "review":  # a review names the version the analyst saw
        current = await client.get(f"/lending/applications/{application_id}")
        headers["If-Match"] = current.headers["etag"]
    response = await client.post(
        f"/lending/applications/{application_id}/{path}", json=body, headers=headers
    )
    assert response.status_code < 500, response.text
    return Outcome(application_id, response.status_code in (200, 201))


def new_run() -> str:
    return uuid.uuid4().hex[:8]
