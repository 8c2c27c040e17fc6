"""/admin/*: users, the audit log, model reports and usage, routes and upstream health, the config.

Validation errors name the field (400); an unknown id is 404; removing the
last active admin is 409 `last_admin`. A role change or a deactivation is
pushed to the identity state at once, so it holds at the user's next request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from gateway.audit.report import summarise
from gateway.handlers.api import (
    LIST_QUERY,
    Page,
    Problem,
    Query,
    Reply,
    Status,
    UserPage,
    UserView,
    operation,
)
from gateway.handlers.auth import (
    BUSY,
    USERNAME,
    context,
    create_account,
    end_all_sessions,
    printable,
)
from gateway.handlers.jsonio import json_response, read_json
from gateway.handlers.shapes import parse, query_bool, query_int, query_time, spec
from gateway.handlers.subroutes import SubRoutes
from gateway.pipeline.explain import explain
from gateway.problems import GatewayError
from gateway.runtime import HOLDER, Runtime
from gateway.services import Services
from gateway.state.identity import UserState
from gateway.store.audit import AuditFilter
from gateway.store.usage import GROUP_KEYS, to_csv
from gateway.store.users import UserRecord

EMAIL = r"[^@\s]+@[^@\s]+"


@dataclass(frozen=True, slots=True)
class NewUser:
    username: str = field(metadata=spec(min_length=3, max_length=64, pattern=USERNAME))
    password: str = field(metadata=spec(max_length=1024))
    role: str = field(metadata=spec(min_length=1, max_length=64, enum="roles"))
    active: bool = True
    display_name: str | None = field(default=None, metadata=spec(max_length=128))
    email: str | None = field(default=None, metadata=spec(max_length=254, pattern=EMAIL))


@dataclass(frozen=True, slots=True)
class ExplainRequest:
    """A request to replay through the chain, without proxying it."""

    method: str = field(metadata=spec(min_length=1, max_length=16, pattern=r"[A-Za-z]+"))
    path: str = field(
        metadata=spec(min_length=1, max_length=2048, pattern=r"/\S*", description="path?query")
    )
    token: str | None = field(
        default=None, metadata=spec(max_length=8192, description="the bearer token, if any")
    )
    client_ip: str | None = field(
        default=None,
        metadata=spec(max_length=64, description="for ip-keyed limits (default: the caller's)"),
    )


@dataclass(frozen=True, slots=True)
class UserPatch:
    # Left out: unchanged. role, active and password may not be null.
    role: str | None = field(
        default=None, metadata=spec(min_length=1, max_length=64, enum="roles", nullable=False)
    )
    active: bool | None = field(default=None, metadata=spec(nullable=False))
    password: str | None = field(default=None, metadata=spec(max_length=1024, nullable=False))
    display_name: str | None = field(default=None, metadata=spec(max_length=128))
    email: str | None = field(default=None, metadata=spec(max_length=254, pattern=EMAIL))


def check_role(runtime: Runtime, role: str) -> None:
    roles = runtime.config.policy.roles
    if role not in roles:
        known = ", ".join(sorted(roles)) or "none defined"
        raise GatewayError.bad_request(
            f"role: unknown role {role!r} (roles: {known})", "invalid_field"
        )


async def publish(services: Services, user: UserRecord) -> None:
    """Make the user's current role and status the one every instance checks."""
    await services.identity.set_user(user.id, UserState.of(user))
    if not user.active:
        await end_all_sessions(services, user.id)


@operation(
    "list users, by username",
    access="admin",
    method="GET",
    query=(
        *LIST_QUERY,
        Query("role", "only users with this role (any text: an unknown one matches nobody)"),
        Query("active", "only active (true) or deactivated (false) users", "boolean"),
    ),
    replies={200: Reply("a page of users", UserPage)},
)
async def list_users(request: web.Request) -> web.StreamResponse:
    _, _, services = context(request)
    query = request.query
    limit = query_int(query.get("limit"), "limit", 50, 1, 500)
    role = query.get("role") or None
    items, cursor = await services.users.page(
        limit,
        query.get("cursor") or None,
        role=role,
        active=query_bool(query.get("active"), "active"),
    )
    return json_response({"items": [u.public() for u in items], "next_cursor": cursor})


