"""Tokens of outside OpenID Connect providers (auth.issuers), end to end: a real JWKS
server on loopback serving RSA and EC keys made with `cryptography`, tokens signed with
them, and the real gateway in front of an upstream that echoes the headers it got."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from sqlalchemy import select

from gateway.config import load_config
from gateway.pipeline.authentication import still_valid
from gateway.pipeline.verdict import Principal
from gateway.runtime import Runtime
from gateway.security.jwks import REFETCH_INTERVAL, JwksCache
from gateway.services import SERVICES
from models import AuditLog
from tests.conftest import MakeGateway, MakeUpstream, WriteConfig
from tests.identity import Client, bearer, identity_config, login, make_user

ISSUER = "https://keycloak.example/realms/acme"
AUDIENCE = "gateway-api"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_KEY_2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def jwk(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    """The public JWK of `key`, as a provider publishes it."""
    if isinstance(key, rsa.RSAPrivateKey):
        data = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        data.update(alg="RS256")
    else:
        data = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        data.update(alg="ES256")
    data.pop("key_ops", None)
    data.update(kid=kid, use="sig")
    return data


@dataclass
class Provider:
    """The JWKS endpoint of a pretend identity provider: what it serves, and how often it
    was asked."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    fetches: int = 0
    down: bool = False  # answer 503
    server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}/realms/acme/protocol/openid-connect/certs"

    def app(self) -> web.Application:
        async def certs(request: web.Request) -> web.Response:
            self.fetches += 1
            if self.down:
                return web.Response(status=503)
            return web.json_response({"keys": self.keys})

        app = web.Application()
        app.router.add_get("/realms/acme/protocol/openid-connect/certs", certs)
        return app


@pytest.fixture
async def provider(upstream: MakeUpstream) -> Provider:
    found = Provider(keys=[jwk(RSA_KEY, "rsa-1"), jwk(EC_KEY, "ec-1")])
    found.server = await upstream(found.app())
    return found


def sign(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = RSA_KEY,
    kid: str | None = "rsa-1",
    alg: str | None = None,
    **claims: Any,
) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "abc123",
        "iat": now,
        "exp": now + 300,
        "jti": "j-1",
        "realm_access": {"roles": ["offline_access", "gw-analyst"]},
    }
    payload.update(claims)
    payload = {name: value for name, value in payload.items() if value is not None}
    algorithm = alg or ("RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256")
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(payload, key, algorithm=algorithm, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict[str, Any], payload: dict[str, Any], secret: bytes | None) -> str:
    """A token PyJWT would refuse to make: `alg: none`, or HS256 keyed with a public key."""
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    if secret is None:
        return head + "."
    return head + "." + b64(hmac.new(secret, head.encode(), hashlib.sha256).digest())


def issuer_entry(
    url: str,
    extra: str = "",
    role_claim: str = "realm_access.roles",
    roles: str = "{gw-admin: admin, gw-analyst: analyst}",
) -> str:
    """auth.issuers in flow style, for identity_config's auth_extra (one line)."""
    return (
        f"issuers: [{{issuer: '{ISSUER}', jwks_url: '{url}', audience: {AUDIENCE}, "
        f"role_claim: {role_claim}, roles: {roles}{extra}}}]"
    )


@pytest.fixture
async def client(
    gateway: MakeGateway, policies: Path, echo: TestServer, provider: Provider
) -> Client:
    return await gateway(identity_config(echo.port, auth_extra=issuer_entry(provider.url)))


async def echoed(client: Client, path: str, token: str) -> dict[str, str]:
    response = await client.get(path, headers=bearer(token))
    assert response.status == 200, await response.text()
    headers: dict[str, str] = (await response.json())["headers"]
    return headers


async def refused(client: Client, token: str, path: str = "/open/x") -> tuple[int, str, str]:
    """Status, reason code and WWW-Authenticate of a refused request."""
    response = await client.get(path, headers=bearer(token))
    body = await response.json()
    return response.status, body["code"], response.headers.get("WWW-Authenticate", "")


async def audit_rows(client: Client) -> list[dict[str, Any]]:
    services = client.app[SERVICES]
    await services.audit.flush()
    async with services.engine.connect() as connection:
        result = await connection.execute(select(AuditLog).order_by(AuditLog.id))
        return [dict(row) for row in result.mappings()]


# --- accepted ---------------------------------------------------------------------


async def test_rsa_and_ec_tokens_pass_with_sub_and_the_mapped_roles_upstream(
    client: Client, provider: Provider
) -> None:
    for token in (sign(RSA_KEY, "rsa-1"), sign(EC_KEY, "ec-1")):
        headers = await echoed(client, "/analytics/report", token)
        assert headers["X-User-Id"] == "abc123"
        # the mapped role, then every role it inherits (policies/: analyst inherits user)
        assert headers["X-User-Roles"] == "analyst,user"
    assert provider.fetches == 1  # at start only: both kids were cached


