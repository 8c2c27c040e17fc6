"""The live configuration and everything built from it, swapped as one reference.

A request takes `RuntimeHolder.current` once when it is routed and keeps it
to the end, so a reload never changes the rules under a request in flight.
Everything a request needs is precomputed here: the route table, the token
verifier, the outside issuers with their cached JWK Sets, and per route the set of roles
that pass (one set lookup per request).
A reload (gateway/reload.py) builds a new Runtime and `RuntimeHolder.swap`s it
in; the old one is retired and its upstream pools closed once its last
request has ended (counted in `Occupancy`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from aiohttp import web

from gateway.config.schema.routes import Route
from gateway.config.schema.top import Config
from gateway.config.schema.upstreams import UpstreamConfig
from gateway.pipeline.policy import allowed_roles, encode
from gateway.proxy.pool import UpstreamPool, make_pools
from gateway.routing import RouteTable
from gateway.security.jwks import JwksCache
from gateway.security.keys import KeySet
from gateway.security.outside import OutsideIssuer
from gateway.security.tokens import TokenIssuer, TokenVerifier
from gateway.usage import UsageReader, reader_for

log = logging.getLogger("gateway.runtime")

# path → handler name in gateway.handlers.registry.BUILTIN
BUILTIN_PATHS = {
    "/healthz": "builtin.healthz",
    "/readyz": "builtin.readyz",
    "/.well-known/jwks.json": "builtin.jwks",
    "/metrics": "builtin.metrics",
    "/openapi.json": "builtin.openapi",
    # the dashboard's page and assets: served without a token, it signs in itself
    "/admin/ui": "builtin.ui",
    "/admin/ui/": "builtin.ui",
    "/admin/ui/app.js": "builtin.ui",
    "/admin/ui/app.css": "builtin.ui",
    # what each problem code means (the `type` of every problem): their index
    "/problems": "builtin.problems",
    "/problems/": "builtin.problems",
}
# path template → handler name: a built-in answering every path under the template's
# prefix (the part before `{`), after the exact paths above
BUILTIN_TEMPLATES = {
    "/problems/{code}": "builtin.problems",  # a page per code; 404 unknown_code for others
}


def builtin_routes() -> dict[str, Route]:
    """Endpoints served whatever routes.yaml says (README "How a path is matched")."""
    return {
        path: Route(
            index=-1 - i,
            path=path,
            methods=frozenset({"GET", "HEAD"}),
            handler=handler,
            auth="none",
            source="built-in",
        )
        for i, (path, handler) in enumerate({**BUILTIN_PATHS, **BUILTIN_TEMPLATES}.items())
    }


@dataclass(slots=True)
class Occupancy:
    """The requests running on one Runtime.

    A plain int, no lock: the event loop is one thread, and the route stage
    pins a Runtime and counts it with no await in between, so a swap can never
    fall between the two.
    """

    in_flight: int = 0
    retired: bool = False  # replaced by a reload: closed when in_flight reaches 0


@dataclass(frozen=True, slots=True)
class ReloadFailure:
    """The last reload that failed: when, and every problem as FILE:LINE: message."""

    at: float  # epoch seconds
    problems: tuple[str, ...]


def same_upstream(a: UpstreamConfig, b: UpstreamConfig) -> bool:
    """Whether a pool made for `a` serves `b` unchanged (its line in the file aside)."""
    return dataclasses.replace(a, line=0) == dataclasses.replace(b, line=0)


@dataclass(frozen=True, slots=True)
class Runtime:
    config: Config
    table: RouteTable
    pools: dict[str, UpstreamPool]
    builtins: dict[str, Route]
    keys: KeySet
    issuer: TokenIssuer
    verifier: TokenVerifier
    # auth.issuers by their exact iss: whose tokens are verified with their own JWKS
    outside: Mapping[str, OutsideIssuer]
    # route index → roles that pass it; absent: any valid token passes
    allowed: Mapping[int, frozenset[str]]
    # route index → the roles that pass it as ",a,b," (for the Redis gate's script)
    allowed_text: Mapping[int, str]
    # role → X-User-Roles value: the role, then every role it inherits
    role_header: Mapping[str, str]
    # model name → the reader of its `usage:` format (models without one are absent)
    readers: Mapping[str, UsageReader]
    # model name → the route generated for it (its roles decide who may fall back to it)
    model_routes: Mapping[str, Route]
    version: int
    loaded_at: float
    # (prefix, route) of the built-ins that answer every path under a prefix (BUILTIN_TEMPLATES)
    builtin_prefixes: tuple[tuple[str, Route], ...] = ()
    occupancy: Occupancy = field(default_factory=Occupancy, compare=False, repr=False)

    @classmethod
    def build(
        cls,
        config: Config,
        version: int = 1,
        reuse: Mapping[str, UpstreamPool] | None = None,
        reuse_jwks: Mapping[str, JwksCache] | None = None,
    ) -> Runtime:
        """Everything derived from `config`; raises KeyConfigError for unusable keys.

        `reuse`: the pools of the Runtime being replaced; a pool whose upstream
        is unchanged is taken over instead of a new one being opened, so its
        keep-alive connections and its targets' health state carry over.
        `reuse_jwks`: its JWKS caches by URL; an issuer whose jwks_url is unchanged keeps
        its cached keys and refetch clock (the new ones are fetched by `load_issuer_keys`).
        """
        keys = KeySet.from_config(config.auth)
        policy = config.policy
        table = RouteTable(config.routes)
        issuer, verifier = TokenIssuer(config.auth, keys), TokenVerifier(config.auth, keys)
        caches = dict(reuse_jwks or {})
        outside: dict[str, OutsideIssuer] = {}
        for entry in config.auth.issuers:
            cache = caches.setdefault(entry.jwks_url, JwksCache(entry.jwks_url))
            outside[entry.issuer] = OutsideIssuer(entry, cache, config.auth.leeway)
        kept = {
            name: pool
            for name, pool in (reuse or {}).items()
            if name in config.upstreams and same_upstream(pool.config, config.upstreams[name])
        }
        # Pools last: nothing that can fail comes after sessions are opened.
        fresh = make_pools({n: u for n, u in config.upstreams.items() if n not in kept})
        allowed = {r.index: allowed_roles(policy, r.roles) for r in config.routes if r.roles}
        builtins = builtin_routes()
        return cls(
            config=config,
            table=table,
            pools={name: kept[name] if name in kept else fresh[name] for name in config.upstreams},
            builtins=builtins,
            builtin_prefixes=tuple(
                (template.partition("{")[0], builtins[template]) for template in BUILTIN_TEMPLATES
            ),
            keys=keys,
            issuer=issuer,
            verifier=verifier,
            outside=outside,
            allowed=allowed,
            allowed_text={i: encode(roles) for i, roles in allowed.items()},
            role_header={role: ",".join(chain) for role, chain in policy.roles.items()},
            readers={m.name: reader_for(m.usage) for m in config.models.values() if m.usage},
            model_routes={r.model: r for r in config.routes if r.model is not None},
            version=version,
            loaded_at=time.time(),
        )

    def jwks_caches(self) -> dict[str, JwksCache]:
        """The outside issuers' JWKS caches by URL (for the next reload to take over)."""
        found: dict[str, JwksCache] = {}
        for entry in self.outside.values():
            if isinstance(entry.keys, JwksCache):
                found[entry.keys.url] = entry.keys
        return found

    async def load_issuer_keys(self) -> None:
        """Fetch the JWK Sets never fetched yet, all at once; a provider that is down is
        logged and its tokens get 401 until its keys arrive (README "Signing in through
        an outside identity provider")."""
        fresh = [cache for cache in self.jwks_caches().values() if cache.fetches == 0]
        if fresh:
            await asyncio.gather(*(cache.load() for cache in fresh))

    def upstream_status(self) -> list[dict[str, object]]:
        """Each upstream's balancing and health check, and per target its state, in-flight
        count, failures and last error (GET /admin/upstreams), by name."""
        items: list[dict[str, object]] = []
        for name, pool in sorted(self.pools.items()):
            check = pool.config.health_check
            items.append(
                {
                    "name": name,
                    "balance": pool.config.balance,
                    "health_check": None
                    if check is None
                    else {"path": check.path, "interval": check.interval, "timeout": check.timeout},
                    "targets": pool.balancer.describe(),
                }
            )
        return items

    async def close(self) -> None:
        await close_pools(self.pools.values())


