"""A full underwriting scenario through the Python client, with API keys and roles: an agent
applies, the score lands in review, the agent records its action, an analyst declines with
reasons, an auditor reads the events. Plus maker-checker with real identities."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from api.client import LedgerAPIError, LedgerClient
from api.service.access import Role
from api.service.keystore import create_key
from ledger.chain import verify_stream
from ledger.db import connect
from ledger.scoring import RATIO_V1
from ledger.store import read_stream
from tests.conftest import MakeDatabase, new_applicant
from tests.support.keyed import KeyedApp, keyed_app


@asynccontextmanager
async def as_role(keyed: KeyedApp, key: str) -> AsyncIterator[LedgerClient]:
    transport = httpx.ASGITransport(app=keyed.app)
    async with LedgerClient("http://ledger.test", transport=transport, api_key=key) as client:
        yield client


async def new_key(keyed: KeyedApp, name: str, role: Role) -> str:
    connection = await connect(keyed.database_url)
    try:
        _, secret = await create_key(connection, name, role.value)
    finally:
        await connection.close()
    return secret


async def test_agent_applies_analyst_declines_auditor_reads(make_database: MakeDatabase) -> None:
    async with keyed_app(make_database) as keyed:
        applicant = new_applicant()
        async with as_role(keyed, keyed.keys[Role.AGENT]) as agent:
            application = await agent.apply(applicant, "50000", "12000", 1)
            assert application["status"] == "in_review"
            application_id = application["application_id"]
            assert application["submitted_by"] == "agent:test-agent"

            evaluation = await agent.evaluate_borrower(applicant)
            assert evaluation["action"] == "manual_review"
            prompt = f"Evaluate applicant {applicant}."
            action = await agent.record_agent_action(
                application_id,
                agent_id="underwriter-agent-7",
                model_name="example-llm",
                prompt=prompt,
                output="Score in the review band.",
                action="manual_review",
                rationale=evaluation["reason"],
            )
            assert action["prompt_sha256"] == hashlib.sha256(prompt.encode()).hexdigest()
            # Declining is not an agent's right, whatever it sends.
            with pytest.raises(LedgerAPIError) as refused:
                await agent.review(
                    application_id,
                    "declined",
                    expected_version=4,
                    justification="no",
                    reason_codes=["UNABLE_TO_VERIFY"],
                )
            assert refused.value.status == 403

        async with as_role(keyed, keyed.keys[Role.ANALYST]) as analyst:
            queue = await analyst.review_queue()
            [queued] = [i for i in queue["items"] if i["application_id"] == application_id]
            catalogue = await analyst.reason_codes(queued["scoring_model"])
            codes = {reason["code"] for reason in catalogue[0]["reasons"]}
            assert "INCOME_LOW_FOR_AMOUNT" in codes
            declined = await analyst.review(
                application_id,
                "declined",
                expected_version=queued["stream_version"],
                justification="Income does not support the amount requested.",
                reason_codes=["INCOME_LOW_FOR_AMOUNT", "EMPLOYMENT_HISTORY_SHORT"],
            )
            assert declined["status"] == "declined"
            assert declined["decided_by"] == "analyst:test-analyst"

        async with as_role(keyed, keyed.keys[Role.AUDITOR]) as auditor:
            events = await auditor.application_events(application_id)
            assert [event["type"] for event in events] == [
                "ApplicationSubmitted",
                "ApplicationScored",
                "ApplicationDecided",
                "AgentActionRecorded",
                "ApplicationReviewed",
            ]
            actors = [event["metadata"]["actor"] for event in events]
            assert actors == ["agent:test-agent"] * 4 + ["analyst:test-analyst"]
            reviewed = events[-1]["data"]
            assert reviewed["reason_codes"][0] == {
                "code": "INCOME_LOW_FOR_AMOUNT",
                "text": RATIO_V1.reason_catalogue["INCOME_LOW_FOR_AMOUNT"],
            }
            feed = await auditor.events(after=0, limit=1000)
            assert isinstance(feed, list)
            # An auditor writes nothing.
            with pytest.raises(LedgerAPIError) as refused:
                await auditor.withdraw(application_id, "auditors cannot")
            assert refused.value.status == 403

        async with keyed.pool.acquire() as connection:
            stored = await read_stream(connection, f"loan-application-{application_id}")
        assert verify_stream(stored) is None


async def test_maker_checker_with_real_identities(make_database: MakeDatabase) -> None:
    async with keyed_app(make_database) as keyed:
        bob = await new_key(keyed, "bob", Role.ANALYST)
        async with as_role(keyed, keyed.keys[Role.ANALYST]) as alice:
            # An analyst may submit an application too; then another analyst must review it.
            application = await alice.apply(new_applicant(), "50000", "12000", 1)
            with pytest.raises(LedgerAPIError) as refused:
                await alice.review(
                    application["application_id"],
                    "approved",
                    expected_version=application["stream_version"],
                    justification="mine",
                )
            assert refused.value.status == 403
            assert refused.value.problem["type"].endswith(":not-allowed")
        async with as_role(keyed, bob) as other:
            approved = await other.review(
                application["application_id"],
                "approved",
                expected_version=application["stream_version"],
                justification="Checked by a second analyst.",
            )
            assert approved["status"] == "approved"
        # An admin may approve, but only an analyst may decline.
        async with as_role(keyed, keyed.keys[Role.AGENT]) as agent:
            second = await agent.apply(new_applicant(), "50000", "12000", 1)
        async with as_role(keyed, keyed.keys[Role.ADMIN]) as admin:
            with pytest.raises(LedgerAPIError) as refused:
                await admin.review(
                    second["application_id"],
                    "declined",
                    expected_version=second["stream_version"],
                    justification="no",
                    reason_codes=["UNABLE_TO_VERIFY"],
                )
            assert refused.value.status == 403
