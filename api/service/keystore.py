"""API keys: their format, their hash, and where they are stored.

A key is `ll_<id>_<secret>`: `id` is 16 hex digits (64 random bits) that name the key in
lists and logs; `secret` is 32 random bytes from the operating system's CSPRNG, base64url
(43 characters). The key is shown once, when created. The table keeps SHA-256 of the whole
key, so the stored hash is bound to its id, and a stolen table gives nobody a usable key.

Why a plain, fast SHA-256 and not bcrypt/scrypt/argon2: slow, salted hashes exist for
passwords, which people choose from a small, guessable space (a few tens of bits); an
attacker holding the hashes tries likely passwords, and a hash that costs 100 ms per guess
turns billions of guesses per second into a few. A 256-bit random secret has no likely
values: exhausting 2^256 is out of reach at any speed, so slowing each guess buys nothing,
and no two secrets share a hash a salt would have to separate. A slow hash would instead
cost every request tens of milliseconds of CPU (the history endpoint's target is a p99 of
15 ms) and hand anyone who sends wrong keys an easy way to load the service. For the same
reason this scheme must never be reused for anything a person chooses.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ledger.db import Connection
from ledger.errors import InvalidCommand

KEY_PATTERN = re.compile(r"ll_(?P<id>[0-9a-f]{16})_(?P<secret>[A-Za-z0-9_-]{43})")
KEY_ID_PATTERN = re.compile(r"[0-9a-f]{16}")
KEY_NAME_PATTERN = re.compile(r"[A-Za-z0-9._@:-]{1,64}")
KEY_NAME_RULE = "1 to 64 ASCII letters, digits and . _ @ : -"
SECRET_BYTES = 32


# --- Named SQL of the api_keys table; values only ever as $n ---

INSERT_KEY = """
INSERT INTO api_keys (id, name, role, hash) VALUES ($1, $2, $3, $4)
RETURNING id, name, role, created_at, revoked_at
"""

SELECT_KEY_FOR_VERIFICATION = """
SELECT id, name, role, created_at, revoked_at, hash FROM api_keys WHERE id = $1
"""

SELECT_KEYS = """
SELECT id, name, role, created_at, revoked_at FROM api_keys ORDER BY created_at, id
"""

# Revoking twice keeps the first revocation time.
REVOKE_KEY = """
UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1
RETURNING id, name, role, created_at, revoked_at
"""

ANY_KEY_EXISTS = "SELECT EXISTS (SELECT 1 FROM api_keys)"

COUNT_ACTIVE_KEYS = "SELECT count(*) FROM api_keys WHERE revoked_at IS NULL"


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key's public record: never its secret or hash."""

    id: str
    name: str
    role: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class StoredKey:
    record: ApiKey
    hash: bytes


def generate_key() -> tuple[str, str]:
    """A new (key id, key)."""
    key_id = secrets.token_hex(8)
    return key_id, f"ll_{key_id}_{secrets.token_urlsafe(SECRET_BYTES)}"


def key_id_of(key: str) -> str | None:
    """The id of a well-formed key; None for anything else."""
    match = KEY_PATTERN.fullmatch(key)
    return match.group("id") if match else None


def key_hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def hash_matches(digest: bytes, stored_hash: bytes) -> bool:
    """`digest` is key_hash(presented key). Constant-time: how much of a guess matched
    never shows in the response time."""
    return hmac.compare_digest(digest, stored_hash)


def check_key_name(name: str) -> str:
    if not KEY_NAME_PATTERN.fullmatch(name):
        raise InvalidCommand(f"a key name must be {KEY_NAME_RULE}", field="name")
    return name


def _record(row: Any) -> ApiKey:
    return ApiKey(
        id=row["id"],
        name=row["name"],
        role=row["role"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


async def create_key(connection: Connection, name: str, role: str) -> tuple[ApiKey, str]:
    """Store a new key; return its record and the key itself, which is not kept anywhere.

    `role` must be one of api.service.access.Role (the table's CHECK enforces it as well)."""
    key_id, key = generate_key()
    row = await connection.fetchrow(INSERT_KEY, key_id, check_key_name(name), role, key_hash(key))
    return _record(row), key


async def find_key(connection: Connection, key_id: str) -> StoredKey | None:
    row = await connection.fetchrow(SELECT_KEY_FOR_VERIFICATION, key_id)
    return None if row is None else StoredKey(_record(row), bytes(row["hash"]))


async def list_keys(connection: Connection) -> list[ApiKey]:
    return [_record(row) for row in await connection.fetch(SELECT_KEYS)]


async def revoke_key(connection: Connection, key_id: str) -> ApiKey | None:
    """Revoke a key (again: no change); None if there is no such key."""
    if not KEY_ID_PATTERN.fullmatch(key_id):
        return None
    row = await connection.fetchrow(REVOKE_KEY, key_id)
    return None if row is None else _record(row)


async def any_key_exists(connection: Connection) -> bool:
    """Whether any key was ever created, revoked ones included."""
    exists: bool = await connection.fetchval(ANY_KEY_EXISTS)
    return exists


async def active_key_count(connection: Connection) -> int:
    count: int = await connection.fetchval(COUNT_ACTIVE_KEYS)
    return count
