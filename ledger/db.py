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


async def connect(
    dsn: str, *, statement_cache_size: int = 100, application_name: str | None = None
) -> asyncpg.Connection:
    """`application_name`: how pg_stat_activity names the session (None: as the DSN says)."""
    named = None if application_name is None else {"application_name": application_name}
    connection: asyncpg.Connection = await asyncpg.connect(
        dsn, statement_cache_size=statement_cache_size, server_settings=named
    )
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


def _encode_jsonb_binary(value: Any) -> bytes:
    """jsonb's binary form: a version byte, then the JSON text. `bytes` are taken as JSON
    text already encoded (a bulk writer encodes once, where it has the values)."""
    return b"\x01" + (value if type(value) is bytes else orjson.dumps(value))


def _decode_jsonb_binary(data: bytes) -> Any:
    return orjson.loads(memoryview(data)[1:])


async def connect_for_copy(dsn: str) -> asyncpg.Connection:
    """A connection whose jsonb codec is binary, as COPY needs (`copy_records_to_table`
    has no text-format path), and takes already encoded JSON as `bytes`. For bulk writers
    only: elsewhere jsonb goes through `connect`'s text codec."""
    connection: asyncpg.Connection = await asyncpg.connect(dsn)
    await connection.set_type_codec(
        "json", encoder=_encode_json, decoder=orjson.loads, schema="pg_catalog"
    )
    await connection.set_type_codec(
        "jsonb",
        encoder=_encode_jsonb_binary,
        decoder=_decode_jsonb_binary,
        schema="pg_catalog",
        format="binary",
    )
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
        reset=_keep_session,
    )
    assert pool is not None
    return pool
