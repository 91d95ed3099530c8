"""Idempotency records: the first response to a keyed request, stored with its events.

A key belongs to a scope (the caller: the principal's actor string), so two callers never
share a key. Within the command's own transaction, `claim`:

1. replays a live record of (scope, key): one younger than the retention. Every committed
   record has its response, because the claim and the response are written in the same
   transaction as the events;
2. otherwise takes a transaction-scoped advisory lock on a 64-bit hash of (scope, key) with
   `pg_try_advisory_xact_lock`, which never waits: if another transaction holds it, a
   request with this key is still running, and this one is refused with
   IdempotencyRequestInFlight (409) instead of queueing behind it;
3. then inserts the claim, or takes over an expired record as if the key were unused.

Nothing in this path waits for another request with the same key: the lock attempt returns
at once, and the claim's insert could only wait for an uncommitted row of the same key,
which only a holder of the same lock can have written. (The purge deletes expired rows with
SKIP LOCKED; a claim taking over an expired row may wait for one purge batch, no longer.)

Two different keys whose hashes collide share a lock. That costs at most a spurious 409
while the other request runs, never a wrong replay: replays are looked up by the exact
(scope, key), and the unique (scope, key) primary key is what prevents a second write.

If the transaction rolls back (the command failed, the client vanished), the claim and the
lock go with it, and a retry runs afresh.

The command path (api/service/commands.py) runs these same steps inside one statement
(projections/sql.py, RUN_KEYED_COMMAND: the `ledger_claim` function of schema.sql, then the
write), where the claim is written together with its response; `claim` and `save` are the
same protocol for work that needs a conversation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta

from ledger import sql
from ledger.canonical import canonical_bytes
from ledger.db import Connection
from ledger.errors import IdempotencyKeyReused, IdempotencyRequestInFlight

DEFAULT_RETENTION = timedelta(hours=24)
PURGE_BATCH_SIZE = 1000


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status_code: int
    body: bytes


def request_fingerprint(method: str, path: str, body: object) -> bytes:
    """What makes two requests "the same": method, path and the parsed body."""
    return hashlib.sha256(canonical_bytes({"method": method, "path": path, "body": body})).digest()


def lock_key(scope: str, key: str) -> int:
    """The advisory lock id of (scope, key): 64 bits of SHA-256, as a signed bigint.

    Each part is length-prefixed, so ("a:b", "c") and ("a", "b:c") are different inputs.
    """
    digest = hashlib.sha256()
    for part in (scope.encode(), key.encode()):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return int.from_bytes(digest.digest()[:8], "big", signed=True)


def key_reused(key: str) -> IdempotencyKeyReused:
    return IdempotencyKeyReused(
        f"Idempotency-Key {key!r} was already used for a different request; "
        "use a new key for a new request"
    )


def request_in_flight(key: str) -> IdempotencyRequestInFlight:
    return IdempotencyRequestInFlight(
        f"a request with Idempotency-Key {key!r} is still being processed; "
        "retry shortly to get its response"
    )


async def lookup(
    connection: Connection, scope: str, key: str, fingerprint: bytes, retention: timedelta
) -> StoredResponse | None:
    """The live record's response, None when there is none; IdempotencyKeyReused when it
    was stored for a different request."""
    row = await connection.fetchrow(sql.SELECT_LIVE_IDEMPOTENT_RESPONSE, scope, key, retention)
    if row is None:
        return None
    if bytes(row["request_fingerprint"]) != fingerprint:
        raise key_reused(key)
    assert row["status_code"] is not None, "a committed claim always has its response"
    return StoredResponse(row["status_code"], bytes(row["response_body"]))


async def claim(
    connection: Connection,
    scope: str,
    key: str,
    fingerprint: bytes,
    retention: timedelta = DEFAULT_RETENTION,
) -> StoredResponse | None:
    """Claim (scope, key) for this transaction, or return the response stored under it.

    Raises IdempotencyKeyReused when the key was first used for a different request, and
    IdempotencyRequestInFlight when a request with the key is still running.
    """
    stored = await lookup(connection, scope, key, fingerprint, retention)
    if stored is not None:
        return stored
    if not await connection.fetchval(sql.TRY_IDEMPOTENCY_LOCK, lock_key(scope, key)):
        raise request_in_flight(key)
    if await connection.fetchval(sql.CLAIM_IDEMPOTENCY_KEY, scope, key, fingerprint, retention):
        return None
    # The first request committed between the lookup above and the lock: replay it.
    stored = await lookup(connection, scope, key, fingerprint, retention)
    assert stored is not None, "the claim found a live record, so the lookup does too"
    return stored


async def save(connection: Connection, scope: str, key: str, response: StoredResponse) -> None:
    await connection.execute(
        sql.SAVE_IDEMPOTENT_RESPONSE, scope, key, response.status_code, response.body
    )


async def purge_expired(
    connection: Connection, retention: timedelta, batch_size: int = PURGE_BATCH_SIZE
) -> int:
    """Delete expired records in batches of `batch_size`, each its own short statement
    (run it outside a transaction). Returns how many were deleted."""
    total = 0
    while True:
        deleted: int = await connection.fetchval(
            sql.PURGE_EXPIRED_IDEMPOTENCY_KEYS, retention, batch_size
        )
        total += deleted
        if deleted < batch_size:
            return total
