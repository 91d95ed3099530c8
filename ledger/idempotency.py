"""Idempotency records: the first response to a keyed request, stored with its events."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ledger import sql
from ledger.canonical import canonical_bytes
from ledger.db import Connection
from ledger.errors import IdempotencyKeyReused


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status_code: int
    body: bytes


def request_fingerprint(method: str, path: str, body: object) -> bytes:
    """What makes two requests "the same": method, path and the parsed body."""
    return hashlib.sha256(canonical_bytes({"method": method, "path": path, "body": body})).digest()


async def claim(connection: Connection, key: str, fingerprint: bytes) -> StoredResponse | None:
    """Claim `key` for this transaction, or return the response stored under it.

    Raises IdempotencyKeyReused when the key was first used for a different request.
    """
    if await connection.fetchval(sql.CLAIM_IDEMPOTENCY_KEY, key, fingerprint) is not None:
        return None
    row = await connection.fetchrow(sql.SELECT_IDEMPOTENT_RESPONSE, key)
    # The claim insert waited for any transaction holding the key: the row is committed,
    # and it is only ever committed together with its response.
    assert row is not None
    assert row["status_code"] is not None
    if bytes(row["request_fingerprint"]) != fingerprint:
        raise IdempotencyKeyReused(
            f"Idempotency-Key {key!r} was already used for a different request; "
            "use a new key for a new request"
        )
    return StoredResponse(row["status_code"], bytes(row["response_body"]))


async def save(connection: Connection, key: str, response: StoredResponse) -> None:
    await connection.execute(sql.SAVE_IDEMPOTENT_RESPONSE, key, response.status_code, response.body)
