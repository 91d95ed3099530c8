"""GET /events/stream: SSE catch-up and live, resume without gaps or repeats, keep-alives,
clean ends on disconnect and on shutdown, and validation of the resume position."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from api.jsonio import dumps, to_plain
from api.service.live import LedgerTail, LiveSettings
from api.service.models import Event
from api.service.settings import Settings
from api.web.app import create_app
from api.web.routes.events import follow_ledger
from ledger.db import create_pool
from tests.conftest import FAST_SEQUENCER, MakeDatabase, new_applicant
from tests.support.helpers import assert_problem, wait_until_sequenced, whole_feed
from tests.support.live_server import SSEEvent, SSEReader, serving
from tests.system.test_e2e import running_service

DEADLINE = 30.0
# So long that a test can only finish in time if notifications wake the streams.
NO_POLLING = LiveSettings(poll_interval=120.0, keep_alive_interval=120.0)


@asynccontextmanager
async def running_app(
    make_database: MakeDatabase, live: LiveSettings = NO_POLLING
) -> AsyncIterator[tuple[FastAPI, str, asyncpg.Pool]]:
    """A fresh database, an app with its own lifespan, served on loopback."""
    url = await make_database()
    app = create_app(
        Settings(app_env="test"),
        database_url=url,
        sequencer_settings=FAST_SEQUENCER,
        live_settings=live,
    )
    pool = await create_pool(url, min_size=1, max_size=4)
    try:
        async with app.router.lifespan_context(app):
            await app.state.service.wait_ready(30)
            async with serving(app) as base_url:
                yield app, base_url, pool
    finally:
        await pool.close()


async def submit(http: httpx.AsyncClient, applicant: str, number: int) -> None:
    body = {
        "applicant_id": applicant,
        "amount": str(1000 + number),
        "income": "50000",
        "employment_years": number % 7,
    }
    response = await http.post("/lending/apply", json=body)
    assert response.status_code == 200, response.text


async def expected_feed(pool: asyncpg.Pool) -> list[Any]:
    """The feed as GET /events shows it, parsed from JSON like the stream's data."""
    async with pool.acquire() as connection:
        events = await whole_feed(connection)
    return [json.loads(dumps(to_plain(Event.from_recorded(event)))) for event in events]


async def read_until(reader: SSEReader, seen: list[SSEEvent], done: Any, deadline: float) -> None:
    async def collect() -> None:
        async for event in reader.events():
            seen.append(event)
            if done(event):
                return

    await asyncio.wait_for(collect(), max(0.1, deadline - time.monotonic()))


async def test_catch_up_then_live_with_concurrent_writers_and_a_reconnect(
    make_database: MakeDatabase,
) -> None:
    async with (
        running_app(make_database) as (app, base_url, pool),
        httpx.AsyncClient(base_url=base_url, timeout=DEADLINE) as http,
    ):
        applicant = new_applicant()
        for number in range(4):  # 12 events to catch up on
            await submit(http, applicant, number)
        await wait_until_sequenced(pool)
        deadline = time.monotonic() + DEADLINE

        async def writer() -> None:
            writer_applicant = new_applicant()
            for number in range(6):
                await submit(http, writer_applicant, number)

        # Four concurrent writers, 72 more events, written while the streams read.
        writers = [asyncio.create_task(writer()) for _ in range(4)]
        first: list[SSEEvent] = []
        async with http.stream("GET", "/events/stream?after=0") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            reader = SSEReader(response)
            await read_until(reader, first, lambda e: int(e.id or 0) >= 30, deadline)
            assert reader.retry == 1000
        # Disconnected mid-stream; the server notices and drops the subscriber.
        tail: LedgerTail = app.state.service.tail
        while tail.subscribers:
            assert time.monotonic() < deadline, "the stream outlived its client"
            await asyncio.sleep(0.02)

        await asyncio.gather(*writers)
        last_seq = await wait_until_sequenced(pool)
        async with pool.acquire() as connection:
            assert last_seq == await connection.fetchval("SELECT count(*) FROM events")
        assert last_seq >= 84
        second: list[SSEEvent] = []
        # Last-Event-ID wins over ?after= (a browser resends the original URL).
        headers = {"Last-Event-ID": first[-1].id or ""}
        async with http.stream("GET", "/events/stream?after=0", headers=headers) as response:
            assert response.status_code == 200
            await read_until(
                SSEReader(response), second, lambda e: int(e.id or 0) >= last_seq, deadline
            )

        seen = first + second
        assert [int(event.id or 0) for event in seen] == list(range(1, last_seq + 1))
        feed = await expected_feed(pool)
        for event, expected in zip(seen, feed, strict=True):
            assert len(event.data) == 1
            assert json.loads(event.data[0]) == expected
            assert event.event == expected["type"]
            assert int(event.id or 0) == expected["seq"]


