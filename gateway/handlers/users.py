"""/users/me (GET, PATCH) and /users/me/password: the caller's own profile."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from gateway.handlers.api import Problem, Reply, UserView, operation
from gateway.handlers.auth import (
    BUSY,
    check_throttle,
    context,
    end_all_sessions,
    end_session,
    printable,
    user_throttle_key,
)
from gateway.handlers.jsonio import json_response, read_json
from gateway.handlers.shapes import parse, spec
from gateway.handlers.subroutes import SubRoutes
from gateway.problems import GatewayError

EMAIL = r"[^@\s]+@[^@\s]+"


@dataclass(frozen=True, slots=True)
class ProfilePatch:
    display_name: str | None = field(default=None, metadata=spec(max_length=128))
    email: str | None = field(default=None, metadata=spec(max_length=254, pattern=EMAIL))


@dataclass(frozen=True, slots=True)
class PasswordChange:
    current_password: str = field(metadata=spec(min_length=1, max_length=1024))
    new_password: str = field(metadata=spec(max_length=1024))


@operation("the caller's profile", method="GET", replies={200: Reply("the caller", UserView)})
async def me(request: web.Request) -> web.StreamResponse:
    ctx, _, services = context(request)
    assert ctx.user is not None  # the users routes need a token
    user = await services.users.by_id(ctx.user.id)
    if user is None:
        raise GatewayError(404, "user_not_found", "the account no longer exists")
    return json_response(user.public())


@operation(
    "change the caller's display name or email",
    method="PATCH",
    request=ProfilePatch,
    replies={200: Reply("the caller, changed", UserView)},
)
async def patch_me(request: web.Request) -> web.StreamResponse:
    ctx, runtime, services = context(request)
    assert ctx.user is not None
    data = await read_json(request, runtime.config.server.max_body)
    patch = parse(data, ProfilePatch)
    printable(display_name=patch.display_name, email=patch.email)
    changes = {name: getattr(patch, name) for name in data}  # only what was sent
    user = await services.users.update(ctx.user.id, **changes)
    return json_response(user.public())


@operation(
    "change the caller's password (ends every session of the user)",
    request=PasswordChange,
    replies={
        204: Reply("changed"),
        401: Reply("the current password is wrong", Problem),
        503: Reply(BUSY, Problem),
    },
)
async def change_password(request: web.Request) -> web.StreamResponse:
    ctx, runtime, services = context(request)
    assert ctx.user is not None
    body = parse(await read_json(request, runtime.config.server.max_body), PasswordChange)
    user = await services.users.by_id(ctx.user.id)
    if user is None:
        raise GatewayError(404, "user_not_found", "the account no longer exists")
    # Counted with the sign-in failures (auth.login's per-username key): a
    # stolen access token must not buy unlimited guesses at the password.
    throttle_key = user_throttle_key(user.username)
    await check_throttle(services, (throttle_key,), "too many wrong passwords; try again later")
    ok, _ = await services.passwords.verify_in_pool(user.password_hash, body.current_password)
    if not ok:
        await services.throttle.fail(throttle_key)
        raise GatewayError.bad_request("current_password: is wrong", code="wrong_password")
    await services.throttle.clear(throttle_key)
    services.passwords.check_policy(body.new_password, user.username)
    new_hash = await services.passwords.hash_in_pool(body.new_password)
    await services.users.update(user.id, password_hash=new_hash)
    # Every other session of this user ends; this request's token ends too,
    # so the client signs in again with the new password.
    await end_all_sessions(services, user.id)
    await end_session(services, ctx.user)
    return web.Response(status=204)


ROUTES = SubRoutes(
    [
        ("/users/me", ("GET",), me),
        ("/users/me", ("PATCH",), patch_me),
        ("/users/me/password", ("POST",), change_password),
    ]
)


async def users(request: web.Request) -> web.StreamResponse:
    return await ROUTES.dispatch(request)
