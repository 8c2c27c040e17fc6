"""`gateway serve`: listen, and on SIGTERM/SIGINT drain in-flight requests and exit 0.

SIGHUP reloads routes.yaml and policies/ (gateway/reload.py); so does editing them.
With server.tls, a changed cert/key pair is picked up without a restart
(gateway/tls/server.py).

Shutdown order: mark draining (/readyz turns 503), stop accepting, let
in-flight requests finish within server.shutdown_grace, close upstream pools.

Client connections are watched by one ConnectionGuard (gateway/server/connections.py):
server.header_timeout, server.keepalive_timeout and server.max_connections,
read from the live config at each sweep. The open-files limit is raised to
its hard limit at start, so that max_connections can be reached.
server.status_listen, when set, is a listener for /healthz and /readyz with
a guard of its own (gateway/server/status.py).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import signal
from pathlib import Path

from aiohttp import web

from gateway.app import build_app
from gateway.config import load_config
from gateway.config.schema.top import Config
from gateway.ports import address_in_use, busy_line
from gateway.reload import RELOADER
from gateway.runtime import HOLDER
from gateway.security.keys import KeyConfigError
from gateway.server.connections import ConnectionGuard
from gateway.server.protocol import GatewayRunner, GatewaySite
from gateway.server.siblings import serve_registry, siblings_folder
from gateway.server.status import StatusLimits, start_status_listener
from gateway.server.workers import exit_with_parent
from gateway.services import SERVICES, StartupError
from gateway.tls.redirect import start_redirect_listener
from gateway.tls.server import CertificateWatcher, server_context

log = logging.getLogger("gateway.server")

# File descriptors the process needs beyond client and upstream connections:
# the database, Redis, log files, the listener, health checks, the audit spool.
RESERVED_FILES = 256
# aiohttp's own idle timer, a backstop only: the guard closes idle connections first.
AIOHTTP_KEEPALIVE = 3630.0
# Connections the kernel has accepted for us but we have not taken yet. Linux caps
# it at net.core.somaxconn (as Go's net.Listen asks for that maximum): a burst of
# connections then waits for the guard to decide which to keep, instead of the
# kernel dropping SYNs blindly (each drop costs a client, an admin's too, a
# retransmit of a second or more).
LISTEN_BACKLOG = 65535


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
    open_files_limit(config)
    loop = asyncio.get_running_loop()
    holder = app[HOLDER]
    guard = ConnectionGuard(lambda: holder.current.config.server, clock=loop.time)
    runner = GatewayRunner(
        app,
        guard=guard,
        handle_signals=False,
        access_log=None,  # the audit log is the per-request record; no log call per request
        shutdown_timeout=server.shutdown_grace,
        keepalive_timeout=AIOHTTP_KEEPALIVE,
    )
    try:
        await runner.setup()
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        await app[HOLDER].current.close()
        return 1
    app[SERVICES].metrics.watch(
        "gateway_connections_open",
        "Client connections open on the listener (server.max_connections caps them)",
        lambda: guard.open,
    )
    listen_host = host or server.host
    listen_port = server.port if port is None else port
    site = GatewaySite(
        runner,
        listen_host,
        listen_port,
        # read at start: a reload does not change it for the listening socket
        handshake_timeout=server.header_timeout,
        ssl_context=context,
        backlog=LISTEN_BACKLOG,
        reuse_port=worker_of is not None,  # --workers: the kernel spreads connections
    )
    # Signals are handled before the port opens: a SIGHUP (reload) or SIGTERM sent
    # as soon as the port answers must never meet the default action (exit).
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, app[RELOADER].request)  # reload routes.yaml, policies/
    # Everything made at start-up (config, modules, SQLAlchemy, the app) lives as
    # long as the process: moved out of the collector's reach, a full collection
    # no longer walks it, which would stall every request in flight meanwhile.
    gc.collect()
    gc.freeze()
    guard.start(loop)
    status = None
    if server.status_listen is not None:  # before the main port: probes answer first
        limits = StatusLimits(
            server.header_timeout, server.keepalive_timeout, server_header=server.server_header
        )
        status = await start_status_listener(
            app, server.status_listen, limits, reuse_port=worker_of is not None
        )
    try:
        await site.start()
    except OSError as exc:
        if not address_in_use(exc):
            raise
        # One line instead of a traceback (README "Two commands"); nothing was served.
        another = f"gateway serve --port N, or server.listen in {config.path}"
        what = "server.listen" if port is None else "--port"
        log.error("cannot start: %s", busy_line(listen_host, listen_port, what, another))
        if status is not None:
            await status.close()
        await runner.cleanup()
        guard.stop()
        return 1
    bound = _bound_port(runner) or listen_port
    tasks: list[asyncio.Task[None]] = []
    redirect = None
    if tls is not None and context is not None:
        watcher = CertificateWatcher(context, tls.cert, tls.key)  # new pair: no restart
        tasks.append(asyncio.create_task(watcher.run()))
        if tls.redirect_http is not None:
            redirect = await start_redirect_listener(
                tls.redirect_http, bound, holder, reuse_port=worker_of is not None
            )
    log.info(
        "listening",
        extra={
            "address": f"{'https' if server.tls else 'http'}://{listen_host}:{bound}",
            "routes": len(config.routes),
            "upstreams": len(config.upstreams),
            "config": str(config.path),
        },
    )

    registry_server = None
    if worker_of is not None:
        tasks.append(asyncio.create_task(exit_with_parent(worker_of, stop.set)))
        siblings = siblings_folder()
        if siblings is not None:  # one /metrics scrape answers for every worker
            folder, worker, _ = siblings
            registry_server = await serve_registry(folder, worker, app[SERVICES].metrics.render)
    await stop.wait()
    for task in tasks:
        task.cancel()

    log.info("draining", extra={"grace_seconds": server.shutdown_grace})
    if registry_server is not None:
        registry_server.close()
    app[HOLDER].draining = True
    if redirect is not None:
        await redirect.cleanup()
    await runner.cleanup()  # stop accepting → wait for in-flight → on_cleanup closes pools
    if status is not None:  # probes answer (/readyz: 503 draining) until the end
        await status.close()
    guard.stop()
    log.info("stopped")
    return 0


def open_files_limit(config: Config) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (each connection is a file);
    warn when server.max_connections plus the upstream pools cannot fit. The limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An unlimited hard limit is still capped by the kernel (fs.nr_open, 2**20 by default).
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if wanted > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open files limit", extra={"error": str(exc)})
    upstream_files = sum(u.max_connections * len(u.targets) for u in config.upstreams.values())
    needed = config.server.max_connections + upstream_files + RESERVED_FILES
    log.info("open files limit", extra={"limit": soft, "needed": needed})
    if needed > soft:
        log.warning(
            "server.max_connections cannot be reached: the open files limit is lower "
            "than client connections + upstream pools + reserve; lower max_connections "
            "or raise the hard limit (ulimit -Hn, LimitNOFILE=)",
            extra={
                "limit": soft,
                "max_connections": config.server.max_connections,
                "upstream_connections": upstream_files,
                "reserve": RESERVED_FILES,
            },
        )
    return soft


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
