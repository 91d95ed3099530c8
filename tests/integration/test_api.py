"""The HTTP API as a client sees it: applying, reading back, the event streams and their hash
chains, the global feed, idempotency, the OpenAPI document and the Python client."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute

from api.client import LedgerAPIError, LedgerClient
from api.service.access import ALLOWED_ROLES
from api.web.routes import applications, events, health
from ledger.canonical import GENESIS_HASH, envelope_for_hashing, event_hash
from ledger.events import REGISTRY, ScoringInputs
from ledger.scoring import RATIO_V1, get_model
from tests.conftest import new_applicant
from tests.support.helpers import (
    JSON_HEADERS,
    PROBLEM_TYPE_PREFIX,
    assert_problem,
    row_counts,
    wait_until_sequenced,
)

CORRELATION_HEADER = "X-Correlation-Id"
REGISTRY_VERSIONS = {event_type: version for event_type, version in REGISTRY.known()}

APPLICATION_KEYS = {
    "application_id",
    "applicant_id",
    "amount",
    "income",
    "employment_years",
    "risk_score",
    "decision",
    "status",
    "scoring_model",
    "reason_codes",
    "recommended_outcome",
    "submitted_by",
    "decided_by",
    "in_review_since",
    "reviewed_at",
    "created_at",
    "updated_at",
    "stream_version",
}
EVENT_KEYS = {
    "position",
    "seq",
    "stream_id",
    "stream_version",
    "event_id",
    "type",
    "schema_version",
    "data",
    "metadata",
    "recorded_at",
    "prev_hash",
    "hash",
}
EVENT_TYPES = ["ApplicationSubmitted", "ApplicationScored", "ApplicationDecided"]
HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
UTC_OFFSET = re.compile(r"(Z|[+-]\d{2}:\d{2})$")

# --- Helpers ---


def exact(response: httpx.Response) -> Any:
    """The response body with every JSON number that has a fraction read as a Decimal."""
    return json.loads(response.text, parse_float=Decimal)


def application_body(
    applicant_id: str,
    amount: object = "5000",
    income: object = "90000",
    employment_years: object = 6,
) -> dict[str, object]:
    return {
        "applicant_id": applicant_id,
        "amount": amount,
        "income": income,
        "employment_years": employment_years,
    }


async def apply(
    client: httpx.AsyncClient,
    applicant_id: str,
    amount: object = "5000",
    income: object = "90000",
    employment_years: object = 6,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return await client.post(
        "/lending/apply",
        json=application_body(applicant_id, amount, income, employment_years),
        headers=headers,
    )


async def apply_raw(
    client: httpx.AsyncClient, applicant_id: str, amount: str, income: str, years: int
) -> httpx.Response:
    """POST with money written as these raw JSON number tokens, untouched by a serializer."""
    content = (
        f'{{"applicant_id": "{applicant_id}", "amount": {amount}, '
        f'"income": {income}, "employment_years": {years}}}'
    )
    return await client.post("/lending/apply", content=content.encode(), headers=JSON_HEADERS)


async def stored_application(pool: asyncpg.Pool, application_id: str) -> asyncpg.Record:
    """The read-model row, numbers as the database's own text."""
    async with pool.acquire() as connection:
        row = await connection.fetchrow(
            """
            SELECT amount::text, income::text, risk_score::text, employment_years, decision
            FROM loan_applications WHERE application_id = $1
            """,
            uuid.UUID(application_id),
        )
    assert row is not None
    return row


def assert_timestamp(value: object) -> None:
    """ISO 8601 with an explicit UTC offset."""
    assert isinstance(value, str)
    assert datetime.fromisoformat(value).tzinfo is not None
    assert UTC_OFFSET.search(value), value


