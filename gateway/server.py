"""`gateway serve`: listen, and on SIGTERM/SIGINT drain in-flight requests and exit 0.

Shutdown order: mark draining (/readyz turns 503), stop accepting, let
in-flight requests finish within server.shutdown_grace, close upstream pools.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from pathlib import Path

from aiohttp import web

from gateway.app import build_app
from gateway.config import load_config
from gateway.config.schema import TLSConfig
from gateway.context import HOLDER
from gateway.lowlevel import GatewayRunner
from gateway.security.keys import KeyConfigError
from gateway.services import StartupError

log = logging.getLogger("gateway.server")


def tls_context(tls: TLSConfig) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20")  # forward secrecy, AEAD only
    context.set_alpn_protocols(["http/1.1"])
    context.load_cert_chain(tls.cert, tls.key)
    return context


async def serve(config_path: Path, host: str | None = None, port: int | None = None) -> int:
    config = load_config(config_path)
    try:
        app = build_app(config)
    except KeyConfigError as exc:
        log.error("cannot start: %s", exc)
        return 1
    server = config.server
    runner = GatewayRunner(
        app,
        handle_signals=False,
        access_log=None,  # the audit log is the per-request record; no log call per request
        shutdown_timeout=server.shutdown_grace,
    )
    try:
        await runner.setup()
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        await app[HOLDER].current.close()
        return 1
    listen_host = host or server.host
    listen_port = server.port if port is None else port
    site = web.TCPSite(
        runner,
        listen_host,
        listen_port,
        ssl_context=tls_context(server.tls) if server.tls else None,
        backlog=1024,
    )
    await site.start()
    bound = _bound_port(runner) or listen_port
    log.info(
        "listening",
        extra={
            "address": f"{'https' if server.tls else 'http'}://{listen_host}:{bound}",
            "routes": len(config.routes),
            "upstreams": len(config.upstreams),
            "config": str(config.path),
        },
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()

    log.info("draining", extra={"grace_seconds": server.shutdown_grace})
    app[HOLDER].draining = True
    await runner.cleanup()  # stop accepting → wait for in-flight → on_cleanup closes pools
    log.info("stopped")
    return 0


def _bound_port(runner: web.AppRunner) -> int | None:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return None


def run(config_path: Path, host: str | None = None, port: int | None = None) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(config_path, host, port))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(serve(config_path, host, port))
