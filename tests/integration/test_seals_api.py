"""The seal endpoints, the `seal` command, and the auditors' standalone verifier in
docs/architecture.md run against real proofs (and tampered ones)."""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import json
import re
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI

from api.cli.main import main
from api.service.settings import Settings
from api.web.app import create_app
from ledger import merkle
from ledger.db import create_pool
from ledger.signing import SigningKey, public_key_base64
from tests.conftest import FAST_SEQUENCER, MakeDatabase, new_applicant
from tests.integration.test_seals import add_applications
from tests.support.helpers import assert_problem, wait_until_sequenced

ROOT = Path(__file__).resolve().parents[2]


def documented_seal_verifier() -> dict[str, Any]:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- seal-verify-snippet -->\n```python\n(.*?)```", text, re.DOTALL)
    assert match, "docs/architecture.md lost its seal verify snippet"
    namespace: dict[str, Any] = {}
    exec(compile(match.group(1), "docs/architecture.md", "exec"), namespace)
    return namespace


async def apply(client: httpx.AsyncClient) -> str:
    body = {
        "applicant_id": new_applicant(),
        "amount": "2500.50",
        "income": "61000",
        "employment_years": 4,
    }
    response = await client.post("/lending/apply", json=body)
    assert response.status_code == 200, response.text
    application_id: str = response.json()["application_id"]
    return application_id