def assert_application(item: Any) -> None:
    assert isinstance(item, dict)
    assert set(item) == APPLICATION_KEYS
    uuid.UUID(item["application_id"])
    for field in ("amount", "income", "risk_score"):
        assert isinstance(item[field], Decimal), (field, item[field])
    assert isinstance(item["employment_years"], int)
    assert item["decision"] in {"approved", "review"}
    assert item["status"] == {"approved": "approved", "review": "in_review"}[item["decision"]]
    assert_timestamp(item["created_at"])
    assert_timestamp(item["updated_at"])


def recomputed_hash(event: dict[str, Any]) -> str:
    """The event's hash, recomputed from the response alone with ledger.canonical."""
    envelope = envelope_for_hashing(
        stream_id=event["stream_id"],
        stream_version=event["stream_version"],
        event_id=event["event_id"],
        event_type=event["type"],
        schema_version=event["schema_version"],
        data=event["data"],
        metadata=event["metadata"],
        recorded_at=datetime.fromisoformat(event["recorded_at"]),
        prev_hash=bytes.fromhex(event["prev_hash"]),
    )
    digest = event_hash(envelope).hex()
    # The same bytes by the standard library, as the canonical encoding is defined.
    canonical = json.dumps(
        envelope, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")
    assert hashlib.sha256(canonical).hexdigest() == digest
    return digest


async def application_events(client: httpx.AsyncClient, application_id: str) -> list[Any]:
    response = await client.get(f"/lending/applications/{application_id}/events")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    events = response.json()
    assert isinstance(events, list)
    return events


# --- POST /lending/apply ---


async def test_apply_answers_with_the_decided_application(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    applicant = new_applicant()
    before = await row_counts(pool)
    response = await apply(client, applicant, 5000, 90000, 6)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    application = exact(response)
    assert_application(application)
    assert application["applicant_id"] == applicant
    assert application["amount"] == Decimal("5000.00")
    assert application["income"] == Decimal("90000.00")
    assert application["employment_years"] == 6
    # 90000 / 5000 x 100 + 6 x 5
    assert application["risk_score"] == Decimal("1830.00")
    assert application["decision"] == "approved"
    assert application["status"] == "approved"
    assert application["scoring_model"] == "ratio-v1"
    assert application["stream_version"] == 3
    assert application["created_at"] == application["updated_at"]
    events, applications, keys = await row_counts(pool)
    assert (events, applications, keys) == (before[0] + 3, before[1] + 1, before[2])


async def test_a_low_score_goes_to_review(client: httpx.AsyncClient) -> None:
    response = await apply(client, new_applicant(), 100000, 1000, 0)
    assert response.status_code == 200, response.text
    application = exact(response)
    assert application["risk_score"] == Decimal("1.00")
    assert (application["decision"], application["status"]) == ("review", "in_review")


@pytest.mark.parametrize(
    ("amount", "stored"),
    [
        pytest.param("5000.1", "5000.10", id="one_place"),
        pytest.param("5000.10", "5000.10", id="two_places"),
        pytest.param("5000", "5000.00", id="integer"),
        pytest.param('"5000.10"', "5000.10", id="string_two_places"),
        pytest.param('"5000.1"', "5000.10", id="string_one_place"),
        pytest.param('"5000"', "5000.00", id="string_integer"),
        pytest.param("0.01", "0.01", id="one_cent"),
        pytest.param("9999999999.99", "9999999999.99", id="largest"),
        # Exponent notation of a valid value is a valid JSON number: read exactly.
        pytest.param("1e3", "1000.00", id="exponent"),
        pytest.param("1E+3", "1000.00", id="exponent_upper_signed"),
        pytest.param("1.5e3", "1500.00", id="exponent_with_fraction"),
        pytest.param("5e-2", "0.05", id="negative_exponent"),
    ],
)
async def test_valid_money_is_stored_exactly(
    client: httpx.AsyncClient, pool: asyncpg.Pool, amount: str, stored: str
) -> None:
    applicant = new_applicant()
    response = await apply_raw(client, applicant, amount, "90000", 6)
    assert response.status_code == 200, response.text
    assert f'"amount":{stored},' in response.text
    application = exact(response)
    assert application["amount"] == Decimal(stored)
    row = await stored_application(pool, application["application_id"])
    assert row["amount"] == stored
    events = await application_events(client, application["application_id"])
    assert events[0]["data"]["amount"] == stored
    assert events[1]["data"]["inputs"]["amount"] == stored


@pytest.mark.parametrize(
    ("amount", "income", "years", "risk_score", "decision"),
    [
        pytest.param(
            "0.01", "9999999999.99", 80, "100000000000300.00", "approved", id="tiny_loan_rich"
        ),
        pytest.param("9999999999.99", "0.01", 0, "0.00", "review", id="huge_loan_poor"),
    ],
)
async def test_extreme_valid_values_are_scored_and_stored_exactly(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    amount: str,
    income: str,
    years: int,
    risk_score: str,
    decision: str,
) -> None:
    applicant = new_applicant()
    response = await apply_raw(client, applicant, amount, income, years)
    assert response.status_code == 200, response.text
    for token in (f'"amount":{amount},', f'"income":{income},', f'"risk_score":{risk_score},'):
        assert token in response.text
    application = exact(response)
    expected = RATIO_V1.score(ScoringInputs(Decimal(amount), Decimal(income), years))
    assert expected.risk_score == Decimal(risk_score)
    assert application["risk_score"] == expected.risk_score
    assert application["decision"] == expected.decision == decision
    assert application["employment_years"] == years
    row = await stored_application(pool, application["application_id"])
    assert (row["amount"], row["income"], row["risk_score"]) == (amount, income, risk_score)
    assert (row["employment_years"], row["decision"]) == (years, decision)
    read_back = await client.get(f"/lending/applications/{application['application_id']}")
    assert read_back.text == response.text


async def test_money_keeps_its_exact_digits_in_every_response(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    applicant = new_applicant()
    response = await apply_raw(client, applicant, "1234.56", "98765.43", 3)
    assert response.status_code == 200, response.text
    assert '"amount":1234.56,' in response.text
    assert '"income":98765.43,' in response.text
    parsed = json.loads(response.text, parse_float=Decimal)
    assert parsed["amount"] == Decimal("1234.56")
    assert str(parsed["amount"]) == "1234.56"
    assert str(parsed["income"]) == "98765.43"
    # 98765.43 x 100 / 1234.56 = 8000.05... ; + 15
    expected = RATIO_V1.score(ScoringInputs(Decimal("1234.56"), Decimal("98765.43"), 3))
    assert parsed["risk_score"] == expected.risk_score
    assert f'"risk_score":{expected.risk_score},' in response.text

    application_id = parsed["application_id"]
    for path in (
        f"/lending/applications/{application_id}",
        f"/lending/applicants/{applicant}/history",
    ):
        read = await client.get(path)
        assert '"amount":1234.56,' in read.text
        assert '"income":98765.43,' in read.text
    events = await application_events(client, application_id)
    assert events[0]["data"]["amount"] == "1234.56"
    assert events[1]["data"]["risk_score"] == str(expected.risk_score)
    row = await stored_application(pool, application_id)
    assert (row["amount"], row["income"]) == ("1234.56", "98765.43")


# --- GET /lending/applicants/{applicant_id}/history ---


async def test_history_is_newest_first_and_limited(client: httpx.AsyncClient) -> None:
    applicant = new_applicant()
    submitted = []
    for number in range(12):
        response = await apply(client, applicant, str(1001 + number), "60000", number)
        assert response.status_code == 200, response.text
        submitted.append(exact(response))
    newest_first = list(reversed(submitted))

    default = await client.get(f"/lending/applicants/{applicant}/history")
    assert default.status_code == 200, default.text
    assert default.headers["content-type"] == "application/json"
    items = exact(default)
    assert len(items) == 10
    assert items == newest_first[:10]
    assert items[0]["amount"] == Decimal("1012.00")  # the last submitted comes first
    for item in items:
        assert_application(item)
        assert item["applicant_id"] == applicant
    created = [datetime.fromisoformat(item["created_at"]) for item in items]
    assert created == sorted(created, reverse=True)

    three = exact(await client.get(f"/lending/applicants/{applicant}/history?limit=3"))
    assert three == newest_first[:3]
    everything = exact(await client.get(f"/lending/applicants/{applicant}/history?limit=100"))
    assert everything == newest_first


async def test_history_of_an_unknown_applicant_is_empty(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/lending/applicants/{new_applicant()}/history")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == []


async def test_history_is_per_applicant(client: httpx.AsyncClient) -> None:
    mine, theirs = new_applicant(), new_applicant()
    own = exact(await apply(client, mine))
    assert (await apply(client, theirs)).status_code == 200
    assert exact(await client.get(f"/lending/applicants/{mine}/history")) == [own]


# --- GET /lending/applications/{application_id} ---


async def test_an_application_reads_back_as_it_was_answered(client: httpx.AsyncClient) -> None:
    posted = await apply(client, new_applicant(), "2500.50", "40000", 2)
    assert posted.status_code == 200, posted.text
    application_id = posted.json()["application_id"]
    response = await client.get(f"/lending/applications/{application_id}")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert exact(response) == exact(posted)
    upper = await client.get(f"/lending/applications/{application_id.upper()}")
    assert exact(upper) == exact(posted)


@pytest.mark.parametrize("suffix", ["", "/events"], ids=["application", "events"])
async def test_unknown_and_malformed_application_ids_get_404(
    client: httpx.AsyncClient, suffix: str
) -> None:
    for application_id in (str(uuid.uuid4()), "not-a-uuid", "12345"):
        response = await client.get(f"/lending/applications/{application_id}{suffix}")
        problem = assert_problem(response, 404, "not-found")
        assert application_id in problem["detail"]


# --- GET /lending/applications/{application_id}/events ---


async def test_events_are_a_verifiable_hash_chain_with_their_causes(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    applicant = new_applicant()
    correlation = f"agent-run:{uuid.uuid4().hex}.step_1"
    key = f"key-{uuid.uuid4()}"
    posted = await apply(
        client,
        applicant,
        "5000",
        "90000",
        6,
        headers={CORRELATION_HEADER: correlation, "Idempotency-Key": key},
    )
    assert posted.status_code == 200, posted.text
    assert posted.headers[CORRELATION_HEADER] == correlation
    application = exact(posted)
    application_id = application["application_id"]
    await wait_until_sequenced(pool)

    events = await application_events(client, application_id)
    assert [event["type"] for event in events] == EVENT_TYPES
    assert [event["stream_version"] for event in events] == [1, 2, 3]
    positions = [event["position"] for event in events]
    assert positions == sorted(positions)
    assert len(set(positions)) == 3
    seqs = [event["seq"] for event in events]
    assert all(isinstance(seq, int) for seq in seqs)
    assert seqs == list(range(seqs[0], seqs[0] + 3))  # one transaction: contiguous seq

    previous_hash = GENESIS_HASH.hex()
    previous_event_id = None
    for event in events:
        assert set(event) == EVENT_KEYS
        assert event["stream_id"] == f"loan-application-{application_id}"
        assert application_id in event["stream_id"]
        uuid.UUID(event["event_id"])
        assert event["schema_version"] == REGISTRY_VERSIONS[event["type"]]
        assert_timestamp(event["recorded_at"])
        assert HEX_SHA256.fullmatch(event["hash"])
        assert HEX_SHA256.fullmatch(event["prev_hash"])
        assert event["prev_hash"] == previous_hash
        assert recomputed_hash(event) == event["hash"]
        assert event["metadata"] == {
            "actor": "anonymous",
            "correlation_id": correlation,
            "causation_id": previous_event_id,
            "idempotency_key": key,
        }
        assert event["data"]["application_id"] == application_id
        previous_hash = event["hash"]
        previous_event_id = event["event_id"]
    assert events[0]["prev_hash"] == "0" * 64
    assert len({event["event_id"] for event in events}) == 3
    assert datetime.fromisoformat(events[0]["recorded_at"]) == datetime.fromisoformat(
        application["created_at"]
    )

    submitted, scored, decided = (event["data"] for event in events)
    assert submitted == {
        "application_id": application_id,
        "applicant_id": applicant,
        "amount": "5000.00",
        "income": "90000.00",
        "employment_years": 6,
        "submitted_by": "anonymous",
    }

    model = get_model(f"{scored['model_name']}-{scored['model_version']}")
    assert (scored["model_name"], scored["model_version"]) == ("ratio", "v1")
    assert scored["model_fingerprint"] == model.fingerprint == RATIO_V1.fingerprint
    assert scored["model_fingerprint"].startswith("sha256:")
    assert scored["inputs"] == {"amount": "5000.00", "income": "90000.00", "employment_years": 6}
    score = model.score(ScoringInputs.from_data(scored["inputs"]))
    assert scored["risk_score"] == str(score.risk_score) == "1830.00"
    assert scored["reason_codes"] == list(score.reason_codes)
    assert application["risk_score"] == score.risk_score

    assert decided == {
        "application_id": application_id,
        "decision": score.decision,
        "decided_by": "policy:ratio-v1",
        "rule": score.rule,
        "recommended_outcome": None,
    }
    assert application["decision"] == score.decision


async def test_a_new_correlation_id_is_made_and_recorded_when_none_is_sent(
    client: httpx.AsyncClient,
) -> None:
    posted = await apply(client, new_applicant())
    assert posted.status_code == 200, posted.text
    correlation = posted.headers[CORRELATION_HEADER]
    uuid.UUID(correlation)
    events = await application_events(client, posted.json()["application_id"])
    for event in events:
        assert event["metadata"]["correlation_id"] == correlation
        assert event["metadata"]["idempotency_key"] is None


@pytest.mark.parametrize(
    "supplied",
    [
        pytest.param("has a space", id="space"),
        pytest.param("x" * 129, id="129_chars"),
        pytest.param("slash/inside", id="slash"),
    ],
)
async def test_an_invalid_correlation_id_is_replaced_not_recorded(
    client: httpx.AsyncClient, supplied: str
) -> None:
    posted = await apply(client, new_applicant(), headers={CORRELATION_HEADER: supplied})
    assert posted.status_code == 200, posted.text
    replacement = posted.headers[CORRELATION_HEADER]
    assert replacement != supplied
    uuid.UUID(replacement)
    events = await application_events(client, posted.json()["application_id"])
    assert {event["metadata"]["correlation_id"] for event in events} == {replacement}


async def test_problems_carry_the_correlation_id_too(client: httpx.AsyncClient) -> None:
    correlation = f"trace-{uuid.uuid4().hex}"
    response = await client.get(
        "/lending/applicants/ab/history", headers={"x-correlation-id": correlation}
    )
    assert_problem(response, 422, "validation-error")
    assert response.headers[CORRELATION_HEADER] == correlation


# --- GET /events ---


async def test_the_feed_pages_through_every_event_exactly_once_in_seq_order(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    applicant = new_applicant()
    ours = []
    for amount in ("1000", "2000", "3000"):
        response = await apply(client, applicant, amount)
        assert response.status_code == 200, response.text
        ours.append(response.json()["application_id"])
    last = await wait_until_sequenced(pool)

    feed: list[Any] = []
    after = 0
    while True:
        page = await client.get(f"/events?after={after}&limit=7")
        assert page.status_code == 200, page.text
        assert page.headers["content-type"] == "application/json"
        events = page.json()
        assert isinstance(events, list)
        assert len(events) <= 7
        if not events:
            break
        feed.extend(events)
        after = events[-1]["seq"]
    assert len(feed) >= last
    assert [event["seq"] for event in feed] == list(range(1, len(feed) + 1))
    assert len({event["event_id"] for event in feed}) == len(feed)
    assert len({event["position"] for event in feed}) == len(feed)
    for event in feed:
        assert set(event) == EVENT_KEYS

    for application_id in ours:
        stream = await application_events(client, application_id)
        in_feed = [event for event in feed if event["stream_id"] == stream[0]["stream_id"]]
        assert in_feed == stream  # each event exactly once, in stream order, identical
        assert [event["type"] for event in in_feed] == EVENT_TYPES

    # The default page and the page after the head.
    first = await client.get("/events")
    assert first.json() == feed[:100]
    assert (await client.get(f"/events?after={feed[-1]['seq']}")).json() == []


# --- Idempotency ---


async def test_a_repeated_key_replays_the_first_response_and_writes_nothing(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    applicant = new_applicant()
    key = f"retry-{uuid.uuid4()}"
    before = await row_counts(pool)
    first = await apply(client, applicant, headers={"Idempotency-Key": key})
    assert first.status_code == 200, first.text
    assert "idempotent-replayed" not in first.headers
    second = await apply(client, applicant, headers={"Idempotency-Key": key})
    assert second.status_code == 200, second.text
    assert second.headers["idempotent-replayed"] == "true"
    assert second.content == first.content
    # The same validated body: 5000 and "5000.00" are the same amount.
    same_value = await apply(client, applicant, 5000, "90000.00", headers={"Idempotency-Key": key})
    assert same_value.status_code == 200, same_value.text
    assert same_value.headers["idempotent-replayed"] == "true"
    assert same_value.content == first.content

    assert await row_counts(pool) == (before[0] + 3, before[1] + 1, before[2] + 1)
    async with pool.acquire() as connection:
        written = await connection.fetchval(
            "SELECT count(*) FROM events WHERE metadata->>'idempotency_key' = $1", key
        )
    assert written == 3
    history = exact(await client.get(f"/lending/applicants/{applicant}/history"))
    assert history == [exact(first)]


async def test_a_key_reused_for_a_different_request_is_refused(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    applicant = new_applicant()
    key = f"reuse-{uuid.uuid4()}"
    first = await apply(client, applicant, headers={"Idempotency-Key": key})
    assert first.status_code == 200, first.text
    before = await row_counts(pool)
    for different in (
        application_body(applicant, "6000"),
        application_body(applicant, employment_years=7),
        application_body(new_applicant()),
    ):
        response = await client.post(
            "/lending/apply", json=different, headers={"Idempotency-Key": key}
        )
        problem = assert_problem(response, 422, "idempotency-key-reused")
        assert key in problem["detail"]
        assert "idempotent-replayed" not in response.headers
    assert await row_counts(pool) == before
    # The key still replays its own request.
    again = await apply(client, applicant, headers={"Idempotency-Key": key})
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"


async def test_different_keys_or_no_key_make_separate_applications(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    applicant = new_applicant()
    before = await row_counts(pool)
    keyed = [
        await apply(client, applicant, headers={"Idempotency-Key": f"k-{uuid.uuid4()}"})
        for _ in range(2)
    ]
    unkeyed = [await apply(client, applicant) for _ in range(2)]
    responses = keyed + unkeyed
    assert all(response.status_code == 200 for response in responses)
    assert all("idempotent-replayed" not in response.headers for response in responses)
    ids = {response.json()["application_id"] for response in responses}
    assert len(ids) == 4
    assert await row_counts(pool) == (before[0] + 12, before[1] + 4, before[2] + 2)
    history = await client.get(f"/lending/applicants/{applicant}/history")
    assert {item["application_id"] for item in history.json()} == ids


async def test_concurrent_requests_with_one_key_create_exactly_one_application(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """A retry that arrives while the first attempt is in flight gets 409 (in flight) or,
    once the first has committed, its replayed response; one application exists.
    (More in tests/integration/test_idempotency.py.)"""
    applicant = new_applicant()
    key = f"burst-{uuid.uuid4()}"
    before = await row_counts(pool)
    responses = await asyncio.gather(
        *(apply(client, applicant, headers={"Idempotency-Key": key}) for _ in range(10))
    )
    succeeded = [response for response in responses if response.status_code == 200]
    for response in responses:
        if response.status_code != 200:
            assert_problem(response, 409, "idempotency-request-in-flight")
    assert len({response.content for response in succeeded}) == 1
    replayed = [response.headers.get("idempotent-replayed") for response in succeeded]
    assert replayed.count(None) == 1
    assert await row_counts(pool) == (before[0] + 3, before[1] + 1, before[2] + 1)
    history = await client.get(f"/lending/applicants/{applicant}/history")
    assert [item["application_id"] for item in history.json()] == [
        next(r for r in succeeded if "idempotent-replayed" not in r.headers).json()[
            "application_id"
        ]
    ]


# --- OpenAPI and health ---

EXPECTED_OPERATIONS = {
    "submit_application",
    "get_applicant_history",
    "get_application",
    "get_application_events",
    "get_event_feed",
    "get_health",
    "get_readiness",
}


async def test_openapi_names_every_operation_explicitly(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    operations = [
        operation
        for path_item in document["paths"].values()
        for method, operation in path_item.items()
        if method in {"get", "post", "put", "patch", "delete", "head", "options"}
    ]
    operation_ids = [operation.get("operationId") for operation in operations]
    assert set(operation_ids) >= EXPECTED_OPERATIONS
    assert len(operation_ids) == len(set(operation_ids))
    # Explicit ids are the ones the authorisation table names; FastAPI's generated ones
    # (e.g. "apply_lending_apply_post") would be missing from it.
    assert set(operation_ids) <= set(ALLOWED_ROLES)
    # Explicit, not generated by FastAPI from the function name and path.
    routes = [
        route
        for module in (applications, events, health)
        for route in module.router.routes
        if isinstance(route, APIRoute)
    ]
    assert {route.operation_id for route in routes} == EXPECTED_OPERATIONS | {"stream_events"}


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    for path in ("/healthz", "/readyz"):
        response = await client.get(path)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "ok"


# --- The Python client ---


async def test_the_client_evaluates_a_borrower_from_the_newest_application(
    app: FastAPI,
) -> None:
    transport = httpx.ASGITransport(app=app)
    async with LedgerClient("http://ledger.test", transport=transport) as ledger:
        applicant = new_applicant()
        unknown = await ledger.evaluate_borrower(applicant)
        assert unknown["action"] == "request_more_data"
        assert unknown["applicant_id"] == applicant
        assert "application_id" not in unknown

        approved = await ledger.apply(applicant, "5000", "90000", 6)
        assert approved["decision"] == "approved"
        assert approved["amount"] == Decimal("5000.00")
        evaluation = await ledger.evaluate_borrower(applicant)
        assert evaluation["action"] == "auto_process"
        assert evaluation.get("application_id") == approved["application_id"]
        assert evaluation.get("decision") == "approved"
        risk_score = evaluation.get("risk_score")
        assert isinstance(risk_score, Decimal)
        assert risk_score == Decimal("1830.00")

        review = await ledger.apply(applicant, Decimal("100000"), 1000, 0)
        assert review["risk_score"] == Decimal("1.00")
        assert review["decision"] == "review"
        evaluation = await ledger.evaluate_borrower(applicant)
        assert evaluation["action"] == "manual_review"
        assert evaluation.get("application_id") == review["application_id"]
        assert evaluation.get("risk_score") == Decimal("1.00")

        approved_again = await ledger.apply(applicant, "1000", "90000", 1)
        evaluation = await ledger.evaluate_borrower(applicant)
        assert evaluation["action"] == "auto_process"
        assert evaluation.get("application_id") == approved_again["application_id"]


async def test_the_client_sends_review_applicants_to_manual_review(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app)
    async with LedgerClient("http://ledger.test", transport=transport) as ledger:
        applicant = new_applicant()
        review = await ledger.apply(applicant, "100000", "1000", 0)
        evaluation = await ledger.evaluate_borrower(applicant)
        assert evaluation["action"] == "manual_review"
        assert evaluation.get("decision") == "review"
        assert evaluation.get("application_id") == review["application_id"]


async def test_the_client_raises_problems_with_status_and_body(
    app: FastAPI, pool: asyncpg.Pool
) -> None:
    transport = httpx.ASGITransport(app=app)
    async with LedgerClient("http://ledger.test", transport=transport) as ledger:
        applicant = new_applicant()
        before = await row_counts(pool)
        with pytest.raises(LedgerAPIError) as refused:
            await ledger.apply(applicant, "0.001", "1", 1)
        assert refused.value.status == 422
        assert refused.value.problem["type"] == PROBLEM_TYPE_PREFIX + "validation-error"
        assert [error["field"] for error in refused.value.problem["errors"]] == ["amount"]
        assert await row_counts(pool) == before
        assert await ledger.history(applicant) == []

        with pytest.raises(LedgerAPIError) as missing:
            await ledger.application(str(uuid.uuid4()))
        assert missing.value.status == 404
        assert missing.value.problem["type"] == PROBLEM_TYPE_PREFIX + "not-found"

        with pytest.raises(LedgerAPIError) as bad_id:
            await ledger.evaluate_borrower("ab")
        assert bad_id.value.status == 422
        assert bad_id.value.problem["errors"][0]["field"] == "applicant_id"


async def test_the_client_reads_streams_and_the_feed(app: FastAPI, pool: asyncpg.Pool) -> None:
    transport = httpx.ASGITransport(app=app)
    async with LedgerClient("http://ledger.test", transport=transport) as ledger:
        applicant = new_applicant()
        key = f"client-{uuid.uuid4()}"
        first = await ledger.apply(applicant, "750.25", "30000", 4, idempotency_key=key)
        retried = await ledger.apply(applicant, "750.25", "30000", 4, idempotency_key=key)
        assert retried == first
        assert first["amount"] == Decimal("750.25")
        assert await ledger.application(first["application_id"]) == first
        assert await ledger.history(applicant) == [first]
        await wait_until_sequenced(pool)
        events = await ledger.application_events(first["application_id"])
        assert [event["type"] for event in events] == EVENT_TYPES
        assert {event["metadata"]["idempotency_key"] for event in events} == {key}
        page = await ledger.events(after=events[0]["seq"] - 1, limit=3)
        assert page == events


async def test_commands_store_the_canonical_bytes_each_hash_covers(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """The one-statement command path writes `events.hashed` (what set-based verify hashes):
    present, and its SHA-256 is the event's hash, for apply and for a later command."""
    applied = await client.post(
        "/lending/apply",
        json={
            "applicant_id": new_applicant(),
            "amount": 5000,
            "income": 900,
            "employment_years": 1,
        },
    )
    assert applied.status_code == 200, applied.text
    application_id = applied.json()["application_id"]
    withdrawn = await client.post(
        f"/lending/applications/{application_id}/withdraw", json={"reason": "changed my mind"}
    )
    assert withdrawn.status_code == 200, withdrawn.text
    async with pool.acquire() as connection:
        rows = await connection.fetch(
            "SELECT hash, hashed, sha256(hashed) AS digest FROM events WHERE stream_id = $1"
            " ORDER BY stream_version",
            f"loan-application-{application_id}",
        )
    assert len(rows) == 4
    for row in rows:
        assert row["hashed"] is not None
        assert row["digest"] == row["hash"]
