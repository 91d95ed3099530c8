"""Seals: signed Merkle checkpoints over the ledger log, their proofs, and their audit.

A seal of tree size n commits to the first n events of the ledger log: leaf i is the
32-byte hash of the event at seq i + 1 (RFC 9162 tree hashing, ledger/merkle.py). Its signed
statement is the canonical bytes of

    {"statement": "lending-ledger/seal/v1", "tree_size": n, "root_hash": <hex>,
     "previous_seal_hash": <hex>, "sealed_at": <UTC, microseconds, Z>, "key_id": <hex>}

signed with Ed25519. Its `seal_hash` is the SHA-256 of those bytes, and the next seal's
`previous_seal_hash` (32 zero bytes for the first seal), so the seals form a chain.

Database functions take a connection and never commit. `create_seal` must run inside the
caller's READ COMMITTED transaction: it takes the sealing lock first, and each statement
after it sees the seals committed by whoever held the lock before.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ledger import seal_sql as sql
from ledger.canonical import canonical_bytes, format_timestamp
from ledger.chain import hash_of_event
from ledger.db import Connection
from ledger.errors import LedgerIntegrityError, NotFound, NotYetSealed
from ledger.events import RecordedEvent
from ledger.merkle import (
    NodeId,
    consistency_proof_ranges,
    extend,
    frontier,
    inclusion_path_ranges,
    leaf_hash,
    range_hash,
    range_nodes,
    root_from_frontier,
)
from ledger.signing import SigningKey, key_id, signature_is_valid
from ledger.store import recorded_event_from_row

logger = logging.getLogger(__name__)

STATEMENT_TYPE = "lending-ledger/seal/v1"
NO_PREVIOUS_SEAL = bytes(32)
"""The previous_seal_hash of the first seal."""

_MISSING_LEAF = bytes(32)
"""Stands in for a leaf whose event is gone; no SHA-256 leaf hash equals it in practice."""

# Arbitrary but fixed, next to the sequencer's and the schema's: one sealer at a time.
SEALING_LOCK_KEY = 7250115081426013003

LEAF_BATCH = 10_000


@dataclass(frozen=True, slots=True)
class Seal:
    tree_size: int
    root_hash: bytes
    previous_seal_hash: bytes
    sealed_at: datetime
    key_id: str
    signature: bytes
    seal_hash: bytes

    def statement(self) -> dict[str, Any]:
        return seal_statement(
            self.tree_size, self.root_hash, self.previous_seal_hash, self.sealed_at, self.key_id
        )

    def to_json(self) -> dict[str, Any]:
        """The seal as the API serves it: bytes in lowercase hex, `sealed_at` as signed."""
        return {
            "tree_size": self.tree_size,
            "root_hash": self.root_hash.hex(),
            "previous_seal_hash": self.previous_seal_hash.hex(),
            "sealed_at": format_timestamp(self.sealed_at),
            "key_id": self.key_id,
            "signature": self.signature.hex(),
            "seal_hash": self.seal_hash.hex(),
        }


def seal_statement(
    tree_size: int, root_hash: bytes, previous_seal_hash: bytes, sealed_at: datetime, key: str
) -> dict[str, Any]:
    """The document a seal signs (its canonical bytes are the signed message)."""
    return {
        "statement": STATEMENT_TYPE,
        "tree_size": tree_size,
        "root_hash": root_hash.hex(),
        "previous_seal_hash": previous_seal_hash.hex(),
        "sealed_at": format_timestamp(sealed_at),
        "key_id": key,
    }


def statement_bytes(seal: Seal) -> bytes:
    return canonical_bytes(seal.statement())


def sign_seal(
    key: SigningKey, tree_size: int, root_hash: bytes, previous: Seal | None, sealed_at: datetime
) -> Seal:
    """A new seal after `previous` (None for the first). Pure apart from the signature."""
    previous_hash = previous.seal_hash if previous is not None else NO_PREVIOUS_SEAL
    statement = canonical_bytes(
        seal_statement(tree_size, root_hash, previous_hash, sealed_at, key.key_id)
    )
    return Seal(
        tree_size=tree_size,
        root_hash=root_hash,
        previous_seal_hash=previous_hash,
        sealed_at=sealed_at,
        key_id=key.key_id,
        signature=key.sign(statement),
        seal_hash=hashlib.sha256(statement).digest(),
    )


def seal_signature_is_valid(seal: Seal, public_key: Ed25519PublicKey) -> bool:
    return key_id(public_key) == seal.key_id and signature_is_valid(
        public_key, seal.signature, statement_bytes(seal)
    )


def _seal_from_row(row: asyncpg.Record) -> Seal:
    return Seal(
        tree_size=row["tree_size"],
        root_hash=bytes(row["root_hash"]),
        previous_seal_hash=bytes(row["previous_seal_hash"]),
        sealed_at=row["sealed_at"],
        key_id=row["key_id"],
        signature=bytes(row["signature"]),
        seal_hash=bytes(row["seal_hash"]),
    )


async def latest_seal(connection: Connection) -> Seal | None:
    row = await connection.fetchrow(sql.SELECT_LATEST_SEAL)
    return None if row is None else _seal_from_row(row)


async def seal_of_size(connection: Connection, tree_size: int) -> Seal | None:
    row = await connection.fetchrow(sql.SELECT_SEAL, tree_size)
    return None if row is None else _seal_from_row(row)


async def seals_between(connection: Connection, after: int, upto: int, limit: int) -> list[Seal]:
    """The seals with after < tree_size <= upto, ascending, at most `limit`."""
    rows = await connection.fetch(sql.SELECT_SEALS_BETWEEN, after, upto, limit)
    return [_seal_from_row(row) for row in rows]


async def _stored_nodes(connection: Connection, wanted: Iterable[NodeId]) -> dict[NodeId, bytes]:
    nodes = sorted(set(wanted))
    rows = await connection.fetch(
        sql.SELECT_NODES, [n.height for n in nodes], [n.index for n in nodes]
    )
    found = {NodeId(row["height"], row["node_index"]): bytes(row["hash"]) for row in rows}
    missing = [n for n in nodes if n not in found]
    if missing:
        raise LedgerIntegrityError(
            f"the stored Merkle tree has lost node(s) {missing[:3]} (height, index): "
            "the seal tables were altered; run `lending-ledger verify`"
        )
    return found


async def _range_hashes(connection: Connection, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
    """MTH of each range, composed from stored perfect subtrees in one query."""
    if not ranges:
        return []
    nodes = await _stored_nodes(connection, (n for a, b in ranges for n in range_nodes(a, b)))
    return [range_hash(a, b, nodes.__getitem__) for a, b in ranges]


# --- Sealing ---


async def _insert_nodes(connection: Connection, nodes: Sequence[tuple[NodeId, bytes]]) -> None:
    try:
        await connection.execute(
            sql.INSERT_NODES,
            [n.height for n, _ in nodes],
            [n.index for n, _ in nodes],
            [value for _, value in nodes],
        )
    except asyncpg.UniqueViolationError:
        raise LedgerIntegrityError(
            "the stored Merkle tree already has nodes beyond the latest seal: "
            "the seal tables were altered; run `lending-ledger verify`"
        ) from None


async def create_seal(
    connection: Connection,
    key: SigningKey,
    clock: Callable[[], datetime],
    *,
    wait: bool = True,
    min_interval: timedelta | None = None,
    batch_size: int = LEAF_BATCH,
    check_whole_log: bool = True,
) -> Seal | None:
    """Seal every sequenced event that no seal covers yet; the new seal, or None.

    None when there is nothing new, when the latest seal is younger than `min_interval`, or
    (with `wait=False`) when another sealer holds the lock. Runs in the caller's READ
    COMMITTED transaction; the seal and its tree nodes commit with it.

    Before it signs, it checks what it builds on (`_check_base`) and raises
    LedgerIntegrityError rather than sign over damage: the latest seal's hash and signature
    (when signed with `key`), the stored frontier against the latest seal's root, the
    latest seal's own leaves against their events, and each new row (present, contiguous,
    linked to its stream predecessor). `check_whole_log` adds the whole log by count and
    max (O(n) in the database; the sequencer's per-batch seals run it only now and then).
    """
    # One sealer at a time across every process. The lock is the transaction's first
    # statement; in READ COMMITTED each later statement sees what the previous holder
    # committed, so two sealers can never both extend the same seal.
    if wait:
        await connection.execute(sql.LOCK_SEALING, SEALING_LOCK_KEY)
    elif not await connection.fetchval(sql.TRY_LOCK_SEALING, SEALING_LOCK_KEY):
        return None
    previous = await latest_seal(connection)
    now = clock()  # read under the lock, so seal times follow seal order
    if previous is not None:
        if min_interval is not None and now - previous.sealed_at < min_interval:
            return None
        now = max(now, previous.sealed_at)
    previous_size = previous.tree_size if previous is not None else 0
    if check_whole_log:
        last_seq = await _check_whole_log(connection)
    else:
        last_seq = await connection.fetchval(sql.SELECT_LAST_SEQ)
    if last_seq < previous_size:
        raise LedgerIntegrityError(
            f"the ledger log ends at seq {last_seq} but the latest seal covers "
            f"{previous_size} events: log rows were deleted; run `lending-ledger verify`"
        )
    if last_seq == previous_size:
        return None

    size = previous_size
    nodes = await _stored_nodes(connection, frontier(size)) if size else {}
    if previous is not None:
        await _check_base(connection, key, previous, nodes, batch_size)
    while size < last_seq:
        rows = await connection.fetch(sql.SELECT_LEAVES_TO_SEAL, size, last_seq, batch_size)
        leaves = []
        for offset, row in enumerate(rows, start=size + 1):
            if row["seq"] != offset:
                raise LedgerIntegrityError(f"seq {offset} is missing from the ledger log")
            if row["hash"] is None:
                raise LedgerIntegrityError(
                    f"the event at position {row['position']} (seq {offset}) is missing"
                )
            if not row["linked"]:
                raise LedgerIntegrityError(
                    f"the event at position {row['position']} (seq {offset}) does not link "
                    "to its stream's previous event (prev_hash): the stream was altered; "
                    "run `lending-ledger verify`"
                )
            leaves.append(leaf_hash(bytes(row["hash"])))
        if not leaves:
            raise LedgerIntegrityError(f"seq {size + 1} is missing from the ledger log")
        completed = extend(size, nodes, leaves)
        await _insert_nodes(connection, completed)
        size += len(leaves)
        nodes.update(completed)
        nodes = {node: nodes[node] for node in frontier(size)}

    seal = sign_seal(key, size, root_from_frontier(size, nodes), previous, now)
    try:
        await connection.execute(
            sql.INSERT_SEAL,
            seal.tree_size,
            seal.root_hash,
            seal.previous_seal_hash,
            seal.sealed_at,
            seal.key_id,
            seal.signature,
            seal.seal_hash,
        )
    except asyncpg.UniqueViolationError:
        raise LedgerIntegrityError(
            f"a seal of tree size {size} already exists: create_seal must run in a READ "
            "COMMITTED transaction"
        ) from None
    return seal


async def _check_whole_log(connection: Connection) -> int:
    """The log's last seq, after checking the whole log by count and max (one statement,
    so one snapshot): no hole, no logged event missing, and it ends at the cursor."""
    row = await connection.fetchrow(sql.SELECT_LOG_SHAPE)
    assert row is not None
    entries, last_seq = row["entries"], row["last_seq"]
    if entries != last_seq:
        raise LedgerIntegrityError(
            f"log rows were deleted: the ledger log has {entries} entries but ends at seq "
            f"{last_seq} ({last_seq - entries} missing); run `lending-ledger verify`"
        )
    if row["missing_events"]:
        raise LedgerIntegrityError(
            f"{row['missing_events']} event(s) in the ledger log no longer exist: "
            "events were deleted; run `lending-ledger verify`"
        )
    if row["cursor_seq"] is not None and row["cursor_seq"] != last_seq:
        raise LedgerIntegrityError(
            f"the ledger log ends at seq {last_seq} but the sequencer's cursor is at seq "
            f"{row['cursor_seq']}: log rows were deleted or added behind it; "
            "run `lending-ledger verify`"
        )
    result: int = last_seq
    return result


async def _check_base(
    connection: Connection,
    key: SigningKey,
    previous: Seal,
    frontier_nodes: dict[NodeId, bytes],
    batch_size: int,
) -> None:
    """Refuse to extend `previous` unless it and what it covers look as it was signed.

    Cheap, O(log n + one batch): the statement's hash; its signature when `key` signed it
    (a seal from an older key is checked by `verify` with the pinned keys); the stored
    frontier against its root (the new root is built from that frontier); and its own
    leaves, at most `batch_size` of them, against the events' stored hashes.
    """
    size = previous.tree_size
    problem = None
    if hashlib.sha256(statement_bytes(previous)).digest() != previous.seal_hash:
        problem = "its seal_hash is not the hash of its statement"
    elif previous.key_id == key.key_id and not seal_signature_is_valid(previous, key.public_key):
        problem = "its signature does not verify"
    elif root_from_frontier(size, frontier_nodes) != previous.root_hash:
        problem = "the stored Merkle subtrees no longer compose to its root"
    if problem is not None:
        raise LedgerIntegrityError(
            f"the latest seal (tree size {size}) was altered: {problem}; "
            "run `lending-ledger verify`"
        )
    before: int = await connection.fetchval(sql.SELECT_SEAL_BEFORE, size)
    bad = await connection.fetchrow(
        sql.SELECT_LEAVES_OF_LAST_SEAL, max(before, size - batch_size), size
    )
    if bad is not None:
        where = f"seq {bad['seq']}"
        if bad["position"] is None:
            what = "is missing from the ledger log"
        elif bad["hash"] is None:
            what = f"(position {bad['position']}): the event is missing"
        elif bad["leaf"] is None:
            what = "has lost its stored leaf"
        else:
            what = f"(position {bad['position']}): the event's hash is not the sealed one"
        raise LedgerIntegrityError(
            f"the latest seal (tree size {size}) no longer matches the log: {where} {what}; "
            "run `lending-ledger verify`"
        )


def system_clock() -> datetime:
    return datetime.now(UTC)


# --- Proofs ---


@dataclass(frozen=True, slots=True)
class InclusionProof:
    event: RecordedEvent
    leaf_index: int
    seal: Seal
    audit_path: list[bytes]


@dataclass(frozen=True, slots=True)
class ConsistencyProof:
    first: Seal
    second: Seal
    path: list[bytes]


async def inclusion_proof(connection: Connection, position: int) -> InclusionProof:
    """The event at `position`, and its audit path in the latest seal (RFC 9162, 2.1.3)."""
    row = await connection.fetchrow(sql.SELECT_EVENT_AT_POSITION, position)
    if row is None:
        raise NotFound(f"no event at position {position}")
    event = recorded_event_from_row(row)
    if event.seq is None:
        raise NotYetSealed(
            f"the event at position {position} has no seq yet (it committed moments ago and "
            "the sequencer has not numbered it), so no seal covers it; retry shortly"
        )
    seal = await latest_seal(connection)
    if seal is None or seal.tree_size < event.seq:
        covered = (
            "there is no seal yet"
            if seal is None
            else (f"the latest seal covers seq 1 to {seal.tree_size}")
        )
        raise NotYetSealed(
            f"the event at position {position} (seq {event.seq}) is not sealed yet: "
            f"{covered}; the next seal will cover it (POST /audit/seals seals now)"
        )
    index = event.seq - 1
    path = await _range_hashes(connection, inclusion_path_ranges(index, seal.tree_size))
    return InclusionProof(event=event, leaf_index=index, seal=seal, audit_path=path)


async def consistency_proof(connection: Connection, first: int, second: int) -> ConsistencyProof:
    """PROOF(first, D[0:second]) between two seals (RFC 9162, 2.1.4); first <= second."""
    if not 1 <= first <= second:
        raise ValueError("consistency proofs need 1 <= first <= second")
    first_seal = await seal_of_size(connection, first)
    second_seal = await seal_of_size(connection, second)
    for size, found in ((first, first_seal), (second, second_seal)):
        if found is None:
            raise NotFound(f"no seal of tree size {size}")
    assert first_seal is not None
    assert second_seal is not None
    path = await _range_hashes(connection, consistency_proof_ranges(first, second))
    return ConsistencyProof(first=first_seal, second=second_seal, path=path)


# --- Verification of the whole log ---


@dataclass(frozen=True, slots=True)
class SealFinding:
    """One problem with one seal. `seq` / `position`: the first bad leaf it covers, if known.

    `problem` is one of: "root-mismatch" (the events no longer hash to the sealed root),
    "broken-chain" (previous_seal_hash is not the hash of the seal before it),
    "seal-hash-mismatch" (seal_hash is not the hash of the statement), "unknown-key" (signed
    by none of the trusted keys), "bad-signature", "stored-tree-mismatch" (the stored Merkle
    nodes, which proofs are built from, disagree with the events while the root still holds).
    """

    tree_size: int
    problem: str
    detail: str
    seq: int | None = None
    position: int | None = None


@dataclass(frozen=True, slots=True)
class _BadLeaf:
    seq: int
    position: int | None
    reason: str


def _check_leaf(row: asyncpg.Record) -> tuple[bytes, _BadLeaf | None]:
    """The leaf recomputed from the event's content, and what is wrong with it, if anything."""
    seq: int = row["leaf_seq"]
    if row["log_position"] is None:
        return _MISSING_LEAF, _BadLeaf(seq, None, f"seq {seq} is missing from the ledger log")
    if row["position"] is None:
        position = row["log_position"]
        return _MISSING_LEAF, _BadLeaf(
            seq, position, f"the event at position {position} (seq {seq}) is missing"
        )
    event = recorded_event_from_row(row)
    recomputed = hash_of_event(event)
    leaf = leaf_hash(recomputed)
    sealed = row["sealed_leaf"]
    if sealed is None or bytes(sealed) == leaf:
        return leaf, None
    if recomputed != event.hash:
        reason = "was edited: its content no longer matches its hash"
    else:
        reason = "is not the event sealed at this seq (reordered, replaced or re-hashed)"
    return leaf, _BadLeaf(
        seq, event.position, f"the event at position {event.position} (seq {seq}) {reason}"
    )


