"""JSON in and out without ever turning money into a float.

Reading: `loads_exact` parses with `parse_float=Decimal`, so `5000.10` arrives as
Decimal("5000.10"); NaN / Infinity literals and duplicate keys are rejected.
Writing: `dumps` writes Decimals as exact JSON number tokens (`1830.00`), via orjson.

A leaf module shared by every part of `api` (service, web, CLI and the client): it imports
nothing of the project.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from decimal import Decimal
from typing import Any
from uuid import UUID

import orjson
from pydantic import BaseModel


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # {"amount": 5, "amount": 5000} means different things to different parsers; a ledger
    # must not guess which one the sender meant.
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise ValueError(f"duplicate key {key!r}")
        document[key] = value
    return document


def loads_exact(body: bytes | str) -> Any:
    # UTF-8 only (RFC 8259 section 8.1): json.loads would also guess UTF-16 and UTF-32 from
    # bytes. A UnicodeDecodeError is a ValueError: reported as invalid JSON, like the rest.
    text = body.decode("utf-8") if isinstance(body, bytes) else body
    return json.loads(
        text,
        parse_float=Decimal,
        parse_constant=_reject_constant,
        object_pairs_hook=_reject_duplicate_keys,
    )


def _encode_other(value: object) -> Any:
    if isinstance(value, Decimal):
        return orjson.Fragment(format(value, "f").encode())
    if isinstance(value, UUID):  # asyncpg returns its own UUID subclass
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_encode_other)


def to_plain(content: BaseModel | Sequence[BaseModel] | Any) -> Any:
    if isinstance(content, BaseModel):
        return content.model_dump(mode="python")
    if isinstance(content, list | tuple):
        return [to_plain(item) for item in content]
    return content
