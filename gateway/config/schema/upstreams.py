"""routes.yaml's upstreams entries: targets, timeouts, balancing, health, retries and TLS."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from gateway.config.schema.fields import config_dataclass, doc

Balance = Literal["round_robin", "least_outstanding"]
UPSTREAM_TIMEOUT = 30.0  # seconds: an upstream's default whole-exchange timeout


@config_dataclass
class UpstreamTarget:
    """upstreams.NAME.targets[]: a base URL (`URL`, or `{url: URL, weight: N}`)."""

    url: str = doc("http(s)://host[:port][/base-path], no query or credentials", kind="URL")
    scheme: str = doc("http or https, from url", key=None)
    host: str = doc("the host of url", key=None)
    port: int = doc("the port of url (80 or 443 when absent)", key=None)
    base_path: str = doc('the path of url without a trailing slash, or ""', key=None)
    weight: int = doc("its share of the upstream's requests", default=1, minimum=1, maximum=1000)

    @property
    def origin(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@config_dataclass
class HealthCheckConfig:
    """upstreams.NAME.health_check: active checks, one GET per target every `interval`.

    A 2xx or 3xx answer within `timeout` is a success. A healthy target turns
    unhealthy after `unhealthy` failures in a row, an unhealthy one healthy
    again after `healthy` successes in a row.
    """

    path: str = doc("path checked, starting with /; appended to the base path", default="/health")
    interval: float = doc("time between rounds of checks", default=5.0, above=0)
    timeout: float = doc("time one check may take", default=2.0, above=0)
    healthy: int = doc("successes in a row that turn a target healthy", default=2, minimum=1)
    unhealthy: int = doc("failures in a row that turn a target unhealthy", default=3, minimum=1)


@config_dataclass
class PassiveConfig:
    """upstreams.NAME.passive: ejection on the outcome of real requests.

    After `failures` connection failures or 5xx answers in a row a target is
    ejected for `backoff`, doubled at each ejection in a row up to
    `max_backoff`; then one half-open probe request decides. Rule:
    backoff <= max_backoff. An upstream with one target is never ejected.
    """

    failures: int = doc("failures or 5xx in a row that eject a target", default=5, minimum=1)
    backoff: float = doc("length of the first ejection", default=10.0, above=0)
    max_backoff: float = doc("the doubling of ejections stops here", default=300.0, above=0)


@config_dataclass
class RetryBudgetConfig:
    """upstreams.NAME.retry_budget: `20%` or {ratio: 20%, min_per_second: 3}.

    Retries may be at most `ratio` of this upstream's requests over the last
    10 seconds; `min_per_second` retries are allowed each second regardless,
    so an upstream with little traffic can still retry.
    """

    ratio: float = doc(
        "largest share of requests that may be retries (20% or 0.2)",
        default=0.2,
        kind="percentage",
        minimum=0,
        maximum=1,
        default_text="20%",
    )
    min_per_second: int = doc("retries allowed each second regardless", default=3, minimum=0)


DEFAULT_PASSIVE = PassiveConfig()
DEFAULT_RETRY_BUDGET = RetryBudgetConfig()


@config_dataclass
class UpstreamTLSConfig:
    """upstreams.NAME.tls: how the gateway checks an https:// upstream and proves itself to it.

    Rule: cert and key come together (a client certificate for mutual TLS);
    every file must exist and load (checked at load).
    """

    ca: Path | None = doc(
        "PEM CA bundle that signs the upstream; absent: the system CAs", default=None
    )
    cert: Path | None = doc("client certificate chain (PEM) for mutual TLS", default=None)
    key: Path | None = doc("its unencrypted PEM private key", default=None)
    verify: bool = doc("false: accept any certificate (logged as a warning)", default=True)


@config_dataclass
class UpstreamConfig:
    """upstreams.NAME: where proxied requests go, and how long they may take."""

    name: str = doc("NAME: letters, digits, _ . -", key=None)
    targets: tuple[UpstreamTarget, ...] = doc(
        "base URLs, each `URL` or `{url: URL, weight: N}`", kind="list of targets"
    )
    timeout: float = doc(
        "whole exchange: connection wait, connect, head and body; then 504",
        default=UPSTREAM_TIMEOUT,
    )
    connect_timeout: float = doc("time to connect; then 502", default=2.0)
    first_byte_timeout: float | None = doc(
        "time until the response head; then 504; absent: only timeout", default=None
    )
    max_connections: int = doc("pooled keep-alive connections per target", default=100, minimum=1)
    max_pending: int = doc(
        "requests waiting for a connection, all targets together; more: 503 upstream_busy",
        default=100,
        minimum=0,
    )
    forward_authorization: bool = doc("pass the client's Authorization header on", default=False)
    pass_host: bool = doc("keep the client's Host header (else the target's)", default=False)
    balance: Balance = doc(
        "how a target is picked: smooth weighted round-robin or fewest in flight",
        default="round_robin",
        choices=get_args(Balance),
    )
    health_check: HealthCheckConfig | None = doc(
        "active checks of each target; absent: none", default=None
    )
    passive: PassiveConfig = doc(
        "ejection of targets that fail real requests", default=DEFAULT_PASSIVE
    )
    retries: int = doc(
        "extra attempts on another target for bodiless idempotent requests that never arrived",
        default=2,
        minimum=0,
        maximum=10,
    )
    retry_budget: RetryBudgetConfig = doc(
        "how many retries the upstream may take: `20%` or {ratio, min_per_second}",
        default=DEFAULT_RETRY_BUDGET,
    )
    tls: UpstreamTLSConfig | None = doc(
        "CA, client certificate and checks for https:// targets; absent: system CAs",
        default=None,
    )
    line: int = doc("line of the entry in routes.yaml, for messages", default=0, key=None)