async def test_the_audit_row_names_sub_at_the_issuers_host(client: Client) -> None:
    await echoed(client, "/open/x", sign())
    row = next(r for r in await audit_rows(client) if r["path"] == "/open/x")
    assert (row["username"], row["user_id"], row["role"]) == (
        "abc123@keycloak.example",
        "abc123",
        "analyst",
    )


async def test_own_tokens_still_work_with_issuers_configured(client: Client) -> None:
    user = await make_user(client, "ana", "analyst")
    token = (await login(client, "ana"))["access_token"]
    headers = await echoed(client, "/analytics/x", token)
    assert (headers["X-User-Id"], headers["X-User-Roles"]) == (user.id, "analyst,user")


# --- refused: RFC 8725 and the registered claims ------------------------------------


@pytest.mark.parametrize(
    ("claims", "code"),
    [
        ({"aud": "someone-else"}, "token_wrong_audience"),
        ({"exp": int(time.time()) - 3600}, "token_expired"),
        ({"nbf": int(time.time()) + 3600}, "token_not_yet_valid"),
        ({"sub": None}, "token_missing_claim"),
    ],
    ids=["wrong-aud", "expired", "nbf-in-future", "no-sub"],
)
async def test_bad_claims_are_401_with_the_bearer_challenge(
    client: Client, claims: dict[str, Any], code: str
) -> None:
    status, found, challenge = await refused(client, sign(**claims))
    assert (status, found) == (401, code)
    assert challenge.startswith('Bearer realm="gateway", error="invalid_token", error_description=')


async def test_an_unlisted_iss_is_verified_as_our_own_token_and_fails(client: Client) -> None:
    # The issuer with a trailing slash is not listed: our own verifier judges it.
    status, code, challenge = await refused(client, sign(iss=ISSUER + "/"))
    assert status == 401
    assert code in {"token_alg_not_allowed", "token_wrong_issuer"}
    assert 'error="invalid_token"' in challenge


async def test_alg_not_in_the_entrys_list_is_refused(
    gateway: MakeGateway, policies: Path, echo: TestServer, provider: Provider
) -> None:
    client = await gateway(
        identity_config(echo.port, auth_extra=issuer_entry(provider.url, ", algorithms: [RS256]"))
    )
    assert (await refused(client, sign(EC_KEY, "ec-1")))[:2] == (401, "token_alg_not_allowed")
    await echoed(client, "/open/x", sign(RSA_KEY, "rsa-1"))


async def test_alg_that_does_not_suit_the_keys_type_is_refused(client: Client) -> None:
    # An ES256 token naming the RSA key's kid: the JWK's kty decides, not the header.
    status, code, _ = await refused(client, sign(EC_KEY, "rsa-1"))
    assert (status, code) == (401, "token_alg_not_allowed")


async def test_alg_none_and_hs256_keyed_with_the_public_key_are_refused(client: Client) -> None:
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": now + 300}
    public_pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for token in (
        forged({"alg": "none", "kid": "rsa-1"}, payload, None),
        forged({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}, payload, public_pem),
    ):
        status, code, _ = await refused(client, token)
        assert (status, code) == (401, "token_alg_not_allowed")


async def test_a_signature_by_another_key_is_refused(client: Client) -> None:
    status, code, _ = await refused(client, sign(RSA_KEY_2, "rsa-1"))
    assert (status, code) == (401, "token_bad_signature")


# --- the JWKS: rotation, the refetch rule, outages ------------------------------------


async def test_an_unknown_kid_fetches_once_and_a_second_within_30s_does_not(
    client: Client, provider: Provider
) -> None:
    assert provider.fetches == 1  # the fetch at start
    provider.keys.append(jwk(RSA_KEY_2, "rsa-2"))  # the provider rotates in a new key
    await echoed(client, "/open/x", sign(RSA_KEY_2, "rsa-2"))
    assert provider.fetches == 2
    await echoed(client, "/open/x", sign(RSA_KEY_2, "rsa-2"))  # cached now
    assert provider.fetches == 2
    provider.keys.append(jwk(EC_KEY, "ec-2"))
    # Within 30 s of the last refetch another unknown kid does not fetch again.
    assert (await refused(client, sign(EC_KEY, "ec-2")))[:2] == (401, "token_unknown_kid")
    assert (await refused(client, sign(EC_KEY, "made-up")))[:2] == (401, "token_unknown_kid")
    assert provider.fetches == 2


