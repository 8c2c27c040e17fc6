"""Every family /metrics promises (README "Audit log, reports and metrics"), read with
Prometheus' own text parser after real traffic through a real gateway: a model that
reports usage, an upstream that is down, a token quota, a reload, a TLS certificate."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from gateway import __version__
from gateway.reload import RELOADER
from gateway.security import certs
from gateway.services import SERVICES
from tests.conftest import MakeGateway, MakeUpstream
from tests.identity import Client, bearer, identity_config, login, make_user
from tests.processes import free_port

CHAT = "/models/chat/v1/chat/completions"


def model_app() -> web.Application:
    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        usage = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
        answer = {"model": "chat", "choices": [{"message": {"content": "hi"}}], "usage": usage}
        return web.json_response(answer, status=500 if body.get("fail") else 200)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def families(client: Client) -> dict[str, list[tuple[dict[str, str], float]]]:
    resp = await client.get("/metrics")
    assert resp.status == 200
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(await resp.text()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def value(found: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    matching = [v for got, v in found.get(name, []) if labels.items() <= got.items()]
    assert matching, f"{name} {labels} not in /metrics"
    return sum(matching)


async def test_every_family_after_real_traffic(
    gateway: MakeGateway, upstream: MakeUpstream, policies: Path, tmp_path: Path
) -> None:
    model: TestServer = await upstream(model_app())
    made = certs.dev_certs(tmp_path / "certs")
    dead = free_port()  # identity_config's `echo` upstream: nothing listens there
    text = identity_config(dead) + (
        "models:\n"
        f'  chat: {{url: "http://127.0.0.1:{model.port}", usage: openai, roles: [user],'
        " token_limit: 13/day}\n"
        f"server:\n  tls: {{cert: {made.server_cert}, key: {made.server_key}}}\n"
    )
    client = await gateway(text)
    await make_user(client, "mia")
    token = bearer(await login(client, "mia"))
    assert (await client.post(CHAT, json={"messages": []}, headers=token)).status == 200
    assert (await client.post(CHAT, json={"fail": 1}, headers=token)).status == 500
    quota = await client.post(CHAT, json={"messages": []}, headers=token)
    assert quota.status == 429
    assert (await quota.json())["code"] == "token_quota"
    assert (await client.get("/open/x", headers=token)).status == 502  # connect refused
    assert (await client.get("/open/x")).status == 401
    assert await client.app[RELOADER].reload("test")

    await client.app[SERVICES].audit.flush()
    found = await families(client)  # its own row is queued only after it answers
    assert value(found, "process_cpu_seconds_total") > 0
    assert value(found, "process_open_fds") > 0
    assert value(found, "gateway_build_info", version=__version__) == 1
    assert value(found, "gateway_requests_total", route="/models/chat/**", method="POST") == 3
    assert value(found, "gateway_requests_total", route="/open/**", method="GET") == 2
    assert value(found, "gateway_upstream_attempt_duration_seconds_count", upstream="chat") == 2
    errors = "gateway_upstream_attempt_errors_total"
    assert value(found, errors, upstream="chat", kind="status_5xx") == 1
    assert value(found, errors, upstream="echo", kind="connect") == 1
    assert value(found, "gateway_rejections_total", reason="token_quota") == 1
    assert value(found, "gateway_rejections_total", reason="missing_token") == 1
    assert value(found, "gateway_model_tokens_total", model="chat", kind="prompt") == 14
    assert value(found, "gateway_model_tokens_total", model="chat", kind="completion") == 10
    assert value(found, "gateway_config_reloads_total", result="ok") == 1
    assert value(found, "gateway_config_version") == 2
    # the dev certificate lives a year: its expiry is months away
    assert 30 * 86400 < value(found, "gateway_tls_cert_expiry_seconds") < 400 * 86400
    assert value(found, "gateway_audit_queue_depth") == 0
    assert value(found, "gateway_audit_lag_seconds") == 0
    assert value(found, "gateway_websockets_open") == 0
    # Bounded labels: route patterns and upstream names, never a raw path or a user.
    for samples in found.values():
        for labels, _ in samples:
            assert "/open/x" not in labels.values()
            assert "mia" not in labels.values()