async def events_of(client: httpx.AsyncClient, application_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/lending/applications/{application_id}/events")
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()
    return events


@pytest.fixture
async def fresh_client(make_database: MakeDatabase) -> AsyncIterator[httpx.AsyncClient]:
    """An app on an empty database of its own, without a background sealer."""
    app: FastAPI = create_app(
        Settings(app_env="test", seal_interval_seconds=0, batch_seal_interval_ms=0),
        database_url=await make_database(),
        sequencer_settings=FAST_SEQUENCER,
    )
    async with app.router.lifespan_context(app):
        await app.state.service.wait_ready(30)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client


async def test_the_public_key_is_served_in_both_encodings(client: httpx.AsyncClient) -> None:
    response = await client.get("/audit/public-key")
    assert response.status_code == 200, response.text
    key = response.json()
    assert key["algorithm"] == "Ed25519"
    loaded = serialization.load_pem_public_key(key["public_key_pem"].encode())
    raw = loaded.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert base64.b64decode(key["public_key"]) == raw
    assert key["key_id"] == hashlib.sha256(raw).hexdigest()


async def test_seal_then_prove_inclusion_and_consistency_with_the_documented_verifier(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    verifier = documented_seal_verifier()
    public_key = (await client.get("/audit/public-key")).json()["public_key"]

    application_id = await apply(client)
    await wait_until_sequenced(pool)
    events = await events_of(client, application_id)
    position = events[0]["position"]

    # Not sealed yet: 409, and the problem says why.
    unsealed = await client.get(f"/audit/events/{position}/proof")
    problem = assert_problem(unsealed, 409, "not-yet-sealed")
    assert f"position {position} (seq {events[0]['seq']}) is not sealed yet" in problem["detail"]

    created = await client.post("/audit/seals")
    assert created.status_code == 201, created.text
    first = created.json()
    assert first["tree_size"] >= events[-1]["seq"]
    again = await client.post("/audit/seals")
    assert again.status_code == 200
    assert again.json() == first
    latest = await client.get("/audit/seals/latest")
    assert latest.status_code == 200
    assert latest.json() == first
    assert verifier["verify_seal"](public_key, first) == bytes.fromhex(first["root_hash"])

    for event in events:
        response = await client.get(f"/audit/events/{event['position']}/proof")
        assert response.status_code == 200, response.text
        proof = response.json()
        assert proof["event"] == event
        assert (proof["seq"], proof["leaf_index"]) == (event["seq"], event["seq"] - 1)
        assert proof["tree_size"] == first["tree_size"]
        assert proof["seal"] == first
        assert proof["leaf_hash"] == merkle.leaf_hash(bytes.fromhex(event["hash"])).hex()
        assert verifier["verify_inclusion"](public_key, proof) is True

    # A second seal over more events; the first is consistent with it.
    await apply(client)
    await wait_until_sequenced(pool)
    second = (await client.post("/audit/seals")).json()
    assert second["previous_seal_hash"] == first["seal_hash"]
    response = await client.get(
        "/audit/seals/consistency",
        params={"first": first["tree_size"], "second": second["tree_size"]},
    )
    assert response.status_code == 200, response.text
    consistency = response.json()
    assert (consistency["first"], consistency["second"]) == (first, second)
    assert verifier["verify_consistency"](public_key, consistency) is True
    same = await client.get(
        "/audit/seals/consistency",
        params={"first": second["tree_size"], "second": second["tree_size"]},
    )
    assert same.json()["consistency_path"] == []
    assert verifier["verify_consistency"](public_key, same.json()) is True

    # What an auditor must catch.
    proof = (await client.get(f"/audit/events/{position}/proof")).json()
    assert verifier["verify_inclusion"](public_key, proof) is True
    cases: list[tuple[str, Any]] = [
        ("event: altered", lambda p: p["event"]["data"].update(amount="2500.51")),
        ("event: altered", lambda p: p["event"].update(prev_hash="11" * 32)),
        # Moving the leaf index changes the path's shape: depending on where the leaf sits
        # in the tree the verifier finds the path too long or the root unreached.
        (
            "proof: (does not lead|too long)",
            lambda p: p["event"].update(seq=p["event"]["seq"] + 1),
        ),
        ("proof: does not lead", lambda p: p["audit_path"].__setitem__(0, "22" * 32)),
        ("seal: bad signature", lambda p: p["seal"].update(root_hash="33" * 32)),
        ("seal: bad signature", lambda p: p["seal"].update(tree_size=p["seal"]["tree_size"] + 1)),
        (
            "seal: bad signature",
            lambda p: p["seal"].update(sealed_at="2020-01-01T00:00:00.000000Z"),
        ),
        ("seal: wrong seal_hash", lambda p: p["seal"].update(seal_hash="44" * 32)),
    ]
    for message, tamper in cases:
        altered = copy.deepcopy(proof)
        tamper(altered)
        with pytest.raises(AssertionError, match=message):
            verifier["verify_inclusion"](public_key, altered)
    other_key = public_key_base64(SigningKey.generate().public_key)
    with pytest.raises(AssertionError, match="seal: signed by another key"):
        verifier["verify_inclusion"](other_key, proof)
    forged = copy.deepcopy(consistency)
    forged["consistency_path"][-1] = "55" * 32
    with pytest.raises(AssertionError, match="proof: inconsistent"):
        verifier["verify_consistency"](public_key, forged)


async def test_bad_positions_and_sizes_are_4xx_problems(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    assert_problem(await client.get("/audit/events/999999999999/proof"), 404, "not-found")
    await apply(client)
    await wait_until_sequenced(pool)
    for bad in ("0", "-1", "abc", "9223372036854775808", "1.5"):
        assert_problem(await client.get(f"/audit/events/{bad}/proof"), 422, "validation-error")
    assert (await client.post("/audit/seals")).status_code == 201
    latest = (await client.get("/audit/seals/latest")).json()["tree_size"]
    for params, status in (
        ({"first": 0, "second": latest}, 422),
        ({"first": latest, "second": "x"}, 422),
        ({"second": latest}, 422),
        ({"first": latest + 1, "second": latest}, 422),
        ({"first": latest, "second": latest + 1000}, 404),
    ):
        problem = assert_problem(
            await client.get("/audit/seals/consistency", params=params), status
        )
        if status == 422:
            assert problem["errors"][0]["location"] == "query"
    refused = await client.get(
        "/audit/seals/consistency", params={"first": latest + 1, "second": latest}
    )
    assert refused.json()["errors"][0]["field"] == "first"


async def test_an_empty_ledger_has_no_seal(fresh_client: httpx.AsyncClient) -> None:
    assert_problem(await fresh_client.get("/audit/seals/latest"), 404, "not-found")
    problem = assert_problem(await fresh_client.post("/audit/seals"), 409, "not-yet-sealed")
    assert "the ledger log is empty" in problem["detail"]
    assert_problem(
        await fresh_client.get("/audit/seals/consistency", params={"first": 1, "second": 1}),
        404,
        "not-found",
    )


async def test_the_seal_command_seals_and_prints_the_seal(
    make_database: MakeDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI in a thread of this process (it runs its own event loop), against a database
    of its own."""
    url = await make_database()
    key_file = tmp_path / "key.pem"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DATABASE_URL", url)
        patch.setenv("LEDGER_SIGNING_KEY_FILE", str(key_file))
        assert await asyncio.to_thread(main, ["seal"]) == 1
        assert "nothing to seal: the ledger log is empty" in capsys.readouterr().err
        pool = await create_pool(url, min_size=1, max_size=2)
        try:
            await add_applications(pool, 2)
        finally:
            await pool.close()
        assert await asyncio.to_thread(main, ["seal"]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert printed["created"] is True
        assert printed["seal"]["tree_size"] == 6
        assert await asyncio.to_thread(main, ["seal"]) == 0
        assert json.loads(capsys.readouterr().out) == {"created": False, "seal": printed["seal"]}
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key_file.write_text("broken")
        assert await asyncio.to_thread(main, ["seal"]) == 2
        assert "signing key" in capsys.readouterr().err
