"""Issue #16 (points 1 and 6), against the real server and database: the sequencer seals what
it logs within about a second, so a superuser's forgery of a recent event (recomputed hash
and successors, as the attacker would) is named by `verify` once the covering seal exists;
sealing refuses (409) to build on a log with a deleted sealed event; and seals pushed to a
witness directory show a seal rewritten or removed in the database."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from api.service.settings import Settings
from api.web.app import create_app
from ledger.application import STREAM_PREFIX
from ledger.chain import hash_and_bytes, hash_of_event
from ledger.db import create_pool
from ledger.events import RecordedEvent
from ledger.seals import Seal, latest_seal, sign_seal
from ledger.sequencer import SequencerSettings
from ledger.signing import SigningKey, load_or_create_signing_key, public_key_pem
from ledger.witness import (
    WITNESS,
    WitnessConflict,
    file_name,
    seal_bytes,
    witnessed_sizes,
    write_seal_file,
)
from tests.conftest import FAST_SEQUENCER, MakeDatabase
from tests.integration.test_seals import as_superuser
from tests.integration.test_verify import findings_of, verify_cli
from tests.support.helpers import all_events, assert_problem, wait_until_sequenced
from tests.support.keyed import lifespan_in_own_task
from tests.support.workload import Apply, new_run, run_command


@dataclass(frozen=True)
class Sealing:
    client: httpx.AsyncClient
    pool: asyncpg.Pool
    url: str
    witness: Path
    public_key: Path


@asynccontextmanager
async def sealing_service(
    url: str, tmp_path: Path, sequencer: SequencerSettings = FAST_SEQUENCER
) -> AsyncIterator[Sealing]:
    """The app with the defaults this issue is about: the sequencer seals each batch (at
    most once a second) and every seal is witnessed; no background sealer."""
    key_file, witness = tmp_path / "seal-signing-key.pem", tmp_path / "witness"
    public_key = tmp_path / "seal-public-key.pem"
    public_key.write_text(public_key_pem(load_or_create_signing_key(key_file).public_key))
    settings = Settings(
        app_env="test", signing_key_file=key_file, seal_interval_seconds=0, witness_dir=witness
    )
    assert settings.batch_seal_interval_ms == 1000  # the default: on
    app = create_app(settings, database_url=url, sequencer_settings=sequencer)
    async with await create_pool(url, min_size=1, max_size=4) as pool, lifespan_in_own_task(app):
        await app.state.service.wait_ready(30)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield Sealing(client, pool, url, witness, public_key)


async def apply(service: Sealing, count: int) -> list[str]:
    run, submitted = new_run(), list[str]()
    for n in range(count):
        await run_command(
            service.client, run, Apply(n, Decimal(1000), Decimal(52000), 3), submitted
        )
    return submitted


async def wait_until_sealed(service: Sealing, timeout: float = 20.0) -> Seal:
    """Wait (bounded) until the sequencer's seal covers every committed event."""
    last_seq = await wait_until_sequenced(service.pool, timeout)
    deadline = time.monotonic() + timeout
    while True:
        async with service.pool.acquire() as connection:
            seal = await latest_seal(connection)
        if seal is not None and seal.tree_size >= last_seq:
            return seal
        assert time.monotonic() < deadline, f"no seal covers seq {last_seq} after {timeout}s"
        await asyncio.sleep(0.05)


def canonical_envelope(event: RecordedEvent) -> bytes:
    return hash_and_bytes(
        event.stream_id,
        event.stream_version,
        event.event_id,
        event.event_type,
        event.schema_version,
        event.data,
        event.metadata,
        event.recorded_at,
        event.prev_hash,
    )[1]


