"""OpenTelemetry traces through a real gateway to a real upstream, exported over OTLP/HTTP to
a local receiver that decodes them with opentelemetry-proto (README "Traces")."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from gateway.logs import JsonFormatter
from tests.conftest import MakeGateway, MakeUpstream
from tests.identity import bearer, identity_config, login, make_user
from tests.processes import free_port

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
SERVER, CLIENT = 2, 3  # opentelemetry.proto.trace.v1 Span.SpanKind


class Receiver:
    """An OTLP/HTTP traces endpoint: every span it was sent, decoded."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.arrived = asyncio.Event()

    def app(self) -> web.Application:
        async def traces(request: web.Request) -> web.Response:
            export = ExportTraceServiceRequest()
            export.ParseFromString(await request.read())
            for resource in export.resource_spans:
                for scope in resource.scope_spans:
                    self.spans.extend(scope.spans)
            self.arrived.set()
            body = ExportTraceServiceResponse().SerializeToString()
            return web.Response(body=body, content_type="application/x-protobuf")

        app = web.Application()
        app.router.add_post("/v1/traces", traces)
        return app

    async def wait_for(self, count: int) -> list[Any]:
        async with asyncio.timeout(15):
            while len(self.spans) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.spans


def attributes(span: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        value = kv.value
        out[kv.key] = getattr(value, value.WhichOneof("value"))
    return out


@pytest.fixture
async def receiver(upstream: MakeUpstream, monkeypatch: pytest.MonkeyPatch) -> Receiver:
    found = Receiver()
    server = await upstream(found.app())
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.port}")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # ms: export at once
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2")  # s
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gateway-under-test")
    return found


def seen_app(seen: list[dict[str, str]]) -> web.Application:
    async def record(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    return app


async def test_spans_continue_the_clients_trace_and_reach_the_upstream(
    receiver: Receiver, gateway: MakeGateway, upstream: MakeUpstream, policies: Path
) -> None:
    seen: list[dict[str, str]] = []
    up: TestServer = await upstream(seen_app(seen))
    dead = free_port()  # a first target that refuses: the retry goes to the second
    text = identity_config(up.port).replace(
        f'echo: {{targets: ["http://127.0.0.1:{up.port}"]}}',
        f'echo: {{targets: ["http://127.0.0.1:{dead}", "http://127.0.0.1:{up.port}"], retries: 2}}',
    )
    client = await gateway(text)
    await make_user(client, "tom")
    headers = {
        **bearer(await login(client, "tom")),
        "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01",
        "X-Request-Id": "traced-1",
    }
    for _ in range(2):  # round robin: one of the two starts on the dead target
        resp = await client.get("/open/items", headers=headers)
        assert resp.status == 200
    spans = await receiver.wait_for(3)
    ours = [s for s in spans if s.trace_id.hex() == CLIENT_TRACE]
    servers = [s for s in ours if s.kind == SERVER]
    clients = [s for s in ours if s.kind == CLIENT]
    assert len(servers) == 2
    assert len(clients) == 3  # one refused attempt, then two that answered
    for server in servers:
        assert server.parent_span_id.hex() == CLIENT_SPAN  # the client's trace, continued
        assert server.name == "GET /open/**"
        got = attributes(server)
        assert got["http.request.method"] == "GET"
        assert got["http.route"] == "/open/**"
        assert got["url.path"] == "/open/items"
        assert got["http.response.status_code"] == 200
    server_ids = {s.span_id for s in servers}
    assert all(c.parent_span_id in server_ids for c in clients)
    failed = [c for c in clients if attributes(c).get("error.type") == "connect"]
    assert len(failed) == 1
    # Each upstream request names its own attempt's span as its parent.
    answered = {c.span_id.hex() for c in clients if c not in failed}
    assert {h["traceparent"].split("-")[2] for h in seen} == answered
    assert all(h["traceparent"].split("-")[1] == CLIENT_TRACE for h in seen)


async def test_the_trace_id_is_on_the_requests_log_lines(
    receiver: Receiver, gateway: MakeGateway, policies: Path
) -> None:
    client = await gateway(identity_config(free_port()))
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)  # formatted as emitted, as on stderr
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("gateway")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        resp = await client.get(
            "/open/x", headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"}
        )
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert resp.status == 401
    (denied,) = [json.loads(x) for x in lines.getvalue().splitlines() if '"denied"' in x]
    assert denied["trace_id"] == CLIENT_TRACE
    assert denied["request_id"]


def test_no_tracer_or_exporter_is_loaded_without_the_variables(tmp_path: Path) -> None:
    # redis-py imports opentelemetry's API for its own optional metrics when the package is
    # installed; the gateway's tracing (the SDK's tracer, the OTLP exporter) stays unloaded.
    code = (
        "import sys, gateway.server.run, gateway.app, gateway.proxy.forward\n"
        "from gateway import tracing\n"
        "assert tracing.start() is None\n"
        "print(sorted(m for m in sys.modules if m.startswith(\n"
        "    ('opentelemetry.sdk.trace', 'opentelemetry.exporter'))))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


async def test_an_unsampled_request_exports_nothing_and_the_trace_goes_on(
    receiver: Receiver,
    gateway: MakeGateway,
    upstream: MakeUpstream,
    policies: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    seen: list[dict[str, str]] = []
    up: TestServer = await upstream(seen_app(seen))
    client = await gateway(identity_config(up.port))
    await make_user(client, "una")
    headers = {
        **bearer(await login(client, "una")),
        "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-00",
    }
    assert (await client.get("/open/items", headers=headers)).status == 200
    (got,) = seen
    version, trace, parent, flags = got["traceparent"].split("-")
    assert (version, trace, flags) == ("00", CLIENT_TRACE, "00")
    assert parent != CLIENT_SPAN  # the gateway's own (unsampled) span in between
    await client.close()  # the app's cleanup flushes the exporter: nothing was recorded
    assert receiver.spans == []
