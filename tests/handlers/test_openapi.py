"""/openapi.json: OpenAPI 3.1 for every local endpoint, from the handlers' declarations.

The document is checked against the OpenAPI 3.1 schema; every local handler
must carry a declaration (so a new one cannot go undocumented); each request
schema says exactly what the validator (`parse`) accepts.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate

from gateway.handlers.api import declared
from gateway.handlers.openapi import MOUNTED
from gateway.handlers.registry import BUILTIN, ROUTABLE
from tests.conftest import MakeGateway
from tests.identity import Client, bearer, identity_config, login, make_user

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def client(gateway: MakeGateway, policies: Path) -> Client:
    return await gateway(identity_config())


@pytest.fixture
async def spec(client: Client) -> dict[str, Any]:
    response = await client.get("/openapi.json")  # no token: anyone may read it
    assert response.status == 200
    assert response.content_type == "application/json"
    document: dict[str, Any] = await response.json()
    return document


def test_every_local_handler_is_declared() -> None:
    # `users` and `admin` dispatch to the entries of their tables, declared one by one.
    handlers = {n: h for n, h in {**ROUTABLE, **BUILTIN}.items() if n not in MOUNTED}
    missing = [name for name, handler in handlers.items() if declared(handler) is None]
    for sub in MOUNTED.values():
        missing += [path for path, _, handler in sub.entries if declared(handler) is None]
    assert missing == []


async def test_the_document_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    assert spec["openapi"] == "3.1.0"
    validate(spec)  # raises on any violation of the OpenAPI 3.1 schema


async def test_it_lists_what_the_config_routes(spec: dict[str, Any]) -> None:
    paths = spec["paths"]
    assert set(paths["/auth/login"]) == {"post"}
    assert set(paths["/users/me"]) == {"get", "patch"}
    assert set(paths["/admin/users/{id}"]) == {"get", "patch", "delete"}
    assert paths["/admin/users/{id}"]["get"]["parameters"][0]["name"] == "id"
    for builtin in ("/healthz", "/readyz", "/.well-known/jwks.json", "/metrics", "/openapi.json"):
        assert "get" in paths[builtin]
    # Who may call: sign-in is open, the rest needs the bearer token.
    assert "security" not in paths["/auth/login"]["post"]
    assert paths["/admin/users"]["get"]["security"] == [{"bearer": []}]
    assert "403" in paths["/admin/users"]["get"]["responses"]
    problem = paths["/admin/users"]["get"]["responses"]["401"]["content"]
    assert "application/problem+json" in problem


async def test_an_endpoint_the_config_does_not_route_is_left_out(
    gateway: MakeGateway, policies: Path
) -> None:
    text = identity_config().replace(
        "  - {path: /auth/register, methods: [POST], handler: auth.register, auth: none}\n", ""
    )
    client = await gateway(text)
    spec = await (await client.get("/openapi.json")).json()
    assert "/auth/register" not in spec["paths"]
    assert "/auth/login" in spec["paths"]


def _request_shapes() -> dict[str, type[Any]]:
    shapes: dict[str, type[Any]] = {}
    handlers = [*ROUTABLE.values(), *(h for sub in MOUNTED.values() for _, _, h in sub.entries)]
    for handler in handlers:
        op = declared(handler)
        if op is not None and op.request is not None:
            shapes[op.request.__name__] = op.request
    return shapes


async def test_request_schemas_say_what_validation_requires(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    shapes = _request_shapes()
    assert {"LoginRequest", "RegisterRequest", "NewUser", "UserPatch"} <= set(shapes)
    for name, shape in shapes.items():
        required = [
            f.name
            for f in dataclasses.fields(shape)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        assert schemas[name].get("required", []) == required, name
        assert set(schemas[name]["properties"]) == {f.name for f in dataclasses.fields(shape)}


async def test_the_validator_and_the_schema_agree(client: Client, spec: dict[str, Any]) -> None:
    # The same bodies through the schema (jsonschema) and through the endpoint's own validation.
    schema = {**spec["components"]["schemas"]["RegisterRequest"], "$defs": {}}
    cases: list[tuple[dict[str, Any], bool]] = [
        ({"username": "valid.name", "password": "a long enough password"}, True),
        ({"username": "x", "password": "a long enough password"}, False),  # too short
        ({"username": "bad name!", "password": "a long enough password"}, False),  # pattern
        ({"username": "valid.two", "password": "a long enough password", "extra": 1}, False),
        ({"password": "a long enough password"}, False),  # required
        ({"username": "valid.three", "password": "pw long enough", "email": None}, True),
    ]
    for body, valid in cases:
        by_schema = jsonschema.Draft202012Validator(schema).is_valid(body)
        assert by_schema is valid, body
        response = await client.post("/auth/register", json=body)
        if valid:
            assert response.status in (201, 400), body  # 400 only for a weak password
            if response.status == 400:
                assert (await response.json())["code"] != "invalid_field", body
        else:
            assert response.status == 400, body
            assert (await response.json())["code"] in ("invalid_field", "invalid_body"), body


def _media(spec: dict[str, Any], path: str, status: str = "200") -> set[str]:
    return set(spec["paths"][path]["get"]["responses"][status].get("content", {}))


async def test_declared_media_types_are_the_ones_served(
    client: Client, spec: dict[str, Any]
) -> None:
    # Each declaration against a real answer's Content-Type (its charset aside).
    await make_user(client, "root", "admin")
    admin = bearer(await login(client, "root"))
    cases = [
        ("/openapi.json", {}, "application/json"),
        ("/metrics", {}, "text/plain; version=0.0.4"),  # from loopback: no token needed
        ("/admin/ui", {}, "text/html"),
        ("/admin/ui/app.js", {}, "text/javascript"),
        ("/admin/usage?format=csv", admin, "text/csv"),
    ]
    for url, headers, media in cases:
        response = await client.get(url, headers=headers)
        assert response.status == 200, url
        served = response.headers["Content-Type"].removesuffix("; charset=utf-8")
        assert served == media, url
        assert media in _media(spec, url.split("?")[0]), url
    assert spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"] == {
        "text/plain; version=0.0.4": {"schema": {"type": "string"}}
    }
    assert _media(spec, "/admin/ui") == {"text/html", "text/javascript", "text/css"}
    assert spec["paths"]["/admin/ui"]["get"]["responses"]["200"]["content"]["text/html"] == {
        "schema": {"type": "string"}
    }
    usage = spec["paths"]["/admin/usage"]["get"]["responses"]["200"]["content"]
    assert set(usage) == {"application/json", "text/csv"}


async def test_openapi_json_declares_its_own_200(spec: dict[str, Any]) -> None:
    ok = spec["paths"]["/openapi.json"]["get"]["responses"]["200"]
    assert ok["content"] == {"application/json": {"schema": {"type": "object"}}}


async def test_503_database_down_is_declared_where_the_database_is_used(
    spec: dict[str, Any],
) -> None:
    paths = spec["paths"]
    uses_database = [
        ("/auth/login", "post"),  # its 503 busy as well
        ("/auth/register", "post"),
        ("/auth/refresh", "post"),
        ("/auth/logout", "post"),
        ("/users/me", "get"),
        ("/admin/users", "get"),
        ("/admin/audit-logs", "get"),
        ("/admin/usage", "get"),
        ("/readyz", "get"),
    ]
    for path, method in uses_database:
        down = paths[path][method]["responses"]["503"]
        assert "database_down" in down["description"], path
        assert "application/problem+json" in down["content"], path
    assert "busy" in paths["/auth/login"]["post"]["responses"]["503"]["description"]
    for path in ("/healthz", "/.well-known/jwks.json", "/admin/ui"):
        assert "503" not in paths[path]["get"]["responses"], path


async def test_the_dashboard_answers_with_a_trailing_slash_too(client: Client) -> None:
    plain = await client.get("/admin/ui")
    slash = await client.get("/admin/ui/")  # no token: the page signs in itself

    assert slash.status == 200
    assert slash.content_type == "text/html"
    assert await slash.read() == await plain.read()
    assert slash.headers["Content-Security-Policy"] == plain.headers["Content-Security-Policy"]
