"""OpenTelemetry tracing: off unless the standard OTEL_* environment variables turn it on.

On when OTEL_TRACES_EXPORTER names an exporter other than `none`, or when an OTLP endpoint
is set (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT); OTEL_SDK_DISABLED
=true keeps it off. Exporters: `otlp` (the default; needs the `otlp` extra,
opentelemetry-exporter-otlp-proto-http) and `console`. Everything else the SDK reads from
the environment (OTEL_SERVICE_NAME, default `lending-ledger`; OTEL_RESOURCE_ATTRIBUTES;
OTEL_TRACES_SAMPLER and its argument; OTEL_BSP_*; OTEL_EXPORTER_OTLP_HEADERS ...) applies.

What is traced: each HTTP request (a server span named after the route template, with the
request's correlation id as `ledger.correlation_id`) and every asyncpg query it makes (client
spans under it). Queries outside a request (the sequencer's polling, the live feed's health
checks, the sealer) would be a stream of one-span traces: they are not sampled.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import Attributes
from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger(__name__)

CORRELATION_ATTRIBUTE = "ledger.correlation_id"


def tracing_enabled(env: dict[str, str] | None = None) -> bool:
    env = dict(os.environ if env is None else env)
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER")
    if exporters is not None and exporters.strip():
        return exporters.strip().lower() != "none"
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


class NoBackgroundRoots(Sampler):
    """Drops database spans that would start a trace of their own (work outside a request);
    everything else goes to the configured sampler."""

    def __init__(self, delegate: Sampler) -> None:
        self.delegate = delegate

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        parent = trace.get_current_span(parent_context).get_span_context()
        if kind is SpanKind.CLIENT and not parent.is_valid:
            return SamplingResult(Decision.DROP)
        return self.delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"NoBackgroundRoots{{{self.delegate.get_description()}}}"


def _exporters(env: dict[str, str]) -> list[SpanExporter]:
    exporters: list[SpanExporter] = []
    for name in (env.get("OTEL_TRACES_EXPORTER") or "otlp").lower().split(","):
        name = name.strip()
        if name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name == "otlp":
            try:  # an optional extra (`otlp`): imported only when asked for
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
                    OTLPSpanExporter,
                )
            except ImportError:
                logger.warning(
                    "tracing: the otlp exporter is not installed "
                    "(pip install 'lending-ledger[otlp]'); no spans are exported"
                )
                continue
            exporters.append(OTLPSpanExporter())
        elif name and name != "none":
            logger.warning("tracing: unknown exporter %r in OTEL_TRACES_EXPORTER; ignored", name)
    return exporters


def provider_from_env(env: dict[str, str] | None = None) -> TracerProvider | None:
    """A tracer provider as the OTEL_* variables ask, or None when tracing is off."""
    env = dict(os.environ if env is None else env)
    if not tracing_enabled(env):
        return None
    attributes = {} if env.get("OTEL_SERVICE_NAME") else {"service.name": "lending-ledger"}
    provider = make_provider(Resource.create(attributes))
    for exporter in _exporters(env):
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def make_provider(
    resource: Resource | None = None, processors: Sequence[SpanProcessor] = ()
) -> TracerProvider:
    provider = TracerProvider(resource=resource or Resource.create({}))
    provider.sampler = NoBackgroundRoots(provider.sampler)  # the env's sampler, wrapped
    for processor in processors:
        provider.add_span_processor(processor)
    return provider


class CorrelationSpanMiddleware:
    """Puts the request's correlation id on its server span (inside CorrelationIdMiddleware,
    inside OpenTelemetry's middleware). Added only when tracing is on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            correlation_id = scope.get("state", {}).get("correlation_id")
            if correlation_id is not None:
                trace.get_current_span().set_attribute(CORRELATION_ATTRIBUTE, correlation_id)
        await self.app(scope, receive, send)


def instrument(app: FastAPI, provider: TracerProvider) -> None:
    """Trace the app's requests and (process-wide) asyncpg's queries with `provider`. The
    middleware must already be in place (create_app adds CorrelationSpanMiddleware)."""
    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=provider, exclude_spans=["receive", "send"]
    )
    instrumentor = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=provider)


def uninstrument(app: FastAPI) -> None:
    FastAPIInstrumentor.uninstrument_app(app)
    instrumentor = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
