"""A closed-loop HTTP/1.1 load generator, and a trivial responder to check it against.

Each client is one keep-alive connection that sends a request, reads the whole response
and sends the next (like wrk's connections). Requests are pre-encoded bytes and responses
are parsed only as far as framing needs (status line, Content-Length or chunked), so the
generator spends as little CPU per request as Python allows. Clients can be spread over
several processes (`processes`); all of them start at one wall-clock instant.

Only latencies of requests that complete inside the measured window count; the warm-up
before it is discarded. A response with a status outside 2xx is an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import resource
import time
from array import array
from collections import Counter
from collections.abc import Coroutine, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

_HEADER_END = b"\r\n\r\n"


@dataclass(frozen=True, slots=True)
class RequestPlan:
    """What one kind of client sends: pre-encoded requests, taken in turn."""

    name: str
    requests: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class LoadSpec:
    host: str
    port: int
    plans: tuple[tuple[RequestPlan, int], ...]  # (plan, clients)
    start_at: float  # time.time() at which every process starts sending
    warmup: float
    duration: float


@dataclass(slots=True)
class PlanOutcome:
    latencies: array[float] = field(default_factory=lambda: array("d"))
    errors: int = 0
    statuses: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class LoadOutcome:
    plans: dict[str, PlanOutcome] = field(default_factory=dict)
    cpu_seconds: float = 0.0  # the generator's own CPU inside the measured window
    failures: list[str] = field(default_factory=list)

    def merge(self, other: LoadOutcome) -> None:
        for name, outcome in other.plans.items():
            mine = self.plans.setdefault(name, PlanOutcome())
            mine.latencies.extend(outcome.latencies)
            mine.errors += outcome.errors
            mine.statuses.update(outcome.statuses)
        self.cpu_seconds += other.cpu_seconds
        self.failures.extend(other.failures)


def http_request(
    method: str, path: str, body: bytes = b"", host: str = "127.0.0.1", extra: str = ""
) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}"
    if body or method in ("POST", "PUT", "PATCH"):
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


class ProtocolError(Exception):
    pass


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; return (status, whether the server will close the connection)."""
    head = await reader.readuntil(_HEADER_END)
    status = int(head[9:12])
    lowered = head.lower()
    closing = b"\r\nconnection: close" in lowered
    marker = lowered.find(b"\r\ncontent-length:")
    if marker >= 0:
        end = lowered.index(b"\r\n", marker + 2)
        length = int(lowered[marker + 17 : end])
        if length:
            await reader.readexactly(length)
    elif b"\r\ntransfer-encoding: chunked" in lowered:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif status not in (204, 304) and not 100 <= status < 200:
        raise ProtocolError("response without Content-Length or chunked body")
    return status, closing


