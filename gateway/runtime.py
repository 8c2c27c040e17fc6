"""The live configuration and everything built from it, swapped as one reference.

A request takes `RuntimeHolder.current` once when it is routed and keeps it
to the end, so a reload never changes the rules under a request in flight.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from gateway.config.schema import Config, Route
from gateway.proxy.pool import UpstreamPool, make_pools
from gateway.routing import RouteTable

BUILTIN_PATHS = ("/healthz", "/readyz")


def builtin_routes() -> dict[str, Route]:
    """Endpoints served whatever routes.yaml says (contract section 8)."""
    return {
        path: Route(
            index=-1 - i,
            path=path,
            methods=frozenset({"GET", "HEAD"}),
            handler="builtin" + path.replace("/", "."),
            auth="none",
            source="built-in",
        )
        for i, path in enumerate(BUILTIN_PATHS)
    }


@dataclass(frozen=True, slots=True)
class Runtime:
    config: Config
    table: RouteTable
    pools: dict[str, UpstreamPool]
    builtins: dict[str, Route]
    version: int
    loaded_at: float

    @classmethod
    def build(cls, config: Config, version: int = 1) -> Runtime:
        return cls(
            config=config,
            table=RouteTable(config.routes),
            pools=make_pools(config.upstreams),
            builtins=builtin_routes(),
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
