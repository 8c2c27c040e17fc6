"""/auth/register, /auth/login, /auth/refresh, /auth/logout: the gateway as identity provider.

Refresh tokens are opaque random strings rotated on every use; presenting
one that was already spent revokes its whole family (and the access tokens
issued with it). Logout revokes the caller's access token and its family.
"""

from __future__ import annotations

import hmac
import re
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway.context import CTX, RequestContext
from gateway.handlers.api import Problem, Reply, TokenPair, UserView, operation
from gateway.handlers.jsonio import json_response, read_json
from gateway.handlers.shapes import invalid, parse, spec
from gateway.pipeline.verdict import Principal
from gateway.problems import GatewayError
from gateway.runtime import Runtime
from gateway.services import SERVICES, Services
from gateway.state.identity import UserState
from gateway.store.tokens import SpendOutcome
from gateway.store.users import DELETED_PREFIX, UserRecord

USERNAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
# Unicode category Cc (C0 controls, DEL, C1 controls): in no name or address,
# and PostgreSQL cannot store NUL in text at all, so they are a 400 up front.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True, slots=True)
class LoginRequest:
    username: str = field(metadata=spec(min_length=1, max_length=64))
    password: str = field(metadata=spec(min_length=1, max_length=1024))


@dataclass(frozen=True, slots=True)
class RegisterRequest:
    username: str = field(metadata=spec(min_length=3, max_length=64, pattern=USERNAME))
    password: str = field(metadata=spec(max_length=1024))
    display_name: str | None = field(default=None, metadata=spec(max_length=128))
    email: str | None = field(
        default=None, metadata=spec(max_length=254, pattern=r"[^@\s]+@[^@\s]+")
    )


@dataclass(frozen=True, slots=True)
class RefreshRequest:
    """The refresh token in the body, or (auth.refresh_cookie) left out: from its cookie."""

    refresh_token: str | None = field(
        default=None, metadata=spec(min_length=1, max_length=512, nullable=False)
    )


def user_throttle_key(username: str) -> str:
    """The failed-password counter of a username, shared by login and password change."""
    return f"user:{username.lower()}"


async def check_throttle(services: Services, keys: tuple[str, ...], detail: str) -> None:
    waits = [await services.throttle.retry_after(key) for key in keys]
    if max(waits) > 0:
        raise GatewayError(429, "login_throttled", detail, {"Retry-After": str(max(waits))})


def printable(**fields: str | None) -> None:
    """400 `invalid_field` naming the first field that holds a control character."""
    for name, value in fields.items():
        if value is not None and CONTROL.search(value) is not None:
            raise invalid(name, "must not contain control characters")


def reserved_username(username: str) -> None:
    if username.lower().startswith(DELETED_PREFIX):
        raise GatewayError.bad_request(
            f"username: names starting with {DELETED_PREFIX!r} are reserved", code="invalid_field"
        )


async def end_all_sessions(services: Services, user_id: str) -> None:
    """Revoke every refresh family of a user and the access tokens issued with them."""
    for jti, exp in await services.refresh_tokens.revoke_user(user_id):
        await services.identity.revoke(jti, exp)


BUSY = "too many passwords are being hashed; retry after Retry-After (busy)"


def invalid_credentials() -> GatewayError:
    # One answer for a wrong password, an unknown user and a deactivated one:
    # the response must not tell which usernames exist.
    return GatewayError(
        401,
        "invalid_credentials",
        "the username or password is wrong",
        {"WWW-Authenticate": 'Bearer realm="gateway"'},
    )


def refresh_refused(code: str, detail: str) -> GatewayError:
    return GatewayError.unauthorized(code, detail, token_presented=True)


def context(request: web.Request) -> tuple[RequestContext, Runtime, Services]:
    ctx = request[CTX]
    assert ctx.runtime is not None  # set by the route stage
    return ctx, ctx.runtime, request.app[SERVICES]


