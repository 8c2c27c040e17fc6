"""Which target of an upstream gets the next request, and which may get none.

Pure logic, no I/O: the forward path reports each attempt (picked, answered,
failed, finished) and the health checker reports each check; from those alone
this module keeps every target's state and picks among the eligible ones.

A target is eligible when its active health check (if any) holds it healthy
and it is not passively ejected. Ejection: `passive.failures` failed attempts
in a row (connection failures, timeouts, resets, 5xx) take a target out for
`passive.backoff`, doubled at each ejection in a row up to `max_backoff`.
When the back-off ends the target is half-open: exactly one request is let
through as a probe; its success makes the target healthy again (back-off
reset), its failure ejects it again for twice as long. Only the probe decides:
requests that were already in flight when the target was ejected do not.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.config.schema.upstreams import HealthCheckConfig, RetryBudgetConfig, UpstreamConfig

Clock = Callable[[], float]


def check_passed(status: int) -> bool:
    """A health-check answer that counts as healthy: 2xx or 3xx."""
    return 200 <= status < 400


@dataclass(slots=True)
class CheckResult:
    ok: bool
    detail: str  # "HTTP 200", "timeout", "connect failed: Connection refused"
    at: float  # wall-clock seconds


@dataclass(slots=True, eq=False)
class TargetState:
    """One target's counters; mutated only by its `Balancer`."""

    index: int
    url: str
    weight: int
    current: int = 0  # smooth weighted round-robin: the running weight
    in_flight: int = 0  # attempts picked and not yet finished
    attempts: int = 0  # attempts sent here since the pool was made
    failures: int = 0  # consecutive failed attempts
    ejections: int = 0  # consecutive ejections: the back-off doubles with each
    ejected_until: float | None = None  # monotonic; None: not ejected
    probing: bool = False  # the half-open probe is in flight
    healthy: bool = True  # the active health check's verdict (True without checks)
    streak: int = 0  # consecutive check results against `healthy`
    last_error: str | None = None
    last_error_at: float | None = None  # wall clock
    last_check: CheckResult | None = None

    def state(self, now: float) -> str:
        if not self.healthy:
            return "unhealthy"
        if self.ejected_until is None:
            return "healthy"
        return "ejected" if now < self.ejected_until else "half_open"

    def eligible(self, now: float) -> bool:
        if not self.healthy:
            return False
        if self.ejected_until is None:
            return True
        return now >= self.ejected_until and not self.probing


@dataclass(slots=True, eq=False)
class Attempt:
    """One try of one request on one target, from pick to finish."""

    target: TargetState
    probe: bool  # the half-open probe: its outcome decides the target's fate
    settled: bool = False  # the probe's verdict is in
    finished: bool = False


class RetryBudget:
    """Retries may be at most `ratio` of the requests of the last WINDOW seconds,
    but `min_per_second` are allowed each second regardless (as Envoy's and
    Finagle's budgets), so retries cannot multiply the load on a failing upstream."""

    WINDOW = 10  # seconds, counted in one-second buckets

    def __init__(self, config: RetryBudgetConfig, clock: Clock = time.monotonic) -> None:
        self.ratio = config.ratio
        self.min_per_second = config.min_per_second
        self._clock = clock
        self._buckets: deque[list[int]] = deque()  # [second, requests, retries]

    def _bucket(self) -> list[int]:
        second = int(self._clock())
        buckets = self._buckets
        while buckets and buckets[0][0] <= second - self.WINDOW:
            buckets.popleft()
        if not buckets or buckets[-1][0] != second:
            buckets.append([second, 0, 0])
        return buckets[-1]

    def request(self) -> None:
        """A client request arrived for this upstream (retries are not counted here)."""
        self._bucket()[1] += 1

    def allows(self) -> bool:
        current = self._bucket()
        if current[2] < self.min_per_second:
            return True
        requests = sum(b[1] for b in self._buckets)
        retries = sum(b[2] for b in self._buckets)
        return retries < self.ratio * requests

    def spend(self) -> None:
        self._bucket()[2] += 1


