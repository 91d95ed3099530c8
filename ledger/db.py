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


async def connect(dsn: str, *, statement_cache_size: int = 100) -> asyncpg.Connection:
    connection: asyncpg.Connection = await asyncpg.connect(
        dsn, statement_cache_size=statement_cache_size
    )
    await init_connection(connection)
    return connection


async def create_pool(
    dsn: str, *, min_size: int = 2, max_size: int = 10, statement_cache_size: int = 100
) -> asyncpg.Pool:
    """`statement_cache_size=0` behind pgBouncer in transaction mode before 1.21 (asyncpg
    then prepares every statement unnamed; docs/operations.md, "pgBouncer")."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=init_connection,
        statement_cache_size=statement_cache_size,
    )
    assert pool is not None
    return pool
