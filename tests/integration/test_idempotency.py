"""Idempotency keys: replay, reuse, requests in flight (409), scope per caller, expiry,
purge, and the migration from the unscoped table."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

import asyncpg
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.service.access import OPEN_MODE_PRINCIPAL
from api.service.commands import CommandResult, RequestContext, execute
from api.service.settings import ConfigurationError, Settings
from api.web.app import create_app
from ledger import idempotency
from ledger.db import Connection, connect, create_pool
from ledger.errors import IdempotencyKeyReused, IdempotencyRequestInFlight
from ledger.idempotency import StoredResponse, lock_key, request_fingerprint
from ledger.schema import apply_schema
from tests.conftest import FAST_SEQUENCER, MakeDatabase, new_applicant
from tests.support.helpers import assert_problem, row_counts

# Generous bound for "returns at once": a claim that waited for the other request would
# hang until that request is released, which these tests only do afterwards.
NEVER_WAITS = 10.0


def context(
    actor: str, key: str, body: object = "body", retention: timedelta | None = None
) -> RequestContext:
    return RequestContext(
        actor=actor,
        correlation_id=str(uuid.uuid4()),
        idempotency_key=key,
        fingerprint=request_fingerprint("POST", "/test", body),
        idempotency_retention=retention or idempotency.DEFAULT_RETENTION,
    )


def as_stored(response: StoredResponse) -> StoredResponse:
    """The work below returns its response as it is stored (no rendering)."""
    return response


@dataclass
class CountingWork:
    """A command's work: counts its runs and answers with a body unique to each run."""

    runs: int = 0
    hold: asyncio.Event | None = None
    started: asyncio.Event | None = None
    fail: bool = False

    async def __call__(self, connection: Connection) -> StoredResponse:
        self.runs += 1
        if self.started is not None:
            self.started.set()
        if self.hold is not None:
            await self.hold.wait()
        await connection.execute("SELECT 1")
        if self.fail:
            raise RuntimeError("the command failed")
        return StoredResponse(201, f"run {self.runs} {uuid.uuid4()}".encode())


def unique_key() -> str:
    return f"key-{uuid.uuid4()}"


async def stored_rows(pool: asyncpg.Pool, key: str) -> list[asyncpg.Record]:
    async with pool.acquire() as connection:
        return await connection.fetch(
            "SELECT scope, request_fingerprint, status_code, response_body "
            "FROM idempotency_keys WHERE idempotency_key = $1 ORDER BY scope",
            key,
        )


# --- Replay, reuse, rollback ---


async def test_a_retry_replays_the_first_response_without_running_again(
    pool: asyncpg.Pool,
) -> None:
    work = CountingWork()
    key = unique_key()
    first = await execute(pool, context("agent:a", key), work, as_stored)
    again = await execute(pool, context("agent:a", key), work, as_stored)
    assert work.runs == 1
    assert (first.replayed, again.replayed) == (False, True)
    assert again.response == first.response
    assert [row["status_code"] for row in await stored_rows(pool, key)] == [201]


async def test_the_same_key_with_another_request_is_refused(pool: asyncpg.Pool) -> None:
    work = CountingWork()
    key = unique_key()
    await execute(pool, context("agent:a", key, {"amount": "5000.00"}), work, as_stored)
    with pytest.raises(IdempotencyKeyReused):
        await execute(pool, context("agent:a", key, {"amount": "6000.00"}), work, as_stored)
    assert work.runs == 1


async def test_a_failed_request_leaves_its_key_unused(pool: asyncpg.Pool) -> None:
    key = unique_key()
    with pytest.raises(RuntimeError):
        await execute(pool, context("agent:a", key), CountingWork(fail=True), as_stored)
    assert await stored_rows(pool, key) == []
    work = CountingWork()
    result = await execute(pool, context("agent:a", key), work, as_stored)
    assert (work.runs, result.replayed) == (1, False)


# --- In flight: 409 at once, never a wait, never a second run ---


