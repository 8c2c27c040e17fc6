"""GET /metrics: Prometheus text, to loopback clients and admins only, with the gateway's counters.

The test client is on loopback; a client elsewhere is played the way a real
one arrives behind a proxy: the peer (127.0.0.1) is a trusted proxy and
X-Forwarded-For names the client, which is what the loopback check looks at.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.services import SERVICES
from tests.conftest import MakeGateway
from tests.identity import Client, bearer, identity_config, login, make_user
from tests.processes import free_port

ELSEWHERE = {"X-Forwarded-For": "203.0.113.9"}


@pytest.fixture
async def client(gateway: MakeGateway, policies: Path, database_url: str) -> Client:
    dead = free_port()  # the `echo` upstream of identity_config: nothing listens there
    # one more route (the list is the last key of identity_config): one request an hour
    limited = "  - {path: /limited/**, upstream: echo, auth: none, rate_limit: 1/h}\n"
    text = identity_config(dead) + limited + "server:\n  trusted_proxies: [127.0.0.1/32]\n"
    return await gateway(text, database_url=database_url)


async def scrape(client: Client, headers: dict[str, str] | None = None) -> dict[str, float]:
    """Every sample of /metrics as {'name{label="v",...}': value}."""
    resp = await client.get("/metrics", headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(await resp.text()):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


async def test_loopback_reads_the_counters(client: Client) -> None:
    for _ in range(3):
        assert (await client.get("/healthz")).status == 200
    for _ in range(2):
        assert (await client.get("/no/such/path")).status == 404
    assert (await client.get("/users/me")).status == 401
    samples = await scrape(client)
    assert samples['gateway_requests_total{method="GET",route="/healthz",status_class="2xx"}'] == 3
    assert samples['gateway_requests_total{method="GET",route="unmatched",status_class="4xx"}'] == 2
    assert (
        samples['gateway_requests_total{method="GET",route="/users/me/**",status_class="4xx"}'] == 1
    )
    assert samples['gateway_request_duration_seconds_count{route="/healthz"}'] == 3
    assert samples['gateway_request_duration_seconds_bucket{le="+Inf",route="/healthz"}'] == 3
    assert samples["gateway_audit_spool_bytes"] == 0
    assert samples["gateway_audit_dropped_total"] == 0
    await client.app[SERVICES].audit.flush()
    again = await scrape(client)  # its own row is queued only after it answers
    assert again["gateway_audit_queue_depth"] == 0
    assert again["gateway_audit_lag_seconds"] == 0
    assert (
        again['gateway_requests_total{method="GET",route="/metrics",status_class="2xx"}'] == 1
    )  # the first


async def test_upstream_errors_and_rate_limits_are_counted(client: Client) -> None:
    await make_user(client, "ann")
    headers = bearer(await login(client, "ann"))
    resp = await client.get("/open/anything", headers=headers)
    assert resp.status == 502
    assert (await resp.json())["code"] == "upstream_unreachable"
    assert (await client.get("/limited/x")).status == 502  # passes the limit; nobody answers
    refused = await client.get("/limited/x")
    assert refused.status == 429
    assert (await refused.json())["code"] == "rate_limited"
    samples = await scrape(client)
    key = 'gateway_upstream_errors_total{kind="upstream_unreachable",upstream="echo"}'
    assert samples[key] == 2
    assert samples['gateway_rate_limited_total{route="/limited/**"}'] == 1
    assert 'gateway_rate_limited_total{route="/open/**"}' not in samples


async def test_the_audit_gauges_follow_the_writer(gateway: MakeGateway) -> None:
    client = await gateway("routes: []\naudit: {flush_interval: 1h}\n")  # written on flush only
    before = time.time()
    for _ in range(3):
        await client.get("/healthz")
    samples = await scrape(client)
    assert samples["gateway_audit_queue_depth"] == 3
    assert 0 < samples["gateway_audit_lag_seconds"] <= time.time() - before  # the first row's
    await client.app[SERVICES].audit.flush()
    samples = await scrape(client)  # its own row is queued only after it answers
    assert samples["gateway_audit_queue_depth"] == 0
    assert samples["gateway_audit_lag_seconds"] == 0


@pytest.mark.parametrize(
    "accept",
    [
        "text/plain",
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    ],
)
async def test_prometheus_accept_headers_are_not_406(client: Client, accept: str) -> None:
    await scrape(client, {"Accept": accept})
    resp = await client.get("/healthz", headers={"Accept": "text/plain"})
    assert resp.status == 406  # the JSON endpoints still judge Accept


async def test_off_loopback_only_an_admin_token_reads_metrics(client: Client) -> None:
    resp = await client.get("/metrics", headers=ELSEWHERE)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="gateway"'
    resp = await client.get("/metrics", headers={**ELSEWHERE, **bearer("not-a-token")})
    assert resp.status == 401

    for role in ("user", "analyst"):
        await make_user(client, f"{role}1", role)
        token = bearer(await login(client, f"{role}1"))
        resp = await client.get("/metrics", headers={**ELSEWHERE, **token})
        assert resp.status == 403, role
        assert (await resp.json())["code"] == "role_forbidden"

    await make_user(client, "boss", "admin")
    samples = await scrape(client, {**ELSEWHERE, **bearer(await login(client, "boss"))})
    assert "gateway_audit_queue_depth" in samples


async def test_metrics_is_built_in_without_any_route(gateway: MakeGateway) -> None:
    client = await gateway("routes: []\n")
    samples = await scrape(client)
    assert "gateway_audit_dropped_total" in samples
