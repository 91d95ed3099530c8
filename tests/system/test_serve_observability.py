"""`lending-ledger serve --workers 2`: metrics count every worker once, and the logs are
JSON lines (stderr is not a terminal) from the service and uvicorn alike."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import MakeDatabase, new_applicant
from tests.integration.test_observability import parse, value
from tests.system.test_e2e import running_service

pytestmark = pytest.mark.slow

APPLIES = 8


async def test_two_workers_are_counted_once_and_log_json_lines(
    make_database: MakeDatabase, tmp_path: Path
) -> None:
    url = await make_database()
    env = {"DATABASE_URL": url, "APP_ENV": "test", "LEDGER_SEAL_INTERVAL_SECONDS": "0"}
    async with running_service(tmp_path, env, ["--workers", "2"]) as service:
        # A fresh connection per request spreads them over both workers.
        for n in range(APPLIES):
            async with httpx.AsyncClient(base_url=service.base_url, timeout=15) as http:
                body = {
                    "applicant_id": new_applicant(),
                    "amount": "1000",
                    "income": "80000",
                    "employment_years": 3,
                }
                response = await http.post(
                    "/lending/apply", json=body, headers={"X-Correlation-Id": f"serve-{n}"}
                )
                assert response.status_code == 200, response.text
        scrapes = []
        for _ in range(6):
            async with httpx.AsyncClient(base_url=service.base_url, timeout=15) as http:
                scrapes.append(parse((await http.get("/metrics")).text))
        for samples in scrapes:
            apply_count = value(
                samples,
                "ledger_http_request_duration_seconds_count",
                route="/lending/apply",
                method="POST",
                status="200",
            )
            assert apply_count == APPLIES
            assert value(samples, "ledger_events_appended_total", type="ApplicationScored") == (
                APPLIES
            )
            assert value(samples, "ledger_sequencer_leader") == 1
        # Each worker's pool holds at least one connection: the sum shows both workers.
        deadline = time.monotonic() + 20
        async with httpx.AsyncClient(base_url=service.base_url, timeout=15) as http:
            while value(parse((await http.get("/metrics")).text), "ledger_db_pool_connections") < 2:
                assert time.monotonic() < deadline, "only one worker's pool in the metrics"
                await asyncio.sleep(0.2)
        assert await service.stop(signal.SIGTERM) == 0

    lines: list[dict[str, Any]] = [
        json.loads(line) for line in service.output().splitlines() if line.startswith("{")
    ]
    access = [line for line in lines if line["logger"] == "api.web.access"]
    applies = [line for line in access if line["route"] == "/lending/apply"]
    assert sorted(line["correlation_id"] for line in applies) == sorted(
        f"serve-{n}" for n in range(APPLIES)
    )
    assert all(line["status"] == 200 and line["level"] == "info" for line in applies)
    assert all({"timestamp", "event", "duration_ms"} <= line.keys() for line in applies)
    # uvicorn's own loggers go through the same pipeline; its access log is replaced.
    assert any(line["logger"].startswith("uvicorn") for line in lines)
    assert not any(line["logger"] == "uvicorn.access" for line in lines)
