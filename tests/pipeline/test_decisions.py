"""The stage decisions on their own: plain values in, Pass or Deny out, no server built."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.config.schema.top import Config
from gateway.pipeline import authentication, policy, rate_limit
from gateway.pipeline.authentication import Authenticator, bearer_token, judge_account, verify
from gateway.pipeline.explain import explain
from gateway.pipeline.route import find_route, normalise
from gateway.pipeline.verdict import PASS, Deny, Pass, PlainView, Principal
from gateway.routing import RouteMatch
from gateway.runtime import Runtime
from gateway.security.tokens import Claims
from gateway.state.gcra import Decision
from gateway.state.identity import LocalIdentity, UserState
from gateway.state.limiter import LocalLimiter
from gateway.state.stores import Stores

ROOT = Path(__file__).resolve().parents[2]
ROUTES = """
server: {listen: 127.0.0.1:8080}
auth: {issuer: gateway, algorithm: HS256}
policies: policies/
upstreams:
  echo: {targets: ["http://127.0.0.1:9"]}
routes:
  - path: /analytics/**
    upstream: echo
    roles: [analyst]
    rate_limit: {limit: 2, per: 1m}
  - path: /by-header/**
    upstream: echo
    methods: [GET]
    rate_limit: {limit: 5, per: 1m, key: "header:X-Tenant"}
"""


@pytest.fixture
def config(tmp_path: Path) -> Config:
    (tmp_path / "routes.yaml").write_text(ROUTES)
    (tmp_path / "policies").symlink_to(ROOT / "policies")
    return load_config(tmp_path / "routes.yaml")


@pytest.fixture
async def runtime(config: Config) -> AsyncIterator[Runtime]:
    built = Runtime.build(config)
    yield built
    await built.close()


def view(path: str = "/analytics/x", user: Principal | None = None, **headers: str) -> PlainView:
    return PlainView(
        "GET", path, {k.replace("_", "-"): v for k, v in headers.items()}, "10.0.0.7", user
    )


def caller(role: str) -> Principal:
    return Principal("u-1", "una", role, "jti-1", time.time() + 60)


# route


def test_a_path_that_normalises_badly_is_bad_path() -> None:
    denied = normalise("/a/..;/b")
    assert isinstance(denied, Deny)
    assert (denied.status, denied.code) == (400, "bad_path")
    assert normalise("/a/./b//c") == "/a/b/c"


async def test_routes_are_found_or_refused_with_404_and_405(runtime: Runtime) -> None:
    found = find_route(runtime, "GET", "/analytics/q")
    assert isinstance(found, RouteMatch)
    assert found.route.path == "/analytics/**"
    missing = find_route(runtime, "GET", "/nowhere")
    assert isinstance(missing, Deny)
    assert (missing.status, missing.code) == (404, "no_route")
    wrong = find_route(runtime, "POST", "/by-header/x")
    assert isinstance(wrong, Deny)
    assert (wrong.status, wrong.code) == (405, "method_not_allowed")
    assert dict(wrong.headers) == {"Allow": "GET, HEAD"}  # GET admits HEAD
    builtin = find_route(runtime, "DELETE", "/healthz")
    assert isinstance(builtin, Deny)
    assert builtin.status == 405


# authentication


def test_only_a_bearer_scheme_gives_a_token() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer ") is None
    assert bearer_token(None) is None


def test_a_missing_token_gets_the_bare_challenge() -> None:
    denied = authentication.MISSING_TOKEN
    assert (denied.status, denied.code) == (401, "missing_token")
    assert dict(denied.headers) == {"WWW-Authenticate": 'Bearer realm="gateway"'}


async def test_a_bad_token_is_a_401_naming_why(runtime: Runtime) -> None:
    token, _ = runtime.issuer.issue_access("u-1", "analyst")
    denied = verify(runtime.verifier, token[:-3] + "abc")
    assert isinstance(denied, Deny)
    assert denied.status == 401
    assert denied.code.startswith("token_")
    assert 'error="invalid_token"' in dict(denied.headers)["WWW-Authenticate"]
    assert isinstance(verify(runtime.verifier, token), Claims)


def test_the_account_decides_after_the_token() -> None:
    claims = Claims("u-1", "user", "jti-1", 0, int(time.time()) + 60)
    active = UserState("analyst", True, "una")
    assert judge_account(claims, False, None) is authentication.USER_INACTIVE
    assert judge_account(claims, False, UserState("analyst", False, "una")).code == "user_inactive"  # type: ignore[union-attr]
    assert judge_account(claims, True, active) is authentication.TOKEN_REVOKED
    principal = judge_account(claims, False, active)
    assert isinstance(principal, Principal)
    assert principal.role == "analyst"  # the user's role now, not the token's


async def test_the_authenticator_asks_the_store_it_was_given(runtime: Runtime) -> None:
    identity = LocalIdentity()
    await identity.start({"u-1": UserState("analyst", True, "una")})
    authenticator = Authenticator(Stores(identity=identity))
    token, claims = runtime.issuer.issue_access("u-1", "analyst")
    found, counted = await authenticator.authenticate(view(), runtime, token)
    assert isinstance(found, Principal)
    assert counted is None
    await identity.revoke(claims.jti, claims.exp)
    revoked, _ = await authenticator.authenticate(view(), runtime, token)
    assert revoked is authentication.TOKEN_REVOKED


# policy


def test_a_role_passes_when_listed_or_inherited_and_is_refused_otherwise() -> None:
    allowed = frozenset({"analyst", "admin"})
    assert policy.decide("analyst", allowed, "/analytics/**", ("analyst",)) is PASS
    assert policy.decide("anyone", None, "/open/**", ()) is PASS
    denied = policy.decide("user", allowed, "/analytics/**", ("analyst",))
    assert denied == Deny(
        "role_forbidden", 403, "role 'user' may not use /analytics/** (needs analyst)"
    )


async def test_admin_only_builtins_admit_admin_and_its_heirs(config: Config) -> None:
    admins = policy.admin_roles(config.policy)
    assert "admin" in admins
    assert "user" not in admins


# rate limit


async def test_buckets_count_who_the_key_names(runtime: Runtime) -> None:
    route = runtime.table.match("GET", "/analytics/x").route
    assert rate_limit.bucket(view(), route, "user") == "/analytics/**|ip:10.0.0.7"
    assert (
        rate_limit.bucket(view(user=caller("analyst")), route, "user") == "/analytics/**|user:u-1"
    )
    assert rate_limit.bucket(view(), route, "user", "u-2") == "/analytics/**|user:u-2"
    assert rate_limit.bucket(view(), route, "route") == "/analytics/**|route"
    assert rate_limit.bucket(view(X_Tenant="t1"), route, "header:X-Tenant") == (
        "/analytics/**|header:X-Tenant=t1"
    )
    assert rate_limit.bucket(view(), route, "header:X-Tenant") == "/analytics/**|ip:10.0.0.7"
    assert rate_limit.quota_key(view(), "demo", "ip") == "tokens|demo|ip:10.0.0.7"


async def test_the_limit_passes_with_headers_and_refuses_with_retry_after(runtime: Runtime) -> None:
    route = runtime.table.match("GET", "/analytics/x").route
    assert route.rate_limit is not None
    limiter, key, rate = LocalLimiter(), "k", route.rate_limit.rate
    passed = rate_limit.decide(
        route, route.rate_limit, await limiter.hit(key, rate.limit, rate.period)
    )
    assert isinstance(passed, Pass)
    assert dict(passed.headers) == {
        "RateLimit-Limit": "2",
        "RateLimit-Remaining": "1",
        "RateLimit-Reset": "30",
    }
    await limiter.hit(key, rate.limit, rate.period)
    refused = rate_limit.decide(
        route, route.rate_limit, await limiter.hit(key, rate.limit, rate.period)
    )
    assert isinstance(refused, Deny)
    assert (refused.status, refused.code) == (429, "rate_limited")
    assert dict(refused.headers)["Retry-After"] == "30"
    assert refused.detail.startswith("rate limit 2/1m by user on /analytics/** exceeded")


async def test_a_spent_token_quota_is_token_quota(runtime: Runtime) -> None:
    route = runtime.table.match("GET", "/analytics/x").route
    assert route.rate_limit is not None
    spent = Decision(False, 100, 0, 40, 12)
    refused = rate_limit.decide_quota("demo", route.rate_limit, 50, spent)
    assert isinstance(refused, Deny)
    assert (refused.status, refused.code) == (429, "token_quota")
    assert "reserves 50 tokens" in refused.detail
    assert dict(refused.headers)["RateLimit-Reset"] == "40"


# explain asks the same decisions


async def test_explain_denies_with_the_stages_own_messages(runtime: Runtime) -> None:
    anonymous = await explain(runtime, "GET", "/analytics/x", None, None, None)
    assert anonymous.steps[-1].detail == authentication.MISSING_TOKEN.detail
    identity = LocalIdentity()
    await identity.start({"u-1": UserState("user", True, "una")})
    token, _ = runtime.issuer.issue_access("u-1", "user")
    forbidden = await explain(runtime, "GET", "/analytics/x", token, identity, None)
    expected = policy.decide("user", runtime.allowed.get(0), "/analytics/**", ("analyst",))
    assert isinstance(expected, Deny)
    assert (forbidden.code, forbidden.steps[-1].detail) == (expected.code, expected.detail)