async def _client(
    spec: LoadSpec,
    plan: RequestPlan,
    offset: int,
    measure_from: float,
    stop_at: float,
    outcome: PlanOutcome,
    failures: list[str],
    connect_delay: float,
) -> None:
    requests = plan.requests
    index = offset % len(requests)
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    clock = time.perf_counter
    # Connect one client at a time, not all at once: a worker woken by a burst of connects
    # accepts them all, and keep-alive would then pin every client to that one worker.
    await asyncio.sleep(connect_delay)
    try:
        while True:
            if clock() >= stop_at:
                return
            if writer is None:
                try:
                    reader, writer = await asyncio.open_connection(spec.host, spec.port)
                except OSError as error:
                    failures.append(f"{plan.name}: connect: {error!r}")
                    outcome.errors += 1
                    await asyncio.sleep(0.1)
                    continue
            assert reader is not None
            sent = clock()
            writer.write(requests[index])
            index = (index + 1) % len(requests)
            try:
                status, closing = await read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionError) as error:
                failures.append(f"{plan.name}: {error!r}")
                outcome.errors += 1
                closing, status = True, 0
            done = clock()
            if done >= measure_from and done <= stop_at:
                if status and 200 <= status < 300:
                    outcome.latencies.append(done - sent)
                else:
                    outcome.errors += 1
                outcome.statuses[str(status)] += 1
            if closing:
                writer.close()
                writer = None
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _run(spec: LoadSpec, offset: int) -> LoadOutcome:
    # Wall clock for the shared start, then the monotonic clock for everything measured.
    await asyncio.sleep(max(0.0, spec.start_at - time.time()))
    started = time.perf_counter()
    measure_from = started + spec.warmup
    stop_at = measure_from + spec.duration
    outcome = LoadOutcome()
    clients: list[Coroutine[Any, Any, None]] = []
    total = sum(count for _, count in spec.plans)
    spacing = min(0.02, spec.warmup / 2 / max(total, 1))
    for plan, count in spec.plans:
        plan_outcome = outcome.plans.setdefault(plan.name, PlanOutcome())
        for number in range(count):
            clients.append(
                _client(
                    spec,
                    plan,
                    offset + number * 7919,
                    measure_from,
                    stop_at,
                    plan_outcome,
                    outcome.failures,
                    connect_delay=len(clients) * spacing,
                )
            )

    async def cpu_in_window() -> None:
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        before = resource.getrusage(resource.RUSAGE_SELF)
        await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
        after = resource.getrusage(resource.RUSAGE_SELF)
        outcome.cpu_seconds = (after.ru_utime - before.ru_utime) + (
            after.ru_stime - before.ru_stime
        )

    await asyncio.gather(cpu_in_window(), *clients)
    return outcome


def _run_in_process(spec: LoadSpec, offset: int) -> LoadOutcome:
    return asyncio.run(_run(spec, offset))


def split_clients(total: int, parts: int) -> list[int]:
    """`total` clients over `parts` processes, as evenly as possible."""
    parts = max(1, min(parts, total)) if total else 1
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def run_load(
    host: str,
    port: int,
    plans: Sequence[tuple[RequestPlan, int]],
    *,
    warmup: float,
    duration: float,
    processes: int,
    start_at: float,
) -> LoadOutcome:
    """Run the plans for warmup + duration seconds in `processes` processes, all starting
    at `start_at` (time.time(); leave them a second to start); merge their outcomes."""
    share = [split_clients(count, processes) for _, count in plans]
    workers = max(len(s) for s in share)
    specs = []
    for worker in range(workers):
        mine = tuple(
            (plan, s[worker]) for (plan, _), s in zip(plans, share, strict=True) if worker < len(s)
        )
        specs.append(LoadSpec(host, port, mine, start_at, warmup, duration))
    merged = LoadOutcome()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [pool.submit(_run_in_process, spec, n * 104729) for n, spec in enumerate(specs)]
        for future in futures:
            merged.merge(
                future.result(timeout=max(0.0, start_at - time.time()) + warmup + duration + 120)
            )
    return merged


# --- The trivial responder (to show the generator is not the bottleneck) ---

_TRIVIAL_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n"
    b'{"status":"ok"}'
)


class _TrivialResponder(asyncio.Protocol):
    """Answers every request with the same small response; parses only its framing."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(_HEADER_END)
            if end < 0:
                return
            head = self.buffer[:end].lower()
            marker = head.find(b"\r\ncontent-length:")
            length = 0
            if marker >= 0:
                stop = head.find(b"\r\n", marker + 2)
                length = int(head[marker + 17 : stop if stop >= 0 else len(head)])
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            self.buffer = self.buffer[total:]
            assert self.transport is not None
            self.transport.write(_TRIVIAL_RESPONSE)


async def _serve_trivial(port: int, lifetime: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_TrivialResponder, "127.0.0.1", port)
    async with server:
        await asyncio.sleep(lifetime)


def serve_trivial(port: int, lifetime: float) -> None:
    """Process entry point: serve for at most `lifetime` seconds, then exit."""
    asyncio.run(_serve_trivial(port, lifetime))
