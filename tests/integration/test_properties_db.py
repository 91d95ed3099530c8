"""Property tests on real PostgreSQL: after any sequence of commands, the read models are
exactly the fold of the stored events, and every stream's chain verifies."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from operator import attrgetter
from typing import Any

import asyncpg
import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.jsonio import dumps, to_plain
from api.service.models import Application
from api.web.commands import application_json
from ledger.chain import verify_stream
from ledger.db import Connection
from ledger.events import RecordedEvent
from projections.applications import ApplicationsProjector, fold_applications
from projections.queries import (
    all_applications,
    all_history,
    applicant_history,
    applicant_history_json,
)
from projections.runner import catch_up, create_shadow_schema
from tests.support.helpers import all_events, wait_until_sequenced
from tests.support.strategies import any_money, years


@dataclass(frozen=True)
class Apply:
    applicant: int
    amount: Decimal | str
    income: Decimal
    employment_years: int | str
    key: int | None


HISTORY_ORDER = attrgetter("application_id", "stream_version")

commands = st.builds(
    Apply,
    applicant=st.integers(0, 3),
    # now and then an invalid amount: rejected requests must leave no trace
    amount=st.one_of(any_money, any_money, any_money, st.just("0.001"), st.just("-5")),
    income=any_money,
    employment_years=st.one_of(years, years, years, st.just("six")),
    key=st.one_of(st.none(), st.integers(0, 3)),  # repeated keys: replays and reuse errors
)


async def assert_read_models_equal_the_fold(connection: Connection) -> None:
    events = await all_events(connection)
    expected_rows, expected_history = fold_applications(events)
    assert await all_applications(connection) == expected_rows
    actual_history = await all_history(connection)
    assert sorted(actual_history, key=HISTORY_ORDER) == sorted(expected_history, key=HISTORY_ORDER)
    streams: dict[str, list[RecordedEvent]] = {}
    for event in events:
        streams.setdefault(event.stream_id, []).append(event)
    for stream in streams.values():
        assert verify_stream(stream) is None


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(commands, min_size=1, max_size=12))
async def test_read_models_are_the_fold_of_the_events(
    client: httpx.AsyncClient, pool: asyncpg.Pool, sequence: list[Apply]
) -> None:
    run = uuid.uuid4().hex[:8]
    outcomes = {200: 0, 422: 0}
    for command in sequence:
        headers = {} if command.key is None else {"Idempotency-Key": f"{run}-{command.key}"}
        response = await client.post(
            "/lending/apply",
            json={
                "applicant_id": f"prop_{run}_{command.applicant}",
                "amount": str(command.amount),
                "income": str(command.income),
                "employment_years": command.employment_years,
            },
            headers=headers,
        )
        assert response.status_code in outcomes, response.text
        outcomes[response.status_code] += 1
    async with pool.acquire() as connection:
        await assert_read_models_equal_the_fold(connection)


@dataclass(frozen=True)
class Act:
    target: int  # which of the applications made so far
    action: str
    stale: bool


workflow_steps = st.lists(
    st.builds(
        Act,
        target=st.integers(0, 5),
        action=st.sampled_from(["approve", "decline", "withdraw", "escalate", "agent"]),
        stale=st.booleans(),
    ),
    max_size=10,
)
WORKFLOW_BODIES: dict[str, tuple[str, dict[str, object]]] = {
    "approve": ("review", {"outcome": "approved", "justification": "ok"}),
    "decline": (
        "review",
        {"outcome": "declined", "reason_codes": ["UNABLE_TO_VERIFY"], "justification": "no"},
    ),
    "withdraw": ("withdraw", {"reason": "changed mind"}),
    "escalate": ("manual-review", {"reason": "check"}),
    "agent": (
        "agent-actions",
        {"agent_id": "a1", "model_name": "m", "prompt": "p", "output": "o", "action": "other",
         "rationale": "r"},
    ),
}  # fmt: skip


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.sampled_from(["5000", "50000"]), min_size=1, max_size=6), workflow_steps)
async def test_read_models_stay_the_fold_through_the_workflow(
    client: httpx.AsyncClient, pool: asyncpg.Pool, amounts: list[str], steps: list[Act]
) -> None:
    applications = []
    for amount in amounts:
        response = await client.post(
            "/lending/apply",
            json={"applicant_id": "wf_prop", "amount": amount, "income": "12000",
                  "employment_years": 1},
        )  # fmt: skip
        assert response.status_code == 200, response.text
        applications.append(response.json())
    for step in steps:
        application = applications[step.target % len(applications)]
        current = await client.get(f"/lending/applications/{application['application_id']}")
        version = current.json()["stream_version"] - (1 if step.stale else 0)
        action, body = WORKFLOW_BODIES[step.action]
        response = await client.post(
            f"/lending/applications/{application['application_id']}/{action}",
            json={**body, "expected_version": version},
        )
        assert response.status_code in {200, 201, 409}, response.text
        assert response.status_code != 409 or step.stale or "current_status" in response.json()
    async with pool.acquire() as connection:
        await assert_read_models_equal_the_fold(connection)


async def test_the_runner_builds_the_same_tables_from_the_ledger_log(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    for amount in ("100", "2500.50", "999999"):
        response = await client.post(
            "/lending/apply",
            json={
                "applicant_id": "runner_1",
                "amount": amount,
                "income": "52000",
                "employment_years": 3,
            },
        )
        assert response.status_code == 200
    await wait_until_sequenced(pool)
    schema = f"shadow_{uuid.uuid4().hex[:8]}"
    projector = ApplicationsProjector()
    async with pool.acquire() as connection:
        await create_shadow_schema(connection, schema, projector)
    try:
        result = await catch_up(pool, projector, batch_size=7, schema=schema)
        assert result.events > 0
        async with pool.acquire() as connection:
            live = await all_applications(connection)
            live_history = await all_history(connection)
            async with connection.transaction():
                await connection.execute("SELECT set_config('search_path', $1, true)", schema)
                shadow = await all_applications(connection)
                shadow_history = await all_history(connection)
                checkpoint = await connection.fetchval(
                    "SELECT last_seq FROM projection_checkpoints WHERE projection = $1",
                    projector.name,
                )
        # Writes that landed after the catch-up are not in the shadow: compare what it covered.
        covered = {row.state.application_id for row in shadow.values()}
        assert covered
        assert shadow == {key: row for key, row in live.items() if key in covered}
        assert sorted(shadow_history, key=HISTORY_ORDER) == sorted(
            (row for row in live_history if row.application_id in covered), key=HISTORY_ORDER
        )
        assert checkpoint == result.last_seq
        # A second catch-up from the checkpoint has nothing left (or only newer events).
        again = await catch_up(pool, projector, schema=schema)
        assert again.last_seq >= result.last_seq
    finally:
        async with pool.acquire() as connection:
            await connection.execute(f'DROP SCHEMA "{schema}" CASCADE')


# --- The history response rendered by PostgreSQL is the service's own rendering ---


# Money as a request may send it (any scale, exponents) and as scores come out.
def _usable_exponent(value: Decimal) -> bool:
    exponent = value.as_tuple().exponent
    return isinstance(exponent, int) and -20 <= exponent <= 10


exact_decimals: st.SearchStrategy[Decimal] = st.decimals(
    allow_nan=False, allow_infinity=False, min_value=-(10**15), max_value=10**15, places=None
).filter(_usable_exponent)
texts = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12)
moments = st.datetimes(
    min_value=datetime(1000, 1, 1), max_value=datetime(9998, 12, 31), timezones=st.just(UTC)
)
optional_moments = st.one_of(st.none(), moments, moments.map(lambda m: m.replace(microsecond=0)))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(
            exact_decimals, exact_decimals, st.one_of(st.none(), exact_decimals), texts,
            st.one_of(st.none(), texts), st.lists(texts, max_size=3), moments, optional_moments,
            optional_moments, st.integers(0, 80), st.integers(1, 2**31 - 1),
        ),
        min_size=0, max_size=4,
    )
)  # fmt: skip
async def test_history_json_from_postgresql_is_the_services_rendering(
    pool: asyncpg.Pool, rows: list[tuple[Any, ...]]
) -> None:
    applicant = f"json_{uuid.uuid4().hex[:12]}"
    async with pool.acquire() as connection:
        transaction = connection.transaction()
        await transaction.start()
        try:
            for row in rows:
                await insert_application_row(connection, applicant, *row)
            for limit in (1, 10):
                python_rows = await applicant_history(connection, applicant, limit)
                expected = dumps(to_plain([Application.from_row(r) for r in python_rows]))
                assert await applicant_history_json(connection, applicant, limit) == expected
                # The commands' rendering without the model pass (api/web/commands.py).
                for stored in python_rows:
                    model = Application.from_row(stored)
                    assert application_json(stored) == dumps(to_plain(model))
        finally:
            await transaction.rollback()


async def insert_application_row(
    connection: Connection,
    applicant: str,
    amount: Decimal,
    income: Decimal,
    score: Decimal | None,
    actor: str,
    decided_by: str | None,
    codes: list[str],
    created: datetime,
    review: datetime | None,
    reviewed: datetime | None,
    employment_years: int,
    version: int,
) -> None:
    await connection.execute(
        """INSERT INTO loan_applications (application_id, applicant_id, amount, income,
               employment_years, risk_score, decision, status, scoring_model,
               scoring_model_version, created_at, updated_at, stream_version,
               last_event_position, submitted_by, decided_by, recommended_outcome,
               reason_codes, in_review_since, reviewed_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 1, $14, $15,
                   $16, $17::text::jsonb, $18, $19)""",
        uuid.uuid4(), applicant, amount, income, employment_years, score,
        None if score is None else actor, "in_review", None if score is None else 'm"1',
        "v\\1", created, reviewed or created, version, actor, decided_by, decided_by,
        json.dumps(codes), review, reviewed,
    )  # fmt: skip