@operation(
    "create a user",
    access="admin",
    request=NewUser,
    replies={
        201: Reply("the new user", UserView),
        409: Reply("the username, in any case, is taken (username_taken)", Problem),
        503: Reply(BUSY, Problem),
    },
)
async def create_user(request: web.Request) -> web.StreamResponse:
    _, runtime, services = context(request)
    body = parse(await read_json(request, runtime.config.server.max_body), NewUser)
    check_role(runtime, body.role)
    user = await create_account(
        services,
        body.username,
        body.password,
        body.role,
        display_name=body.display_name,
        email=body.email,
        active=body.active,
    )
    return json_response(user.public(), status=201)


@operation(
    "one user",
    access="admin",
    method="GET",
    replies={200: Reply("the user", UserView), 404: Reply("no such user", Problem)},
)
async def get_user(request: web.Request) -> web.StreamResponse:
    ctx, _, services = context(request)
    user = await services.users.by_id(ctx.params["id"])
    if user is None:
        raise GatewayError(404, "user_not_found", f"no user with id {ctx.params['id']!r}")
    return json_response(user.public())


@operation(
    "change a user's role, status, password or profile",
    access="admin",
    method="PATCH",
    request=UserPatch,
    replies={
        200: Reply("the user, changed", UserView),
        404: Reply("no such user", Problem),
        409: Reply("it would leave no active admin (last_admin)", Problem),
        503: Reply(BUSY, Problem),
    },
)
async def patch_user(request: web.Request) -> web.StreamResponse:
    ctx, runtime, services = context(request)
    data = await read_json(request, runtime.config.server.max_body)
    patch = parse(data, UserPatch)
    printable(display_name=patch.display_name, email=patch.email)
    changes: dict[str, Any] = {}
    for name in data:  # parse() refused a null role, active or password
        changes[name] = getattr(patch, name)
    if "role" in changes:
        check_role(runtime, changes["role"])
    if "password" in changes:
        current = await services.users.by_id(ctx.params["id"])
        services.passwords.check_policy(changes["password"], current.username if current else None)
        changes["password_hash"] = await services.passwords.hash_in_pool(changes.pop("password"))
    user = await services.users.update(ctx.params["id"], **changes)
    await publish(services, user)
    if "password_hash" in changes:
        await end_all_sessions(services, user.id)  # a reset password ends every session
    return json_response(user.public())


@operation(
    "delete a user: deactivated and anonymised",
    access="admin",
    method="DELETE",
    replies={
        204: Reply("deleted"),
        404: Reply("no such user", Problem),
        409: Reply("it would leave no active admin (last_admin)", Problem),
    },
)
async def delete_user(request: web.Request) -> web.StreamResponse:
    ctx, _, services = context(request)
    user = await services.users.delete(ctx.params["id"])
    await publish(services, user)
    return web.Response(status=204)


_STATUS = re.compile(r"([1-5])([0-9][0-9]|xx)", re.ASCII | re.IGNORECASE)
REPORT_WINDOW = timedelta(days=1)  # /admin/reports without since=: the last day


def bad_query(detail: str) -> GatewayError:
    return GatewayError.bad_request(detail, code="invalid_query")


def query_status(raw: str | None) -> tuple[int, int] | None:
    """`status=`: an exact code (404) or a class (4xx), as an inclusive range."""
    if not raw:
        return None
    match = _STATUS.fullmatch(raw)
    if match is None:
        raise bad_query("status: must be a status code (e.g. 404) or a class (e.g. 4xx)")
    digit, rest = match.groups()
    if rest.lower() == "xx":
        return int(digit) * 100, int(digit) * 100 + 99
    return int(raw), int(raw)


