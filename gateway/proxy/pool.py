"""One pooled keep-alive `ClientSession` per upstream, and the choice of target.

Sessions are made once per config (never per request) and closed when the
config that made them is retired.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping

import aiohttp

from gateway.config.schema import UpstreamConfig, UpstreamTarget


class UpstreamPool:
    """The connection pool and target rotation of one upstream."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        connector = aiohttp.TCPConnector(
            limit=0,  # bounded per target below, not globally
            limit_per_host=config.max_connections,
            keepalive_timeout=30.0,
            enable_cleanup_closed=False,
            ttl_dns_cache=60,
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
        # Weighted round-robin: each target appears `weight` times in the cycle.
        weighted = [t for t in config.targets for _ in range(max(1, t.weight))]
        self._cycle: Iterator[UpstreamTarget] = itertools.cycle(weighted)
        self._bases = {t: t.origin + t.base_path for t in config.targets}

    def pick(self) -> tuple[UpstreamTarget, str]:
        """The next target and its URL prefix (origin plus base path)."""
        target = next(self._cycle)
        return target, self._bases[target]

    async def close(self) -> None:
        await self.session.close()


def make_pools(upstreams: Mapping[str, UpstreamConfig]) -> dict[str, UpstreamPool]:
    return {name: UpstreamPool(cfg) for name, cfg in upstreams.items()}
