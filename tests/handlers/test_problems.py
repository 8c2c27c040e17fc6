"""/problems/ and /problems/CODE: each problem's `type` opens the gateway's own page for its
code, and the pages, the README's table and the codes the gateway raises are one table."""

from __future__ import annotations

import ast
import html
import inspect
import re
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest

from gateway.problem_types import BY_CODE, PROBLEM_TYPES, between_markers, readme_table, type_uri
from gateway.problems import GatewayError
from tests.conftest import MakeGateway
from tests.identity import Client

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text(encoding="utf-8")
_ROW = re.compile(r"^\| (\d{3}) \| `([a-z_]+)` \| (.+) \| (.+) \|$")


def readme_rows() -> list[tuple[int, str, str, str]]:
    """(status, code, when, what to do) of each row of the README's table of codes."""
    rows = []
    for line in between_markers(README).splitlines():
        found = _ROW.match(line)
        if found:
            status, code, when, todo = found.groups()
            rows.append((int(status), code, when.replace("\\|", "|"), todo.replace("\\|", "|")))
    return rows


@pytest.fixture
async def client(gateway: MakeGateway, echo_port: int) -> Client:
    # A catch-all proxied route: the built-in pages still come first.
    return await gateway(
        f"upstreams:\n  echo: {{targets: ['http://127.0.0.1:{echo_port}']}}\n"
        "routes:\n  - {path: /**, upstream: echo}\n"  # auth required
    )


@pytest.fixture
def echo_port(echo: object) -> int:
    port = getattr(echo, "port", None)
    assert isinstance(port, int)
    return port


def test_the_readme_table_is_the_generated_one() -> None:
    assert between_markers(README) == readme_table(), (
        "README.md's table of problem codes is stale: "
        "run python -m gateway.problem_types --write README.md"
    )
    assert {code for _, code, _, _ in readme_rows()} == set(BY_CODE)


async def test_every_readme_row_is_served_as_its_page(client: Client) -> None:
    rows = readme_rows()
    assert len(rows) == len(PROBLEM_TYPES)
    for status, code, when, todo in rows:
        response = await client.get(f"/problems/{code}", headers={"Accept": "application/json"})
        assert response.status == 200, code
        assert await response.json() == {
            "type": f"/problems/{code}",
            "code": code,
            "status": status,
            "title": response_phrase(status),
            "means": when,
            "todo": todo,
        }
        page = await client.get(f"/problems/{code}")  # no Accept: the HTML page
        assert page.status == 200
        assert page.content_type == "text/html"
        text = await page.text()
        assert f"<code>{code}</code>" in text
        assert f"HTTP {status} " in text
        for sentence in (when, todo):
            shown = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(sentence, quote=False))
            assert shown in text, (code, sentence)


def response_phrase(status: int) -> str:
    from http import HTTPStatus

    return HTTPStatus(status).phrase


async def test_the_index_lists_every_code(client: Client) -> None:
    for path in ("/problems/", "/problems"):
        response = await client.get(path, headers={"Accept": "text/html,*/*;q=0.8"})
        assert response.status == 200
        assert response.content_type == "text/html"
        text = await response.text()
        for problem in PROBLEM_TYPES:
            assert f'href="/problems/{problem.code}"' in text
    listed = await client.get("/problems/", headers={"Accept": "application/json"})
    assert [item["code"] for item in await listed.json()] == [p.code for p in PROBLEM_TYPES]


async def test_a_problems_type_opens_its_page_without_a_token(client: Client) -> None:
    refused = await client.get("/anything")  # the catch-all route needs a token
    assert refused.status == 401
    problem = await refused.json()
    assert problem["type"] == "/problems/missing_token"
    opened = urljoin(str(refused.url), problem["type"])  # RFC 3986 §5, as a client resolves it
    assert opened == str(refused.url.with_path("/problems/missing_token"))
    page = await client.get(urlsplit(opened).path)
    assert page.status == 200
    assert "<code>missing_token</code>" in await page.text()
    head = await client.head("/problems/missing_token")
    assert head.status == 200
    assert head.headers["Content-Security-Policy"].startswith("default-src 'none'")


async def test_an_unknown_code_is_a_404_problem(client: Client) -> None:
    for path in ("/problems/no_such_code", "/problems/missing_token/more", "/problems/%3Cb%3E"):
        response = await client.get(path)
        assert response.status == 404, path
        assert response.content_type == "application/problem+json"
        problem = await response.json()
        assert problem["code"] == "unknown_code"
        assert problem["type"] == "/problems/unknown_code"
    # only GET and HEAD
    response = await client.post("/problems/missing_token")
    assert response.status == 405


async def test_the_pages_are_in_openapi(client: Client) -> None:
    paths = (await (await client.get("/openapi.json")).json())["paths"]
    assert "get" in paths["/problems/"]
    page = paths["/problems/{code}"]["get"]
    assert page["parameters"][0]["name"] == "code"
    assert set(page["responses"]["200"]["content"]) == {"text/html", "application/json"}
    assert "security" not in page  # anyone


def test_a_code_outside_the_table_gets_about_blank() -> None:
    assert type_uri("no_route") == "/problems/no_route"
    assert type_uri("http_error") == "about:blank"  # RFC 9457 §4.2.1


# Calls whose argument at this position is a problem code.
_CODE_ARGUMENT = {
    "GatewayError": 1,
    "Deny": 0,
    "unauthorized": 0,
    "refresh_refused": 0,
    "request_timeout": 0,
    "TokenError": 0,
}


def raised_codes() -> dict[str, str]:
    """Every code literal the gateway's source passes where a problem code goes."""
    found: dict[str, str] = {}
    for path in sorted((REPO / "gateway").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            values = [kw.value for kw in node.keywords if kw.arg == "code"]
            at = _CODE_ARGUMENT.get(name)
            if at is not None and len(node.args) > at:
                values.append(node.args[at])
            for value in values:
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    found[value.value] = f"{path.relative_to(REPO)}:{node.lineno}"
    return found


def test_every_code_the_gateway_raises_has_a_page() -> None:
    raised = raised_codes()
    for name, member in vars(GatewayError).items():  # the named constructors' default codes
        function = getattr(member, "__func__", None)
        if function is not None and "code" in inspect.signature(function).parameters:
            default = inspect.signature(function).parameters["code"].default
            if isinstance(default, str):
                raised[default] = f"GatewayError.{name}"
    assert {"missing_token", "upstream_invalid", "role_forbidden", "database_down"} <= set(raised)
    missing = {code: where for code, where in raised.items() if code not in BY_CODE}
    assert missing == {}, "add these codes to gateway/problem_types.py"
