"""The underwriting workflow over HTTP: review queue, analyst decisions, withdrawals, manual
review requests and agent actions (open mode: every caller is the anonymous principal; the
role rules are tested with API keys in the auth tests)."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from typing import Any

import asyncpg
import httpx

from ledger.scoring import RATIO_V1
from tests.conftest import new_applicant
from tests.support.helpers import assert_problem, row_counts

# ratio-v1: income 12,000 on 50,000 with 1 year scores 29.00 -> review; 90,000 on 5,000
# with 6 years scores 1830.00 -> approved.
REVIEW_BODY = {"amount": "50000", "income": "12000", "employment_years": 1}
APPROVE_BODY = {"amount": "5000", "income": "90000", "employment_years": 6}
DECLINE = {
    "outcome": "declined",
    "reason_codes": ["INCOME_LOW_FOR_AMOUNT", "EMPLOYMENT_HISTORY_SHORT"],
    "justification": "Income does not support a loan of this size.",
}


async def submit(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/lending/apply", json={"applicant_id": new_applicant(), **body})
    assert response.status_code == 200, response.text
    application: dict[str, Any] = response.json()
    return application


async def in_review(client: httpx.AsyncClient) -> dict[str, Any]:
    application = await submit(client, REVIEW_BODY)
    assert application["status"] == "in_review"
    return application


def app_url(application: dict[str, Any]) -> str:
    return f"/lending/applications/{application['application_id']}"


def path(application: dict[str, Any], action: str) -> str:
    return f"{app_url(application)}/{action}"


async def events_of(client: httpx.AsyncClient, application: dict[str, Any]) -> list[Any]:
    response = await client.get(path(application, "events"))
    assert response.status_code == 200
    events: list[Any] = response.json()
    return events


async def test_an_application_in_review_waits_in_the_queue_oldest_first(
    client: httpx.AsyncClient,
) -> None:
    mine = [await in_review(client) for _ in range(3)]
    await submit(client, APPROVE_BODY)  # approved: never in the queue
    seen: list[dict[str, Any]] = []
    cursor = None
    for _ in range(1000):  # bounded: the shared database holds at most a few hundred
        params: dict[str, Any] = {"status": "pending", "limit": 7}
        if cursor:
            params["cursor"] = cursor
        response = await client.get("/lending/reviews", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= 7
        seen.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    ids = [item["application_id"] for item in seen]
    assert len(ids) == len(set(ids)), "a page repeated an application"
    assert all(item["status"] == "in_review" for item in seen)
    since = [item["in_review_since"] for item in seen]
    assert since == sorted(since)
    positions = [ids.index(application["application_id"]) for application in mine]
    assert positions == sorted(positions)


async def test_a_bad_queue_cursor_or_status_is_a_422(client: httpx.AsyncClient) -> None:
    for params in ({"cursor": "not-a-cursor"}, {"status": "everything"}, {"limit": 0}):
        assert_problem(await client.get("/lending/reviews", params=params), 422)


async def test_an_analyst_declines_with_reasons_from_the_catalogue(
    client: httpx.AsyncClient,
) -> None:
    application = await in_review(client)
    response = await client.post(
        path(application, "review"),
        json=DECLINE,
        headers={"If-Match": f'"{application["stream_version"]}"'},
    )
    assert response.status_code == 200, response.text
    declined = response.json()
    assert declined["status"] == declined["decision"] == "declined"
    assert declined["decided_by"] == "anonymous"
    assert declined["stream_version"] == application["stream_version"] + 1
    assert declined["reviewed_at"] is not None

    reviewed = (await events_of(client, application))[-1]
    assert reviewed["type"] == "ApplicationReviewed"
    assert reviewed["data"]["reason_codes"] == [
        {"code": code, "text": RATIO_V1.reason_catalogue[code]} for code in DECLINE["reason_codes"]
    ]
    assert reviewed["data"]["justification"] == DECLINE["justification"]
    assert reviewed["data"]["catalogue"] == "ratio-v1"

    current = await client.get(app_url(application))
    assert current.headers["etag"] == f'"{declined["stream_version"]}"'

    # A declined application is final: no second review, no withdrawal.
    again = await client.post(
        path(application, "review"),
        json={**DECLINE, "expected_version": declined["stream_version"]},
    )
    assert assert_problem(again, 409)["current_status"] == "declined"
    withdraw = await client.post(path(application, "withdraw"), json={"reason": "changed mind"})
    assert assert_problem(withdraw, 409)["current_status"] == "declined"


async def test_an_analyst_approves_and_it_leaves_the_queue(client: httpx.AsyncClient) -> None:
    application = await in_review(client)
    response = await client.post(
        path(application, "review"),
        json={
            "outcome": "approved",
            "justification": "Verified income documents.",
            "expected_version": application["stream_version"],
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "approved"
    completed: list[str] = []
    cursor = None
    for _ in range(1000):
        params: dict[str, str | int] = {"status": "completed", "limit": 100}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/lending/reviews", params=params)).json()
        completed.extend(item["application_id"] for item in page["items"])
        if (cursor := page["next_cursor"]) is None:
            break
    assert application["application_id"] in completed


async def test_review_refusals_write_nothing(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    application = await in_review(client)
    version = application["stream_version"]
    approved = await submit(client, APPROVE_BODY)
    current = {**DECLINE, "expected_version": version}
    cases: list[tuple[str, dict[str, Any], dict[str, str], int, str | None]] = [
        ("no version", DECLINE, {}, 428, "precondition-required"),
        ("stale version", {**DECLINE, "expected_version": version - 1}, {}, 409, None),
        ("stale If-Match", DECLINE, {"If-Match": f'"{version + 5}"'}, 409, None),
        ("bad If-Match", DECLINE, {"If-Match": '"three"'}, 422, None),
        ("version disagreement", current, {"If-Match": '"1"'}, 422, None),
        ("decline without codes", {**current, "reason_codes": []}, {}, 422, None),
        ("unknown code", {**current, "reason_codes": ["VIBES"]}, {}, 422, None),
        ("repeated code", {**current, "reason_codes": ["UNABLE_TO_VERIFY"] * 2}, {}, 422, None),
        ("blank justification", {**current, "justification": "   "}, {}, 422, None),
        ("no justification", {**current, "justification": None}, {}, 422, None),
        ("unknown outcome", {**current, "outcome": "maybe"}, {}, 422, None),
    ]  # fmt: skip
    before = await row_counts(pool)
    for name, body, headers, status, slug in cases:
        response = await client.post(path(application, "review"), json=body, headers=headers)
        assert_problem(response, status, slug), name
    not_in_review = await client.post(
        path(approved, "review"), json={**DECLINE, "expected_version": approved["stream_version"]}
    )
    assert assert_problem(not_in_review, 409)["current_status"] == "approved"
    stale = await client.post(path(application, "review"), json={**DECLINE, "expected_version": 1})
    assert assert_problem(stale, 409)["current_version"] == version
    missing = await client.post(
        f"/lending/applications/{uuid.uuid4()}/review", json={**DECLINE, "expected_version": 3}
    )
    assert_problem(missing, 404)
    assert await row_counts(pool) == before
    assert (await client.get(app_url(application))).json()["status"] == "in_review"


async def test_two_analysts_at_once_one_wins_and_the_other_gets_a_409(
    client: httpx.AsyncClient,
) -> None:
    application = await in_review(client)
    version = application["stream_version"]
    approve = {"outcome": "approved", "justification": "Looks fine.", "expected_version": version}
    responses = await asyncio.gather(
        client.post(path(application, "review"), json=approve),
        client.post(path(application, "review"), json={**DECLINE, "expected_version": version}),
    )
    assert sorted(response.status_code for response in responses) == [200, 409]
    events = await events_of(client, application)
    assert [event["type"] for event in events].count("ApplicationReviewed") == 1
    assert len(events) == version + 1


async def test_withdrawal_for_the_applicant_ends_the_application(
    client: httpx.AsyncClient,
) -> None:
    application = await submit(client, APPROVE_BODY)
    response = await client.post(
        path(application, "withdraw"), json={"reason": "Found a cheaper offer."}
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "withdrawn"
    withdrawn = (await events_of(client, application))[-1]
    assert withdrawn["type"] == "ApplicationWithdrawn"
    assert withdrawn["data"] == {
        "application_id": application["application_id"],
        "withdrawn_by": "anonymous",
        "channel": "applicant",
        "reason": "Found a cheaper offer.",
    }
    again = await client.post(path(application, "withdraw"), json={"reason": "twice"})
    assert assert_problem(again, 409)["current_status"] == "withdrawn"
    assert_problem(await client.post(path(application, "withdraw"), json={"reason": ""}), 422)


async def test_an_agent_sends_an_automatic_approval_to_manual_review(
    client: httpx.AsyncClient,
) -> None:
    application = await submit(client, APPROVE_BODY)
    response = await client.post(
        path(application, "manual-review"), json={"reason": "Documents look edited."}
    )
    assert response.status_code == 200, response.text
    escalated = response.json()
    assert escalated["status"] == "in_review"
    assert escalated["in_review_since"] is not None
    again = await client.post(path(application, "manual-review"), json={"reason": "again"})
    assert assert_problem(again, 409)["current_status"] == "in_review"

    # An analyst's approval is a human decision: it does not go back to review.
    approved = await client.post(
        path(application, "review"),
        json={"outcome": "approved", "justification": "Checked.", "expected_version": 4},
    )
    assert approved.status_code == 200, approved.text
    back = await client.post(path(application, "manual-review"), json={"reason": "once more"})
    assert assert_problem(back, 409)["current_status"] == "approved"


async def test_agent_actions_are_recorded_on_the_stream(client: httpx.AsyncClient) -> None:
    application = await in_review(client)
    prompt = "Assess this application for prequalification."
    body = {
        "agent_id": "underwriter-agent-7",
        "model_name": "example-llm-2026-10",
        "prompt": prompt,
        "output": "Income verification missing.",
        "action": "manual_review",
        "rationale": "Score is in the review band.",
    }
    response = await client.post(path(application, "agent-actions"), json=body)
    assert response.status_code == 201, response.text
    action = response.json()
    digest = hashlib.sha256(prompt.encode()).hexdigest()
    assert action["prompt_sha256"] == digest
    assert action["stream_version"] == application["stream_version"] + 1
    recorded = (await events_of(client, application))[-1]
    assert recorded["type"] == "AgentActionRecorded"
    assert recorded["event_id"] == action["event_id"]
    assert recorded["data"]["prompt"] == prompt
    assert recorded["data"]["rationale"] == body["rationale"]
    # Recording changes nothing about the application but its version.
    current = (await client.get(app_url(application))).json()
    assert current["status"] == "in_review"

    by_reference = {**body, "prompt": None, "prompt_sha256": digest, "prompt_ref": "s3://p/1"}
    by_reference.pop("prompt")
    response = await client.post(path(application, "agent-actions"), json=by_reference)
    assert response.status_code == 201, response.text
    assert (await events_of(client, application))[-1]["data"]["prompt"] is None


async def test_bad_agent_actions_are_refused(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    application = await in_review(client)
    good = {
        "agent_id": "agent-1",
        "model_name": "m",
        "prompt": "p",
        "output": "o",
        "action": "auto_process",
        "rationale": "r",
    }
    without_prompt = {k: v for k, v in good.items() if k != "prompt"}
    cases = [
        without_prompt,
        {**good, "prompt_sha256": "0" * 64},  # not the prompt's hash
        {**good, "prompt_sha256": "ABC"},
        {**good, "action": "decline"},  # declining is not an agent action
        {**good, "agent_id": ""},
        {**good, "agent_id": "has space"},
        {**good, "rationale": " "},
        {**good, "extra": 1},
        {**good, "output": 5},
    ]
    before = await row_counts(pool)
    for body in cases:
        assert_problem(await client.post(path(application, "agent-actions"), json=body), 422)
    assert_problem(
        await client.post(f"/lending/applications/{uuid.uuid4()}/agent-actions", json=good), 404
    )
    assert_problem(await client.post("/lending/applications/nope/agent-actions", json=good), 404)
    assert await row_counts(pool) == before


async def test_workflow_writes_are_idempotent(client: httpx.AsyncClient) -> None:
    application = await in_review(client)
    key = f"review-{uuid.uuid4()}"
    body = {**DECLINE, "expected_version": application["stream_version"]}
    first = await client.post(
        path(application, "review"), json=body, headers={"Idempotency-Key": key}
    )
    retry = await client.post(
        path(application, "review"), json=body, headers={"Idempotency-Key": key}
    )
    assert first.status_code == retry.status_code == 200
    assert retry.content == first.content
    assert retry.headers.get("idempotent-replayed") == "true"
    assert len(await events_of(client, application)) == application["stream_version"] + 1
    other = await client.post(
        path(application, "withdraw"), json={"reason": "x"}, headers={"Idempotency-Key": key}
    )
    assert_problem(other, 422)


async def test_reason_codes_are_published_per_model(client: httpx.AsyncClient) -> None:
    response = await client.get("/lending/reason-codes")
    assert response.status_code == 200
    catalogues = {item["model"]: item for item in response.json()}
    assert catalogues["ratio-v1"]["fingerprint"] == RATIO_V1.fingerprint
    assert {r["code"]: r["text"] for r in catalogues["ratio-v1"]["reasons"]} == dict(
        RATIO_V1.reason_catalogue
    )
    one = await client.get("/lending/reason-codes", params={"model": "ratio-v1"})
    assert [item["model"] for item in one.json()] == ["ratio-v1"]
    assert_problem(await client.get("/lending/reason-codes", params={"model": "nope-v0"}), 404)
