"""Finding and applying schema.sql, the single source of the database schema."""

from __future__ import annotations

from pathlib import Path

from ledger.db import Connection

_PACKAGE_COPY = Path(__file__).with_name("schema.sql")  # inside an installed wheel
_CHECKOUT_COPY = Path(__file__).resolve().parent.parent / "schema.sql"  # in a checkout


def schema_path() -> Path:
    for candidate in (_CHECKOUT_COPY, _PACKAGE_COPY):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("schema.sql is missing from both the checkout and the package")


def schema_sql() -> str:
    return schema_path().read_text(encoding="utf-8")


async def apply_schema(connection: Connection) -> None:
    """Apply the whole schema. Idempotent; schema.sql takes its own lock and transaction."""
    await connection.execute(schema_sql())
