"""Seals on real PostgreSQL: sealing, proofs, the background sealer, concurrent sealers,
the signing key file, and verification after tampering as a database superuser would.

Every test that tampers gets a database of its own (make_database).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key

from api.service.settings import ConfigurationError, Settings
from ledger import merkle
from ledger.canonical import canonical_bytes
from ledger.chain import hash_of_event
from ledger.db import create_pool
from ledger.errors import LedgerIntegrityError, NotFound, NotYetSealed
from ledger.sealer import Sealer
from ledger.seals import (
    LEAF_BATCH,
    NO_PREVIOUS_SEAL,
    Seal,
    SealFinding,
    consistency_proof,
    create_seal,
    inclusion_proof,
    latest_seal,
    seal_signature_is_valid,
    statement_bytes,
    system_clock,
    verify_seals,
)
from ledger.sequencer import sequence_all
from ledger.signing import (
    SigningKey,
    SigningKeyError,
    load_or_create_signing_key,
    read_public_key,
    read_signing_key,
)
from ledger.store import append
from tests.conftest import MakeDatabase
from tests.integration.test_store import application_events
from tests.support.helpers import whole_feed

KEY = SigningKey.generate()


@pytest.fixture
async def own_pool(make_database: MakeDatabase) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(await make_database(), min_size=1, max_size=12)
    yield pool
    await pool.close()


async def add_applications(pool: asyncpg.Pool, count: int) -> int:
    """Append `count` applications (3 events each), sequence them; the last seq."""
    for _ in range(count):
        stream_id, new_events = application_events()
        async with pool.acquire() as connection, connection.transaction():
            await append(connection, stream_id, 0, new_events, datetime.now(UTC))
    async with pool.acquire() as connection:
        await sequence_all(connection)
        last: int = await connection.fetchval("SELECT coalesce(max(seq), 0) FROM ledger_log")
    return last


async def seal_now(
    pool: asyncpg.Pool,
    *,
    wait: bool = True,
    min_interval: timedelta | None = None,
    batch_size: int = LEAF_BATCH,
) -> Seal | None:
    async with pool.acquire() as connection, connection.transaction():
        return await create_seal(
            connection,
            KEY,
            system_clock,
            wait=wait,
            min_interval=min_interval,
            batch_size=batch_size,
        )


async def event_hashes(pool: asyncpg.Pool) -> list[bytes]:
    async with pool.acquire() as connection:
        return [event.hash for event in await whole_feed(connection)]


async def findings(pool: asyncpg.Pool, *keys: SigningKey) -> list[SealFinding]:
    async with pool.acquire() as connection:
        return await verify_seals(
            connection, [key.public_key for key in keys or (KEY,)], batch_size=4
        )


# --- Sealing and proofs ---


async def test_a_seal_is_the_signed_rfc_root_of_the_log_and_chains_to_the_next(
    own_pool: asyncpg.Pool,
) -> None:
    assert await seal_now(own_pool) is None  # nothing to seal in an empty log
    assert await add_applications(own_pool, 4) == 12
    first = await seal_now(own_pool, batch_size=5)  # several batches of leaves
    assert first is not None
    assert first.tree_size == 12
    assert first.root_hash == merkle.root(await event_hashes(own_pool))
    assert first.previous_seal_hash == NO_PREVIOUS_SEAL
    assert (
        first.key_id
        == KEY.key_id
        == hashlib.sha256(
            KEY.public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        ).hexdigest()
    )
    statement = canonical_bytes(
        {
            "statement": "lending-ledger/seal/v1",
            "tree_size": 12,
            "root_hash": first.root_hash.hex(),
            "previous_seal_hash": "00" * 32,
            "sealed_at": first.sealed_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "key_id": KEY.key_id,
        }
    )
    assert statement_bytes(first) == statement
    assert first.seal_hash == hashlib.sha256(statement).digest()
    assert seal_signature_is_valid(first, KEY.public_key)
    assert not seal_signature_is_valid(first, SigningKey.generate().public_key)

    assert await seal_now(own_pool) is None  # nothing new
    assert await add_applications(own_pool, 3) == 21
    second = await seal_now(own_pool, batch_size=4)
    assert second is not None
    assert (second.tree_size, second.previous_seal_hash) == (21, first.seal_hash)
    assert second.sealed_at >= first.sealed_at
    hashes = await event_hashes(own_pool)
    assert second.root_hash == merkle.root(hashes)

    async with own_pool.acquire() as connection:
        assert await latest_seal(connection) == second
        stored = await connection.fetchval("SELECT count(*) FROM merkle_nodes")
        assert stored == len(merkle.all_nodes(hashes))  # every perfect subtree, once
        for seq in range(1, 22):
            position = await connection.fetchval(
                "SELECT position FROM ledger_log WHERE seq = $1", seq
            )
            proof = await inclusion_proof(connection, position)
            assert proof.event.seq == seq
            assert proof.leaf_index == seq - 1
            assert proof.seal == second
            assert proof.audit_path == merkle.inclusion_proof(seq - 1, hashes)
            assert merkle.verify_inclusion(
                merkle.leaf_hash(proof.event.hash), seq - 1, 21, proof.audit_path, second.root_hash
            )
        consistency = await consistency_proof(connection, 12, 21)
        assert (consistency.first, consistency.second) == (first, second)
        assert merkle.verify_consistency(
            12, 21, first.root_hash, second.root_hash, consistency.path
        )
        same = await consistency_proof(connection, 21, 21)
        assert same.path == []
        with pytest.raises(NotFound, match="no seal of tree size 13"):
            await consistency_proof(connection, 13, 21)
        with pytest.raises(ValueError, match="first <= second"):
            await consistency_proof(connection, 21, 12)
    assert await findings(own_pool) == []


async def test_proofs_of_unsealed_unsequenced_and_unknown_events_are_refused(
    own_pool: asyncpg.Pool,
) -> None:
    async with own_pool.acquire() as connection:
        with pytest.raises(NotFound, match="no event at position 1"):
            await inclusion_proof(connection, 1)
    await add_applications(own_pool, 1)
    async with own_pool.acquire() as connection:
        with pytest.raises(NotYetSealed, match="there is no seal yet"):
            await inclusion_proof(connection, 1)
    await seal_now(own_pool)
    stream_id, new_events = application_events()
    async with own_pool.acquire() as connection, connection.transaction():
        recorded = await append(connection, stream_id, 0, new_events, datetime.now(UTC))
    async with own_pool.acquire() as connection:
        with pytest.raises(NotYetSealed, match="has no seq yet"):
            await inclusion_proof(connection, recorded[0].position)
        await sequence_all(connection)
        with pytest.raises(NotYetSealed, match=r"\(seq 4\) is not sealed yet: the latest seal"):
            await inclusion_proof(connection, recorded[0].position)


async def test_the_interval_and_the_lock_decide_whether_a_background_seal_is_due(
    own_pool: asyncpg.Pool,
) -> None:
    await add_applications(own_pool, 1)
    first = await seal_now(own_pool, wait=False, min_interval=timedelta(hours=1))
    assert first is not None  # no seal yet: due at once
    await add_applications(own_pool, 1)
    assert await seal_now(own_pool, wait=False, min_interval=timedelta(hours=1)) is None
    later = first.sealed_at + timedelta(hours=1)
    async with own_pool.acquire() as connection, connection.transaction():
        second = await create_seal(
            connection, KEY, lambda: later, wait=False, min_interval=timedelta(hours=1)
        )
    assert second is not None
    assert second.tree_size == 6
    assert second.sealed_at == later

    # A sealer that finds the lock taken does not wait: it leaves the work to the holder.
    await add_applications(own_pool, 1)
    async with own_pool.acquire() as holder, holder.transaction():
        await holder.execute("SELECT pg_advisory_xact_lock(7250115081426013003)")
        assert await seal_now(own_pool, wait=False) is None
    assert await findings(own_pool) == []


async def test_the_background_sealer_seals_new_events(own_pool: asyncpg.Pool) -> None:
    last = await add_applications(own_pool, 2)
    sealer = Sealer(own_pool, KEY, interval=0.05, poll_interval=0.02)
    task = asyncio.create_task(sealer.run())
    try:
        deadline = time.monotonic() + 20
        while True:
            async with own_pool.acquire() as connection:
                seal = await latest_seal(connection)
            if seal is not None and seal.tree_size == last:
                break
            assert time.monotonic() < deadline, "the sealer never sealed"
            await asyncio.sleep(0.02)
        last = await add_applications(own_pool, 1)
        while True:
            async with own_pool.acquire() as connection:
                seal = await latest_seal(connection)
            if seal is not None and seal.tree_size == last:
                break
            assert time.monotonic() < deadline, "the sealer never sealed the new events"
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await findings(own_pool) == []
    with pytest.raises(ValueError, match="positive"):
        Sealer(own_pool, KEY, interval=0)


async def test_concurrent_sealers_never_seal_the_same_size_twice(
    own_pool: asyncpg.Pool,
) -> None:
    """Sealers race each other (waiting and not waiting) while events keep arriving."""
    created: list[Seal] = []

    async def sealer(wait: bool) -> None:
        for _ in range(4):
            seal = await seal_now(own_pool, wait=wait)
            if seal is not None:
                created.append(seal)

    async def writer() -> None:
        for _ in range(4):
            await add_applications(own_pool, 1)

    await add_applications(own_pool, 1)
    await asyncio.gather(writer(), *(sealer(wait=n % 2 == 0) for n in range(6)))
    async with own_pool.acquire() as connection:
        rows = await connection.fetch("SELECT tree_size FROM seals ORDER BY tree_size")
    sizes = [row["tree_size"] for row in rows]
    assert sorted(seal.tree_size for seal in created) == sizes
    assert len(set(sizes)) == len(sizes)
    assert sizes[-1] <= 15
    assert await findings(own_pool) == []


# --- Tampering, as a superuser would ---


async def as_superuser(pool: asyncpg.Pool, *statements: str) -> None:
    """Run statements with every trigger and foreign key switched off (replica mode)."""
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute("SET LOCAL session_replication_role = replica")
        for statement in statements:
            await connection.execute(statement)


async def position_of(pool: asyncpg.Pool, seq: int) -> int:
    async with pool.acquire() as connection:
        position: int = await connection.fetchval(
            "SELECT position FROM ledger_log WHERE seq = $1", seq
        )
    return position


@pytest.fixture
async def sealed_pool(own_pool: asyncpg.Pool) -> asyncpg.Pool:
    """Two seals: of the first 9 events and of all 15."""
    await add_applications(own_pool, 3)
    assert await seal_now(own_pool) is not None
    await add_applications(own_pool, 2)
    assert await seal_now(own_pool) is not None
    assert await findings(own_pool) == []
    return own_pool


async def test_an_edited_event_breaks_every_seal_that_covers_it(
    sealed_pool: asyncpg.Pool,
) -> None:
    position = await position_of(sealed_pool, 5)
    await as_superuser(
        sealed_pool,
        "UPDATE events SET data = jsonb_set(data, '{employment_years}', '60') "
        f"WHERE position = {position}",
    )
    found = await findings(sealed_pool)
    assert [(f.tree_size, f.problem, f.seq, f.position) for f in found] == [
        (9, "root-mismatch", 5, position),
        (15, "root-mismatch", 5, position),
    ]
    assert "was edited: its content no longer matches its hash" in found[0].detail


async def test_an_edited_and_rehashed_event_still_breaks_the_seal(
    sealed_pool: asyncpg.Pool,
) -> None:
    """Even with its hash recomputed, an event is not the one sealed."""
    position = await position_of(sealed_pool, 12)
    async with sealed_pool.acquire() as connection:
        event = (await inclusion_proof(connection, position)).event
    edited = replace(event, data={**event.data, "rule": "rewritten"})
    await as_superuser(
        sealed_pool,
        f'UPDATE events SET data = data || \'{{"rule": "rewritten"}}\', '
        f"hash = '\\x{hash_of_event(edited).hex()}' WHERE position = {position}",
    )
    found = await findings(sealed_pool)
    assert [(f.tree_size, f.problem, f.seq) for f in found] == [(15, "root-mismatch", 12)]
    assert "is not the event sealed at this seq" in found[0].detail


async def test_a_deleted_event_breaks_the_seals_and_sealing_refuses_to_go_on(
    sealed_pool: asyncpg.Pool,
) -> None:
    position = await position_of(sealed_pool, 3)
    await as_superuser(
        sealed_pool,
        "DELETE FROM ledger_log WHERE seq = 3",
        f"DELETE FROM events WHERE position = {position}",
    )
    found = await findings(sealed_pool)
    assert [(f.tree_size, f.problem, f.seq) for f in found] == [
        (9, "root-mismatch", 3),
        (15, "root-mismatch", 3),
    ]
    assert "seq 3 is missing from the ledger log" in found[0].detail

    # Only the event row gone (its log row left): named with its position.
    position = await position_of(sealed_pool, 11)
    await as_superuser(sealed_pool, f"DELETE FROM events WHERE position = {position}")
    found = await findings(sealed_pool)
    assert [(f.tree_size, f.seq) for f in found] == [(9, 3), (15, 3)]

    # The newest log rows gone: the log is shorter than the latest seal; no new seal.
    await as_superuser(sealed_pool, "DELETE FROM ledger_log WHERE seq > 13")
    with pytest.raises(LedgerIntegrityError, match="log rows were deleted"):
        await seal_now(sealed_pool)


async def test_reordered_events_break_the_seal_at_the_first_moved_seq(
    sealed_pool: asyncpg.Pool,
) -> None:
    a, b = await position_of(sealed_pool, 10), await position_of(sealed_pool, 14)
    await as_superuser(
        sealed_pool,
        "UPDATE ledger_log SET position = -1 WHERE seq = 10",
        f"UPDATE ledger_log SET position = {a} WHERE seq = 14",
        f"UPDATE ledger_log SET position = {b} WHERE seq = 10",
    )
    found = await findings(sealed_pool)
    assert [(f.tree_size, f.problem, f.seq, f.position) for f in found] == [
        (15, "root-mismatch", 10, b)
    ]
    assert "is not the event sealed at this seq" in found[0].detail


async def test_altered_removed_and_foreign_seals_are_named(sealed_pool: asyncpg.Pool) -> None:
    await as_superuser(
        sealed_pool, "UPDATE seals SET root_hash = '\\x" + "11" * 32 + "' WHERE tree_size = 9"
    )
    found = await findings(sealed_pool)
    assert [(f.tree_size, f.problem) for f in found] == [
        (9, "seal-hash-mismatch"),
        (9, "bad-signature"),
        (9, "root-mismatch"),
    ]
    await as_superuser(sealed_pool, "DELETE FROM seals WHERE tree_size = 9")
    found = await findings(sealed_pool)
    assert [(f.tree_size, f.problem) for f in found] == [(15, "broken-chain")]
    # Signed by a key the auditor does not trust:
    found = await findings(sealed_pool, SigningKey.generate())
    assert [(f.tree_size, f.problem) for f in found] == [(15, "broken-chain"), (15, "unknown-key")]


async def test_altered_stored_tree_nodes_are_named(sealed_pool: asyncpg.Pool) -> None:
    """The events still match the signed roots; the nodes proofs are built from do not."""
    await as_superuser(
        sealed_pool,
        "UPDATE merkle_nodes SET hash = '\\x" + "22" * 32 + "' WHERE height = 0 AND node_index = 1",
        "UPDATE merkle_nodes SET hash = '\\x" + "33" * 32 + "' WHERE height = 3 AND node_index = 0",
    )
    found = await findings(sealed_pool)
    assert [(f.tree_size, f.problem, f.seq) for f in found] == [
        (9, "stored-tree-mismatch", 2),
        (15, "stored-tree-mismatch", None),
    ]
    await as_superuser(sealed_pool, "DELETE FROM merkle_nodes WHERE height = 1 AND node_index = 2")
    async with sealed_pool.acquire() as connection:
        # Seq 7's audit path needs the subtree of leaves 4 and 5 (height 1, index 2).
        position = await connection.fetchval("SELECT position FROM ledger_log WHERE seq = 7")
        with pytest.raises(LedgerIntegrityError, match="lost node"):
            await inclusion_proof(connection, position)


async def test_the_tables_refuse_updates_and_deletes(sealed_pool: asyncpg.Pool) -> None:
    async with sealed_pool.acquire() as connection:
        for statement in (
            "UPDATE seals SET key_id = key_id",
            "DELETE FROM seals",
            "TRUNCATE seals",
            "UPDATE merkle_nodes SET hash = hash",
            "DELETE FROM merkle_nodes",
            "TRUNCATE merkle_nodes",
        ):
            with pytest.raises(asyncpg.RestrictViolationError, match="append-only"):
                await connection.execute(statement)
    assert await findings(sealed_pool) == []


# --- The signing key file ---


def test_the_key_file_is_created_once_private_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "seal-signing-key.pem"
    created = load_or_create_signing_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert load_or_create_signing_key(path).key_id == created.key_id
    assert read_public_key(path).public_bytes_raw() == created.public_key.public_bytes_raw()
    public_pem = tmp_path / "public.pem"
    public_pem.write_bytes(
        created.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert read_public_key(public_pem).public_bytes_raw() == created.public_key.public_bytes_raw()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary files left


def test_workers_starting_at_once_all_get_the_same_key(tmp_path: Path) -> None:
    path = tmp_path / "seal-signing-key.pem"
    start = threading.Barrier(8)

    def start_worker() -> str:
        start.wait(timeout=10)
        return load_or_create_signing_key(path).key_id

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda _: start_worker(), range(8)))
    assert len(set(ids)) == 1
    assert read_signing_key(path).key_id == ids[0]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_unusable_key_files_are_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    with pytest.raises(SigningKeyError, match="not an unencrypted PEM private key"):
        load_or_create_signing_key(garbage)
    other = tmp_path / "ec.pem"
    other.write_bytes(
        generate_private_key(SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(SigningKeyError, match="not an Ed25519 key"):
        load_or_create_signing_key(other)
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(SigningKeyError, match="cannot create"):
        load_or_create_signing_key(blocked / "key.pem")


def test_settings_of_the_key_and_the_interval(tmp_path: Path) -> None:
    defaults = Settings.from_env({"LEDGER_DATA_DIR": str(tmp_path)})
    assert defaults.signing_key_path == tmp_path / "seal-signing-key.pem"
    assert defaults.seal_interval_seconds == 60
    custom = Settings.from_env(
        {"LEDGER_SIGNING_KEY_FILE": "/keys/seal.pem", "LEDGER_SEAL_INTERVAL_SECONDS": "0"}
    )
    assert (custom.signing_key_path, custom.seal_interval_seconds) == (Path("/keys/seal.pem"), 0)
    with pytest.raises(ConfigurationError, match="LEDGER_SEAL_INTERVAL_SECONDS"):
        Settings.from_env({"LEDGER_SEAL_INTERVAL_SECONDS": "-1"})
    assert os.environ.get("XDG_DATA_HOME"), "tests keep default data directories out of home"
    assert not str(Settings().signing_key_path).startswith(str(Path.home() / ".local"))
