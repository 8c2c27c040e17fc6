"""Each local endpoint's declaration, and the OpenAPI 3.1 document made from them.

A handler function carries its own `@operation(...)`: summary, who may call
it, its request body shape (the dataclass `parse` validates with), its query
parameters and its responses. `openapi(runtime)` walks the live route table
(the routes.yaml paths of auth.*, users and admin, plus the built-ins) and
each handler's declaration, so the document describes exactly what this
gateway serves and cannot drift from the validation: the schemas come from
the same dataclasses (`shapes.json_schema`). A handler without a declaration
is a test failure (tests/handlers/test_openapi.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from gateway.handlers.shapes import json_schema, spec

Access = Literal["anyone", "bearer", "admin"]
F = TypeVar("F", bound=Callable[..., Any])
API = "__api__"  # the attribute a declaration is kept in, on the handler function


# --- response shapes ---------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """An RFC 9457 problem: every error the gateway answers (application/problem+json)."""

    type: str = field(metadata=spec(format="uri-reference"))
    title: str
    status: int
    detail: str
    code: str = field(metadata=spec(description="stable reason code, e.g. token_expired"))
    request_id: str


@dataclass(frozen=True)
class UserView:
    """A user as the API shows it: never a password or hash."""

    id: str
    username: str
    role: str
    active: bool
    display_name: str | None
    email: str | None
    created_at: str = field(metadata=spec(format="date-time"))
    updated_at: str = field(metadata=spec(format="date-time"))


@dataclass(frozen=True)
class UserPage:
    """One page of users; `next_cursor` goes back as `cursor=` for the next."""

    items: list[UserView]
    next_cursor: str | None


@dataclass(frozen=True)
class Page:
    """One page of a list endpoint; `next_cursor` goes back as `cursor=`."""

    items: list[dict[str, Any]]
    next_cursor: str | None


@dataclass(frozen=True)
class TokenPair:
    """A signed-in session: a short-lived access token and a refresh token."""

    access_token: str
    refresh_token: str | None = field(
        metadata=spec(description="null in cookie mode: it is in the HttpOnly cookie instead")
    )
    token_type: str
    expires_in: int


@dataclass(frozen=True)
class Status:
    """A JSON object whose fields the endpoint's description lists."""


@dataclass(frozen=True)
class Text:
    """A body that is not JSON (a page, a script, Prometheus text, CSV): a string in its
    `Reply.media`."""


# --- declarations --------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """A query parameter; an empty value (`?since=`) counts as left out."""

    name: str
    description: str
    type: Literal["string", "integer", "boolean"] = "string"
    format: str | None = None
    minimum: int | None = None
    maximum: int | None = None
    enum: str | None = None  # a set of values the live config knows, e.g. "roles"
    pattern: str | None = None


@dataclass(frozen=True)
class Reply:
    description: str
    shape: type[Any] | None = None  # None: no body
    media: str = "application/json"
    also: tuple[str, ...] = ()  # other media types it may answer in (as text)


@dataclass(frozen=True)
class Operation:
    summary: str
    method: str = "POST"  # of a handler routed by routes.yaml without `methods`
    access: Access = "bearer"
    request: type[Any] | None = None
    query: tuple[Query, ...] = ()
    replies: Mapping[int, Reply] = field(default_factory=dict)
    description: str = ""
    database: bool = False  # it reads or writes the database (bearer ones may, to check the user)


def operation(
    summary: str,
    *,
    method: str = "POST",
    access: Access = "bearer",
    request: type[Any] | None = None,
    query: tuple[Query, ...] = (),
    replies: Mapping[int, Reply] | None = None,
    description: str = "",
    database: bool = False,
) -> Callable[[F], F]:
    """Declare a handler for /openapi.json (the request shape is the one it parses).
    `database`: it uses the database, so it may answer 503 database_down (implied for
    every bearer endpoint: the token check may read the user)."""

    def declare(handler: F) -> F:
        setattr(
            handler,
            API,
            Operation(
                summary,
                method,
                access,
                request,
                query,
                dict(replies or {}),
                description,
                database,
            ),
        )
        return handler

    return declare


def declared(handler: Callable[..., Any]) -> Operation | None:
    found = getattr(handler, API, None)
    return found if isinstance(found, Operation) else None


LIST_QUERY = (
    Query("limit", "items per page, 1-500 (default 50)", "integer", minimum=1, maximum=500),
    Query("cursor", "the previous page's next_cursor"),
)

# --- the document --------------------------------------------------------------------

