"""`gateway serve`: listen, and on SIGTERM/SIGINT drain in-flight requests and exit 0.

SIGHUP reloads routes.yaml and policies/ (gateway/reload.py); so does editing them.
With server.tls, a changed cert/key pair is picked up without a restart (gateway/tls.py).

Shutdown order: mark draining (/readyz turns 503), stop accepting, let
in-flight requests finish within server.shutdown_grace, close upstream pools.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from pathlib import Path

from aiohttp import web

from gateway.app import build_app
from gateway.config import load_config
from gateway.context import HOLDER
from gateway.lowlevel import GatewayRunner
from gateway.reload import RELOADER
from gateway.security.keys import KeyConfigError
from gateway.services import StartupError
from gateway.tls import CertificateWatcher, server_context, start_redirect_listener
from gateway.workers import exit_with_parent

log = logging.getLogger("gateway.server")


async def serve(
    config_path: Path,
    host: str | None = None,
    port: int | None = None,
    *,
    worker_of: int | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT. `worker_of`: the pid of the `--workers` parent (the
    port is shared with the other workers, and the worker stops if the parent is gone)."""
    config = load_config(config_path)
    tls = config.server.tls
    try:
        context = server_context(tls.cert, tls.key) if tls else None
    except (OSError, ValueError) as exc:  # changed since the config was checked
        log.error("cannot start: server.tls: %s", exc)
        return 1
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
        ssl_context=context,
        backlog=1024,
        reuse_port=worker_of is not None,  # --workers: the kernel spreads connections
    )
    # Signals are handled before the port opens: a SIGHUP (reload) or SIGTERM sent
    # as soon as the port answers must never meet the default action (exit).
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, app[RELOADER].request)  # reload routes.yaml, policies/
    # Everything made at start-up (config, modules, SQLAlchemy, the app) lives as
    # long as the process: moved out of the collector's reach, a full collection
    # no longer walks it, which would stall every request in flight meanwhile.
    gc.collect()
    gc.freeze()
    await site.start()
    bound = _bound_port(runner) or listen_port
    tasks: list[asyncio.Task[None]] = []
    redirect = None
    if tls is not None and context is not None:
        watcher = CertificateWatcher(context, tls.cert, tls.key)  # new pair: no restart
        tasks.append(asyncio.create_task(watcher.run()))
        if tls.redirect_http is not None:
            redirect = await start_redirect_listener(
                tls.redirect_http, bound, reuse_port=worker_of is not None
            )
    log.info(
        "listening",
        extra={
            "address": f"{'https' if server.tls else 'http'}://{listen_host}:{bound}",
            "routes": len(config.routes),
            "upstreams": len(config.upstreams),
            "config": str(config.path),
            "pid": os.getpid(),
        },
    )

    if worker_of is not None:
        tasks.append(asyncio.create_task(exit_with_parent(worker_of, stop.set)))
    await stop.wait()
    for task in tasks:
        task.cancel()

    log.info("draining", extra={"grace_seconds": server.shutdown_grace})
    app[HOLDER].draining = True
    if redirect is not None:
        await redirect.cleanup()
    await runner.cleanup()  # stop accepting → wait for in-flight → on_cleanup closes pools
    log.info("stopped")
    return 0


def _bound_port(runner: web.AppRunner) -> int | None:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return None


def run(
    config_path: Path,
    host: str | None = None,
    port: int | None = None,
    *,
    worker_of: int | None = None,
) -> int:
    main = serve(config_path, host, port, worker_of=worker_of)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
