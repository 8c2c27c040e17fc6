"""A call to a model route: usage metering, token quotas and bounded fallback.

The client's body is read when something needs it whole: the usage reader,
to plan the call (e.g. ask a streaming model to report usage), or a fallback,
to send the same body again. Otherwise it streams through as on any route.

Fallback (`models.NAME.fallback`): the models are tried in turn, each on its
own pool, usage format and token quota, while

- the failure came before any byte reached the client: a refused or timed
  out connection, no healthy target, a timeout before the response head, a
  connection closed before it, or a head with status 429 or 5xx;
- fewer than `max_attempts` calls were made and the `fallback_budget` (time
  from arrival to a response head, across every attempt; by default the sum
  of the chain's timeouts) is not spent;
- the body can be sent again (it was read whole: at most server.max_body).

Each attempt is bounded by its own model's `timeout` (and `first_byte_timeout`),
so a primary that is slow to start gives way to its fallback when its own
timeout passes, not when the whole budget does.

A fallback model that the caller's role may not use is never tried; one whose
token quota is spent is passed over. The quota of the model that answered is
charged; the reservations of the ones that failed are given back. The
response names the model that answered in `X-Gateway-Model`, and the report
row charges that model, counts the attempts and names the models that failed
before it (`/admin/usage` counts their failed attempts and fallbacks).
"""

from __future__ import annotations

import logging
import math
import time

from multidict import CIMultiDict

from gateway.config.schema.models import ModelConfig
from gateway.config.schema.routes import RateLimitConfig, Route
from gateway.config.schema.server import ServerConfig
from gateway.context import Outcome, RequestContext
from gateway.pipeline.rate_limit import decide_quota, over_quota, quota_key
from gateway.pipeline.verdict import Deny
from gateway.problems import GatewayError
from gateway.proxy.exchange import Incoming, Outgoing
from gateway.proxy.forward import (
    FellThrough,
    attempts,
    check_length,
    limited,
    request_headers,
    streamed_body,
    upstream_path,
)
from gateway.proxy.metering import Meter
from gateway.runtime import Runtime
from gateway.state.interfaces import QuotaStore
from gateway.usage import MAX_PARSE, UsageReader

log = logging.getLogger("gateway.proxy")


class _Quota:
    """A token reservation on one limiter key, to settle once the call is over."""

    __slots__ = ("key", "limit", "limiter", "reserved")

    def __init__(
        self, limiter: QuotaStore, key: str, limit: RateLimitConfig, reserved: int
    ) -> None:
        self.limiter = limiter
        self.key = key
        self.limit = limit
        self.reserved = reserved

    async def settle(self, delta: int) -> None:
        rate = self.limit.rate
        await self.limiter.settle(self.key, rate.limit, rate.period, delta)


class _Chain:
    """The fallback state of one request: what `attempts` asks before falling through."""

    __slots__ = ("deadline", "left", "made", "max_attempts")

    def __init__(self, deadline: float, max_attempts: int) -> None:
        self.deadline = deadline
        self.max_attempts = max_attempts
        self.made = 0  # calls made so far
        self.left = 0  # models after the current one that may still be tried

    def possible(self) -> bool:
        return self.left > 0 and self.made < self.max_attempts and time.monotonic() < self.deadline


async def forward_model(
    request: Incoming,
    out: Outgoing,
    ctx: RequestContext,
    route: Route,
    runtime: Runtime,
    server: ServerConfig,
    quotas: QuotaStore,
) -> None:
    check_length(request, server)
    assert route.model is not None
    primary = runtime.config.models[route.model]
    chain = _usable_chain(primary, ctx, runtime)
    replay = len(chain) > 1 and primary.attempts > 1
    raw: bytes | None = None
    stream: object = None
    if request.body_exists:
        if replay or (runtime.readers.get(primary.name) and _small(request)):
            raw = await _read_body(request, ctx, server.max_body)
        else:
            stream = streamed_body(request, ctx, server.max_body)
    path = upstream_path(ctx, route) + ("?" + ctx.query if ctx.query else "")
    budget = primary.fallback_budget or _chain_time(chain, runtime)
    state = _Chain(ctx.started + budget, primary.attempts) if replay else None

    error: GatewayError | None = None
    for position, name in enumerate(chain):
        if state is not None:
            if position and not state.possible():
                break
            state.left = len(chain) - position - 1
        pool = runtime.pools[name]
        headers = request_headers(request, ctx, pool.config, server)
        body, meter = _plan(raw, stream, runtime.readers.get(name), headers, request)
        try:
            quota = await _reserve(quotas, ctx, runtime.config.models[name], meter)
        except GatewayError as refused:
            if not position:
                raise  # the requested model's own quota is spent: the client's answer
            log.info(
                "model fallback passed over",
                extra={"request_id": ctx.request_id, "model": name, "reason": refused.code},
            )
            continue
        ctx.model = name
        ctx.attempts += 1
        if state is not None:
            state.made += 1
        try:
            await attempts(request, out, ctx, pool, server, path, headers, body, meter, state)
        except FellThrough as failed:
            if quota is not None:
                await quota.settle(-quota.reserved)
            error = failed.error
            ctx.outcome = Outcome.NONE
            if ctx.fell_back is None:
                ctx.fell_back = []
            ctx.fell_back.append(name)
            log.warning(
                "model failed, falling back",
                extra={
                    "request_id": ctx.request_id,
                    "model": name,
                    "error": error.detail,
                    "attempt": ctx.attempts,
                },
            )
            continue
        except Exception:
            # No response (502, 504, 503, ...): the whole reservation is given back.
            # (A cancelled call keeps its reservation as the charge.)
            if quota is not None:
                await quota.settle(-quota.reserved)
            raise
        if quota is not None:
            # Charged from the usage the model reported; unknown usage (or a
            # response cut short) keeps the reservation as the charge.
            usage = ctx.usage
            total = usage.total_tokens if usage is not None else None
            await quota.settle(0 if total is None else total - quota.reserved)
        return
    # Every model failed and nothing else may be tried: the last failure answers,
    # charged to the model that failed last (ctx.model), which handed nothing on.
    assert error is not None
    assert ctx.fell_back
    ctx.fell_back.pop()
    raise error