async def test_a_request_arriving_while_the_first_runs_is_refused_at_once(
    pool: asyncpg.Pool,
) -> None:
    key = unique_key()
    first_work = CountingWork(hold=asyncio.Event(), started=asyncio.Event())
    first = asyncio.create_task(execute(pool, context("agent:a", key), first_work, as_stored))
    try:
        await asyncio.wait_for(first_work.started.wait(), NEVER_WAITS)  # type: ignore[union-attr]
        second_work = CountingWork()
        with pytest.raises(IdempotencyRequestInFlight):
            await asyncio.wait_for(
                execute(pool, context("agent:a", key), second_work, as_stored), NEVER_WAITS
            )
        # A different body while the first runs: also in flight (it cannot know yet).
        with pytest.raises(IdempotencyRequestInFlight):
            await asyncio.wait_for(
                execute(pool, context("agent:a", key, "other"), second_work, as_stored), NEVER_WAITS
            )
        assert second_work.runs == 0
    finally:
        first_work.hold.set()  # type: ignore[union-attr]
        result = await asyncio.wait_for(first, NEVER_WAITS)
    assert result.replayed is False
    replay = await execute(pool, context("agent:a", key), CountingWork(), as_stored)
    assert replay.replayed is True
    assert replay.response == result.response


async def test_concurrent_retries_run_the_command_exactly_once(pool: asyncpg.Pool) -> None:
    keys = [unique_key() for _ in range(4)]
    works = {key: CountingWork() for key in keys}

    async def attempt(key: str) -> CommandResult[StoredResponse] | Exception:
        try:
            return await execute(pool, context("agent:a", key), works[key], as_stored)
        except IdempotencyRequestInFlight as error:
            return error

    outcomes = await asyncio.gather(*(attempt(key) for key in keys for _ in range(6)))
    for key in keys:
        assert works[key].runs == 1
        rows = await stored_rows(pool, key)
        assert len(rows) == 1
        stored = StoredResponse(rows[0]["status_code"], bytes(rows[0]["response_body"]))
        mine = outcomes[keys.index(key) * 6 : keys.index(key) * 6 + 6]
        results = [outcome for outcome in mine if isinstance(outcome, CommandResult)]
        # Whoever got an answer got the one stored response; exactly one ran the command.
        assert [result.replayed for result in results].count(False) == 1
        assert {result.response for result in results} == {stored}


