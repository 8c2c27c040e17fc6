"""Builds the aiohttp Application; THE chain is the literal list in `chain()`.

Order, outermost first, and why:
  request_id     - every response, even a crash, carries an id to quote
  errors         - wraps everything after it, so any failure becomes a problem
  audit          - one row per request, allowed or denied: it sees every outcome
                   of the stages below (and records the request metrics)
  route          - normalise the path, pin the config, 404/405 before any work
  authentication - routes without `auth: none` need a valid, unrevoked token
  policy         - the caller's role must pass the route's roles (403)
  rate_limit     - the route's GCRA bucket for this caller (429); after policy, so
                   refused callers do not spend anyone's quota
then `dispatch`: the route's local handler or the streaming proxy.

On the gateway's own server (GatewayRunner, gateway/server/protocol.py) the
requests of upstream and model routes take the lean path instead
(gateway/server/lean.py): the same steps in the same order, through the same
functions (gateway/pipeline/admission.py, gateway/audit/record.py), without
aiohttp.web's request, middleware or response objects.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from aiohttp import web

from gateway import tracing
from gateway.audit.access import AccessLog
from gateway.config.schema.top import Config
from gateway.dispatch import defer_expect, dispatcher
from gateway.handlers.registry import BUILTIN, ROUTABLE
from gateway.middleware import Handler, Middleware
from gateway.middleware.audit import AuditStageConfig, audit
from gateway.middleware.authentication import AuthenticationConfig, authentication
from gateway.middleware.cors import CorsStageConfig, cors
from gateway.middleware.errors import ErrorsConfig, errors
from gateway.middleware.policy import PolicyConfig, policy
from gateway.middleware.rate_limit import RateLimitStageConfig, rate_limit
from gateway.middleware.request_id import RequestIdConfig, request_id, stamp_headers
from gateway.middleware.route import RouteStageConfig, route
from gateway.pipeline.admission import Admission
from gateway.reload import RELOADER, Reloader
from gateway.runtime import HOLDER, Runtime, RuntimeHolder
from gateway.services import SERVICES, STORES, ServiceSettings, open_services
from gateway.state.stores import Stores


def chain(holder: RuntimeHolder, stores: Stores) -> list[Middleware]:
    """The middleware stages, outermost first. Nothing else appends to this list.

    Each stage gets what it decides with here: the live config's holder, and
    the stores (identity, limiter) bound once the services are open."""
    admission = Admission(stores)
    return [
        request_id(RequestIdConfig()),
        errors(ErrorsConfig()),
        audit(AuditStageConfig(stores)),
        cors(CorsStageConfig(holder)),
        route(RouteStageConfig(holder)),
        authentication(AuthenticationConfig(admission)),
        policy(PolicyConfig()),
        rate_limit(RateLimitStageConfig(admission)),
    ]


def _listener_cert(holder: RuntimeHolder) -> Path | None:
    tls = holder.current.config.server.tls
    return tls.cert if tls is not None else None


def build_app(
    config: Config,
    handlers: Mapping[str, Handler] | None = None,
    settings: ServiceSettings | None = None,
) -> web.Application:
    """The gateway for `config`. `handlers` adds routable handlers; `settings` says
    where the database and Redis are (default: the environment)."""
    holder = RuntimeHolder(Runtime.build(config))
    stores = Stores()
    app = web.Application(
        middlewares=chain(holder, stores),
        # Local handlers read bodies through jsonio, which enforces server.max_body
        # from the live config; the proxy streams and counts. This is only a cap.
        client_max_size=config.server.max_body,
    )
    app[HOLDER] = holder
    app[STORES] = stores
    registry: dict[str, Handler] = {**BUILTIN, **ROUTABLE, **(handlers or {})}
    # aiohttp would answer `Expect: 100-continue` before any stage runs; the
    # gateway answers it in dispatch, once the chain has let the request through.
    app.router.add_route(
        "*", "/{tail:.*}", dispatcher(registry, stores, holder), expect_handler=defer_expect
    )
    app.on_response_prepare.append(stamp_headers(stores))

    reloader = Reloader(holder, extra_handlers=handlers or ())
    app[RELOADER] = reloader

    async def issuer_keys_ctx(app: web.Application) -> AsyncIterator[None]:
        # The outside issuers' JWK Sets; one that cannot be fetched is logged and does
        # not stop the start (its tokens get 401 until its keys arrive).
        await holder.current.load_issuer_keys()
        yield

    async def services_ctx(app: web.Application) -> AsyncIterator[None]:
        services = await open_services(config, settings or ServiceSettings.from_env(config))
        app[SERVICES] = services
        stores.bind(
            services.identity,
            services.limiter,
            services.quotas,
            services.gate,
            services.metrics,
            services.audit,
        )
        tracing.start()  # only when the OTEL_* variables ask for traces
        metrics = services.metrics
        metrics.watch(
            "gateway_config_version",
            "The version of the config serving (1 at start, one more per reload)",
            lambda: holder.current.version,
        )
        metrics.watch_reloads(lambda: reloader.counts)
        metrics.watch_certificate(lambda: _listener_cert(holder))
        target = config.server.access_log  # read at start (a reload warns it needs a restart)
        if target != "off":
            stores.access = AccessLog(1 if target == "stdout" else 2)
            services.metrics.watch_access_log(stores.access)
        yield
        if stores.access is not None:
            stores.access.close()
            stores.access = None
        await asyncio.to_thread(tracing.stop)  # exports the spans still batched
        await services.close()

    async def reload_ctx(app: web.Application) -> AsyncIterator[None]:
        # After services (each reload is an audit row), stopped before they close.
        reloader.start(app[SERVICES].audit.submit)
        yield
        await reloader.stop()

    async def close_pools(app: web.Application) -> None:
        await holder.close()  # the live Runtime's pools and those of retired ones

    app.cleanup_ctx.append(issuer_keys_ctx)
    app.cleanup_ctx.append(services_ctx)
    app.cleanup_ctx.append(reload_ctx)
    app.on_cleanup.append(close_pools)
    return app
