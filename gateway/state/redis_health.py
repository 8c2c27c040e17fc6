"""Whether Redis is worth asking: after a failure, skip it for a short back-off.

Without this, every request during an outage would wait for a connect
timeout. The first failure and the recovery are logged, once each.
`failures` counts every failed call, so the state repair
(gateway/state/repair.py) learns that a write may have been lost even when a
request saw Redis answer again before it looked.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("gateway.redis")

BACKOFF = 1.0  # seconds without Redis calls after a failure


class RedisHealth:
    def __init__(self, what: str, backoff: float = BACKOFF) -> None:
        self._what = what
        self._backoff = backoff
        self._retry_at = 0.0
        self.degraded = False
        self.failures = 0  # failed calls since start; only ever grows

    def available(self) -> bool:
        return not self.degraded or time.monotonic() >= self._retry_at

    def failed(self, exc: BaseException) -> None:
        self.failures += 1
        self._retry_at = time.monotonic() + self._backoff
        if not self.degraded:
            self.degraded = True
            log.error(
                "redis unreachable: %s fall back to this instance",
                self._what,
                extra={"error": type(exc).__name__, "detail": str(exc)[:200]},
            )

    def succeeded(self) -> None:
        if self.degraded:
            self.degraded = False
            log.warning("redis reachable again: %s are shared", self._what)