async def test_a_stream_resumes_from_after_and_filters_types(make_database: MakeDatabase) -> None:
    async with (
        running_app(make_database) as (_, base_url, pool),
        httpx.AsyncClient(base_url=base_url, timeout=DEADLINE) as http,
    ):
        for number in range(3):
            await submit(http, new_applicant(), number)
        await wait_until_sequenced(pool)
        expected = [
            (str(event["seq"]), event["type"])
            for event in await expected_feed(pool)
            if event["seq"] > 2 and event["type"] == "ApplicationSubmitted"
        ]
        assert len(expected) == 2
        seen: list[SSEEvent] = []
        url = "/events/stream?after=2&types=ApplicationSubmitted"
        async with http.stream("GET", url) as response:
            await read_until(
                SSEReader(response),
                seen,
                lambda e: e.id == expected[-1][0],
                time.monotonic() + DEADLINE,
            )
        assert [(event.id, event.event) for event in seen] == expected


async def test_an_idle_stream_sends_keep_alive_comments(make_database: MakeDatabase) -> None:
    live = LiveSettings(poll_interval=0.1, keep_alive_interval=0.2)
    async with (
        running_app(make_database, live) as (_, base_url, _pool),
        httpx.AsyncClient(base_url=base_url, timeout=DEADLINE) as http,
        http.stream("GET", "/events/stream") as response,
    ):
        lines: list[str] = []

        async def until_keep_alive() -> None:
            async for line in response.aiter_lines():
                lines.append(line)
                if line == ": keep-alive":
                    return

        await asyncio.wait_for(until_keep_alive(), DEADLINE)
        assert ": keep-alive" in lines
        assert not any(line.startswith("id:") for line in lines)


async def test_streams_end_cleanly_when_the_service_stops(make_database: MakeDatabase) -> None:
    url = await make_database()
    app = create_app(
        Settings(app_env="test"),
        database_url=url,
        sequencer_settings=FAST_SEQUENCER,
        live_settings=NO_POLLING,
    )
    async with serving(app) as base_url, httpx.AsyncClient(base_url=base_url) as http:
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        stopped = False
        try:
            await app.state.service.wait_ready(30)
            await submit(http, new_applicant(), 1)
            async with http.stream("GET", "/events/stream", timeout=DEADLINE) as response:
                seen: list[SSEEvent] = []
                reader = SSEReader(response)
                await read_until(reader, seen, lambda e: e.id == "3", time.monotonic() + DEADLINE)
                # Stopping the service ends the open stream (no hang, no error) ...
                async with asyncio.timeout(DEADLINE):  # same task: anyio scopes inside
                    await lifespan.__aexit__(None, None, None)
                stopped = True
                # ... and the response finishes normally.
                rest = [line async for line in reader.lines]
                assert all(not line.startswith("id:") for line in rest)
        finally:
            if not stopped:
                await lifespan.__aexit__(None, None, None)


