"""server.status_listen: a second, plain-HTTP listener for probes (README "Limits and
failure behaviour"). Imported by gateway/server/run.py only.

It answers GET/HEAD /healthz and /readyz with the main app's own handlers and
state, and a 404 problem for anything else: nothing is routed or proxied
there. Its connections have their own guard with a small cap of their own, so
a flood on the main listener (idle sockets, a slowloris, a burst of accepts
queued in the kernel ahead of a probe) never delays or locks out the probe of
an admin or a load balancer, as Kong's `status_listen` and Envoy's admin port.
Bind it to an address clients cannot reach (loopback, a management network).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiohttp import web

from gateway.handlers.health import healthz, readyz
from gateway.middleware.errors import ErrorsConfig, errors
from gateway.middleware.request_id import RequestIdConfig, request_id, stamp_headers
from gateway.runtime import HOLDER
from gateway.server.connections import ConnectionGuard
from gateway.server.protocol import GatewayRunner, GatewaySite
from gateway.services import SERVICES
from gateway.state.stores import Stores

log = logging.getLogger("gateway.server")

# Probes are few and short: a cap this small cannot be used to exhaust the process's
# files, and at it the idlest probe connection makes room as on the main listener.
STATUS_MAX_CONNECTIONS = 64


@dataclass(frozen=True, slots=True)
class StatusLimits:
    """The status listener's limits: the main listener's timeouts, its own small cap."""

    header_timeout: float
    keepalive_timeout: float
    max_connections: int = STATUS_MAX_CONNECTIONS
    server_header: str = "gateway"  # the main listener's server.server_header


def status_app(main: web.Application) -> web.Application:
    """/healthz and /readyz over `main`'s live config and services; nothing else."""
    app = web.Application(middlewares=[request_id(RequestIdConfig()), errors(ErrorsConfig())])
    app[HOLDER] = main[HOLDER]
    app[SERVICES] = main[SERVICES]
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.on_response_prepare.append(stamp_headers(Stores()))  # no audit for probes
    return app


class StatusListener:
    """The running listener; `close()` stops it."""

    def __init__(self, runner: GatewayRunner, guard: ConnectionGuard) -> None:
        self._runner = runner
        self._guard = guard

    async def close(self) -> None:
        await self._runner.cleanup()
        self._guard.stop()


async def start_status_listener(
    main: web.Application,
    address: tuple[str, int],
    limits: StatusLimits,
    *,
    reuse_port: bool = False,
) -> StatusListener:
    """Listen on `address` with `status_app(main)` (`main` set up and started first)."""
    loop = asyncio.get_running_loop()
    guard = ConnectionGuard(lambda: limits, clock=loop.time)
    runner = GatewayRunner(
        status_app(main), guard=guard, lean=False, handle_signals=False, access_log=None
    )
    await runner.setup()
    host, port = address
    # --workers: each worker listens (reuse_port), the kernel spreads the probes
    site = GatewaySite(
        runner, host, port, handshake_timeout=limits.header_timeout, reuse_port=reuse_port
    )
    guard.start(loop)
    await site.start()
    log.info("status listener", extra={"address": f"http://{host}:{site.port}"})
    return StatusListener(runner, guard)