_STATUS_TEXT = {
    400: "the request is malformed or a field is invalid",
    401: "no valid bearer token",
    403: "the caller's role may not do this",
    404: "no such resource",
    405: "method not allowed",
    406: "the client does not accept JSON",
    409: "conflicts with the current state",
    413: "the body is too large",
    415: "the body is not JSON",
    429: "too many requests",
}
DATABASE_DOWN = (
    "the database is unreachable or did not answer within database.timeout (database_down); "
    "with Retry-After"
)


def document(
    operations: list[tuple[str, str, Operation]],
    version: str = "1",
    enums: Mapping[str, list[str]] | None = None,
) -> dict[str, Any]:
    """OpenAPI 3.1 for (path, method, declaration) triples; `enums`: the live
    config's named value sets (e.g. {"roles": [...]})."""
    enums = enums or {}
    shapes: dict[str, type[Any]] = {"Problem": Problem}
    paths: dict[str, dict[str, Any]] = {}
    for path, method, op in operations:
        paths.setdefault(path, {})[method.lower()] = _operation(path, op, shapes, enums)
    schemas: dict[str, Any] = {}
    pending = list(shapes.values())
    while pending:
        shape = pending.pop()
        if shape.__name__ in schemas:
            continue
        schemas[shape.__name__] = json_schema(shape, enums)
        pending.extend(_nested(shape))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "gateway",
            "version": version,
            "description": "The gateway's own endpoints: sign-in, users, administration, health. "
            "Proxied routes are the upstreams' to describe.",
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


def _operation(
    path: str, op: Operation, shapes: dict[str, type[Any]], enums: Mapping[str, list[str]]
) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": op.summary}
    if op.description:
        out["description"] = op.description
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _path_parameters(path)
    ]
    for query in op.query:
        parameters.append(
            {
                "name": query.name,
                "in": "query",
                "required": False,
                "schema": _query_schema(query, enums),
                "description": query.description,
            }
        )
    if parameters:
        out["parameters"] = parameters
    if op.request is not None:
        shapes[op.request.__name__] = op.request
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(op.request)}},
        }
    if op.access != "anyone":
        out["security"] = [{"bearer": []}]
    responses: dict[str, Any] = {}
    for status, reply in sorted(op.replies.items()):
        responses[str(status)] = _reply(reply, shapes)
    errors = {400, 406, 429} | ({401} if op.access != "anyone" else set())
    errors |= {403} if op.access == "admin" else set()
    errors |= {413, 415} if op.request is not None else set()
    for status in sorted(errors - set(op.replies)):
        responses[str(status)] = _reply(Reply(_STATUS_TEXT[status], Problem), shapes)
    if op.database or op.access != "anyone":
        declared_503 = op.replies.get(503)
        if declared_503 is None:
            responses["503"] = _reply(Reply(DATABASE_DOWN, Problem), shapes)
        elif "database_down" not in declared_503.description:
            both = f"{declared_503.description}; or {DATABASE_DOWN}"
            responses["503"] = _reply(dataclasses.replace(declared_503, description=both), shapes)
    out["responses"] = dict(sorted(responses.items()))
    return out


def _query_schema(query: Query, enums: Mapping[str, list[str]]) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": query.type}
    if query.format:
        schema["format"] = query.format
    if query.minimum is not None:
        schema["minimum"] = query.minimum
    if query.maximum is not None:
        schema["maximum"] = query.maximum
    if query.enum is not None and query.enum in enums:
        schema["enum"] = list(enums[query.enum])
    if query.pattern is not None:
        schema["pattern"] = query.pattern
    if query.type != "string" or len(schema) > 1:
        # `?name=` is taken as left out, so the empty value is valid too
        schema = {"anyOf": [schema, {"type": "string", "maxLength": 0}]}
    return schema


def _reply(reply: Reply, shapes: dict[str, type[Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"description": reply.description}
    if reply.shape is not None:
        media = "application/problem+json" if reply.shape is Problem else reply.media
        if reply.shape is Status:
            schema: dict[str, Any] = {"type": "object"}
        elif reply.shape is Text:
            schema = {"type": "string"}
        else:
            shapes[reply.shape.__name__] = reply.shape
            schema = _ref(reply.shape)
        out["content"] = {media: {"schema": schema}}
        for other in reply.also:
            out["content"][other] = {"schema": {"type": "string"}}
    return out


def _ref(shape: type[Any]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{shape.__name__}"}


def _nested(shape: type[Any]) -> list[type[Any]]:
    import typing

    found: list[type[Any]] = []
    for hint in typing.get_type_hints(shape).values():
        for arg in (hint, *typing.get_args(hint)):
            if dataclasses.is_dataclass(arg) and isinstance(arg, type):
                found.append(arg)
    return found


def _path_parameters(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]