def _usable_chain(primary: ModelConfig, ctx: RequestContext, runtime: Runtime) -> list[str]:
    """The requested model, then each fallback the caller's role may use."""
    chain = [primary.name]
    role = ctx.user.role if ctx.user is not None else None
    for name in primary.fallback:
        route = runtime.model_routes.get(name)
        if route is None or name in chain:
            continue
        allowed = runtime.allowed.get(route.index)
        if allowed is not None and role not in allowed:
            continue  # a fallback never opens a model the caller may not call directly
        if route.auth != "none" and role is None:
            continue
        chain.append(name)
    return chain


def _chain_time(chain: list[str], runtime: Runtime) -> float:
    """The default fallback_budget: every model in the chain its whole `timeout`
    (each attempt is bounded by its own model's timeout; none: no bound)."""
    timeouts = [runtime.pools[name].config.timeout for name in chain]
    return math.inf if not all(timeouts) else sum(timeouts)


def _small(request: Incoming) -> bool:
    length = request.content_length
    return length is not None and length <= MAX_PARSE


async def _read_body(request: Incoming, ctx: RequestContext, max_body: int) -> bytes:
    """The whole request body (a chunked one counted against max_body as it comes)."""
    if request.content_length is not None:
        raw = await request.read()
    else:
        parts = [chunk async for chunk in limited(request.content, max_body, ctx)]
        raw = b"".join(parts)
    ctx.bytes_in = len(raw)
    return raw


def _plan(
    raw: bytes | None,
    stream: object,
    reader: UsageReader | None,
    headers: CIMultiDict[str],
    request: Incoming,
) -> tuple[object, Meter | None]:
    """The body to send to one model, and the meter reading its usage."""
    if raw is None:
        return stream, (Meter(reader, None) if reader is not None else None)
    body = raw
    meter = None
    if reader is not None and len(raw) > MAX_PARSE:
        meter = Meter(reader, None)  # too large to plan: usage from the response only
    elif reader is not None:
        plan = reader.request_hook(raw, request.headers.get("Content-Type", ""))
        body, meter = plan.body, Meter(reader, plan)
    headers["Content-Length"] = str(len(body))
    return body, meter


async def _reserve(
    quotas: QuotaStore, ctx: RequestContext, model: ModelConfig, meter: Meter | None
) -> _Quota | None:
    """Check the model's token quota before the call, reserving tokens up front."""
    limit = model.token_limit
    if limit is None or meter is None:
        return None
    plan = meter.plan
    # The stated max_tokens bounds the completion, so that much is reserved and
    # concurrent calls cannot overshoot by more than their own size. Without it
    # the reservation is minimal (1 token): the quota must have something left,
    # and the real usage is charged when the call is over.
    reserve = plan.max_tokens if plan is not None and plan.max_tokens else 1
    too_large = over_quota(limit, reserve)
    if too_large is not None:
        raise too_large  # a fallback with a smaller quota is passed over, as when spent
    rate = limit.rate
    key = quota_key(ctx, model.name, limit.key)
    decision = await quotas.hit(key, rate.limit, rate.period, cost=reserve)
    verdict = decide_quota(model.name, limit, reserve, decision)
    ctx.rate_headers = verdict.headers
    if isinstance(verdict, Deny):
        raise verdict.error()
    return _Quota(quotas, key, limit, reserve)
