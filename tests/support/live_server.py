"""Serve an ASGI app with uvicorn on 127.0.0.1 (a random port) inside the test's event loop.

httpx.ASGITransport buffers whole responses, so streaming responses (SSE, MCP) are tested
over a real loopback socket instead. The app's lifespan is the caller's business (uvicorn
runs with lifespan "off"), so an app that is already started can be served as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import uvicorn
from starlette.types import ASGIApp

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


@asynccontextmanager
async def serving(app: ASGIApp) -> AsyncIterator[str]:
    """Yields the base URL; stops the server (bounded) on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_level="warning",
        # Streams still open at shutdown are cut after this; the tests close theirs first.
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not server.started:
            if task.done():
                task.result()  # raises what stopped it
                raise AssertionError("uvicorn exited before it started")
            assert time.monotonic() < deadline, "uvicorn did not start"
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), STOP_TIMEOUT)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise
        finally:
            sock.close()


@dataclass
class SSEEvent:
    id: str | None = None
    event: str | None = None
    data: list[str] = field(default_factory=list)


@dataclass
class SSEReader:
    """Parses a text/event-stream response line by line (the SSE format, minus BOMs)."""

    response: httpx.Response
    comments: list[str] = field(default_factory=list)
    retry: int | None = None

    def __post_init__(self) -> None:
        # One line iterator for the reader's life: a response can be iterated only once.
        self.lines = self.response.aiter_lines()

    async def events(self) -> AsyncIterator[SSEEvent]:
        current = SSEEvent()
        async for line in self.lines:
            if line == "":
                if current.data or current.event or current.id:
                    yield current
                current = SSEEvent()
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "id":
                current.id = value
            elif name == "event":
                current.event = value
            elif name == "data":
                current.data.append(value)
            elif name == "retry":
                self.retry = int(value)
