"""server.tls.redirect_http: the plain-HTTP listener that sends every request to https with
a 308 (README, "TLS and certificates"). Imported by gateway/server/run.py only."""

from __future__ import annotations

import logging
import re

from aiohttp import web

from gateway.middleware.request_id import RequestIdConfig, request_id, stamp_headers
from gateway.runtime import HOLDER, RuntimeHolder
from gateway.server.protocol import GatewayRunner
from gateway.state.stores import Stores

log = logging.getLogger("gateway.tls")

_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})")
_IPV6 = re.compile(r"\[[0-9A-Fa-f:.]{2,45}\]")


def https_location(host_header: str, fallback_host: str, https_port: int, target: str) -> str:
    """Where the redirect listener sends a request: the same host and target on https.

    The Host header's host is used when it is a plain host name or address
    (its port is dropped); anything else falls back to `fallback_host`.
    """
    host = _header_host(host_header) or fallback_host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    port = "" if https_port == 443 else f":{https_port}"
    if not target.startswith("/"):
        target = "/"  # `OPTIONS *` or an absolute-form target: the root
    return f"https://{host}{port}{target}"


def _header_host(header: str) -> str | None:
    if header.startswith("["):
        end = header.find("]")
        host = header[: end + 1]
        return host if end > 0 and _IPV6.fullmatch(host) else None
    host = header.rsplit(":", 1)[0] if header.count(":") == 1 else header
    return host if _HOST_NAME.fullmatch(host) else None


def redirect_app(https_port: int, holder: RuntimeHolder | None = None) -> web.Application:
    """server.tls.redirect_http: every request, whatever its path, gets a 308 to https;
    `holder`: the live config (its server.server_header), when given."""

    async def to_https(request: web.Request) -> web.StreamResponse:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        fallback = str(sockname[0]) if sockname else "localhost"
        target = request.rel_url.raw_path_qs
        location = https_location(request.headers.get("Host", ""), fallback, https_port, target)
        # 308, not 301: the method and body are kept when the client follows it.
        return web.Response(status=308, headers={"Location": location})

    # Not the gateway's chain: no route, no auth, nothing proxied; only the request id.
    app = web.Application(middlewares=[request_id(RequestIdConfig())])
    app.router.add_route("*", "/{tail:.*}", to_https)
    if holder is not None:
        app[HOLDER] = holder
    app.on_response_prepare.append(stamp_headers(Stores()))  # no audit here
    return app


async def start_redirect_listener(
    address: tuple[str, int],
    https_port: int,
    holder: RuntimeHolder | None = None,
    reuse_port: bool = False,
) -> web.AppRunner:
    """Listen on `address` with `redirect_app`; the caller cleans the runner up."""
    runner = GatewayRunner(redirect_app(https_port, holder), handle_signals=False, access_log=None)
    await runner.setup()
    host, port = address
    await web.TCPSite(runner, host, port, reuse_port=reuse_port).start()
    log.info("redirecting to https", extra={"address": f"http://{host}:{port}"})
    return runner
