"""Helpers for identity tests: a routes.yaml with every local handler, users, tokens."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.services import SERVICES
from gateway.state.identity import UserState
from gateway.store.users import UserRecord

Client = TestClient[web.Request, web.Application]

PASSWORD = "correct horse battery staple"

# argon2 at its cheapest: the tests exercise the logic, not the cost.
CHEAP_HASHING = "password_hashing: {time_cost: 1, memory_cost: 64KiB, parallelism: 1}"


def identity_config(upstream_port: int | None = None, auth_extra: str = "") -> str:
    """routes.yaml text routing every local handler, plus proxied routes when a port is given."""
    upstream = (
        f"""
upstreams:
  echo: {{targets: ["http://127.0.0.1:{upstream_port}"]}}
"""
        if upstream_port
        else ""
    )
    proxied = (
        """
  - {path: /analytics/**, upstream: echo, strip_prefix: /analytics, roles: [analyst]}
  - {path: /open/**, upstream: echo, strip_prefix: /open}
  - {path: /public/**, upstream: echo, strip_prefix: /public, auth: none}
"""
        if upstream_port
        else ""
    )
    return f"""
auth:
  issuer: gateway
  access_ttl: 15m
  refresh_ttl: 14d
  allow_registration: true
  {CHEAP_HASHING}
  {auth_extra}
policies: policies/
{upstream}
routes:
  - {{path: /auth/register, methods: [POST], handler: auth.register, auth: none}}
  - {{path: /auth/login, methods: [POST], handler: auth.login, auth: none}}
  - {{path: /auth/refresh, methods: [POST], handler: auth.refresh, auth: none}}
  - {{path: /auth/logout, methods: [POST], handler: auth.logout}}
  - {{path: /users/me/**, handler: users}}
  - {{path: /admin/**, handler: admin, roles: [admin]}}
{proxied}
"""


async def make_user(
    client: Client, username: str, role: str = "user", password: str = PASSWORD, active: bool = True
) -> UserRecord:
    """Create a user straight through the gateway's own store (as `gateway users create` does)."""
    services = client.app[SERVICES]
    password_hash = await asyncio.to_thread(services.passwords.hash, password)
    user = await services.users.create(username, password_hash, role, active=active)
    await services.identity.set_user(user.id, UserState.of(user))
    return user


async def login(client: Client, username: str, password: str = PASSWORD) -> dict[str, Any]:
    resp = await client.post("/auth/login", json={"username": username, "password": password})
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


def bearer(tokens: dict[str, Any] | str) -> dict[str, str]:
    token = tokens if isinstance(tokens, str) else tokens["access_token"]
    return {"Authorization": f"Bearer {token}"}