async def test_cached_keys_keep_working_while_the_jwks_url_is_down(
    client: Client, provider: Provider
) -> None:
    assert provider.server is not None
    await provider.server.close()
    await echoed(client, "/open/x", sign(RSA_KEY, "rsa-1"))
    await echoed(client, "/open/x", sign(EC_KEY, "ec-1"))
    # a new kid cannot be fetched: 401, and the known keys still work after the attempt
    assert (await refused(client, sign(RSA_KEY_2, "rsa-2")))[:2] == (401, "token_unknown_kid")
    await echoed(client, "/open/x", sign(RSA_KEY, "rsa-1"))


async def test_a_provider_down_at_start_does_not_stop_the_gateway(
    gateway: MakeGateway, policies: Path, echo: TestServer, provider: Provider
) -> None:
    provider.down = True
    client = await gateway(identity_config(echo.port, auth_extra=issuer_entry(provider.url)))
    assert (await client.get("/healthz")).status == 200
    assert provider.fetches == 1
    assert (await refused(client, sign()))[:2] == (401, "token_unknown_kid")
    assert provider.fetches == 2  # the first token fetched at once (start does not count)


async def test_keys_arrive_with_the_first_token_after_a_failed_start(
    gateway: MakeGateway, policies: Path, echo: TestServer, provider: Provider
) -> None:
    provider.down = True
    client = await gateway(identity_config(echo.port, auth_extra=issuer_entry(provider.url)))
    provider.down = False
    await echoed(client, "/open/x", sign())
    assert provider.fetches == 2


async def test_refetches_are_spaced_by_the_interval_per_cache(provider: Provider) -> None:
    """The 30 s rule with an injected clock, against the real JWKS server."""
    now = [1000.0]
    cache = JwksCache(provider.url, clock=lambda: now[0])
    assert await cache.load()
    assert provider.fetches == 1
    assert await cache.key("rsa-1") is not None
    assert await cache.key("nope") is None  # unknown: refetched (the start does not count)
    assert provider.fetches == 2
    now[0] += REFETCH_INTERVAL - 1
    assert await cache.key("nope") is None
    assert provider.fetches == 2
    provider.keys.append(jwk(RSA_KEY_2, "rsa-2"))
    now[0] += 1
    # Concurrent requests for unknown kids share one fetch.
    found = await asyncio.gather(cache.key("rsa-2"), cache.key("rsa-2"), cache.key("other"))
    assert [key is not None for key in found] == [True, True, False]
    assert provider.fetches == 3


async def test_a_reload_keeps_the_cache_of_an_unchanged_jwks_url(
    write_config: WriteConfig, policies: Path, provider: Provider
) -> None:
    path = write_config(identity_config(auth_extra=issuer_entry(provider.url)))
    first = Runtime.build(load_config(path))
    await first.load_issuer_keys()
    again = Runtime.build(load_config(path), 2, reuse_jwks=first.jwks_caches())
    await again.load_issuer_keys()
    assert again.jwks_caches() == first.jwks_caches()
    assert provider.fetches == 1
    moved = provider.url.replace("127.0.0.1", "localhost")
    path = write_config(identity_config(auth_extra=issuer_entry(moved)))
    changed = Runtime.build(load_config(path), 3, reuse_jwks=again.jwks_caches())
    await changed.load_issuer_keys()
    assert changed.jwks_caches()[moved] is not first.jwks_caches()[provider.url]
    assert provider.fetches == 2


# --- roles ------------------------------------------------------------------------


async def test_role_claim_string_list_and_dotted_name_forms(
    gateway: MakeGateway, policies: Path, echo: TestServer, provider: Provider
) -> None:
    entry = issuer_entry(
        provider.url,
        role_claim="[group, resource_access.gateway-api.roles, 'https://acme.example/roles']",
        roles="{gw-analyst: analyst, gw-admin: admin, ops: admin}",
    )
    client = await gateway(identity_config(echo.port, auth_extra=entry))
    by_string = sign(group="gw-admin", realm_access=None)
    assert (await echoed(client, "/open/x", by_string))["X-User-Roles"] == "admin,analyst,user"
    by_list = sign(resource_access={"gateway-api": {"roles": ["x", "gw-analyst"]}})
    assert (await echoed(client, "/open/x", by_list))["X-User-Roles"] == "analyst,user"
    by_dotted_name = sign(**{"https://acme.example/roles": ["ops"]})
    assert (await echoed(client, "/open/x", by_dotted_name))["X-User-Roles"] == (
        "admin,analyst,user"
    )
    # Several map: the first in the `roles` map's order wins (gw-analyst before gw-admin).
    both = sign(group="gw-admin", resource_access={"gateway-api": {"roles": ["gw-analyst"]}})
    assert (await echoed(client, "/open/x", both))["X-User-Roles"] == "analyst,user"


