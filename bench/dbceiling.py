"""The database ceiling for the apply path: the service's own command handler, without HTTP.

Each client runs `api.service.commands.submit_application` in a loop: in one transaction, decide
(validate, score), append the three hash-chained events (ledger.store.append) and update
the read models inline (projections.runner.project_inline), then render the response, as
`POST /lending/apply` does after parsing the body. Clients are spread over as many
processes as the service has workers, each with a pool of the service's size, so the only
thing missing compared with the service is HTTP (parsing, validation, routing, middleware).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from api.jsonio import loads_exact
from api.service.commands import RequestContext, submit_application
from api.service.models import ApplyRequest
from api.web.commands import render_application
from bench.loadgen import LoadOutcome, PlanOutcome, split_clients
from ledger.db import create_pool
from ledger.scoring import get_model


@dataclass(frozen=True, slots=True)
class CeilingSpec:
    database_url: str
    bodies: tuple[bytes, ...]
    clients: int
    pool_size: int
    scoring_model: str
    start_at: float
    warmup: float
    duration: float


async def _client(
    spec: CeilingSpec,
    requests: Sequence[ApplyRequest],
    offset: int,
    measure_from: float,
    stop_at: float,
    outcome: PlanOutcome,
    pool: asyncpg.Pool,
) -> None:
    model = get_model(spec.scoring_model)
    index = offset % len(requests)
    clock = time.perf_counter
    while True:
        started = clock()
        if started >= stop_at:
            return
        context = RequestContext(
            actor="anonymous",
            correlation_id=str(uuid.uuid4()),
            idempotency_key=None,
            fingerprint=b"",
        )
        try:
            await submit_application(
                pool,
                requests[index],
                context,
                model,
                datetime.now(UTC),
                render_application,
            )
            failed = False
        except Exception:  # counted, like an HTTP error: the figure then does not count
            failed = True
        index = (index + 1) % len(requests)
        done = clock()
        if measure_from <= done <= stop_at:
            if failed:
                outcome.errors += 1
            else:
                outcome.latencies.append(done - started)
            outcome.statuses["error" if failed else "ok"] += 1


async def _run(spec: CeilingSpec, offset: int) -> LoadOutcome:
    requests = [ApplyRequest.model_validate(loads_exact(body)) for body in spec.bodies]
    pool = await create_pool(spec.database_url, min_size=spec.pool_size, max_size=spec.pool_size)
    try:
        await asyncio.sleep(max(0.0, spec.start_at - time.time()))
        started = time.perf_counter()
        measure_from = started + spec.warmup
        stop_at = measure_from + spec.duration
        outcome = LoadOutcome()
        plan = outcome.plans.setdefault("db_ceiling", PlanOutcome())

        async def cpu_in_window() -> None:
            await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
            before = resource.getrusage(resource.RUSAGE_SELF)
            await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
            after = resource.getrusage(resource.RUSAGE_SELF)
            outcome.cpu_seconds = (after.ru_utime - before.ru_utime) + (
                after.ru_stime - before.ru_stime
            )

        await asyncio.gather(
            cpu_in_window(),
            *(
                _client(spec, requests, offset + n * 7919, measure_from, stop_at, plan, pool)
                for n in range(spec.clients)
            ),
        )
        return outcome
    finally:
        await asyncio.wait_for(pool.close(), timeout=10)


def _run_in_process(spec: CeilingSpec, offset: int) -> LoadOutcome:
    return asyncio.run(_run(spec, offset))


def run_db_ceiling(
    database_url: str,
    bodies: Sequence[bytes],
    *,
    clients: int,
    processes: int,
    pool_size: int,
    scoring_model: str,
    warmup: float,
    duration: float,
    start_at: float,
) -> LoadOutcome:
    shares = split_clients(clients, processes)
    merged = LoadOutcome()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=len(shares), mp_context=context) as pool:
        futures = [
            pool.submit(
                _run_in_process,
                CeilingSpec(
                    database_url,
                    tuple(bodies),
                    share,
                    pool_size,
                    scoring_model,
                    start_at,
                    warmup,
                    duration,
                ),
                n * 104729,
            )
            for n, share in enumerate(shares)
        ]
        for future in futures:
            merged.merge(
                future.result(timeout=max(0.0, start_at - time.time()) + warmup + duration + 120)
            )
    return merged
