"""The HTTP side of exact JSON: a request class whose `json()` is `loads_exact`, and a
response class that renders with `dumps` (api/jsonio.py)."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse as FastAPIJSONResponse
from fastapi.routing import APIRoute

from api.jsonio import dumps, loads_exact, to_plain


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


class JSONResponse(FastAPIJSONResponse):
    """Renders models and plain values; Decimals as exact numbers, datetimes RFC 3339.

    A JSONResponse subclass (only `render` differs) so that FastAPI documents each route's
    `response_model` in the OpenAPI document; for any other Response class it publishes
    the success body as `{"type": "string"}`."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(to_plain(content))
