"""Active health checks: one background task per upstream, on the upstream's own session.

Every `interval` each target gets `GET <base path><path>` at once; what the
answers mean (2xx/3xx healthy, thresholds of consecutive results) is the
balancer's to decide. The task lives as long as the pool: started with it,
cancelled when the pool is closed (its config retired, or at shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

import aiohttp

from gateway.config.schema.upstreams import HealthCheckConfig
from gateway.proxy.balancer import Balancer, TargetState, check_passed
from gateway.proxy.lean import TargetUnreachable

log = logging.getLogger("gateway.health")


def failure_text(exc: BaseException) -> str:
    """A failed exchange with a target in a few words, for /admin/upstreams."""
    if isinstance(exc, aiohttp.ClientConnectorError | TargetUnreachable):
        # Refused, unreachable or DNS: the errno's text, not asyncio's "Connect call failed".
        errno = exc.os_error.errno
        return f"connect failed: {os.strerror(errno) if errno else exc.os_error.strerror}"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "connect timeout"
    if isinstance(exc, TimeoutError):
        return "timeout before the response head"
    return f"connection closed before the response head ({type(exc).__name__})"


class HealthChecker:
    def __init__(
        self,
        config: HealthCheckConfig,
        balancer: Balancer,
        session: aiohttp.ClientSession,
        bases: list[str],  # per target index: origin plus base path
    ) -> None:
        self.config = config
        self._balancer = balancer
        self._session = session
        self._urls = [base + config.path for base in bases]
        self._timeout = aiohttp.ClientTimeout(total=config.timeout)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin checking (at once, then every interval); needs a running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"health-check {self._balancer.name}"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.gather(*(self._check(t) for t in self._balancer.targets))
            except Exception:  # a bug must not end the checks for good
                log.exception("health check failed", extra={"upstream": self._balancer.name})
            await asyncio.sleep(self.config.interval)

    async def _check(self, target: TargetState) -> None:
        try:
            async with self._session.get(
                self._urls[target.index],
                headers={"User-Agent": "gateway-health-check"},
                timeout=self._timeout,
                allow_redirects=False,  # a 3xx is an answer, and counts as healthy
            ) as response:
                ok, detail = check_passed(response.status), f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            ok, detail = False, failure_text(exc)
        if self._balancer.checked(target, ok, detail):
            log.warning(
                "upstream target %s",
                "healthy again" if ok else "unhealthy",
                extra={"upstream": self._balancer.name, "target": target.url, "check": detail},
            )
