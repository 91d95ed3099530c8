"""JSON in and out without ever turning money into a float.

Requests: JSON bodies are parsed with `parse_float=Decimal`, so `5000.10` arrives as
Decimal("5000.10"), and NaN / Infinity literals are rejected as invalid JSON.
Responses: Decimals are written as exact JSON number tokens (`1830.00`), via orjson.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Sequence
from decimal import Decimal
from typing import Any
from uuid import UUID

import orjson
from fastapi import Request, Response
from fastapi.responses import JSONResponse as FastAPIJSONResponse
from fastapi.routing import APIRoute
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


class ExactJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = loads_exact(body)
            except json.JSONDecodeError:
                raise
            except ValueError as error:
                # Invalid UTF-8, NaN/Infinity, duplicate keys: report them as JSON errors too.
                raise json.JSONDecodeError(str(error), "", 0) from error
            except RecursionError:
                raise json.JSONDecodeError("nested too deeply", "", 0) from None
        return self._json


class ExactJSONRoute(APIRoute):
    """Route class whose handlers see ExactJSONRequest."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def exact_handler(request: Request) -> Response:
            return await handler(ExactJSONRequest(request.scope, request.receive))

        return exact_handler


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


class JSONResponse(FastAPIJSONResponse):
    """Renders models and plain values; Decimals as exact numbers, datetimes RFC 3339.

    A JSONResponse subclass (only `render` differs) so that FastAPI documents each route's
    `response_model` in the OpenAPI document; for any other Response class it publishes
    the success body as `{"type": "string"}`."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(to_plain(content))