class Balancer:
    """The targets of one upstream: their states, and the choice among them."""

    def __init__(
        self, config: UpstreamConfig, clock: Clock = time.monotonic, wall: Clock = time.time
    ) -> None:
        self.name = config.name
        self.balance = config.balance
        self.passive = config.passive
        self.health_check: HealthCheckConfig | None = config.health_check
        self.targets = [
            TargetState(index=i, url=t.url, weight=t.weight) for i, t in enumerate(config.targets)
        ]
        # As nginx: a lone target is never ejected; there is nowhere else to
        # send, and an ejection would only delay noticing it is back.
        self.ejects = len(self.targets) > 1
        self.budget = RetryBudget(config.retry_budget, clock)
        self._clock = clock
        self._wall = wall

    # --- choosing -------------------------------------------------------------

    def pick(self, exclude: Collection[TargetState] = ()) -> Attempt | None:
        """The target for the next attempt (counted in flight), or None when no
        eligible target is left outside `exclude`."""
        now = self._clock()
        candidates = [t for t in self.targets if t not in exclude and t.eligible(now)]
        if not candidates:
            return None
        # A target whose back-off has ended gets its probe at once.
        half_open = [t for t in candidates if t.ejected_until is not None]
        if half_open:
            chosen = min(half_open, key=lambda t: t.ejected_until or 0.0)
        else:
            if self.balance == "least_outstanding":
                fewest = min(t.in_flight for t in candidates)
                candidates = [t for t in candidates if t.in_flight == fewest]
            chosen = _smooth_weighted(candidates)
        probe = chosen.ejected_until is not None
        if probe:
            chosen.probing = True
        chosen.in_flight += 1
        chosen.attempts += 1
        return Attempt(chosen, probe)

    def retry_after(self) -> int:
        """Whole seconds (>= 1) until a target may be eligible again: the earliest
        end of a back-off, else one health-check interval."""
        now = self._clock()
        ends = [t.ejected_until for t in self.targets if t.healthy and t.ejected_until is not None]
        if ends:
            return max(1, math.ceil(min(ends) - now))
        if self.health_check is not None:
            return max(1, math.ceil(self.health_check.interval))
        return 1

    # --- what happened to an attempt ------------------------------------------

    def answered(self, attempt: Attempt, status: int) -> bool:
        """The response head arrived; a 5xx counts as a failure. True if that ejected."""
        if status >= 500:
            return self.failed(attempt, f"HTTP {status}")
        target = attempt.target
        if attempt.probe and not attempt.settled:
            # The probe passed: the target is back, and its back-off starts over.
            attempt.settled = True
            target.probing = False
            target.ejected_until = None
            target.ejections = 0
        if target.ejected_until is None:
            target.failures = 0
        return False

    def failed(self, attempt: Attempt, error: str) -> bool:
        """The attempt failed on the target's side. True if that ejected the target."""
        target = attempt.target
        target.last_error = error
        target.last_error_at = self._wall()
        target.failures += 1
        if attempt.probe and not attempt.settled:
            attempt.settled = True
            target.probing = False
            self._eject(target)  # still broken: out again, for twice as long
            return True
        if target.ejected_until is not None or not self.ejects:
            return False  # already out (only the probe decides), or nowhere else to go
        if target.failures >= self.passive.failures:
            self._eject(target)
            return True
        return False

    def finish(self, attempt: Attempt) -> None:
        """The attempt is over: the response relayed, or the exchange failed or was cut."""
        if attempt.finished:
            return
        attempt.finished = True
        attempt.target.in_flight -= 1
        if attempt.probe and not attempt.settled:
            # Ended without a verdict (the client went away): let another probe through.
            attempt.target.probing = False

    def _eject(self, target: TargetState) -> None:
        target.ejections += 1
        doubling = 2.0 ** min(target.ejections - 1, 32)
        backoff = min(self.passive.backoff * doubling, self.passive.max_backoff)
        target.ejected_until = self._clock() + backoff

    # --- active health checks -------------------------------------------------

    def checked(self, target: TargetState, ok: bool, detail: str) -> bool:
        """One health-check result. True when it changed the target's verdict."""
        check = self.health_check
        target.last_check = CheckResult(ok, detail, self._wall())
        if check is None or ok == target.healthy:
            target.streak = 0
            return False
        target.streak += 1
        if target.streak < (check.healthy if ok else check.unhealthy):
            return False
        target.healthy = ok
        target.streak = 0
        if ok:
            # Proven back by its own checks: any passive ejection ends too.
            target.ejected_until = None
            target.ejections = 0
            target.failures = 0
            target.probing = False
        return True

    # --- for /admin/upstreams -------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        now, wall = self._clock(), self._wall()
        return [
            {
                "url": t.url,
                "weight": t.weight,
                "state": t.state(now),
                "ejected_until": (
                    iso(wall + t.ejected_until - now) if t.ejected_until is not None else None
                ),
                "in_flight": t.in_flight,
                "attempts": t.attempts,
                "consecutive_failures": t.failures,
                "last_error": (
                    {"error": t.last_error, "at": iso(t.last_error_at)}
                    if t.last_error is not None and t.last_error_at is not None
                    else None
                ),
                "last_health_check": (
                    {
                        "ok": t.last_check.ok,
                        "result": t.last_check.detail,
                        "at": iso(t.last_check.at),
                    }
                    if t.last_check is not None
                    else None
                ),
            }
            for t in self.targets
        ]


def _smooth_weighted(candidates: list[TargetState]) -> TargetState:
    """nginx's smooth weighted round-robin: deterministic, and spread out (a 1:3
    split goes b a b b, not a b b b)."""
    total = 0
    best = candidates[0]
    for target in candidates:
        target.current += target.weight
        total += target.weight
        if target.current > best.current:
            best = target
    best.current -= total
    return best


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()