def _finding(seal: Seal, problem: str, detail: str, bad: _BadLeaf | None = None) -> SealFinding:
    return SealFinding(
        seal.tree_size,
        problem,
        detail,
        bad.seq if bad is not None else None,
        bad.position if bad is not None else None,
    )


def _check_statement(
    seal: Seal, previous_hash: bytes, previous_size: int, keys: dict[str, Ed25519PublicKey]
) -> list[tuple[str, str]]:
    """What is wrong with the seal itself: its hash, its chain link, its signature."""
    problems = []
    if hashlib.sha256(statement_bytes(seal)).digest() != seal.seal_hash:
        problems.append(("seal-hash-mismatch", "seal_hash is not the SHA-256 of the statement"))
    if seal.previous_seal_hash != previous_hash:
        before = f"the seal of size {previous_size}" if previous_size else "no seal (first)"
        problems.append(
            (
                "broken-chain",
                f"previous_seal_hash does not match {before}: "
                "a seal was removed, inserted or altered",
            )
        )
    public_key = keys.get(seal.key_id)
    if public_key is None:
        problems.append(("unknown-key", f"signed by key {seal.key_id}, which is not trusted"))
    elif not seal_signature_is_valid(seal, public_key):
        problems.append(("bad-signature", "the signature does not verify with its key"))
    return problems


