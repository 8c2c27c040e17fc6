"""GCRA arithmetic: exact limits, no boundary burst, honest headers."""

from __future__ import annotations

import bisect
import random

from gateway.state.gcra import decide
from gateway.state.limiter import LocalLimiter, decision_of


def run(times: list[float], limit: int, period: float) -> list[bool]:
    tat: float | None = None
    out = []
    for now in times:
        decision, tat = decide(tat, now, limit, period)
        out.append(decision.allowed)
    return out


def test_a_burst_of_limit_passes_then_refusals() -> None:
    assert run([0.0] * 7, limit=5, period=60) == [True] * 5 + [False] * 2


def test_no_double_burst_at_a_window_boundary() -> None:
    # A fixed window lets 5 through at 59.9 s and 5 more at 60.1 s; GCRA does not.
    times = [59.9] * 5 + [60.1] * 5
    assert sum(run(times, limit=5, period=60)) == 5


def test_the_gcra_bound_holds_over_any_window() -> None:
    # GCRA's guarantee: within any span L, at most limit + L / T pass (T = period / limit):
    # a burst of at most `limit`, then the sustained rate. Never a doubled burst.
    rng = random.Random(7)
    limit, period = 10, 10.0
    interval = period / limit
    times = sorted(rng.uniform(0, 100) for _ in range(2000))
    allowed = [t for t, ok in zip(times, run(times, limit, period), strict=True) if ok]
    for span in (0.5, 1.0, 5.0, 10.0, 30.0):
        for i, start in enumerate(allowed):
            end = bisect.bisect_left(allowed, start + span, lo=i)
            assert end - i <= limit + span / interval
    # and it is not stingy: over 100 s about the sustained rate passes
    assert len(allowed) >= 100 / interval


def test_headers_count_down_and_say_when() -> None:
    tat: float | None = None
    remaining = []
    for _ in range(3):
        decision, tat = decide(tat, 100.0, limit=3, period=30)
        remaining.append(decision.remaining)
        assert decision.allowed
    assert remaining == [2, 1, 0]
    refused, _ = decide(tat, 100.0, limit=3, period=30)
    assert not refused.allowed
    assert refused.retry_after == 10  # one emission interval
    assert refused.reset == 30  # the whole quota is back in one period
    assert dict(refused.headers())["Retry-After"] == "10"
    assert dict(refused.headers())["RateLimit-Remaining"] == "0"


def test_a_refusal_consumes_nothing() -> None:
    tat: float | None = None
    for _ in range(2):
        _, tat = decide(tat, 0.0, limit=2, period=10)
    refused, after = decide(tat, 0.0, limit=2, period=10)
    assert not refused.allowed
    assert after == tat
    allowed, _ = decide(after, 5.0, limit=2, period=10)
    assert allowed.allowed


def test_local_limiter_memory_is_bounded_by_active_keys() -> None:
    limiter = LocalLimiter(max_keys=1000)
    for i in range(100_000):
        limiter.hit_now(f"user:{i}", limit=5, period=3600)
    assert len(limiter) <= 1000


def test_a_limit_of_one_admits_the_first_request_whatever_the_clock() -> None:
    # (now + period) - period is not always exactly now in floating point.
    rng = random.Random(3)
    for _ in range(10_000):
        now = rng.uniform(0, 1e7)
        decision, _ = decide(None, now, limit=1, period=60.0)
        assert decision.allowed, now


def test_a_refusal_never_resets_before_it_may_be_retried() -> None:
    # A cost above the whole limit (1000 tokens a day, 2500 asked) fits only after
    # 1.5 days: RateLimit-Reset must not say 1 while Retry-After says 129600.
    decision, _ = decide(None, 0.0, limit=1000, period=86400, cost=2500)
    assert not decision.allowed
    assert decision.retry_after == 129600
    assert decision.reset >= decision.retry_after
    # The Redis script's reply is turned into a Decision the same way.
    redis = decision_of([0, 0, "0.5", "129599.5"], 1000)
    assert (redis.reset, redis.retry_after) == (129600, 129600)
    # Within the limit the full quota comes back last, as before.
    tat = 0.0
    for _ in range(5):
        _, tat = decide(tat, 0.0, limit=5, period=60)
    refused, _ = decide(tat, 0.0, limit=5, period=60)
    assert (refused.reset, refused.retry_after) == (60, 12)


def test_a_request_of_cost_n_takes_n_units() -> None:
    # Token quotas ask for many units at once: 4 of 10 leave 6, and then 7 do not fit.
    first, tat = decide(None, 0.0, limit=10, period=10.0, cost=4)
    assert (first.allowed, first.remaining, first.reset) == (True, 6, 4)
    too_many, after = decide(tat, 0.0, limit=10, period=10.0, cost=7)
    assert (too_many.allowed, too_many.retry_after) == (False, 1)
    assert after == tat
    exactly, _ = decide(tat, 0.0, limit=10, period=10.0, cost=6)
    assert (exactly.allowed, exactly.remaining) == (True, 0)