async def forge(pool: asyncpg.Pool, stream_id: str, version: int, data: dict[str, Any]) -> int:
    """As the attacker: a superuser edits one event's data, recomputes its hash and its
    successors' (prev_hash, hash and the stored canonical bytes, with the project's own
    functions), so every stream chain still holds. Returns the forged event's position."""
    async with pool.acquire() as connection:
        stream = [e for e in await all_events(connection) if e.stream_id == stream_id]
    forged: list[RecordedEvent] = []
    for event in stream:
        if event.stream_version == version:
            event = replace(event, data={**event.data, **data})
        if forged:
            event = replace(event, prev_hash=forged[-1].hash)
        if event.stream_version >= version:
            event = replace(event, hash=hash_of_event(event))
        forged.append(event)
    statements = [
        f"UPDATE events SET data = '{orjson.dumps(e.data).decode()}'::jsonb, "
        f"prev_hash = '\\x{e.prev_hash.hex()}', hash = '\\x{e.hash.hex()}', "
        f"hashed = '\\x{canonical_envelope(e).hex()}' "
        f"WHERE position = {e.position}"
        for e in forged
        if e.stream_version >= version
    ]
    await as_superuser(pool, *statements)
    return next(e.position for e in forged if e.stream_version == version)


async def run_verify(service: Sealing, monkeypatch: pytest.MonkeyPatch, *extra: str) -> Any:
    code, out = await asyncio.to_thread(
        verify_cli,
        service.url,
        monkeypatch,
        "--json",
        "--skip-read-models",
        "--public-key",
        str(service.public_key),
        *extra,
    )
    report = orjson.loads(out)
    assert code == (0 if report["ok"] else 1)
    return report


# --- The forged tail ---