@contextlib.asynccontextmanager
async def _read_snapshot(connection: Connection) -> AsyncIterator[None]:
    """One consistent snapshot for the whole walk (cursors also need a transaction)."""
    if connection.is_in_transaction():
        yield
        return
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        yield


async def verify_seals(
    connection: Connection,
    trusted_keys: Iterable[Ed25519PublicKey],
    *,
    batch_size: int = 1000,
) -> list[SealFinding]:
    """Check every seal against the events as they are now; [] when all hold.

    Recomputes every leaf from the events' content (not their stored `hash` column), in seq
    order, streaming through cursors, and checks each seal's root, its link to the previous
    seal, its seal hash and its signature by one of `trusted_keys` (pin these: a key read
    from the same database proves nothing). Reads one snapshot; writes nothing.
    """
    keys = {key_id(key): key for key in trusted_keys}
    findings: list[SealFinding] = []
    async with _read_snapshot(connection):
        latest = await latest_seal(connection)
        if latest is None:
            return []
        leaves = connection.cursor(
            sql.SELECT_SEALED_LEAVES, latest.tree_size, prefetch=batch_size
        ).__aiter__()
        size = 0
        nodes: dict[NodeId, bytes] = {}
        first_bad: _BadLeaf | None = None
        previous_hash, previous_size = NO_PREVIOUS_SEAL, 0
        async for seal_row in connection.cursor(sql.SELECT_ALL_SEALS, prefetch=batch_size):
            seal = _seal_from_row(seal_row)
            findings.extend(
                _finding(seal, *problem)
                for problem in _check_statement(seal, previous_hash, previous_size, keys)
            )

            new_leaves = []
            bad_here: _BadLeaf | None = None
            for _ in range(seal.tree_size - size):
                leaf, bad = _check_leaf(await leaves.__anext__())
                new_leaves.append(leaf)
                bad_here = bad_here or bad
            first_bad = first_bad or bad_here
            completed = extend(size, nodes, new_leaves)
            size = seal.tree_size
            nodes.update(completed)
            nodes = {node: nodes[node] for node in frontier(size)}
            if root_from_frontier(size, nodes) != seal.root_hash:
                detail = "the events no longer hash to the sealed root"
                if first_bad is not None:
                    detail += f": {first_bad.reason}"
                findings.append(_finding(seal, "root-mismatch", detail, first_bad))
            elif bad_here is not None:
                # The events still give the signed root, so the stored leaf is what changed.
                detail = f"the stored leaf disagrees with the events: {bad_here.reason}"
                findings.append(_finding(seal, "stored-tree-mismatch", detail, bad_here))
            previous_hash, previous_size = seal.seal_hash, seal.tree_size

        stored = await _stored_nodes_or_none(connection, frontier(latest.tree_size))
        if stored is None or root_from_frontier(latest.tree_size, stored) != latest.root_hash:
            findings.append(
                SealFinding(
                    latest.tree_size,
                    "stored-tree-mismatch",
                    "the stored Merkle nodes do not compose to the latest seal's root: "
                    "proofs served from them would not verify",
                )
            )
    return findings


async def _stored_nodes_or_none(
    connection: Connection, wanted: Iterable[NodeId]
) -> dict[NodeId, bytes] | None:
    try:
        return await _stored_nodes(connection, wanted)
    except LedgerIntegrityError:
        return None
