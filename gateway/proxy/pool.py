"""The keep-alive connections of each upstream, its balancer and its health checks.

Sessions are made once per config (never per request) and closed when the
config that made them is retired. The health-check task lives as long as the
session: started with the pool (a Runtime is built inside the running event
loop, just before it serves), cancelled by `close`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping

import aiohttp

from gateway.config.schema.upstreams import UpstreamConfig
from gateway.proxy.balancer import Attempt, Balancer, TargetState
from gateway.proxy.health import HealthChecker
from gateway.proxy.lean import LeanClient
from gateway.tls.upstream import upstream_ssl


class UpstreamPool:
    """The connection pool, target choice and health checks of one upstream."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        ssl_context = upstream_ssl(config)  # upstreams.NAME.tls: CA bundle, client cert, verify
        # The proxy path's connections (see lean.py); the session below serves the
        # health checks only.
        self.client = LeanClient(
            config.targets,
            limit=config.max_connections,
            timeout=config.timeout,
            connect_timeout=config.connect_timeout,
            ssl_context=ssl_context,
            max_pending=config.max_pending,
        )
        connector = aiohttp.TCPConnector(
            limit=0,  # bounded per target below, not globally
            limit_per_host=config.max_connections,
            keepalive_timeout=30.0,
            enable_cleanup_closed=False,
            ttl_dns_cache=60,
            ssl=ssl_context,
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=config.timeout or None,
                sock_connect=config.connect_timeout or None,
            ),
            auto_decompress=False,  # bodies pass through exactly as the upstream sent them
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),  # never mix one client's cookies into another's
            trust_env=False,
            raise_for_status=False,
        )
        self.balancer = Balancer(config)
        # per target index: the URL prefix, origin plus base path
        self.bases = [t.origin + t.base_path for t in config.targets]
        self.base_paths = [t.base_path for t in config.targets]
        self.health = (
            HealthChecker(config.health_check, self.balancer, self.session, self.bases)
            if config.health_check is not None
            else None
        )
        self._closed = False
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass  # made outside the loop: checks start with the first request
        else:
            self.start()

    def start(self) -> None:
        """Start the health checks (once); a closed pool stays stopped."""
        if self.health is not None and not self._closed:
            self.health.start()

    def pick(self, exclude: Collection[TargetState] = ()) -> Attempt | None:
        """The target for the next attempt, counted in flight until `balancer.finish`."""
        self.start()
        return self.balancer.pick(exclude)

    async def close(self) -> None:
        self._closed = True
        if self.health is not None:
            await self.health.stop()
        self.client.close()
        await self.session.close()


def make_pools(upstreams: Mapping[str, UpstreamConfig]) -> dict[str, UpstreamPool]:
    return {name: UpstreamPool(cfg) for name, cfg in upstreams.items()}