async def test_no_mapped_role_is_403_role_not_mapped(client: Client) -> None:
    token = sign(realm_access={"roles": ["offline_access"]})
    status, code, _ = await refused(client, token)
    assert (status, code) == (403, "role_not_mapped")


async def test_default_role_applies_when_no_role_maps(
    gateway: MakeGateway, policies: Path, echo: TestServer, provider: Provider
) -> None:
    client = await gateway(
        identity_config(echo.port, auth_extra=issuer_entry(provider.url, ", default_role: user"))
    )
    token = sign(realm_access=None)
    assert (await echoed(client, "/open/x", token))["X-User-Roles"] == "user"
    # the route's roles still decide: user does not pass analyst's route
    assert (await refused(client, token, "/analytics/x"))[:2] == (403, "role_forbidden")


# --- what is ours and what is theirs ---------------------------------------------------


async def test_outside_tokens_skip_our_users_and_revocations(client: Client) -> None:
    # No such user exists in our table, and logout cannot end a session that is not ours.
    token = sign(sub="not-a-user-of-ours")
    await echoed(client, "/open/x", token)
    response = await client.post("/auth/logout", headers=bearer(token))
    assert (response.status, (await response.json())["code"]) == (400, "outside_token")
    await echoed(client, "/open/x", token)


def test_still_valid_is_the_tokens_exp() -> None:
    caller = Principal("abc123", "abc123@keycloak.example", "user", "", 1000.0, ISSUER)
    assert still_valid(caller, 999.9)
    assert not still_valid(caller, 1000.0)


# --- explain ------------------------------------------------------------------------


async def test_explain_names_the_issuer_that_verified_the_token(client: Client) -> None:
    await make_user(client, "root", "admin")
    root = bearer(await login(client, "root"))
    for token, said in (
        (sign(), f"verified by outside issuer {ISSUER}"),
        ((await login(client, "root"))["access_token"], "verified as the gateway's own token"),
    ):
        response = await client.post(
            "/admin/explain",
            json={"method": "GET", "path": "/open/x", "token": token},
            headers=root,
        )
        result = await response.json()
        step = next(s for s in result["steps"] if s["stage"] == "authentication")
        assert step["outcome"] == "pass", step
        assert said in step["detail"], step
    response = await client.post(
        "/admin/explain",
        json={"method": "GET", "path": "/open/x", "token": sign(aud="x")},
        headers=root,
    )
    assert (await response.json())["code"] == "token_wrong_audience"


# --- an open WebSocket -----------------------------------------------------------------


async def test_an_outside_callers_websocket_is_closed_when_its_token_expires(
    gateway: MakeGateway, policies: Path, upstream: MakeUpstream, provider: Provider
) -> None:
    """Judged again every 2 s by its exp and mapped role alone (no user of ours exists)."""
    from tests.proxy.test_websocket import Upstream
    from tests.proxy.test_websocket import config as ws_config

    up = Upstream()
    server = await upstream(up.app())
    assert server.port is not None
    client = await gateway(ws_config(server.port, auth=issuer_entry(provider.url)))
    token = sign(exp=int(time.time()) + 3)
    async with client.ws_connect("/staff/ws", headers=bearer(token)) as sock:
        await sock.send_str("hello")
        assert (await sock.receive()).data == "hello"
        async with asyncio.timeout(10):
            close = await sock.receive()
        # token_expired, not user_inactive: no user of ours was looked up
        assert (close.type, close.data, close.extra) == (WSMsgType.CLOSE, 1008, "token_expired")
    assert up.handshakes[0]["headers"]["X-User-Roles"] == "analyst,user"


async def test_the_explain_command_fetches_the_keys_and_names_the_issuer(
    gateway: MakeGateway,
    policies: Path,
    echo: TestServer,
    provider: Provider,
    write_config: WriteConfig,
) -> None:
    text = identity_config(echo.port, auth_extra=issuer_entry(provider.url))
    await gateway(text)  # migrates gateway.db beside routes.yaml, which the command opens
    config = write_config(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["GATEWAY_JWT_SECRET"] = os.environ["GATEWAY_JWT_SECRET"]
    # Not subprocess.run: the JWKS server answers on this test's event loop.
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "gateway", "explain", "GET", "/analytics/x"),
        *("--token", sign(), "--config", str(config)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    assert f"verified by outside issuer {ISSUER}" in out.decode()
    assert "user 'abc123@keycloak.example', mapped to role 'analyst'" in out.decode()