async def issue_pair(
    runtime: Runtime, services: Services, user: UserRecord, family_id: str | None = None
) -> web.Response:
    """A new access token and refresh token; a new family unless one is continued."""
    auth = runtime.config.auth
    access, claims = runtime.issuer.issue_access(user.id, user.role)
    refresh = secrets.token_urlsafe(32)
    await services.refresh_tokens.issue(
        refresh,
        user.id,
        family_id or uuid.uuid4().hex,
        auth.refresh_ttl,
        claims.jti,
        claims.exp,
    )
    response = json_response(
        {
            "access_token": access,
            # cookie mode: only in the HttpOnly cookie, out of JavaScript's reach
            "refresh_token": None if auth.refresh_cookie else refresh,
            "token_type": "Bearer",
            "expires_in": int(claims.exp - claims.iat),
        }
    )
    if auth.refresh_cookie:
        set_session_cookies(response, refresh, int(auth.refresh_ttl))
    return response


REFRESH_COOKIE = "gateway_refresh"
CSRF_COOKIE = "gateway_csrf"
CSRF_HEADER = "X-CSRF-Token"


def set_session_cookies(response: web.StreamResponse, refresh: str, max_age: int) -> None:
    """The refresh token (HttpOnly, only sent to /auth) and the CSRF token the page
    must echo in X-CSRF-Token (readable by it, so not HttpOnly): double submit."""
    common: dict[str, Any] = {"secure": True, "samesite": "Strict", "max_age": max_age}
    response.set_cookie(REFRESH_COOKIE, refresh, httponly=True, path="/auth", **common)
    response.set_cookie(CSRF_COOKIE, secrets.token_urlsafe(24), path="/", **common)


def clear_session_cookies(response: web.StreamResponse) -> None:
    response.del_cookie(REFRESH_COOKIE, path="/auth", secure=True, samesite="Strict")
    response.del_cookie(CSRF_COOKIE, path="/", secure=True, samesite="Strict")


def refresh_from_cookie(request: web.Request) -> str:
    """Cookie mode: the refresh token of the cookie, once the CSRF double submit holds."""
    token = request.cookies.get(REFRESH_COOKIE)
    if not token:
        raise invalid("refresh_token", "is required (in the body, or the session cookie)")
    expected = request.cookies.get(CSRF_COOKIE, "")
    sent = request.headers.get(CSRF_HEADER, "")
    if not expected or not hmac.compare_digest(expected.encode(), sent.encode()):
        raise GatewayError(
            403,
            "csrf_failed",
            f"{CSRF_HEADER} must repeat the {CSRF_COOKIE} cookie when the refresh token "
            "comes from its cookie",
        )
    return token


@operation(
    "sign in with a username and password",
    access="anyone",
    request=LoginRequest,
    database=True,
    replies={
        200: Reply("an access token and a refresh token", TokenPair),
        401: Reply("wrong username or password, or a deactivated account", Problem),
        429: Reply("too many failed sign-ins for this username or address", Problem),
        503: Reply(BUSY, Problem),
    },
)
async def login(request: web.Request) -> web.StreamResponse:
    ctx, runtime, services = context(request)
    body = parse(await read_json(request, runtime.config.server.max_body), LoginRequest)
    printable(username=body.username)
    keys = (user_throttle_key(body.username), f"ip:{ctx.client_ip}")
    await check_throttle(services, keys, "too many failed sign-ins; try again later")
    # A flood is refused before its database lookups, not after them.
    services.passwords.pool.admit()
    user = await services.users.by_username(body.username)
    # argon2 is CPU work: off the event loop, in the bounded pool (503 busy
    # when full). An unknown user is verified against a dummy hash, so the
    # time taken does not reveal who exists.
    ok, new_hash = await services.passwords.verify_in_pool(
        user.password_hash if user else None, body.password
    )
    if user is None or not ok or not user.active:
        for key in keys:
            await services.throttle.fail(key)
        raise invalid_credentials()
    await services.throttle.clear(keys[0])
    if new_hash is not None:  # hashing parameters changed since this hash was made
        user = await services.users.update(user.id, password_hash=new_hash)
    return await issue_pair(runtime, services, user)


