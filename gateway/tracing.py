"""OpenTelemetry traces (README "Traces"), configured only by the standard OTEL_* variables.

Unless OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set
(and OTEL_SDK_DISABLED is not true), nothing of OpenTelemetry is imported and
`TRACING` stays None: each request pays one attribute check. Set, the SDK's
TracerProvider takes its sampler from OTEL_TRACES_SAMPLER/_ARG and its OTLP
over HTTP exporter its endpoint, headers and timeout from their variables;
spans leave in batches from the SDK's own thread.

Per request, one server span (`http.request.method`, `http.route`, `url.path`,
`http.response.status_code`), continuing the client's W3C `traceparent` when
it sent one; per attempt on an upstream (retries and fallbacks each), one
client span, child of the server span, whose context the upstream receives
as its `traceparent`. A model call's reported usage goes on its server span
(`gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens`). The trace id is
in the request's access-log line and in every log line it causes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.context import RequestContext

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment asks for traces."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(environ.get(name) for name in ENDPOINT_VARIABLES)


class Tracing:
    """The tracer and the W3C trace-context propagator (RFC-like: W3C Trace Context)."""

    def __init__(self) -> None:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        from gateway import __version__

        service = os.environ.get("OTEL_SERVICE_NAME") or "gateway"
        resource = Resource.create({"service.name": service, "service.version": __version__})
        self.provider = TracerProvider(resource=resource)  # sampler: OTEL_TRACES_SAMPLER
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self.tracer = self.provider.get_tracer("gateway", __version__)
        self._trace = trace
        self._propagator = TraceContextTextMapPropagator()
        self._server = trace.SpanKind.SERVER
        self._client = trace.SpanKind.CLIENT
        self._error = trace.StatusCode.ERROR

    def begin(self, ctx: RequestContext, headers: Mapping[str, str]) -> None:
        """The request's server span, a child of the client's traceparent if it sent one."""
        parent = None
        if "traceparent" in headers:
            parent = self._propagator.extract({"traceparent": headers["traceparent"]})
        span = self.tracer.start_span(
            ctx.method, context=parent, kind=self._server, start_time=time.time_ns()
        )
        span_context = span.get_span_context()
        if span.is_recording():
            ctx.span = span
            ctx.trace_id = format(span_context.trace_id, "032x")
        elif span_context.is_valid:
            # Not sampled: no span is kept or exported, and no attempt gets one; the
            # upstream still continues the trace (its flags say: not sampled).
            ctx.traceparent = (
                f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
                f"{int(span_context.trace_flags):02x}"
            )

    def finish(self, ctx: RequestContext, status: int, reason: str | None) -> None:
        """The server span's attributes and end (from the audit record, both ways through)."""
        span = ctx.span
        if span is None:
            return
        ctx.span = None
        route = ctx.route
        if route is not None:
            span.update_name(f"{ctx.method} {route.path}")
            span.set_attribute("http.route", route.path)
        span.set_attribute("http.request.method", ctx.method)
        span.set_attribute("url.path", ctx.path)
        span.set_attribute("http.response.status_code", status)
        if ctx.client_ip:
            span.set_attribute("client.address", ctx.client_ip)
        if reason is not None:
            span.set_attribute("gateway.reason", reason)
        usage = ctx.usage
        if usage is not None:
            if usage.prompt_tokens is not None:
                span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
            if usage.completion_tokens is not None:
                span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
        if ctx.model is not None:
            span.set_attribute("gen_ai.request.model", ctx.model)
        if status >= 500:
            span.set_status(self._error)
        span.end()

    def attempt(self, ctx: RequestContext, upstream: str, url: str, method: str) -> Any:
        """A client span for one attempt on an upstream target (None: no server span)."""
        if ctx.span is None:
            return None
        parent = self._trace.set_span_in_context(ctx.span)
        return self.tracer.start_span(
            f"{method} {upstream}",
            context=parent,
            kind=self._client,
            attributes={
                "http.request.method": method,
                "gateway.upstream": upstream,
                "gateway.target": url,
            },
        )

    def traceparent(self, span: Any) -> str | None:
        """The `traceparent` to send with the attempt `span` (its context as the parent)."""
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=self._trace.set_span_in_context(span))
        return carrier.get("traceparent")

    def end_attempt(self, span: Any, status: int | None, failure: str | None) -> None:
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if failure is not None:
            span.set_attribute("error.type", failure)
            span.set_status(self._error)
        span.end()

    def close(self) -> None:
        """Export what is left (at shutdown)."""
        self.provider.shutdown()


TRACING: Tracing | None = None


def start() -> Tracing | None:
    """Set `TRACING` up when the environment asks for traces (once per process)."""
    global TRACING
    if TRACING is None and wanted():
        TRACING = Tracing()
    return TRACING


def stop() -> None:
    global TRACING
    if TRACING is not None:
        TRACING.close()
        TRACING = None
