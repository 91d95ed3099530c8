"""Metrics, readiness that knows about sequencer lag, structured logs and tracing."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families
from structlog.contextvars import bound_contextvars

from api.client.ledger_client import LedgerClient
from api.service.logs import make_formatter
from api.service.settings import Settings
from api.web.app import create_app
from api.web.tracing import CORRELATION_ATTRIBUTE, make_provider, tracing_enabled, uninstrument
from ledger.db import connect
from ledger.log_status import LagObserver, LogStatus, read_log_status
from ledger.sequencer import APPLICATION_NAME as SEQUENCER_APPLICATION_NAME
from ledger.sequencer import LEADERSHIP_LOCK_KEY
from tests.conftest import FAST_SEQUENCER, MakeDatabase, new_applicant
from tests.support.helpers import assert_problem

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return parse(response.text)


def application() -> dict[str, object]:
    return {
        "applicant_id": new_applicant(),
        "amount": "1000.00",
        "income": "90000",
        "employment_years": 4,
    }


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        await app.state.service.wait_ready(30)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ledger.test") as http:
            yield http


# --- /metrics ---


async def test_metrics_count_known_work(client: httpx.AsyncClient) -> None:
    """N applies, a replay and a failed authentication move exactly their counters; the
    ledger-wide gauges come from the database at scrape time."""
    before = await scrape(client)
    applies = 3
    for _ in range(applies):
        assert (await client.post("/lending/apply", json=application())).status_code == 200
    body, key = application(), {"Idempotency-Key": f"metrics-{time.time_ns()}"}
    first = await client.post("/lending/apply", json=body, headers=key)
    replay = await client.post("/lending/apply", json=body, headers=key)
    assert replay.headers["idempotent-replayed"] == "true"
    assert first.json() == replay.json()
    refused = await client.get("/events", headers={"Authorization": "Bearer not-a-key"})
    assert_problem(refused, 401)
    after = await scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    for event_type in ("ApplicationSubmitted", "ApplicationScored", "ApplicationDecided"):
        assert delta("ledger_events_appended_total", type=event_type) == applies + 1
    assert delta("ledger_idempotent_replays_total") == 1
    assert delta("ledger_authentication_failures_total", reason="malformed key") == 1
    apply_labels = {"route": "/lending/apply", "method": "POST", "status": "200"}
    assert delta("ledger_http_request_duration_seconds_count", **apply_labels) == applies + 2
    assert delta("ledger_http_request_duration_seconds_sum", **apply_labels) > 0
    # The route template, never the raw path (bounded series).
    unmatched = {"route": "<unmatched>", "method": "GET", "status": "401"}
    assert delta("ledger_http_request_duration_seconds_count", **unmatched) == 0
    assert (
        delta(
            "ledger_http_request_duration_seconds_count",
            route="/events",
            method="GET",
            status="401",
        )
        == 1
    )
    assert value(after, "ledger_database_up") == 1
    assert value(after, "ledger_sequencer_leader") == 1
    assert value(after, "ledger_log_head") >= value(before, "ledger_log_head")
    assert value(after, "ledger_db_pool_connections") >= 1
    assert ("ledger_sse_subscribers", frozenset()) in after
    assert ("ledger_unsealed_events", frozenset()) in after


async def test_ledger_gauges_match_the_database(make_database: MakeDatabase) -> None:
    url = await make_database()
    app = create_app(
        Settings(app_env="test", seal_interval_seconds=0),
        database_url=url,
        sequencer_settings=FAST_SEQUENCER,
    )
    async with running(app) as http:
        for _ in range(2):
            assert (await http.post("/lending/apply", json=application())).status_code == 200
        deadline = time.monotonic() + 20
        while value(samples := await scrape(http), "ledger_log_head") < 6:
            assert time.monotonic() < deadline, samples
            await asyncio.sleep(0.05)
        assert value(samples, "ledger_unsequenced_events") == 0
        assert value(samples, "ledger_sequencer_lag_seconds") == 0
        assert value(samples, "ledger_sealed_seq") == 0
        assert value(samples, "ledger_unsealed_events") == 6
        assert ("ledger_seal_age_seconds", frozenset()) not in samples  # never sealed
        assert (await http.post("/audit/seals")).status_code in (200, 201)
        sealed = await scrape(http)
        assert value(sealed, "ledger_sealed_seq") == 6
        assert value(sealed, "ledger_unsealed_events") == 0
        assert 0 <= value(sealed, "ledger_seal_age_seconds") < 60
        # A projection checkpoint behind the log head shows its lag in events and seconds.
        connection = await connect(url)
        try:
            await connection.execute(
                "INSERT INTO projection_checkpoints (projection, last_seq) VALUES ('probe', 2)"
            )
        finally:
            await connection.close()
        lagging = await scrape(http)
        assert value(lagging, "ledger_checkpoint_lag_events", projection="probe") == 4
        assert value(lagging, "ledger_checkpoint_lag_seconds", projection="probe") >= 0


def test_multiprocess_mode_counts_every_worker_once(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """With PROMETHEUS_MULTIPROC_DIR (what `serve` sets up for several workers), values from
    two processes are summed in one scrape."""
    directory = tmp_path_factory.mktemp("prometheus-multiproc")
    count = (
        "from api.service import metrics; metrics.IDEMPOTENT_REPLAYS.inc(); "
        "metrics.count_events(['ApplicationSubmitted'])"
    )
    expose = (
        "from prometheus_client import generate_latest; from api.service import metrics; "
        "assert metrics.multiprocess_mode(); "
        "print(generate_latest(metrics.scrape_registry([])).decode())"
    )
    env = {"PROMETHEUS_MULTIPROC_DIR": str(directory), "PATH": ""}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", count], env=env, check=True, timeout=60)
    out = subprocess.run(
        [sys.executable, "-c", expose],
        env=env,
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    ).stdout
    samples = parse(out)
    assert value(samples, "ledger_idempotent_replays_total") == 2
    assert value(samples, "ledger_events_appended_total", type="ApplicationSubmitted") == 2


# --- /readyz and the sequencer ---


async def test_readyz_turns_503_while_the_sequencer_lags_and_recovers(
    make_database: MakeDatabase,
) -> None:
    url = await make_database()
    app = create_app(
        Settings(app_env="test", seal_interval_seconds=0, ready_max_sequencer_lag_seconds=1),
        database_url=url,
        sequencer_settings=FAST_SEQUENCER,
    )
    async with running(app) as http:
        assert (await http.get("/readyz")).status_code == 200
        # A transaction that took an id holds the sequencer's horizon back.
        blocker = await asyncpg.connect(url)
        try:
            held = blocker.transaction()
            await held.start()
            await blocker.fetchval("SELECT pg_current_xact_id()")
            assert (await http.post("/lending/apply", json=application())).status_code == 200
            first = await http.get("/readyz")  # seen waiting now, not yet for a second
            assert first.status_code == 200, first.text
            await asyncio.sleep(1.3)
            lagging = await http.get("/readyz")
            problem = assert_problem(lagging, 503, "sequencer-lagging")
            assert problem["unsequenced"] == 3
            assert problem["lag_seconds"] > 1
            assert (await http.get("/healthz")).status_code == 200  # liveness only
            await held.rollback()
        finally:
            await blocker.close()
        deadline = time.monotonic() + 20
        while (ready := await http.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline, ready.text
            await asyncio.sleep(0.05)
        assert ready.json() == {"status": "ok", "detail": None}


async def test_readyz_turns_503_without_a_sequencer_and_recovers(
    make_database: MakeDatabase,
) -> None:
    url = await make_database()
    app = create_app(
        Settings(app_env="test", seal_interval_seconds=0),
        database_url=url,
        sequencer_settings=FAST_SEQUENCER,
    )
    async with running(app) as http:
        service = app.state.service
        deadline = time.monotonic() + 20
        while (await http.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        # Another session takes the leadership lock away: this app's sequencer is
        # stopped and someone else leads. Then the leader goes away and nobody leads.
        sequencer = next(t for t in service._tasks if t.get_name() == "ledger-sequencer")
        sequencer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sequencer
        problem = assert_problem(await http.get("/readyz"), 503, "no-sequencer")
        assert "no sequencer" in problem["detail"]
        other = await asyncpg.connect(url)
        try:
            assert await other.fetchval("SELECT pg_try_advisory_lock($1)", LEADERSHIP_LOCK_KEY)
            assert (await http.get("/readyz")).status_code == 200  # a leader, elsewhere
        finally:
            await other.close()
        assert_problem(await http.get("/readyz"), 503, "no-sequencer")


async def test_log_status_reads_the_leadership_lock_of_this_database_only(
    make_database: MakeDatabase,
) -> None:
    first, second = await make_database(), await make_database()
    a, b = await connect(first), await connect(second)
    try:
        assert not (await read_log_status(a)).sequencer_leads
        assert await b.fetchval("SELECT pg_try_advisory_lock($1)", LEADERSHIP_LOCK_KEY)
        assert not (await read_log_status(a)).sequencer_leads
        assert (await read_log_status(b)).sequencer_leads
        status = await read_log_status(a)
        assert (status.log_head, status.unsequenced, status.sealed_seq) == (0, 0, 0)
        assert status.seal_age_seconds is None
    finally:
        await a.close()
        await b.close()


def test_the_lag_observer_never_trusts_an_old_recorded_time_alone() -> None:
    now = [100.0]
    observer = LagObserver(clock=lambda: now[0])

    def status(position: int | None, recorded: float | None) -> LogStatus:
        return LogStatus(0, 0 if position is None else 1, position, recorded, True, 0, None, ())

    assert observer.lag_seconds(status(7, 10_000.0)) == 0  # imported history: old time
    now[0] = 103.0
    assert observer.lag_seconds(status(7, 10_003.0)) == 3
    assert observer.lag_seconds(status(7, 2.0)) == 2  # recorded more recently than seen
    assert observer.lag_seconds(status(8, 50.0)) == 0  # the log moved on
    assert observer.lag_seconds(status(None, None)) == 0


# --- Logs ---


async def test_access_lines_and_request_logs_carry_the_correlation_id(
    client: httpx.AsyncClient,
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(make_formatter("json"))
    access = logging.getLogger("api.web.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        response = await client.get(
            f"/lending/applicants/{new_applicant()}/history",
            headers={"X-Correlation-Id": "corr-logs-1"},
        )
        assert response.status_code == 200
    finally:
        access.removeHandler(handler)
        access.setLevel(logging.NOTSET)
    [line] = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert line["logger"] == "api.web.access"
    assert line["level"] == "info"
    assert line["correlation_id"] == "corr-logs-1"
    assert line["route"] == "/lending/applicants/{applicant_id}/history"
    assert (line["method"], line["status"]) == ("GET", 200)
    assert line["duration_ms"] > 0
    assert line["timestamp"].endswith("Z")


def test_standard_library_records_become_json_lines_with_the_bound_context(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(make_formatter("json"))
    logger = logging.getLogger("tests.observability")
    logger.addHandler(handler)
    try:
        with bound_contextvars(correlation_id="corr-2"), caplog.at_level(logging.INFO):
            logger.warning("sequencer lost its connection (%s); retrying", "boom")
    finally:
        logger.removeHandler(handler)
    line = json.loads(stream.getvalue())
    assert line["event"] == "sequencer lost its connection (boom); retrying"
    assert (line["level"], line["logger"], line["correlation_id"]) == (
        "warning",
        "tests.observability",
        "corr-2",
    )
    assert caplog.records[0].getMessage() == line["event"]  # caplog still sees the record
    console = make_formatter("console").format(caplog.records[0])
    assert "sequencer lost its connection (boom)" in console
    assert not console.startswith("{")


# --- Tracing ---


def test_tracing_is_off_unless_the_otel_variables_ask() -> None:
    assert not tracing_enabled({})
    assert not tracing_enabled({"OTEL_TRACES_EXPORTER": "none"})
    assert tracing_enabled({"OTEL_TRACES_EXPORTER": "console"})
    assert tracing_enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert not tracing_enabled(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"}
    )


async def test_one_apply_is_one_request_span_with_its_database_spans(
    database_url: str,
) -> None:
    exporter = InMemorySpanExporter()
    provider: TracerProvider = make_provider(processors=[SimpleSpanProcessor(exporter)])
    app = create_app(
        Settings(app_env="test", seal_interval_seconds=0),
        database_url=database_url,
        sequencer_settings=FAST_SEQUENCER,
        tracer_provider=provider,
    )
    try:
        async with running(app) as http:
            exporter.clear()
            response = await http.post(
                "/lending/apply", json=application(), headers={"X-Correlation-Id": "trace-me-1"}
            )
            assert response.status_code == 200
            await asyncio.sleep(0.3)  # background queries run meanwhile: never exported
    finally:
        uninstrument(app)
    spans = exporter.get_finished_spans()
    [server] = [span for span in spans if span.kind is SpanKind.SERVER]
    assert server.name == "POST /lending/apply"
    assert server.attributes is not None
    assert server.attributes[CORRELATION_ATTRIBUTE] == "trace-me-1"
    status = server.attributes.get("http.response.status_code")
    assert (status or server.attributes.get("http.status_code")) == 200
    database = [span for span in spans if span.kind is SpanKind.CLIENT]
    assert database, [span.name for span in spans]
    assert {span.context.trace_id for span in spans} == {server.context.trace_id}
    for span in database:
        assert span.parent is not None
        assert span.parent.span_id == server.context.span_id
        assert span.attributes is not None
        assert span.attributes.get("db.system.name", span.attributes.get("db.system")) == (
            "postgresql"
        )


async def test_the_python_client_reads_metrics_and_readiness(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app)
    async with LedgerClient("http://ledger.test", transport=transport) as ledger:
        text = await ledger.metrics()
        assert "ledger_log_head" in text
        assert (await ledger.readiness())["status"] == "ok"


# --- Settings for scale-out ---


def test_scale_out_settings_come_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "LEDGER_READ_DATABASE_URL": "postgresql://reader@replica/ledger",
            "LEDGER_DIRECT_DATABASE_URL": "postgresql://app@primary:5432/ledger",
            "LEDGER_DB_STATEMENT_CACHE_SIZE": "0",
            "LEDGER_READ_MIN_LSN_WAIT_MS": "250",
            "LEDGER_READY_MAX_SEQUENCER_LAG_SECONDS": "5",
            "LEDGER_ACCESS_LOG": "false",
        }
    )
    assert settings.read_database_url == "postgresql://reader@replica/ledger"
    assert settings.direct_database_url == "postgresql://app@primary:5432/ledger"
    assert (settings.statement_cache_size, settings.read_min_lsn_wait_ms) == (0, 250)
    assert settings.ready_max_sequencer_lag_seconds == 5
    assert settings.access_log is False
    defaults = Settings.from_env({})
    assert defaults.read_database_url is None
    assert defaults.direct_database_url is None
    assert (defaults.statement_cache_size, defaults.access_log) == (100, True)


async def test_without_a_statement_cache_and_with_a_direct_url_the_service_works(
    make_database: MakeDatabase,
) -> None:
    """What pgBouncer in transaction mode before 1.21 needs: no named prepared statements
    in the pools; the session-level work on the direct URL."""
    url = await make_database()
    app = create_app(
        Settings(
            app_env="test",
            seal_interval_seconds=0,
            statement_cache_size=0,
            direct_database_url=url
            + ("&" if "?" in url else "?")
            + "application_name=ledger-direct",
        ),
        database_url=url,
        sequencer_settings=FAST_SEQUENCER,
    )
    async with running(app) as http:
        service = app.state.service
        assert service.direct_database_url.endswith("ledger-direct")
        body = application()
        assert (await http.post("/lending/apply", json=body)).status_code == 200
        history = await http.get(f"/lending/applicants/{body['applicant_id']}/history")
        assert len(history.json()) == 1
        connection = await connect(url)
        try:
            deadline = time.monotonic() + 20
            while (await read_log_status(connection)).log_head < 3:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            # The listener and the sequencer use the direct URL; the sequencer names its own
            # sessions (ledger/sequencer.py), so its URL is checked where it is given.
            names = await connection.fetch(
                "SELECT application_name FROM pg_stat_activity WHERE datname = current_database()"
            )
            assert "ledger-direct" in {row["application_name"] for row in names}
            assert SEQUENCER_APPLICATION_NAME in {row["application_name"] for row in names}
            assert service.sequencer is not None
            assert service.sequencer.dsn == service.direct_database_url
        finally:
            await connection.close()
        assert (await http.get("/readyz")).status_code == 200
