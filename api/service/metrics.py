"""The service's Prometheus metrics: what each process counts, and the ledger-wide gauges.

Counters and per-process gauges are module-level objects in a private registry, the usual
Prometheus shape: one set per process. With several uvicorn workers, `serve` points
PROMETHEUS_MULTIPROC_DIR at a fresh directory before the workers start
(api/web/server.py); prometheus_client then keeps every worker's values in files there and
a scrape of any worker reads them all, so each worker is counted once.

The ledger-wide gauges (log head, unsequenced events and their age, checkpoint lag, seals,
whether a sequencer leads) are not per process: they are read at scrape time by one query
(ledger/log_status.py) and exposed by the scraping worker alone (`ledger_families`).

Metric names and labels are listed in docs/operations.md ("Metrics").
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from ledger.log_status import LogStatus

REGISTRY = CollectorRegistry(auto_describe=True)
"""This process's metrics (not prometheus_client's global registry: nothing else lands here)."""

REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUEST_DURATION = Histogram(
    "ledger_http_request_duration_seconds",
    "Time from a request's arrival to the end of its response, by route template.",
    ["route", "method", "status"],
    buckets=REQUEST_BUCKETS,
    registry=REGISTRY,
)
EVENTS_APPENDED = Counter(
    "ledger_events_appended",
    "Events appended by this service's commands, by event type.",
    ["type"],
    registry=REGISTRY,
)
IDEMPOTENT_REPLAYS = Counter(
    "ledger_idempotent_replays",
    "Commands answered from the idempotency record of an earlier call (nothing ran).",
    registry=REGISTRY,
)
AUTH_FAILURES = Counter(
    "ledger_authentication_failures",
    "Requests refused with 401, by reason (no key, malformed key, wrong key, revoked key).",
    ["reason"],
    registry=REGISTRY,
)
POOL_IN_USE = Gauge(
    "ledger_db_pool_connections_in_use",
    "Connections of the primary pool lent out right now (all workers).",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
POOL_SIZE = Gauge(
    "ledger_db_pool_connections",
    "Connections the primary pool holds open (all workers).",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
SSE_SUBSCRIBERS = Gauge(
    "ledger_sse_subscribers",
    "Open /events/stream responses (all workers).",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)


def multiprocess_mode() -> bool:
    """Whether prometheus_client keeps values in PROMETHEUS_MULTIPROC_DIR (decided when it
    was first imported, from the environment then)."""
    return values.ValueClass is not values.MutexValue


def process_exiting() -> None:
    """A worker stopping cleanly takes its live gauges (pool, streams) out of the sums. A
    killed worker's stay until the next start (which begins with a fresh directory)."""
    if multiprocess_mode():
        mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def auth_failed(reason: str) -> None:
    AUTH_FAILURES.labels(reason).inc()


_EVENTS_APPENDED_BY_TYPE: dict[str, Counter] = {}


def count_events(event_types: Iterable[str]) -> None:
    for event_type in event_types:
        # labels() takes a lock and builds a key per call; the children are kept here.
        child = _EVENTS_APPENDED_BY_TYPE.get(event_type)
        if child is None:
            child = _EVENTS_APPENDED_BY_TYPE[event_type] = EVENTS_APPENDED.labels(event_type)
        child.inc()


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


class _Process(Collector):
    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def ledger_families(
    status: LogStatus | None, sequencer_lag_seconds: float, replica_lag_seconds: float | None
) -> list[Metric]:
    """The ledger-wide gauges from one status read (`status` None: the database is down)."""

    def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, documentation, value=value)

    families: list[Metric] = [
        gauge("ledger_database_up", "1 when the status query answered.", 0 if status is None else 1)
    ]
    if replica_lag_seconds is not None:
        families.append(
            gauge(
                "ledger_replica_lag_seconds",
                "Time since the last transaction the read replica replayed (0 when caught up).",
                replica_lag_seconds,
            )
        )
    if status is None:
        return families
    families += [
        gauge("ledger_log_head", "The last seq of the ledger log.", status.log_head),
        gauge(
            "ledger_unsequenced_events",
            "Committed events the sequencer has not given a seq yet.",
            status.unsequenced,
        ),
        gauge(
            "ledger_sequencer_lag_seconds",
            "How long the oldest unsequenced event has waited (0 when none waits).",
            sequencer_lag_seconds,
        ),
        gauge(
            "ledger_sequencer_leader",
            "1 when some process holds the sequencer's leadership lock.",
            1 if status.sequencer_leads else 0,
        ),
        gauge("ledger_sealed_seq", "The seq the newest seal covers (0: none).", status.sealed_seq),
        gauge("ledger_unsealed_events", "Sequenced events no seal covers yet.", status.unsealed),
    ]
    if status.seal_age_seconds is not None:
        families.append(
            gauge("ledger_seal_age_seconds", "Age of the newest seal.", status.seal_age_seconds)
        )
    events = GaugeMetricFamily(
        "ledger_checkpoint_lag_events",
        "Ledger log events past a projection's checkpoint.",
        labels=["projection"],
    )
    seconds = GaugeMetricFamily(
        "ledger_checkpoint_lag_seconds",
        "Age of the first event past a projection's checkpoint (0 when caught up).",
        labels=["projection"],
    )
    for checkpoint in status.checkpoints:
        events.add_metric([checkpoint.projection], checkpoint.events)
        seconds.add_metric([checkpoint.projection], checkpoint.seconds)
    families += [events, seconds]
    return families


def scrape_registry(ledger: list[Metric]) -> CollectorRegistry:
    """What one scrape exposes: every worker's metrics (multiprocess mode) or this
    process's, and the ledger-wide gauges read for this scrape."""
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess_mode():
        MultiProcessCollector(registry, os.environ.get("PROMETHEUS_MULTIPROC_DIR"))  # type: ignore[no-untyped-call]
    else:
        registry.register(_Process())
    registry.register(_Fixed(ledger))
    return registry
