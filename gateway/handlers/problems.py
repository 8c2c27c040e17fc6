"""GET /problems/ and /problems/CODE: what each problem code means, where its `type` points.

Every problem the gateway answers carries `type: /problems/CODE` (RFC 9457
§3.1.1, a reference resolved against the request's URI); opened, it is this
page: the code, its status, what it means and what to do. Served without a
token, like /healthz, from the one table of codes (gateway/problem_types.py)
that the README's table is written from. HTML for a browser; JSON when the
client's Accept prefers it. An unknown code is a 404 problem, `unknown_code`.
"""

from __future__ import annotations

import html
import re

from aiohttp import web

from gateway.context import CTX
from gateway.handlers.api import Problem, Reply, Status, operation
from gateway.handlers.jsonio import json_response
from gateway.problem_types import BY_CODE, PROBLEM_TYPES, TYPE_PATH, ProblemType, type_uri
from gateway.problems import GatewayError

HEADERS = {
    # text only, nothing fetched or run, never framed
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "public, max-age=3600",
    "Vary": "Accept",
}
_CODE_SPAN = re.compile(r"`([^`]+)`")
_STYLE = (
    "body{font:16px/1.5 system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem}"
    "code{background:#eee;padding:0 .2em}table{border-collapse:collapse}"
    "td,th{border-bottom:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}"
)


def prefers_json(accept: str | None) -> bool:
    """Whether Accept ranks JSON above HTML (RFC 9110 §12.5.1); absent or */*: HTML."""
    best_json = best_html = 0.0
    for item in (accept or "").split(","):
        media, _, params = item.strip().partition(";")
        media = media.strip().lower()
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if media == "application/json" or media.endswith("+json"):
            best_json = max(best_json, quality)
        elif media in ("text/html", "text/*", "*/*"):
            best_html = max(best_html, quality)
    return best_json > best_html


def _text(plain: str) -> str:
    """Escaped HTML of a table text, its `code` spans as <code>."""
    return _CODE_SPAN.sub(r"<code>\1</code>", html.escape(plain, quote=False))


def _page(title: str, body: str) -> str:
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n"
        f"<body>\n{body}\n</body></html>\n"
    )


def _as_json(problem: ProblemType) -> dict[str, object]:
    return {
        "type": type_uri(problem.code),
        "code": problem.code,
        "status": problem.status,
        "title": problem.phrase,
        "means": problem.means,
        "todo": problem.todo,
    }


def code_page(problem: ProblemType) -> str:
    return _page(
        f"{problem.code}: {problem.status} {problem.phrase}",
        f"<h1><code>{problem.code}</code></h1>\n"
        f"<p>HTTP {problem.status} {html.escape(problem.phrase)}</p>\n"
        f"<h2>What it means</h2>\n<p>{_text(problem.means)}</p>\n"
        f"<h2>What to do</h2>\n<p>{_text(problem.todo)}</p>\n"
        f"<p>The problem's <code>code</code> is <code>{problem.code}</code> in every answer; "
        f'the <code>request_id</code> finds it in the gateway\'s log. <a href="{TYPE_PATH}">'
        "Every code</a>.</p>",
    )


def index_page() -> str:
    rows = "\n".join(
        f'<tr><td>{p.status}</td><td><a href="{type_uri(p.code)}"><code>{p.code}</code></a>'
        f"</td><td>{_text(p.means)}</td></tr>"
        for p in sorted(PROBLEM_TYPES, key=lambda p: p.status)
    )
    return _page(
        "Problem codes",
        "<h1>Problem codes</h1>\n<p>Every error of the gateway is an RFC 9457 problem "
        "(<code>application/problem+json</code>) whose <code>code</code> is one of these, and "
        "whose <code>type</code> is the page of that code.</p>\n"
        f"<table><tr><th>status</th><th>code</th><th>when</th></tr>\n{rows}\n</table>",
    )


@operation(
    "what each problem code means: the index (/problems/) or one code's page "
    "(/problems/CODE, the `type` of its problems)",
    access="anyone",
    method="GET",
    replies={
        200: Reply(
            "an HTML page; JSON when Accept prefers it",
            Status,
            media="text/html",
            also=("application/json",),
        ),
        404: Reply("no such code (unknown_code)", Problem),
    },
)
async def problems(request: web.Request) -> web.StreamResponse:
    path = request[CTX].path
    code = path.removeprefix(TYPE_PATH) if path.startswith(TYPE_PATH) else ""
    wants_json = prefers_json(request.headers.get("Accept"))
    if not code:
        if wants_json:
            response = json_response([_as_json(p) for p in PROBLEM_TYPES])
        else:
            response = web.Response(text=index_page(), content_type="text/html")
    else:
        problem = BY_CODE.get(code)
        if problem is None:
            raise GatewayError(
                404, "unknown_code", f"no problem code {code[:64]!r}; see {TYPE_PATH}"
            )
        if wants_json:
            response = json_response(_as_json(problem))
        else:
            response = web.Response(text=code_page(problem), content_type="text/html")
    response.headers.update(HEADERS)
    return response
