"""Connection set-up shared by every pool and dedicated connection."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

Connection = asyncpg.Connection | PoolConnectionProxy
"""A dedicated connection or one borrowed from a pool: store functions take either."""


def _encode_json(value: Any) -> str:
    return orjson.dumps(value).decode()


async def init_connection(connection: asyncpg.Connection) -> None:
    """jsonb travels as Python objects; no figure in it is ever a float (see canonical.py)."""
    for type_name in ("json", "jsonb"):
        await connection.set_type_codec(
            type_name, encoder=_encode_json, decoder=orjson.loads, schema="pg_catalog"
        )


async def connect(dsn: str) -> asyncpg.Connection:
    connection: asyncpg.Connection = await asyncpg.connect(dsn)
    await init_connection(connection)
    return connection


async def _keep_session(connection: asyncpg.Connection) -> None:
    """What a pooled connection needs on release beyond asyncpg's own step (which rolls back
    an open transaction and drops listeners): nothing.

    asyncpg's default reset runs `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL;`, one more round trip per request. No pooled connection leaves session state
    behind: advisory locks on pooled connections are transaction-scoped, LISTEN and the
    session-level locks (sequencer, rebuild) use connections of their own, and settings are
    changed with `set_config(..., true)`, local to the transaction."""
    del connection


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=init_connection, reset=_keep_session
    )
    assert pool is not None
    return pool
