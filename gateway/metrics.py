"""Prometheus metrics of one gateway process, in a registry of its own (not the global one).

Request counts and durations are recorded once per request, by the audit
stage. Other stages report what only they know through the methods here:

- `metrics.rate_limited(route)` — the rate-limit stage, once per 429, with the
  route's pattern (`ctx.route.path`): `gateway_rate_limited_total{route}`.
- `metrics.upstream_error(upstream, kind)` — called by the audit stage for a
  proxied request that failed on the upstream's side (kind: the reason code,
  e.g. upstream_unreachable, upstream_timeout, upstream_reset).

`metrics` is `request.app[SERVICES].metrics`. The audit record
(gateway/audit/record.py) also reports each request's upstream attempts (the
proxy notes them in the request's context), rejections and model tokens.
The audit gauges, open connections, the config version and reloads and the
certificate's expiry are read at scrape time. Labels are route patterns and upstream names from
the config, never raw paths, so the number of series stays bounded.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from gateway import __version__

# No `*_created` series: the classic text format has no use for them, and they
# double the lines of every scrape.
disable_created_metrics()  # type: ignore[no-untyped-call]

# The classic text exposition format; the Prometheus server reads it as is.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
NO_ROUTE = "unmatched"  # the route label of requests no route matched (404, bad path)
# Seconds: proxied API calls take milliseconds, model calls up to minutes.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_CLASSES = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx")
# The method label's values: any other method (a client may send any token) is "other",
# so a client cannot grow the number of series.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# gateway_upstream_attempt_errors_total's kinds
ATTEMPT_KINDS = ("connect", "reset", "timeout", "invalid", "status_5xx")


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


class _Read:
    def __init__(self, name: str, documentation: str, value: Callable[[], float]) -> None:
        self._name, self._doc, self._value = name, documentation, value

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self._name, self._doc, value=self._value())


class _Reloads:
    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "gateway_config_reloads", "Config reloads, by result (ok, failed)", labels=["result"]
        )
        for result, count in sorted(self._counts().items()):
            family.add_metric([result], count)
        yield family


class _CertificateExpiry:
    """Reads the certificate's notAfter once per file change (path, mtime)."""

    def __init__(self, path: Callable[[], Path | None]) -> None:
        self._path = path
        self._seen: tuple[Path, int, float] | None = None

    def collect(self) -> Iterator[Metric]:
        path = self._path()
        if path is None:
            return
        try:
            mtime = path.stat().st_mtime_ns
            if self._seen is None or self._seen[:2] != (path, mtime):
                from cryptography import x509

                cert = x509.load_pem_x509_certificate(path.read_bytes())
                self._seen = (path, mtime, cert.not_valid_after_utc.timestamp())
        except (OSError, ValueError):
            return  # unreadable now: the certificate watcher logs it
        yield GaugeMetricFamily(
            "gateway_tls_cert_expiry_seconds",
            "Seconds until the listener's certificate (server.tls.cert) expires",
            value=self._seen[2] - time.time(),
        )


class Metrics:
    def __init__(self, audit: AuditState) -> None:
        self.registry = CollectorRegistry()
        self._requests = Counter(
            "gateway_requests",
            "Requests answered, by route pattern, method and status class",
            ("route", "method", "status_class"),
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
        self._attempt_duration = Histogram(
            "gateway_upstream_attempt_duration_seconds",
            "Time from sending one attempt to an upstream to its response head (or failure)",
            ("upstream",),
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self._attempt_errors = Counter(
            "gateway_upstream_attempt_errors",
            "Upstream attempts that failed, by upstream and kind "
            "(connect, reset, timeout, invalid, status_5xx)",
            ("upstream", "kind"),
            registry=self.registry,
        )
        self._rejections = Counter(
            "gateway_rejections",
            "Requests refused or failed, by reason code (the problem's code)",
            ("reason",),
            registry=self.registry,
        )
        self._tokens = Counter(
            "gateway_model_tokens",
            "Tokens a model reported in its usage, by model and kind (prompt, completion)",
            ("model", "kind"),
            registry=self.registry,
        )
        build = Gauge(
            "gateway_build_info",
            "Always 1: the gateway's version and the Python it runs on",
            ("version", "python"),
            registry=self.registry,
        )
        build.labels(__version__, platform.python_version()).set(1)
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, _open_fds, …
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
        self._request_children: dict[tuple[str, str, str], Counter] = {}
        self._duration_children: dict[str, Histogram] = {}

    def watch_access_log(self, access: DroppedLines) -> None:
        """Export the access log's dropped lines (one access log per process)."""
        self.registry.register(_AccessLogCollector(access))

    def request(
        self, route: str, method: str, status: int, seconds: float, reason: str | None = None
    ) -> None:
        """One answered request: `route` is the route pattern (or NO_ROUTE); `reason`, the
        code of a refusal or failure."""
        key = (route, method if method in METHODS else "other", status_class(status))
        if reason is not None and status >= 400 and status != 499:  # 499: the client left
            self._rejections.labels(reason).inc()
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self._requests.labels(*key)
        counter.inc()
        histogram = self._duration_children.get(route)
        if histogram is None:
            histogram = self._duration_children[route] = self._duration.labels(route)
        histogram.observe(seconds)

    def attempt(self, upstream: str, seconds: float | None, kind: str | None) -> None:
        """One attempt on an upstream (`seconds` to its head; None: a failure after it);
        `kind` one of ATTEMPT_KINDS when it failed."""
        if seconds is not None:
            self._attempt_duration.labels(upstream).observe(seconds)
        if kind is not None:
            self._attempt_errors.labels(upstream, kind).inc()

    def tokens(self, model: str, prompt: int | None, completion: int | None) -> None:
        """A model call's reported usage."""
        if prompt:
            self._tokens.labels(model, "prompt").inc(prompt)
        if completion:
            self._tokens.labels(model, "completion").inc(completion)

    def watch(self, name: str, documentation: str, value: Callable[[], float]) -> None:
        """A gauge read at scrape time (open connections, the config version, …)."""
        self.registry.register(_Read(name, documentation, value))

    def watch_reloads(self, counts: Callable[[], dict[str, int]]) -> None:
        """gateway_config_reloads_total{result}, from the reloader's counts."""
        self.registry.register(_Reloads(counts))

    def watch_certificate(self, path: Callable[[], Path | None]) -> None:
        """gateway_tls_cert_expiry_seconds: until server.tls's certificate expires."""
        self.registry.register(_CertificateExpiry(path))

    def upstream_error(self, upstream: str, kind: str) -> None:
        self._upstream_errors.labels(upstream, kind).inc()

    def rate_limited(self, route: str) -> None:
        """One request refused by the rate limit of `route` (the route's pattern)."""
        self._rate_limited.labels(route).inc()

    def render(self) -> bytes:
        """Every metric, in the text format of CONTENT_TYPE."""
        return generate_latest(self.registry)