@operation(
    "trade a refresh token for a new pair (the old one is spent)",
    access="anyone",
    request=RefreshRequest,
    database=True,
    replies={
        200: Reply("a new access token and refresh token", TokenPair),
        401: Reply("unknown, expired or already spent (its whole family is revoked)", Problem),
        403: Reply("cookie mode: X-CSRF-Token does not repeat the CSRF cookie", Problem),
    },
)
async def refresh(request: web.Request) -> web.StreamResponse:
    _, runtime, services = context(request)
    body = parse(await read_json(request, runtime.config.server.max_body), RefreshRequest)
    if body.refresh_token is not None:
        token = body.refresh_token
    elif runtime.config.auth.refresh_cookie:
        token = refresh_from_cookie(request)
    else:
        raise invalid("refresh_token", "is required")
    spent = await services.refresh_tokens.spend(token)
    if spent.outcome is SpendOutcome.REUSED:
        for jti, exp in spent.revoked_access:
            await services.identity.revoke(jti, exp)
        raise refresh_refused(
            "refresh_reused", "refresh token was already used; its session is revoked"
        )
    if spent.outcome is SpendOutcome.INVALID or spent.user_id is None:
        raise refresh_refused("refresh_invalid", "refresh token is unknown, expired or revoked")
    user = await services.users.by_id(spent.user_id)
    if user is None or not user.active:
        raise refresh_refused("user_inactive", "the account is deactivated")
    return await issue_pair(runtime, services, user, spent.family_id)


@operation(
    "end this session: the access token and its refresh family stop working",
    replies={204: Reply("signed out")},
)
async def logout(request: web.Request) -> web.StreamResponse:
    ctx, _, services = context(request)
    principal = ctx.user
    if principal is None:  # routes.yaml must not mark auth.logout `auth: none`
        raise GatewayError(
            401,
            "missing_token",
            "logout needs the bearer token to end",
            {"WWW-Authenticate": 'Bearer realm="gateway"'},
        )
    if principal.issuer is not None:  # not ours: its session lives at its provider
        raise GatewayError.bad_request(
            f"this token was issued by {principal.issuer}; sign out there",
            code="outside_token",
        )
    await end_session(services, principal)
    response = web.Response(status=204)
    if ctx.runtime is not None and ctx.runtime.config.auth.refresh_cookie:
        clear_session_cookies(response)
    return response


async def end_session(services: Services, principal: Principal) -> None:
    """Revoke an access token, its refresh family and that family's other access tokens."""
    await services.identity.revoke(principal.jti, principal.exp)
    family = await services.refresh_tokens.family_of_access(principal.jti)
    if family is not None:
        for jti, exp in await services.refresh_tokens.revoke_family(family):
            await services.identity.revoke(jti, exp)


@operation(
    "create an account (when auth.allow_registration is on)",
    access="anyone",
    request=RegisterRequest,
    database=True,
    replies={
        201: Reply("the new user, with auth.default_role", UserView),
        403: Reply("registration is closed (registration_closed)", Problem),
        409: Reply("the username, in any case, is taken (username_taken)", Problem),
        503: Reply(BUSY, Problem),
    },
)
async def register(request: web.Request) -> web.StreamResponse:
    _, runtime, services = context(request)
    auth = runtime.config.auth
    if not auth.allow_registration:
        raise GatewayError(403, "registration_closed", "self-registration is turned off")
    body = parse(await read_json(request, runtime.config.server.max_body), RegisterRequest)
    user = await create_account(
        services,
        body.username,
        body.password,
        auth.default_role,
        display_name=body.display_name,
        email=body.email,
    )
    return json_response(user.public(), status=201)


async def create_account(
    services: Services,
    username: str,
    password: str,
    role: str,
    *,
    display_name: str | None = None,
    email: str | None = None,
    active: bool = True,
) -> UserRecord:
    """A new user (registration or admin): name and password rules, argon2, then shared."""
    printable(username=username, display_name=display_name, email=email)
    reserved_username(username)
    services.passwords.check_policy(password, username)
    password_hash = await services.passwords.hash_in_pool(password)
    user = await services.users.create(
        username, password_hash, role, display_name=display_name, email=email, active=active
    )
    await services.identity.set_user(user.id, UserState.of(user))
    return user