async def test_concurrent_retries_over_http_write_one_application(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    applicant = new_applicant()
    body = {"applicant_id": applicant, "amount": "5000", "income": "90000", "employment_years": 6}
    keys = [unique_key() for _ in range(3)]
    before = await row_counts(pool)
    responses = await asyncio.gather(
        *(
            client.post("/lending/apply", json=body, headers={"Idempotency-Key": key})
            for key in keys
            for _ in range(5)
        )
    )
    for index, key in enumerate(keys):
        mine = responses[index * 5 : index * 5 + 5]
        answered = [response for response in mine if response.status_code == 200]
        for response in mine:
            if response.status_code != 200:
                problem = assert_problem(response, 409, "idempotency-request-in-flight")
                assert key in problem["detail"]
                assert response.headers["retry-after"] == "1"
        assert [r.headers.get("idempotent-replayed") for r in answered].count(None) == 1
        assert len({response.content for response in answered}) == 1
    assert await row_counts(pool) == (before[0] + 9, before[1] + 3, before[2] + 3)
    history = await client.get(f"/lending/applicants/{applicant}/history?limit=100")
    assert len(history.json()) == 3


async def test_an_in_flight_key_gets_409_problem_json_and_writes_nothing(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """An in-flight request holds its key's lock; here a test transaction holds it."""
    key = unique_key()
    body = {
        "applicant_id": new_applicant(),
        "amount": "5000",
        "income": "90000",
        "employment_years": 6,
    }
    before = await row_counts(pool)
    async with pool.acquire() as holder, holder.transaction():
        await holder.execute(
            "SELECT pg_advisory_xact_lock($1)", lock_key(OPEN_MODE_PRINCIPAL.actor, key)
        )
        response = await asyncio.wait_for(
            client.post("/lending/apply", json=body, headers={"Idempotency-Key": key}),
            NEVER_WAITS,
        )
        problem = assert_problem(response, 409, "idempotency-request-in-flight")
        assert response.headers["retry-after"] == "1"
        assert "idempotent-replayed" not in response.headers
        assert problem["title"]
        assert await row_counts(pool) == before
    # Once the first is gone, the retry runs.
    retried = await client.post("/lending/apply", json=body, headers={"Idempotency-Key": key})
    assert retried.status_code == 200, retried.text
    assert "idempotent-replayed" not in retried.headers


# --- Scope: a key belongs to its caller ---


async def test_two_callers_with_one_key_each_get_their_own_write(pool: asyncpg.Pool) -> None:
    key = unique_key()
    alice_work, bob_work = CountingWork(), CountingWork()
    alice = await execute(pool, context("agent:alice", key, "a body"), alice_work, as_stored)
    # Bob's different body is no reuse: the key is not his.
    bob = await execute(pool, context("agent:bob", key, "another body"), bob_work, as_stored)
    assert (alice_work.runs, bob_work.runs) == (1, 1)
    assert (alice.replayed, bob.replayed) == (False, False)
    assert alice.response != bob.response
    assert [row["scope"] for row in await stored_rows(pool, key)] == ["agent:alice", "agent:bob"]
    # Each replays only its own response.
    assert (
        await execute(pool, context("agent:alice", key, "a body"), alice_work, as_stored)
    ).response == (alice.response)
    assert (
        await execute(pool, context("agent:bob", key, "another body"), bob_work, as_stored)
    ).response == (bob.response)
    assert (alice_work.runs, bob_work.runs) == (1, 1)


def test_lock_keys_are_64_bit_and_separate_scope_from_key() -> None:
    assert lock_key("agent:a", "k1") == lock_key("agent:a", "k1")
    assert lock_key("agent:a", "k1") != lock_key("agent:b", "k1")
    # Length-prefixed parts: moving a boundary changes the input.
    assert lock_key("ab", "c") != lock_key("a", "bc")
    assert -(2**63) <= lock_key("", "") < 2**63


# --- Expiry and purge ---


async def test_an_expired_key_is_unused_again(pool: asyncpg.Pool) -> None:
    key = unique_key()
    tiny = timedelta(microseconds=1)  # older than this: every earlier transaction
    work = CountingWork()
    first = await execute(pool, context("agent:a", key, "body", tiny), work, as_stored)
    second = await execute(pool, context("agent:a", key, "body", tiny), work, as_stored)
    assert work.runs == 2
    assert (first.replayed, second.replayed) == (False, False)
    # Even another body: the old record is gone, not reused.
    third = await execute(pool, context("agent:a", key, "new body", tiny), work, as_stored)
    assert (work.runs, third.replayed) == (3, False)
    rows = await stored_rows(pool, key)
    assert len(rows) == 1
    assert bytes(rows[0]["request_fingerprint"]) == request_fingerprint("POST", "/test", "new body")
    assert bytes(rows[0]["response_body"]) == third.response.body
    # Under the default retention the same record is live and replays.
    replay = await execute(pool, context("agent:a", key, "new body"), work, as_stored)
    assert (work.runs, replay.replayed, replay.response) == (3, True, third.response)


async def test_purge_deletes_only_expired_records_in_batches(make_database: MakeDatabase) -> None:
    url = await make_database()
    pool = await create_pool(url, min_size=1, max_size=4)
    try:
        for number in range(5):
            await execute(
                pool, context(f"agent:{number % 2}", f"k{number}"), CountingWork(), as_stored
            )
        async with pool.acquire() as connection:
            assert await idempotency.purge_expired(connection, timedelta(hours=1), 2) == 0
            assert await connection.fetchval("SELECT count(*) FROM idempotency_keys") == 5
            deleted = await idempotency.purge_expired(connection, timedelta(microseconds=1), 2)
            assert deleted == 5
            assert await connection.fetchval("SELECT count(*) FROM idempotency_keys") == 0
    finally:
        await pool.close()


async def test_the_service_purges_expired_records_by_itself(make_database: MakeDatabase) -> None:
    url = await make_database()
    pool = await create_pool(url, min_size=1, max_size=2)
    app = create_app(
        Settings(app_env="test", idempotency_retention=timedelta(milliseconds=1)),
        database_url=url,
        sequencer_settings=FAST_SEQUENCER,
    )
    try:
        for number in range(3):
            await execute(pool, context("agent:a", f"k{number}"), CountingWork(), as_stored)
        async with app.router.lifespan_context(app):
            await app.state.service.wait_ready(30)
            deadline = time.monotonic() + 20
            while (await row_counts(pool))[2] != 0:
                assert time.monotonic() < deadline, "the service never purged expired keys"
                await asyncio.sleep(0.05)
    finally:
        await pool.close()


async def test_the_apps_retention_setting_expires_keys_over_http(
    make_database: MakeDatabase,
) -> None:
    url = await make_database()
    app = create_app(
        Settings(app_env="test", idempotency_retention=timedelta(microseconds=1)),
        database_url=url,
        sequencer_settings=FAST_SEQUENCER,
    )
    body = {
        "applicant_id": new_applicant(),
        "amount": "5000",
        "income": "90000",
        "employment_years": 6,
    }
    headers = {"Idempotency-Key": unique_key()}
    async with app.router.lifespan_context(app):
        await app.state.service.wait_ready(30)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ledger.test") as http:
            first = await http.post("/lending/apply", json=body, headers=headers)
            second = await http.post("/lending/apply", json=body, headers=headers)
    assert (first.status_code, second.status_code) == (200, 200)
    assert "idempotent-replayed" not in second.headers  # expired: a new request
    assert first.json()["application_id"] != second.json()["application_id"]


def test_retention_is_read_from_the_environment() -> None:
    assert Settings.from_env({}).idempotency_retention == timedelta(hours=24)
    configured = Settings.from_env({"LEDGER_IDEMPOTENCY_RETENTION_HOURS": "48"})
    assert configured.idempotency_retention == timedelta(hours=48)
    for bad in ("0", "-1", "1.5", "forever"):
        with pytest.raises(ConfigurationError):
            Settings.from_env({"LEDGER_IDEMPOTENCY_RETENTION_HOURS": bad})


# --- Migration from the unscoped table ---

OLD_TABLE = """
DROP TABLE idempotency_keys;
CREATE TABLE idempotency_keys (
    idempotency_key      text        PRIMARY KEY,
    request_fingerprint  bytea       NOT NULL,
    status_code          integer,
    response_body        bytea,
    created_at           timestamptz NOT NULL DEFAULT now()
);
"""

PRIMARY_KEY_COLUMNS = """
SELECT array_agg(a.attname::text ORDER BY k.ordinality)
FROM pg_constraint c
CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ordinality)
JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
WHERE c.conrelid = 'idempotency_keys'::regclass AND c.contype = 'p'
"""


async def test_the_schema_migrates_an_unscoped_table(make_database: MakeDatabase) -> None:
    url = await make_database()
    connection = await connect(url)
    fingerprint = request_fingerprint("POST", "/test", "old")
    try:
        await connection.execute(OLD_TABLE)
        await connection.execute(
            "INSERT INTO idempotency_keys VALUES ('old-key', $1, 200, 'old response')",
            fingerprint,
        )
        for _ in range(2):  # idempotent
            await apply_schema(connection)
            assert await connection.fetchval(PRIMARY_KEY_COLUMNS) == ["scope", "idempotency_key"]
        async with connection.transaction():
            stored = await idempotency.claim(connection, "anonymous", "old-key", fingerprint)
        assert stored == StoredResponse(200, b"old response")
        # A scope is required from now on: no default quietly fills it.
        with pytest.raises(asyncpg.NotNullViolationError):
            await connection.execute(
                "INSERT INTO idempotency_keys (idempotency_key, request_fingerprint) "
                "VALUES ('k', '')"
            )
    finally:
        await connection.close()


# --- Property: a model of keys, callers and bodies ---


@dataclass(frozen=True)
class Call:
    actor: int
    key: int
    body: int


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(st.builds(Call, st.integers(0, 1), st.integers(0, 2), st.integers(0, 1)), max_size=12)
)
async def test_keys_behave_like_a_map_from_caller_and_key_to_the_first_response(
    pool: asyncpg.Pool, calls: list[Call]
) -> None:
    run = uuid.uuid4().hex[:8]
    first: dict[tuple[int, int], tuple[int, StoredResponse]] = {}
    work = CountingWork()
    for call in calls:
        request = context(f"agent:{call.actor}", f"{run}-{call.key}", call.body)
        slot = (call.actor, call.key)
        runs_before = work.runs
        if slot in first and first[slot][0] != call.body:
            with pytest.raises(IdempotencyKeyReused):
                await execute(pool, request, work, as_stored)
            assert work.runs == runs_before
            continue
        result = await execute(pool, request, work, as_stored)
        if slot in first:
            assert result.replayed
            assert result.response == first[slot][1]
            assert work.runs == runs_before
        else:
            assert not result.replayed
            assert work.runs == runs_before + 1
            first[slot] = (call.body, result.response)
    assert work.runs == len(first)


# --- Commands on existing applications: read the stream, then one statement ---


async def test_a_retried_review_replays_though_deciding_again_would_fail(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """The retry finds the application already reviewed by its first attempt: deciding again
    would be a 409, so the key is looked up and the first response replayed."""
    applied = await client.post(
        "/lending/apply",
        json={"applicant_id": new_applicant(), "amount": "50000", "income": "12000",
              "employment_years": 1},
    )  # fmt: skip
    application = applied.json()
    assert application["status"] == "in_review"
    path = f"/lending/applications/{application['application_id']}/review"
    body = {"outcome": "approved", "justification": "ok", "expected_version": 3}
    headers = {"Idempotency-Key": unique_key()}
    first = await client.post(path, json=body, headers=headers)
    assert first.status_code == 200, first.text
    before = await row_counts(pool)
    again = await client.post(path, json=body, headers=headers)
    assert again.status_code == 200, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    other = await client.post(path, json={**body, "justification": "else"}, headers=headers)
    assert_problem(other, 422, "idempotency-key-reused")
    assert await row_counts(pool) == before


async def test_a_keyed_agent_action_stores_the_position_the_database_gave(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """An agent action's answer names its event's position, which only the insert knows:
    the stored response has it filled in (projections/inline.py, ResponseTemplate)."""
    applied = await client.post(
        "/lending/apply",
        json={"applicant_id": new_applicant(), "amount": "5000", "income": "90000",
              "employment_years": 6},
    )  # fmt: skip
    application_id = applied.json()["application_id"]
    path = f"/lending/applications/{application_id}/agent-actions"
    body = {"agent_id": "a1", "model_name": "m", "prompt": "p", "output": "o",
            "action": "other", "rationale": "r"}  # fmt: skip
    headers = {"Idempotency-Key": unique_key()}
    first = await client.post(path, json=body, headers=headers)
    assert first.status_code == 201, first.text
    again = await client.post(path, json=body, headers=headers)
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    events = await client.get(f"/lending/applications/{application_id}/events")
    last = events.json()[-1]
    assert first.json()["position"] == last["position"]
    assert first.json()["event_id"] == last["event_id"]
    assert len(events.json()) == 4
