"""Finding and applying schema.sql, the single source of the database schema."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ledger.db import Connection
from ledger.sql import RECORD_SCHEMA_DIGEST

_PACKAGE_COPY = Path(__file__).with_name("schema.sql")  # inside an installed wheel
_CHECKOUT_COPY = Path(__file__).resolve().parent.parent / "schema.sql"  # in a checkout


def schema_path() -> Path:
    for candidate in (_CHECKOUT_COPY, _PACKAGE_COPY):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("schema.sql is missing from both the checkout and the package")


def schema_sql() -> str:
    return schema_path().read_text(encoding="utf-8")


def schema_digest(sql: str | None = None) -> bytes:
    """SHA-256 of schema.sql: what `schema_applied` records after each application."""
    return hashlib.sha256((schema_sql() if sql is None else sql).encode()).digest()


async def apply_schema(connection: Connection) -> None:
    """Apply the whole schema. Idempotent; schema.sql takes its own lock and transaction.

    Then record which schema.sql it was, so a service role that cannot apply the schema can
    tell whether the database is current (api/service/dbrole.py). Recorded after the commit: if
    this process dies in between, the record is stale and the next application fixes it.
    """
    sql = schema_sql()
    await connection.execute(sql)
    await connection.execute(RECORD_SCHEMA_DIGEST, schema_digest(sql))
