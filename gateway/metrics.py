"""Prometheus metrics of one gateway process, in a registry of its own (not the global one).

Request counts and durations are recorded once per request, by the audit
stage. Other stages report what only they know through the methods here:

- `metrics.rate_limited(route)` — the rate-limit stage, once per 429, with the
  route's pattern (`ctx.route.path`): `gateway_rate_limited_total{route}`.
- `metrics.upstream_error(upstream, kind)` — called by the audit stage for a
  proxied request that failed on the upstream's side (kind: the reason code,
  e.g. upstream_unreachable, upstream_timeout, upstream_reset).

`metrics` is `request.app[SERVICES].metrics`. The audit gauges are read from
the writer at scrape time. Labels are route patterns and upstream names from
the config, never raw paths, so the number of series stays bounded.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

# No `*_created` series: the classic text format has no use for them, and they
# double the lines of every scrape.
disable_created_metrics()  # type: ignore[no-untyped-call]

# The classic text exposition format; the Prometheus server reads it as is.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
NO_ROUTE = "unmatched"  # the route label of requests no route matched (404, bad path)
# Seconds: proxied API calls take milliseconds, model calls up to minutes.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_CLASSES = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx")


def status_class(status: int) -> str:
    index = status // 100
    return _CLASSES[index] if 0 <= index < len(_CLASSES) else "other"


class AuditState(Protocol):
    """What the audit gauges read (an `AuditWriter`)."""

    @property
    def depth(self) -> int: ...
    @property
    def spool_bytes(self) -> int: ...
    @property
    def lag_seconds(self) -> float: ...

    dropped: int


class _AuditCollector:
    def __init__(self, audit: AuditState) -> None:
        self._audit = audit

    def collect(self) -> Iterator[Metric]:
        audit = self._audit
        yield GaugeMetricFamily(
            "gateway_audit_queue_depth", "Audit rows waiting in memory", value=audit.depth
        )
        yield GaugeMetricFamily(
            "gateway_audit_spool_bytes",
            "Bytes of audit rows spooled to disk while the database is down",
            value=audit.spool_bytes,
        )
        yield CounterMetricFamily(
            "gateway_audit_dropped",
            "Audit rows lost: queue full, refused by the database, or after shutdown",
            value=audit.dropped,
        )
        yield GaugeMetricFamily(
            "gateway_audit_lag_seconds",
            "Age of the oldest audit row not yet written",
            value=audit.lag_seconds,
        )


class DroppedLines(Protocol):
    @property
    def dropped(self) -> int: ...


class _AccessLogCollector:
    def __init__(self, access: DroppedLines) -> None:
        self._access = access

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "gateway_access_log_dropped",
            "Access log lines dropped because the stream's reader fell too far behind",
            value=self._access.dropped,
        )


class Metrics:
    def __init__(self, audit: AuditState) -> None:
        self.registry = CollectorRegistry()
        self._requests = Counter(
            "gateway_requests",
            "Requests answered, by route pattern and status class",
            ("route", "status_class"),
            registry=self.registry,
        )
        self._duration = Histogram(
            "gateway_request_duration_seconds",
            "Time from a request's arrival to the end of its response, by route pattern",
            ("route",),
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self._upstream_errors = Counter(
            "gateway_upstream_errors",
            "Proxied requests the upstream failed, by upstream and kind",
            ("upstream", "kind"),
            registry=self.registry,
        )
        self._rate_limited = Counter(
            "gateway_rate_limited",
            "Requests refused with 429 by a rate limit, by route pattern",
            ("route",),
            registry=self.registry,
        )
        self.websockets_open = Gauge(
            "gateway_websockets_open",
            "WebSocket connections open through the gateway (proxied after a 101)",
            registry=self.registry,
        )
        self.registry.register(_AuditCollector(audit))
        # Children by label values: one dict lookup per request instead of labels().
        self._request_children: dict[tuple[str, str], Counter] = {}
        self._duration_children: dict[str, Histogram] = {}

    def watch_access_log(self, access: DroppedLines) -> None:
        """Export the access log's dropped lines (one access log per process)."""
        self.registry.register(_AccessLogCollector(access))

    def request(self, route: str, status: int, seconds: float) -> None:
        """One answered request: `route` is the route pattern (or NO_ROUTE)."""
        key = (route, status_class(status))
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self._requests.labels(*key)
        counter.inc()
        histogram = self._duration_children.get(route)
        if histogram is None:
            histogram = self._duration_children[route] = self._duration.labels(route)
        histogram.observe(seconds)

    def upstream_error(self, upstream: str, kind: str) -> None:
        self._upstream_errors.labels(upstream, kind).inc()

    def rate_limited(self, route: str) -> None:
        """One request refused by the rate limit of `route` (the route's pattern)."""
        self._rate_limited.labels(route).inc()

    def render(self) -> bytes:
        """Every metric, in the text format of CONTENT_TYPE."""
        return generate_latest(self.registry)
