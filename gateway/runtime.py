"""The live configuration and everything built from it, swapped as one reference.

A request takes `RuntimeHolder.current` once when it is routed and keeps it
to the end, so a reload never changes the rules under a request in flight.
Everything a request needs is precomputed here: the route table, the token
verifier, and per route the set of roles that pass (one set lookup per request).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.config.schema import Config, Route
from gateway.proxy.pool import UpstreamPool, make_pools
from gateway.routing import RouteTable
from gateway.security.keys import KeySet
from gateway.security.tokens import TokenIssuer, TokenVerifier

# path → handler name in gateway.handlers.BUILTIN
BUILTIN_PATHS = {
    "/healthz": "builtin.healthz",
    "/readyz": "builtin.readyz",
    "/.well-known/jwks.json": "builtin.jwks",
    "/metrics": "builtin.metrics",
}


def builtin_routes() -> dict[str, Route]:
    """Endpoints served whatever routes.yaml says (contract section 8)."""
    return {
        path: Route(
            index=-1 - i,
            path=path,
            methods=frozenset({"GET", "HEAD"}),
            handler=handler,
            auth="none",
            source="built-in",
        )
        for i, (path, handler) in enumerate(BUILTIN_PATHS.items())
    }


@dataclass(frozen=True, slots=True)
class Runtime:
    config: Config
    table: RouteTable
    pools: dict[str, UpstreamPool]
    builtins: dict[str, Route]
    keys: KeySet
    issuer: TokenIssuer
    verifier: TokenVerifier
    # route index → roles that pass it; absent: any valid token passes
    allowed: Mapping[int, frozenset[str]]
    # role → X-User-Roles value: the role, then every role it inherits
    role_header: Mapping[str, str]
    version: int
    loaded_at: float

    @classmethod
    def build(cls, config: Config, version: int = 1) -> Runtime:
        """Everything derived from `config`; raises KeyConfigError for unusable keys."""
        keys = KeySet.from_config(config.auth)
        policy = config.policy
        return cls(
            config=config,
            table=RouteTable(config.routes),
            pools=make_pools(config.upstreams),
            builtins=builtin_routes(),
            keys=keys,
            issuer=TokenIssuer(config.auth, keys),
            verifier=TokenVerifier(config.auth, keys),
            allowed={r.index: policy.allowed_roles(r.roles) for r in config.routes if r.roles},
            role_header={role: ",".join(chain) for role, chain in policy.roles.items()},
            version=version,
            loaded_at=time.time(),
        )

    async def close(self) -> None:
        for pool in self.pools.values():
            await pool.close()


@dataclass(slots=True)
class RuntimeHolder:
    current: Runtime
    draining: bool = False  # set on SIGTERM: /readyz says 503 so balancers move away
    retired: list[Runtime] = field(default_factory=list)