def query_text(raw: str | None, name: str, max_length: int) -> str | None:
    if not raw:
        return None
    if len(raw) > max_length or "\x00" in raw:
        raise bad_query(f"{name}: must be at most {max_length} characters, without NUL")
    return raw


@operation(
    "audit rows, newest first",
    access="admin",
    method="GET",
    query=(
        *LIST_QUERY,
        Query("user", "a username"),
        Query("status", "an exact status, or a class such as 4xx"),
        Query("path", "a path prefix"),
        Query("since", "an RFC 3339 time", format="date-time"),
    ),
    replies={200: Reply("a page of audit rows", Page)},
)
async def audit_logs(request: web.Request) -> web.StreamResponse:
    """Audit rows, newest first: ?user=&status=&path=&since=&limit=&cursor=."""
    _, _, services = context(request)
    query = request.query
    limit = query_int(query.get("limit"), "limit", 50, 1, 500)
    path = query_text(query.get("path"), "path", 2048)
    if path is not None and not path.startswith("/"):
        raise bad_query("path: must be a path prefix starting with /")
    where = AuditFilter(
        username=query_text(query.get("user"), "user", 64),
        status=query_status(query.get("status")),
        path_prefix=path,
        since=query_time(query.get("since"), "since"),
    )
    items, cursor = await services.audit.store.page(limit, query.get("cursor") or None, where)
    return json_response({"items": items, "next_cursor": cursor})


@operation(
    "per model: calls, errors, latency percentiles, calls per user",
    access="admin",
    method="GET",
    query=(Query("since", "an RFC 3339 time (default: a day ago)", format="date-time"),),
    replies={200: Reply("one item per model", Page)},
)
async def reports(request: web.Request) -> web.StreamResponse:
    """Per model since ?since= (default: the last day): calls, errors, p50/p95, per user."""
    _, _, services = context(request)
    since = query_time(request.query.get("since"), "since")
    if since is None:
        since = datetime.now(UTC) - REPORT_WINDOW
    rows = await services.audit.store.report_rows(since)
    return json_response({"items": summarise(rows), "next_cursor": None})


@operation(
    "model calls, errors, tokens and latency per model and/or user",
    access="admin",
    method="GET",
    query=(
        Query("since", "an RFC 3339 time (default: a day before until)", format="date-time"),
        Query("until", "an RFC 3339 time (default: now)", format="date-time"),
        Query(
            "group_by",
            "model, user or model,user (default: model)",
            pattern="^(model|user)(,(model|user))?$",
        ),
        Query("format", "csv for a CSV export with the same columns", pattern="^csv$"),
    ),
    replies={
        200: Reply("one item per group (or text/csv with format=csv)", Page, also=("text/csv",))
    },
)
async def usage(request: web.Request) -> web.StreamResponse:
    """Model calls per group in [since, until): calls, errors, tokens, latency; JSON or CSV.

    `until` defaults to now and `since` to a day before `until`; `group_by` is a
    comma list of model and user (default model); `format=csv` exports the same
    columns as text/csv (the dispatcher lets its Accept through).
    """
    _, _, services = context(request)
    query = request.query
    until = query_time(query.get("until"), "until") or datetime.now(UTC)
    since = query_time(query.get("since"), "since") or until - REPORT_WINDOW
    if since > until:
        raise bad_query("since: must not be after until")
    group_by = (query.get("group_by") or "model").split(",")
    for key in group_by:
        if key not in GROUP_KEYS:
            raise bad_query(f"group_by: unknown key {key!r} (keys: {', '.join(GROUP_KEYS)})")
    export = query.get("format") or None
    if export not in (None, "csv"):
        raise bad_query("format: must be csv, or absent for JSON")
    tally = await services.usage.tally(since, until, group_by)
    if export is None:
        return json_response({"items": tally.items(), "next_cursor": None})
    return web.Response(
        text=to_csv(tally.items(), tally.columns),
        content_type="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": 'attachment; filename="usage.csv"'},
    )


