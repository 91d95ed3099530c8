"""Score reconstruction: the pure comparison, `GET /audit/applications/{id}/scores` and
`lending-ledger rescore`, on real PostgreSQL. Tampering tests use a fresh database each."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.cli.rescore import rescore
from api.service.audit_models import ScoreReconstruction
from api.service.commands import RequestContext, submit_application, with_metadata
from api.service.models import ApplyRequest
from api.service.settings import Settings
from api.web.app import create_app
from api.web.commands import render_application
from ledger.application import SubmitApplication, decide, stream_id_for
from ledger.db import connect, create_pool
from ledger.events import (
    ApplicationDecided,
    ApplicationScored,
    DomainEvent,
    RecordedEvent,
    ScoringInputs,
)
from ledger.reconstruction import (
    FINGERPRINT_MISMATCH,
    MATCH,
    MISMATCH,
    MODEL_UNKNOWN,
    RECOMPUTE_FAILED,
    UNREADABLE,
    RecordedDecision,
    check_recorded_score,
    reconstruct_stream,
    recorded_decision,
)
from ledger.scoring import MODELS, RATIO_V1, SCORECARD_V2, ScoringModel
from ledger.store import append
from projections.runner import project_inline
from tests.conftest import FAST_SEQUENCER, MakeDatabase, new_applicant
from tests.support.helpers import assert_problem
from tests.support.strategies import any_money, years

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]
CONTEXT = RequestContext(
    actor="test:reconstruction",
    correlation_id="reconstruction",
    idempotency_key=None,
    fingerprint=b"",
)
inputs = st.builds(ScoringInputs, any_money, any_money, years)
model_keys = st.sampled_from(sorted(MODELS))


def scored_stream(
    model: ScoringModel, scoring_inputs: ScoringInputs, **changes: Any
) -> list[DomainEvent]:
    """The three events of one submission, the score event changed by `changes` (a made-up
    model, fingerprint or score); the decision names the same model as the score."""
    command = SubmitApplication(
        uuid.uuid4(),
        new_applicant(),
        scoring_inputs.amount,
        scoring_inputs.income,
        scoring_inputs.employment_years,
    )
    submitted, scored, decided = decide(None, command, NOW, model)
    assert isinstance(scored, ApplicationScored)
    assert isinstance(decided, ApplicationDecided)
    scored = replace(scored, **changes)
    decided = replace(decided, decided_by=f"policy:{scored.model_name}-{scored.model_version}")
    return [submitted, scored, decided]


def as_recorded(events: Sequence[DomainEvent]) -> list[RecordedEvent]:
    """Envelopes as the store would give them back (no database needed for pure checks)."""
    return [
        RecordedEvent(
            position=version,
            seq=version,
            stream_id="loan-application-test",
            stream_version=version,
            event_id=new.event_id,
            event_type=new.event.event_type,
            schema_version=new.event.schema_version,
            data=new.event.to_data(),
            metadata=new.metadata.to_data(),
            recorded_at=NOW,
            prev_hash=b"",
            hash=b"",
        )
        for version, new in enumerate(with_metadata(events, CONTEXT), start=1)
    ]


def only_check(events: Sequence[DomainEvent]) -> Any:
    checks = reconstruct_stream(as_recorded(events))
    assert len(checks) == 1
    ScoreReconstruction.from_check(checks[0])  # every status renders in the API's shape
    return checks[0].reconstruction


SAMPLE = ScoringInputs(Decimal("30000.00"), Decimal("100000.00"), 5)


# --- Pure ---


@settings(max_examples=150)
@given(model_keys, inputs)
def test_every_model_reproduces_its_own_scores(key: str, scoring_inputs: ScoringInputs) -> None:
    model = MODELS[key]
    result = only_check(scored_stream(model, scoring_inputs))
    assert (result.status, result.match, result.differences) == (MATCH, True, ())
    score = model.score(scoring_inputs)
    assert result.recomputed == score
    assert result.decision == RecordedDecision(
        score.decision, score.rule, score.recommended_outcome
    )
    assert result.registry_fingerprint == model.fingerprint == result.scored.model_fingerprint


def test_an_unknown_model_version_is_reported_not_raised() -> None:
    events = scored_stream(RATIO_V1, SAMPLE, model_name="ratio", model_version="v0")
    result = only_check(events)
    assert (result.status, result.match) == (MODEL_UNKNOWN, False)
    assert result.recomputed is None
    assert result.registry_fingerprint is None
    assert "ratio-v0 is not in the registry" in result.detail
    assert result.scored.inputs == SAMPLE  # the record is still shown


def test_a_different_fingerprint_is_reported_and_still_recomputed() -> None:
    recorded_fingerprint = "sha256:" + "ab" * 32
    result = only_check(scored_stream(SCORECARD_V2, SAMPLE, model_fingerprint=recorded_fingerprint))
    assert (result.status, result.match) == (FINGERPRINT_MISMATCH, False)
    assert result.registry_fingerprint == SCORECARD_V2.fingerprint
    assert result.scored.model_fingerprint == recorded_fingerprint
    assert result.recomputed == SCORECARD_V2.score(SAMPLE)
    assert recorded_fingerprint in result.detail
    assert SCORECARD_V2.fingerprint in result.detail


def test_a_registry_whose_model_changed_shows_what_changed() -> None:
    events = scored_stream(SCORECARD_V2, SAMPLE)  # 650: grey zone, review
    stricter = replace(SCORECARD_V2, approve_at_or_above=Decimal(640))
    scored, decided = as_recorded(events)[1:]
    result = check_recorded_score(scored, decided, {"scorecard-v2": stricter}).reconstruction
    assert result.status == FINGERPRINT_MISMATCH
    assert result.differences == ("decision", "rule", "recommended_outcome")
    assert result.recomputed is not None
    assert result.recomputed.decision == "approved"


@pytest.mark.parametrize(
    ("field", "recorded"),
    [
        ("risk_score", Decimal("651")),
        ("risk_score", Decimal("650.0")),  # equal as a number, not as recorded
        ("reason_codes", ("EMPLOYMENT_HISTORY_SHORT", "DEBT_TO_INCOME_HIGH", "AMOUNT_TOO_HIGH")),
        ("reason_codes", ()),
    ],
)
def test_any_difference_in_the_score_event_is_a_mismatch(field: str, recorded: Any) -> None:
    result = only_check(scored_stream(SCORECARD_V2, SAMPLE, **{field: recorded}))
    assert (result.status, result.match, result.differences) == (MISMATCH, False, (field,))
    assert str(SCORECARD_V2.score(SAMPLE).risk_score) == "650"


@pytest.mark.parametrize(
    ("field", "recorded"),
    [("decision", "approved"), ("rule", "score 650 >= 600"), ("recommended_outcome", None)],
)
def test_any_difference_in_the_policy_decision_is_a_mismatch(field: str, recorded: Any) -> None:
    submitted, scored, decided = scored_stream(SCORECARD_V2, SAMPLE)
    assert isinstance(decided, ApplicationDecided)
    result = only_check([submitted, scored, replace(decided, **{field: recorded})])
    assert (result.status, result.differences) == (MISMATCH, (field,))
    assert field in result.detail


def test_inputs_the_model_refuses_are_reported() -> None:
    refused = ScoringInputs(Decimal("-1"), Decimal("100"), 3)
    result = only_check(scored_stream(SCORECARD_V2, SAMPLE, inputs=refused))
    assert (result.status, result.recomputed) == (RECOMPUTE_FAILED, None)
    zero_amount = ScoringInputs(Decimal("0"), Decimal("100"), 3)
    assert (
        only_check(scored_stream(RATIO_V1, SAMPLE, inputs=zero_amount)).status == RECOMPUTE_FAILED
    )


@pytest.mark.parametrize(
    "broken",
    [
        {"risk_score": "not a number"},
        {"inputs": None},
        {"model_name": None, "reason_codes": 5},
        {"application_id": "x"},
    ],
)
def test_an_event_that_does_not_decode_is_unreadable(broken: dict[str, Any]) -> None:
    _, scored, decided = as_recorded(scored_stream(RATIO_V1, SAMPLE))
    damaged = replace(scored, data={**scored.data, **broken})
    check = check_recorded_score(damaged, decided)
    assert (check.reconstruction.status, check.reconstruction.scored) == (UNREADABLE, None)
    assert ScoreReconstruction.from_check(check).recorded is None


def test_each_score_is_compared_with_the_decision_of_its_own_command() -> None:
    first = scored_stream(RATIO_V1, SAMPLE)
    second = scored_stream(SCORECARD_V2, SAMPLE)
    # two commands in one stream: the decision of each is the one its score caused
    events = as_recorded(first) + as_recorded(second)
    checks = reconstruct_stream(events)
    assert [check.reconstruction.status for check in checks] == [MATCH, MATCH]
    decisions = [check.reconstruction.decision for check in checks]
    assert decisions[0] == recorded_decision(first[2])
    assert decisions[1] == recorded_decision(second[2])
    assert decisions[0] != decisions[1]
    # a score whose decision is missing is compared on the score event alone
    alone = [e for e in as_recorded(first) if e.event_type != ApplicationDecided.event_type]
    lone = reconstruct_stream(alone)[0].reconstruction
    assert (lone.status, lone.decision) == (MATCH, None)


# --- On PostgreSQL ---


@dataclass
class Ledger:
    url: str
    pool: asyncpg.Pool
    client: httpx.AsyncClient


@asynccontextmanager
async def serving(url: str, scoring_model: str = "ratio-v1") -> AsyncIterator[Ledger]:
    application = create_app(
        Settings(app_env="test", scoring_model=scoring_model),
        database_url=url,
        sequencer_settings=FAST_SEQUENCER,
    )
    pool = await create_pool(url, min_size=1, max_size=4)
    try:
        async with application.router.lifespan_context(application):
            await application.state.service.wait_ready(30)
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://ledger.test"
            ) as client:
                yield Ledger(url, pool, client)
    finally:
        await pool.close()


@pytest.fixture(scope="module")
async def workload_ledger(make_database: MakeDatabase) -> AsyncIterator[Ledger]:
    """A fresh database whose service scores new applications with scorecard-v2."""
    async with serving(await make_database(), scoring_model="scorecard-v2") as ledger:
        yield ledger


async def append_stream(pool: asyncpg.Pool, events: list[DomainEvent]) -> uuid.UUID:
    scored = events[1]
    assert isinstance(scored, ApplicationScored)
    async with pool.acquire() as connection, connection.transaction():
        recorded = await append(
            connection, stream_id_for(scored.application_id), 0, with_metadata(events, CONTEXT), NOW
        )
        await project_inline(connection, recorded)
    return scored.application_id


async def submit_directly(
    pool: asyncpg.Pool, model: ScoringModel, scoring_inputs: ScoringInputs
) -> str:
    request = ApplyRequest(
        applicant_id=new_applicant(),
        amount=scoring_inputs.amount,
        income=scoring_inputs.income,
        employment_years=scoring_inputs.employment_years,
    )
    result = await submit_application(
        pool, request, CONTEXT, model, datetime.now(UTC), render_application
    )
    application_id: str = json.loads(result.response.body)["application_id"]
    return application_id


async def reconstructions(client: httpx.AsyncClient, application_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/audit/applications/{application_id}/scores")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["application_id"] == application_id
    scores: list[dict[str, Any]] = body["scores"]
    return scores


async def run_rescore(url: str, application_id: str | None = None) -> tuple[int, dict[str, Any]]:
    out, err = io.StringIO(), io.StringIO()
    code = await rescore(
        url,
        application_id=None if application_id is None else uuid.UUID(application_id),
        as_json=True,
        out=out,
        err=err,
        prefetch=3,  # several cursor round trips even for a small ledger
    )
    assert err.getvalue() == ""
    document: dict[str, Any] = json.loads(out.getvalue())
    return code, document


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.tuples(model_keys, inputs), min_size=1, max_size=5))
async def test_scores_reproduce(
    workload_ledger: Ledger, workload: list[tuple[str, ScoringInputs]]
) -> None:
    ledger = workload_ledger
    for key, scoring_inputs in workload:
        if key == "scorecard-v2":  # through the API: the service is configured with it
            response = await ledger.client.post(
                "/lending/apply",
                json={
                    "applicant_id": new_applicant(),
                    "amount": str(scoring_inputs.amount),
                    "income": str(scoring_inputs.income),
                    "employment_years": scoring_inputs.employment_years,
                },
            )
            assert response.status_code == 200, response.text
            assert response.json()["scoring_model"] == "scorecard-v2"
            application_id = response.json()["application_id"]
        else:
            application_id = await submit_directly(ledger.pool, MODELS[key], scoring_inputs)

        [score] = await reconstructions(ledger.client, application_id)
        model = MODELS[key]
        expected = model.score(scoring_inputs)
        assert (score["status"], score["match"], score["differences"]) == ("match", True, [])
        assert score["model"] == key
        assert score["registry_fingerprint"] == score["recorded"]["model_fingerprint"]
        assert score["recorded"]["model_fingerprint"] == model.fingerprint
        for side in ("recorded", "recomputed"):
            assert Decimal(str(score[side]["risk_score"])) == expected.risk_score
            assert score[side]["reason_codes"] == list(expected.reason_codes)
            assert score[side]["decision"] == expected.decision
            assert score[side]["recommended_outcome"] == expected.recommended_outcome
        assert score["recorded"]["inputs"]["employment_years"] == scoring_inputs.employment_years

    # Every score in this ledger so far, through the command, streamed by the cursor.
    code, document = await run_rescore(ledger.url)
    summary = document["summary"]
    assert (code, document["findings"]) == (0, [])
    assert summary["checked"] == summary["matched"] > 0
    async with ledger.pool.acquire() as connection:
        recorded_scores = await connection.fetchval(
            "SELECT count(*) FROM events WHERE event_type = 'ApplicationScored'"
        )
    assert summary["checked"] == recorded_scores


async def test_unknown_applications_are_404_problems(client: httpx.AsyncClient) -> None:
    for application_id in (str(uuid.uuid4()), "not-a-uuid"):
        response = await client.get(f"/audit/applications/{application_id}/scores")
        assert_problem(response, 404, "not-found")


async def test_unknown_models_and_fingerprints_are_reported_by_the_endpoint_and_the_command(
    make_database: MakeDatabase,
) -> None:
    async with serving(await make_database()) as ledger:
        good = await submit_directly(ledger.pool, SCORECARD_V2, SAMPLE)
        unknown = await append_stream(
            ledger.pool,
            scored_stream(
                SCORECARD_V2,
                SAMPLE,
                model_name="neural",
                model_version="v9",
                model_fingerprint="sha256:" + "0" * 64,
            ),
        )
        changed_fingerprint = "sha256:" + "1" * 64
        changed = await append_stream(
            ledger.pool, scored_stream(RATIO_V1, SAMPLE, model_fingerprint=changed_fingerprint)
        )

        [score] = await reconstructions(ledger.client, good)
        assert score["status"] == "match"
        [score] = await reconstructions(ledger.client, str(unknown))
        assert (score["status"], score["match"], score["model"]) == (
            "model_unknown",
            False,
            "neural-v9",
        )
        assert (score["recomputed"], score["registry_fingerprint"]) == (None, None)
        assert score["recorded"]["model_name"] == "neural"
        [score] = await reconstructions(ledger.client, str(changed))
        assert (score["status"], score["match"]) == ("fingerprint_mismatch", False)
        assert score["recorded"]["model_fingerprint"] == changed_fingerprint
        assert score["registry_fingerprint"] == RATIO_V1.fingerprint
        assert Decimal(str(score["recomputed"]["risk_score"])) == RATIO_V1.score(SAMPLE).risk_score

        code, document = await run_rescore(ledger.url)
        assert code == 1
        assert document["summary"] == {
            "checked": 3,
            "matched": 1,
            "mismatched": 0,
            "model_unknown": 1,
            "fingerprint_mismatch": 1,
            "recompute_failed": 0,
            "unreadable": 0,
        }
        by_status = {finding["status"]: finding for finding in document["findings"]}
        assert set(by_status) == {"model_unknown", "fingerprint_mismatch"}
        assert by_status["model_unknown"]["stream_id"] == stream_id_for(unknown)
        assert by_status["fingerprint_mismatch"]["registry_fingerprint"] == RATIO_V1.fingerprint

        assert (await run_rescore(ledger.url, good))[0] == 0
        code, document = await run_rescore(ledger.url, str(changed))
        assert (code, document["summary"]["fingerprint_mismatch"]) == (1, 1)

        # The installed command: the same through argv, human output and --json.
        code, stdout, stderr = await cli(ledger.url, "rescore", "--all")
        assert code == 1, stderr
        assert "rescore: checked 3, matched 1, mismatched 0, unknown model 1, " in stdout
        assert f"model_unknown: {stream_id_for(unknown)} version 2" in stdout
        assert "fingerprint_mismatch: " in stdout
        code, stdout, stderr = await cli(ledger.url, "rescore", "--application", good, "--json")
        assert (code, json.loads(stdout)["summary"]["matched"]) == (0, 1), stderr
        err = io.StringIO()
        missing = uuid.uuid4()
        assert await rescore(ledger.url, application_id=missing, err=err) == 2
        assert err.getvalue() == f"lending-ledger rescore: no application {missing}\n"


async def cli(url: str, *argv: str) -> tuple[int, str, str]:
    environment = {**os.environ, "DATABASE_URL": url}
    environment.pop("LEDGER_SCORING_MODEL", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "api.cli.main",
        *argv,
        cwd=ROOT,
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_a_tampered_score_is_a_mismatch(make_database: MakeDatabase) -> None:
    async with serving(await make_database()) as ledger:
        honest = await submit_directly(ledger.pool, RATIO_V1, SAMPLE)
        tampered = await submit_directly(ledger.pool, SCORECARD_V2, SAMPLE)  # 650: review
        superuser = await connect(ledger.url)
        try:
            assert await superuser.fetchval(
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
            )
            async with superuser.transaction():
                await superuser.execute("SET LOCAL session_replication_role = replica")
                updated = await superuser.execute(
                    """UPDATE events SET data = jsonb_set(data, '{risk_score}', '"700"')
                       WHERE stream_id = $1 AND event_type = 'ApplicationScored'""",
                    stream_id_for(uuid.UUID(tampered)),
                )
            assert updated == "UPDATE 1"
        finally:
            await superuser.close()

        [score] = await reconstructions(ledger.client, tampered)
        assert (score["status"], score["match"], score["differences"]) == (
            "mismatch",
            False,
            ["risk_score"],
        )
        assert (score["recorded"]["risk_score"], score["recomputed"]["risk_score"]) == (700, 650)
        assert "risk_score recorded '700', recomputed '650'" in score["detail"]

        code, document = await run_rescore(ledger.url)
        assert code == 1
        assert (document["summary"]["checked"], document["summary"]["mismatched"]) == (2, 1)
        [finding] = document["findings"]
        assert finding["stream_id"] == stream_id_for(uuid.UUID(tampered))
        assert (await run_rescore(ledger.url, honest))[0] == 0