async def close_pools(pools: Iterable[UpstreamPool]) -> None:
    for pool in pools:
        await pool.close()


@dataclass(slots=True)
class RuntimeHolder:
    current: Runtime
    draining: bool = False  # set on SIGTERM: /readyz says 503 so balancers move away
    # replaced by a reload, with requests still running on them
    retired: list[Runtime] = field(default_factory=list)
    last_error: ReloadFailure | None = None  # the last reload's problems; cleared by a good one
    _closing: set[asyncio.Task[None]] = field(default_factory=set, init=False, repr=False)

    def swap(self, runtime: Runtime) -> None:
        """Make `runtime` the live config in one assignment and retire the old one."""
        old = self.current
        self.current = runtime  # the next request routed runs on the new config
        old.occupancy.retired = True
        if old.occupancy.in_flight:
            self.retired.append(old)  # closed by `drained` when its last request ends
        else:
            self._close_unshared(old)

    def drained(self, runtime: Runtime) -> None:
        """The last request on a retired `runtime` has ended: close what only it used."""
        self.retired = [r for r in self.retired if r is not runtime]
        self._close_unshared(runtime)

    def _close_unshared(self, runtime: Runtime) -> None:
        # A pool taken over by a later Runtime stays open.
        live = {id(p) for r in (self.current, *self.retired) for p in r.pools.values()}
        pools = [p for p in runtime.pools.values() if id(p) not in live]
        if pools:
            task = asyncio.get_running_loop().create_task(close_pools(pools))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def wait_closed(self) -> None:
        """Wait until the pools of drained Runtimes are closed."""
        while pending := [t for t in self._closing if not t.done()]:
            await asyncio.gather(*pending, return_exceptions=True)

    async def close(self) -> None:
        """At shutdown: close every pool, of the live Runtime and of retired ones."""
        await self.wait_closed()
        pools = {id(p): p for r in (self.current, *self.retired) for p in r.pools.values()}
        await close_pools(pools.values())


HOLDER = web.AppKey("gateway.runtime", RuntimeHolder)  # the app's live config