async def test_a_forged_recent_event_is_named_once_the_sequencers_seal_covers_it(
    make_database: MakeDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with sealing_service(await make_database(), tmp_path) as service:
        submitted = await apply(service, 3)
        seal = await wait_until_sealed(service)  # nobody asked for it: the sequencer sealed
        # The witness file is written right after the seal commits: wait for it (bounded).
        deadline = time.monotonic() + 10
        while seal.tree_size not in witnessed_sizes(service.witness):
            assert time.monotonic() < deadline, "the seal was not witnessed"
            await asyncio.sleep(0.02)
        assert witnessed_sizes(service.witness)[-1] == seal.tree_size
        clean = await run_verify(service, monkeypatch, "--witness", str(service.witness))
        assert clean["ok"], clean["findings"]
        assert clean["checked"]["witnessed_seals"] == len(witnessed_sizes(service.witness))

        # The attacker raises the income of the newest application (already sealed).
        stream_id = f"{STREAM_PREFIX}{submitted[-1]}"
        position = await forge(service.pool, stream_id, 1, {"income": "990000"})
        report = await run_verify(service, monkeypatch, "--witness", str(service.witness))
        assert not report["ok"]
        assert findings_of(report, "chain") == []  # the chains were recomputed: they hold
        sealed = findings_of(report, "seals")
        assert sealed, report["findings"]
        assert all(f["position"] == position and f["stream_id"] == stream_id for f in sealed)
        assert "is not the event sealed at this seq" in sealed[0]["detail"]
        assert findings_of(report, WITNESS) == []  # the seals themselves are untouched

        # Nothing seals on top of it: the latest seal's own leaves no longer match.
        await apply(service, 1)
        await wait_until_sequenced(service.pool)
        response = await service.client.post("/audit/seals")
        body = assert_problem(response, 409)
        assert f"(position {position}): the event's hash is not the sealed one" in body["detail"]
        async with service.pool.acquire() as connection:
            assert await latest_seal(connection) == seal


# --- The sealer refuses to build on a log with sealed rows missing ---


@pytest.mark.parametrize("also_the_log_row", [False, True])
async def test_sealing_refuses_after_a_sealed_event_is_deleted(
    make_database: MakeDatabase, tmp_path: Path, also_the_log_row: bool
) -> None:
    # The sequencer checks the whole log (and so sees sealed rows gone) on its first seal
    # and then once a minute; checking on every seal here makes "the sequencer refused
    # too" hold whenever its next seal lands, not only when it lands after the check below.
    every_seal_checks = dataclasses.replace(FAST_SEQUENCER, full_check_interval=0)
    async with sealing_service(await make_database(), tmp_path, every_seal_checks) as service:
        await apply(service, 4)
        await wait_until_sealed(service)
        await apply(service, 2)  # a later seal, so the deleted event is not in the latest's
        seal = await wait_until_sealed(service)
        async with service.pool.acquire() as connection:
            position = await connection.fetchval("SELECT position FROM ledger_log WHERE seq = 2")
        statements = [f"DELETE FROM events WHERE position = {position}"]
        if also_the_log_row:
            statements.insert(0, "DELETE FROM ledger_log WHERE seq = 2")
        await as_superuser(service.pool, *statements)

        await apply(service, 1)
        await wait_until_sequenced(service.pool)
        response = await service.client.post("/audit/seals")
        body = assert_problem(response, 409)
        if also_the_log_row:
            assert "log rows were deleted" in body["detail"]
        else:
            assert "1 event(s) in the ledger log no longer exist" in body["detail"]
        async with service.pool.acquire() as connection:
            assert await latest_seal(connection) == seal  # the sequencer refused too


# --- Witnessing ---


async def test_the_witness_names_a_seal_rewritten_or_removed_in_the_database(
    make_database: MakeDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with sealing_service(await make_database(), tmp_path) as service:
        sizes = []
        for _ in range(3):
            await apply(service, 2)
            sizes.append((await wait_until_sealed(service)).tree_size)
        response = await service.client.post("/audit/seals")
        assert response.status_code == 200  # nothing new: the sequencer sealed it all
        assert witnessed_sizes(service.witness)[-3:] == sizes
        await witness_tampering(service, monkeypatch, sizes)


async def witness_tampering(
    service: Sealing, monkeypatch: pytest.MonkeyPatch, sizes: list[int]
) -> None:
    """Nothing new is written meanwhile, so the sequencer has nothing to seal."""
    _, middle, newest = sizes

    # The newest seal removed (as with the events after it): the database cannot tell.
    await as_superuser(service.pool, f"DELETE FROM seals WHERE tree_size = {newest}")
    report = await run_verify(service, monkeypatch)
    assert report["ok"], report["findings"]
    report = await run_verify(service, monkeypatch, "--witness", str(service.witness))
    assert [f["detail"] for f in findings_of(report, WITNESS)] == [
        f"seal of tree size {newest}: witnessed, but missing from the database: the seal was "
        "removed (with the events after it, if the log is shorter too)"
    ]

    # A seal rewritten in place.
    await as_superuser(
        service.pool,
        f"UPDATE seals SET root_hash = sha256(root_hash) WHERE tree_size = {middle}",
    )
    report = await run_verify(service, monkeypatch, "--witness", str(service.witness))
    details = [f["detail"] for f in findings_of(report, WITNESS)]
    assert details[0] == (
        f"seal of tree size {middle}: rewritten in the database: root_hash differ from the witness"
    )
    assert len(details) == 2
    assert findings_of(report, "seals")  # its signature no longer verifies either


def test_a_witness_file_is_written_once_and_never_replaced(tmp_path: Path) -> None:
    key, at = SigningKey.generate(), datetime(2026, 1, 1, tzinfo=UTC)
    seal = sign_seal(key, 5, bytes(32), None, at)
    assert write_seal_file(tmp_path, seal) is True
    assert write_seal_file(tmp_path, seal) is False  # the same bytes: fine
    with pytest.raises(WitnessConflict, match="already holds a different seal of tree size 5"):
        write_seal_file(tmp_path, sign_seal(key, 5, bytes(range(32)), None, at))
    assert (tmp_path / file_name(5)).read_bytes() == seal_bytes(seal)
    assert [p.name for p in tmp_path.iterdir()] == [file_name(5)]  # no temporary left