@operation(
    "the live route table",
    access="admin",
    method="GET",
    replies={200: Reply("{version, items: [route]}", Status)},
)
async def routes(request: web.Request) -> web.StreamResponse:
    _, runtime, _ = context(request)
    return json_response(
        {
            "items": [
                {
                    "index": r.index,
                    "path": r.path,
                    "methods": sorted(r.methods) if r.methods else None,
                    "handler": r.handler,
                    "upstream": r.upstream,
                    "static": str(r.static) if r.static is not None else None,
                    "spa": r.spa,
                    "strip_prefix": r.strip_prefix,
                    "auth": r.auth,
                    "roles": list(r.roles),
                    "rate_limit": str(r.rate_limit.rate) if r.rate_limit else None,
                    "model": r.model,
                    "source": r.source,
                }
                for r in runtime.config.routes
            ],
            "next_cursor": None,
        }
    )


@operation(
    "each upstream target's health",
    access="admin",
    method="GET",
    replies={200: Reply("one item per upstream, with its targets", Page)},
)
async def upstreams(request: web.Request) -> web.StreamResponse:
    """Each upstream's balancing, and per target: state, in-flight, failures, last error."""
    _, runtime, _ = context(request)
    items = runtime.upstream_status()
    return json_response({"items": items, "next_cursor": None})


@operation(
    "the loaded configuration: version, load time, file hash, last reload error",
    access="admin",
    method="GET",
    replies={200: Reply("the configuration's state", Status)},
)
async def config(request: web.Request) -> web.StreamResponse:
    """The live config; `last_error`: the last reload's problems, until one succeeds."""
    _, runtime, _ = context(request)
    failure = request.app[HOLDER].last_error
    return json_response(
        {
            "version": runtime.version,
            "loaded_at": datetime.fromtimestamp(runtime.loaded_at, UTC).isoformat(),
            "file": str(runtime.config.path),
            "file_hash": runtime.config.file_hash,
            "policies_hash": runtime.config.policy.digest,
            "last_error": None
            if failure is None
            else {
                "at": datetime.fromtimestamp(failure.at, UTC).isoformat(),
                "problems": list(failure.problems),
            },
        }
    )


@operation(
    "explain why: the chain's decision for a method, path and token, stage by stage",
    access="admin",
    request=ExplainRequest,
    replies={200: Reply("each stage's finding, and which one decided", Status)},
    description="Nothing is proxied and nothing is counted: the rate limit is peeked at.",
)
async def explain_request(request: web.Request) -> web.StreamResponse:
    ctx, runtime, services = context(request)
    body = parse(await read_json(request, runtime.config.server.max_body), ExplainRequest)
    result = await explain(
        runtime,
        body.method,
        body.path,
        body.token,
        services.identity,
        services.limiter,
        body.client_ip or ctx.client_ip,
    )
    return json_response(result.as_json())


ROUTES = SubRoutes(
    [
        ("/admin/users", ("GET",), list_users),
        ("/admin/users", ("POST",), create_user),
        ("/admin/users/{id}", ("GET",), get_user),
        ("/admin/users/{id}", ("PATCH",), patch_user),
        ("/admin/users/{id}", ("DELETE",), delete_user),
        ("/admin/routes", ("GET",), routes),
        ("/admin/upstreams", ("GET",), upstreams),
        ("/admin/config", ("GET",), config),
        ("/admin/audit-logs", ("GET",), audit_logs),
        ("/admin/reports", ("GET",), reports),
        ("/admin/usage", ("GET",), usage),
        ("/admin/explain", ("POST",), explain_request),
    ]
)


async def admin(request: web.Request) -> web.StreamResponse:
    return await ROUTES.dispatch(request)
