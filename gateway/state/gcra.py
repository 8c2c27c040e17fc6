"""GCRA (the generic cell rate algorithm): a precise rate limit from one number per key.

Pure arithmetic, shared by the in-process limiter and (as Lua) the Redis one.
Each key stores its theoretical arrival time (TAT). With emission interval
T = period / limit, a request at `now` passes if TAT + T - period <= now;
it then moves TAT to max(TAT, now) + T. That admits `limit` requests in any
window of length `period` and never the double burst of a fixed window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

EPSILON = 1e-6  # seconds: float rounding must not refuse a request that exactly fits


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int  # requests that would pass right now, after this one
    reset: int  # whole seconds until the full quota is back (never below retry_after)
    retry_after: int  # whole seconds until the next request may pass (0 when allowed)

    def headers(self) -> tuple[tuple[str, str], ...]:
        """RateLimit-* (and Retry-After when refused), values in whole seconds."""
        fields = (
            ("RateLimit-Limit", str(self.limit)),
            ("RateLimit-Remaining", str(self.remaining)),
            ("RateLimit-Reset", str(self.reset)),
        )
        if self.allowed:
            return fields
        return (*fields, ("Retry-After", str(self.retry_after)))


def refused(limit: int, to_full: float, to_retry: float) -> Decision:
    """A refusal, from the seconds until the full quota is back and until this request
    would pass. Both headers come from here: `Retry-After` is when this request fits,
    `RateLimit-Reset` when the whole quota is back, and never earlier than
    `Retry-After` (a cost above the whole limit would otherwise say Reset 1 and
    Retry-After in days; the token quota refuses such a request with a 400 first)."""
    retry_after = max(1, math.ceil(to_retry))
    return Decision(
        allowed=False,
        limit=limit,
        remaining=0,
        reset=max(retry_after, math.ceil(to_full)),
        retry_after=retry_after,
    )


def decide(
    tat: float | None, now: float, limit: int, period: float, cost: int = 1
) -> tuple[Decision, float]:
    """The decision for one request of `cost` units, and the TAT to store."""
    interval = period / limit
    start = now if tat is None or tat < now else tat
    new_tat = start + interval * cost
    allow_at = new_tat - period
    if allow_at > now + EPSILON:  # (now + period) - period need not be exactly now
        # Refused: nothing is consumed, so the stored TAT stays as it was.
        return refused(limit, start - now, allow_at - now), start
    remaining = min(limit, int((now - allow_at) / interval + 1e-9))
    return (
        Decision(
            allowed=True,
            limit=limit,
            remaining=remaining,
            reset=max(0, math.ceil(new_tat - now)),
            retry_after=0,
        ),
        new_tat,
    )