@pytest.mark.slow
async def test_sigterm_ends_open_streams_and_the_service_exits_cleanly(
    make_database: MakeDatabase, tmp_path: Path
) -> None:
    """uvicorn waits for open responses before the app's shutdown runs; the service ends
    its streams at the signal, so it does not sit out the graceful-shutdown timeout."""
    url = await make_database()
    async with (
        running_service(tmp_path, {"DATABASE_URL": url, "APP_ENV": "test"}) as service,
        httpx.AsyncClient(base_url=service.base_url, timeout=DEADLINE) as http,
    ):
        await submit(http, new_applicant(), 1)
        async with http.stream("GET", "/events/stream") as response:
            reader = SSEReader(response)
            seen: list[SSEEvent] = []
            await read_until(reader, seen, lambda e: e.id == "3", time.monotonic() + DEADLINE)
            service.process.send_signal(signal.SIGTERM)
            # The response finishes normally (a cut-off chunked body would raise here).
            async with asyncio.timeout(20):  # below the CLI's 30 s graceful timeout
                rest = [line async for line in reader.lines]
        assert not any(line.startswith("id:") for line in rest)
        deadline = time.monotonic() + DEADLINE
        while service.process.poll() is None:
            assert time.monotonic() < deadline, service.output()
            await asyncio.sleep(0.1)
    assert service.process.returncode == 0, service.output()
    assert "timeout graceful shutdown exceeded" not in service.output()


async def test_missed_notifications_are_covered_by_polling(make_database: MakeDatabase) -> None:
    """A tail that never hears a notification still delivers every event, by polling."""
    url = await make_database()
    pool = await create_pool(url, min_size=1, max_size=2)
    tail = LedgerTail(url, LiveSettings(poll_interval=0.05, keep_alive_interval=60))
    app = create_app(Settings(app_env="test"), database_url=url, sequencer_settings=FAST_SEQUENCER)
    try:
        async with app.router.lifespan_context(app):
            await app.state.service.wait_ready(30)
            stream = follow_ledger(tail, lambda: pool, 0)
            assert await anext(stream) == b"retry: 1000\n\n"
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://ledger.test") as h:
                await submit(h, new_applicant(), 1)
            frames = b""
            deadline = time.monotonic() + DEADLINE
            while frames.count(b"\n\n") < 3:
                frames += await asyncio.wait_for(anext(stream), deadline - time.monotonic())
            assert [line for line in frames.split(b"\n") if line.startswith(b"id:")] == [
                b"id: 1",
                b"id: 2",
                b"id: 3",
            ]
            tail.close()
            with pytest.raises(StopAsyncIteration):
                await asyncio.wait_for(anext(stream), DEADLINE)
            assert tail.subscribers == 0
    finally:
        await pool.close()


@pytest.mark.parametrize(
    ("query", "headers", "field"),
    [
        ("?after=-1", {}, "after"),
        ("?after=abc", {}, "after"),
        (f"?after={2**63}", {}, "after"),
        ("", {"Last-Event-ID": "abc"}, "Last-Event-ID"),
        ("", {"Last-Event-ID": "-1"}, "Last-Event-ID"),
        ("", {"Last-Event-ID": " 5"}, "Last-Event-ID"),
        ("", {"Last-Event-ID": "+5"}, "Last-Event-ID"),
        ("", {"Last-Event-ID": "1.5"}, "Last-Event-ID"),
        ("", {"Last-Event-ID": str(2**63)}, "Last-Event-ID"),
        ("?after=5", {"Last-Event-ID": ""}, "Last-Event-ID"),
    ],
)
async def test_a_bad_resume_position_is_a_422_problem(
    client: httpx.AsyncClient, query: str, headers: dict[str, str], field: str
) -> None:
    response = await client.get(f"/events/stream{query}", headers=headers)
    problem = assert_problem(response, 422, "validation-error")
    assert [error["field"] for error in problem["errors"]] == [field]
