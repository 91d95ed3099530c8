"""CPU per request of the apps themselves, in-process: no sockets, no HTTP parser, no load
generator, so the figures are the apps' own Python and little else.

`python -m bench.inprocess` calls each app's ASGI entry directly, one request at a time,
and reads this process's CPU time (user + system) around a fixed number of calls. Every
request is one the service really answers (a 200), and the product's runs go through the
app `create_app` builds, with the hot path (api/web/hot.py) and, for comparison, without
it. The tutorial references (bench/reference_app.py) run beside it on a database of their
own on the same server. The database's CPU is not in these figures (`python -m bench`
reports it per phase; `python -m bench.dbcost` per apply).

What it answers: what the framework costs per request, what the hot path saves, and what
the product's own work costs against the tutorial app's. CPU time rather than throughput,
so a busy machine moves the figures much less than it moves req/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from api.service.settings import Settings
from api.web.app import LedgerApp, create_app
from bench import reference_app
from bench.app import add_bench_routes
from bench.service import database_server, reference_database, scratch_database
from bench.workload import apply_bodies

Message = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Call:
    method: str
    path: str
    body: bytes = b""

    def scope(self) -> dict[str, Any]:
        headers = [(b"host", b"127.0.0.1:8000")]
        if self.body:
            headers += [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(self.body)).encode()),
            ]
        path, _, query = self.path.partition("?")
        return {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": self.method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _call(app: Callable[..., Awaitable[None]], call: Call) -> int:
    statuses: list[int] = []
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:  # nothing more: a request that reads on has its client disconnect
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": call.body, "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(call.scope(), receive, send)
    return statuses[0]


async def cpu_per_call(
    app: Callable[..., Awaitable[None]], calls: Sequence[Call], warmup: int
) -> float:
    """CPU microseconds per call over `calls` (after `warmup` of them, not counted)."""
    for call in calls[:warmup]:
        await _call(app, call)
    measured = calls[warmup:]
    start = _cpu_seconds()
    for call in measured:
        status = await _call(app, call)
        if status >= 300:
            raise RuntimeError(f"{call.method} {call.path} answered {status}")
    return 1e6 * (_cpu_seconds() - start) / len(measured)


async def measure(requests: int, warmup: int, rounds: int) -> dict[str, list[float]]:
    figures: dict[str, list[float]] = {}
    bodies = apply_bodies(requests + warmup, seed=7)
    with database_server(None, []) as server:
        async with AsyncExitStack() as stack:
            product_url = await stack.enter_async_context(
                scratch_database(server.admin_url, "inprocess")
            )
            reference_url = await stack.enter_async_context(
                reference_database(
                    server.admin_url, history_prefix="inproc", applicants=0, applications_each=0
                )
            )
            settings = Settings(app_env="development", batch_seal_interval_ms=0)
            product = create_app(settings, database_url=product_url)
            assert isinstance(product, LedgerApp)
            add_bench_routes(product)
            os.environ["DATABASE_URL"] = reference_url  # read by the reference's lifespan
            reference = reference_app.create_reference_app()
            bare = reference_app.create_bare_app()
            for app in (product, reference):
                await stack.enter_async_context(app.router.lifespan_context(app))
            await product.state.service.wait_ready(60)
            hot_path = product.hot_path

            def full_stack(on: bool) -> None:
                product.hot_path = hot_path if on else None

            applies = [Call("POST", "/lending/apply", body) for body in bodies]
            # The history read: an applicant with three applications in each app.
            applicant = (
                b'{"applicant_id":"inproc-1","amount":5000,"income":90000,"employment_years":'
            )
            for years in (b"1}", b"2}", b"3}"):
                for app in (product, reference):
                    await _call(app, Call("POST", "/lending/apply", applicant + years))
            history = [Call("GET", "/lending/applicants/inproc-1/history")] * (requests + warmup)
            noop = [Call("GET", "/bench/noop")] * (requests + warmup)
            for _ in range(rounds):
                for name, app, calls, hot in (
                    ("noop (hot path)", product, noop, True),
                    ("noop (full stack)", product, noop, False),
                    ("bare FastAPI noop", bare, noop, None),
                    ("apply (hot path)", product, applies, True),
                    ("apply (full stack)", product, applies, False),
                    ("tutorial apply", reference, applies, None),
                    ("history (hot path)", product, history, True),
                    ("history (full stack)", product, history, False),
                    ("tutorial history", reference, history, None),
                ):
                    if hot is not None:
                        full_stack(hot)
                    figures.setdefault(name, []).append(await cpu_per_call(app, calls, warmup))
                full_stack(True)
    return figures


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.inprocess", description=__doc__)
    parser.add_argument("--requests", type=int, default=2000, help="measured calls per figure")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    figures = asyncio.run(measure(args.requests, args.warmup, args.rounds))
    lines = ["| request | CPU µs per call (median of rounds) | rounds |", "| --- | --- | --- |"]
    for name, values in figures.items():
        median = sorted(values)[len(values) // 2]
        rounds = ", ".join(f"{value:.0f}" for value in values)
        lines.append(f"| {name} | {median:.0f} | {rounds} |")
    sys.stdout.write("\n".join(lines) + "\n")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(figures, out, indent=2)


if __name__ == "__main__":
    main()
