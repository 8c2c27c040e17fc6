"""GET /admin/ui: the dashboard, a static page served without a token (README "The dashboard").

The page signs in through /auth/login and reads the admin API with the
admin's own token; everything it needs is in gateway/ui/ (no build step, no
CDN). It is served with a Content-Security-Policy that allows this origin
only, and may not be framed.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from gateway.context import CTX
from gateway.handlers.api import Reply, Text, operation

UI = Path(__file__).resolve().parent.parent / "ui"
# request path → (file in gateway/ui/, media type)
ASSETS = {
    "/admin/ui": ("index.html", "text/html"),
    "/admin/ui/": ("index.html", "text/html"),  # the page, with the slash a browser may add
    "/admin/ui/app.js": ("app.js", "text/javascript"),
    "/admin/ui/app.css": ("app.css", "text/css"),
}
SECURITY = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_FILES: dict[str, bytes] = {}


@operation(
    "the admin dashboard (a static page; it signs in with the admin's own credentials)",
    access="anyone",
    method="GET",
    replies={
        200: Reply(
            "the page or one of its assets",
            Text,
            media="text/html",
            also=("text/javascript", "text/css"),
        )
    },
)
async def ui(request: web.Request) -> web.StreamResponse:
    name, media = ASSETS[request[CTX].path]
    body = _FILES.get(name)
    if body is None:
        body = _FILES[name] = (UI / name).read_bytes()
    return web.Response(body=body, content_type=media, charset="utf-8", headers=SECURITY)
