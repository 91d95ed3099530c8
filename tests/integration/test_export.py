"""The decision record: `GET /audit/applications/{id}/record` and `lending-ledger export`.

An application is taken through apply -> agent action -> review decline -> seal; its record
must list every event in order, verify its chain, reproduce its score and carry inclusion
proofs that verify with the seal's public key. A superuser's edit must show up in the
record's verification, not crash it.
"""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from api.cli.main import main
from api.jsonio import loads_exact
from api.service.settings import Settings
from api.web.app import create_app
from ledger.merkle import leaf_hash, verify_inclusion
from ledger.seals import Seal, create_seal, latest_seal, seal_signature_is_valid, system_clock
from ledger.signing import SigningKey, public_key_pem
from tests.conftest import FAST_SEQUENCER, MakeDatabase, new_applicant
from tests.integration.test_workflow import DECLINE, REVIEW_BODY
from tests.support.helpers import assert_problem, wait_until_sequenced

HOSTILE = "<script>alert('x')</script> \"quoted\" & more"
AGENT_ACTION = {
    "agent_id": "underwriter-agent-7",
    "model_name": "example-llm-2026-10",
    "prompt": f"Assess this application. {HOSTILE}",
    "output": "Income verification missing.",
    "action": "manual_review",
    "rationale": "Score is in the review band.",
}
EVENT_TYPES = [
    "ApplicationSubmitted",
    "ApplicationScored",
    "ApplicationDecided",
    "AgentActionRecorded",
    "ApplicationReviewed",
]


async def decided_application(client: httpx.AsyncClient) -> str:
    """apply (-> review) -> agent action -> analyst decline; the application id."""
    response = await client.post(
        "/lending/apply", json={"applicant_id": new_applicant(), **REVIEW_BODY}
    )
    assert response.status_code == 200, response.text
    application_id: str = response.json()["application_id"]
    url = f"/lending/applications/{application_id}"
    response = await client.post(f"{url}/agent-actions", json=AGENT_ACTION)
    assert response.status_code == 201, response.text
    decline = {
        **DECLINE,
        "justification": f"Income too low. {HOSTILE}",
        "expected_version": response.json()["stream_version"],
    }
    response = await client.post(f"{url}/review", json=decline)
    assert response.status_code == 200, response.text
    return application_id


async def seal_now(pool: asyncpg.Pool, key: SigningKey) -> Seal:
    """Seal every sequenced event now; the latest seal."""
    await wait_until_sequenced(pool)
    async with pool.acquire() as connection:
        async with connection.transaction():
            await create_seal(connection, key, system_clock)
        seal = await latest_seal(connection)
    assert seal is not None
    return seal


def signing_key(app: FastAPI) -> SigningKey:
    key: SigningKey = app.state.service.signing_key
    return key


def assert_proofs_verify(record: dict[str, Any], key: SigningKey) -> None:
    seal_out = record["verification"]["seal"]["seal"]
    assert record["verification"]["seal"]["signature_valid"] is True
    assert seal_out["key_id"] == key.key_id
    for event in record["events"]:
        proof = event["inclusion"]
        assert proof["status"] == "verified", proof
        assert proof["tree_size"] == seal_out["tree_size"]
        assert proof["leaf_index"] == event["seq"] - 1
        # Verified here from the record alone, independently of the server's verdict.
        leaf = leaf_hash(bytes.fromhex(event["hash"]))
        assert proof["leaf_hash"] == leaf.hex()
        path = [bytes.fromhex(node) for node in proof["audit_path"]]
        root = bytes.fromhex(seal_out["root_hash"])
        assert verify_inclusion(leaf, proof["leaf_index"], proof["tree_size"], path, root)


async def test_the_record_of_a_declined_application_verifies(
    client: httpx.AsyncClient, pool: asyncpg.Pool, app: FastAPI
) -> None:
    application_id = await decided_application(client)
    key = signing_key(app)
    seal = await seal_now(pool, key)
    assert seal_signature_is_valid(seal, key.public_key)

    response = await client.get(f"/audit/applications/{application_id}/record")
    assert response.status_code == 200, response.text
    record = loads_exact(response.content)  # money as exact JSON numbers
    events = (await client.get(f"/lending/applications/{application_id}/events")).json()

    assert record["application_id"] == application_id
    assert record["current"]["status"] == "declined"
    assert record["folded"]["status"] == "declined"
    assert record["folded"]["stream_version"] == len(EVENT_TYPES)
    assert [e["type"] for e in record["events"]] == EVENT_TYPES
    assert [e["position"] for e in record["events"]] == [e["position"] for e in events]
    assert [e["hash"] for e in record["events"]] == [e["hash"] for e in events]
    assert record["events"][0]["actor"] == events[0]["metadata"]["actor"]

    score = record["scores"][0]
    assert score["model"] == "ratio-v1"
    assert str(score["risk_score"]) == events[1]["data"]["risk_score"]  # digit for digit
    assert all(reason["text"] for reason in score["reasons"])
    assert record["automatic_decisions"][0]["decision"] == "review"
    review = record["reviews"][0]
    assert review["outcome"] == "declined"
    assert [r["code"] for r in review["reasons"]] == DECLINE["reason_codes"]
    assert HOSTILE in review["justification"]
    assert record["agent_actions"][0]["agent_id"] == AGENT_ACTION["agent_id"]
    assert record["withdrawal"] is None

    verification = record["verification"]
    assert verification["ok"] is True
    assert verification["chain"] == {
        "ok": True,
        "position": None,
        "stream_version": None,
        "reason": None,
    }
    assert verification["scores_reproduce"] is True
    assert [s["status"] for s in verification["scores"]] == ["match"]
    assert verification["events_sealed"] == verification["events_total"] == len(EVENT_TYPES)
    assert verification["proofs_valid"] == len(EVENT_TYPES)
    assert_proofs_verify(record, key)

    html = await client.get(
        f"/audit/applications/{application_id}/record", params={"format": "html"}
    )
    assert html.status_code == 200
    assert html.headers["content-type"].startswith("text/html")
    assert "<script>" not in html.text
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &#34;quoted&#34;" in html.text


async def test_events_after_the_latest_seal_are_not_yet_sealed(
    client: httpx.AsyncClient, pool: asyncpg.Pool, app: FastAPI
) -> None:
    await seal_now(pool, signing_key(app))
    application_id = await decided_application(client)  # after the seal
    record = (await client.get(f"/audit/applications/{application_id}/record")).json()
    statuses = {e["inclusion"]["status"] for e in record["events"]}
    assert statuses == {"not_yet_sealed"}
    assert record["verification"]["events_sealed"] == 0
    assert record["verification"]["ok"] is True


async def test_unknown_or_malformed_ids_are_404(client: httpx.AsyncClient) -> None:
    for raw in (str(uuid.uuid4()), "not-a-uuid"):
        assert_problem(await client.get(f"/audit/applications/{raw}/record"), 404)
    assert_problem(
        await client.get(f"/audit/applications/{uuid.uuid4()}/record", params={"format": "pdf"}),
        422,
    )


def export_cli(url: str, monkeypatch: pytest.MonkeyPatch, *argv: str) -> tuple[int, str, str]:
    monkeypatch.setenv("DATABASE_URL", url)
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.setattr("sys.stderr", err)
    code = main(["export", *argv])
    return code, out.getvalue(), err.getvalue()


async def test_the_export_command_writes_json_and_html(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    app: FastAPI,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    application_id = await decided_application(client)
    key = signing_key(app)
    await seal_now(pool, key)
    public_key = tmp_path / "public.pem"
    public_key.write_text(public_key_pem(key.public_key))

    as_json, as_html = tmp_path / "record.json", tmp_path / "record.html"
    for path, fmt in ((as_json, "json"), (as_html, "html")):
        code, _, err = await asyncio.to_thread(
            export_cli,
            database_url,
            monkeypatch,
            "--application",
            application_id,
            "--format",
            fmt,
            "--output",
            str(path),
            "--public-key",
            str(public_key),
        )
        assert code == 0, err
    record = json.loads(as_json.read_text())
    assert [e["type"] for e in record["events"]] == EVENT_TYPES
    assert record["verification"]["ok"] is True
    assert_proofs_verify(record, key)

    page = as_html.read_text()
    assert "<script" not in page
    assert "&lt;script&gt;" in page
    assert "Review: declined (INCOME_LOW_FOR_AMOUNT, EMPLOYMENT_HISTORY_SHORT)" in page
    assert "Agent underwriter-agent-7 (example-llm-2026-10): manual_review" in page
    assert "Automatic decision: review" in page
    assert f"{len(EVENT_TYPES)} of {len(EVENT_TYPES)} events sealed" in page

    for bad in ("not-a-uuid", str(uuid.uuid4())):
        code, out, err = await asyncio.to_thread(
            export_cli, database_url, monkeypatch, "--application", bad
        )
        assert code == 2
        assert out == ""
        assert bad in err


@pytest.fixture
async def fresh_app(make_database: MakeDatabase) -> AsyncIterator[tuple[str, FastAPI]]:
    url = await make_database()
    application = create_app(
        Settings(app_env="test", seal_interval_seconds=0, batch_seal_interval_ms=0),
        database_url=url,
        sequencer_settings=FAST_SEQUENCER,
    )
    async with application.router.lifespan_context(application):
        await application.state.service.wait_ready(30)
        yield url, application


async def test_a_tampered_event_breaks_the_records_verification(
    fresh_app: tuple[str, FastAPI],
) -> None:
    url, application = fresh_app
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://ledger.test") as client:
        application_id = await decided_application(client)
        await seal_now(application.state.service.pool, signing_key(application))
        events = (await client.get(f"/lending/applications/{application_id}/events")).json()
        tampered = events[3]["position"]  # the agent action
        superuser = await asyncpg.connect(url)
        try:
            await superuser.execute("SET session_replication_role = replica")
            await superuser.execute(
                "UPDATE events SET data = jsonb_set(data, '{rationale}', '\"forged\"') "
                "WHERE position = $1",
                tampered,
            )
        finally:
            await superuser.close()

        response = await client.get(f"/audit/applications/{application_id}/record")
        assert response.status_code == 200, response.text
        verification = response.json()["verification"]
        assert verification["ok"] is False
        assert verification["chain"]["ok"] is False
        assert verification["chain"]["position"] == tampered
        assert "hash does not match" in verification["chain"]["reason"]
        proofs = {e["position"]: e["inclusion"] for e in response.json()["events"]}
        assert proofs[tampered]["status"] == "invalid"
        assert all(p["status"] == "verified" for pos, p in proofs.items() if pos != tampered)

        html = await client.get(
            f"/audit/applications/{application_id}/record", params={"format": "html"}
        )
        assert html.status_code == 200
        assert f"hash chain broken at position {tampered}" in html.text
