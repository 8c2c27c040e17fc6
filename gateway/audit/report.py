"""Per-model figures from report rows: calls, errors, latency percentiles, calls per user.

Pure arithmetic over (model, username, status, latency_ms) tuples; the store
fetches them, `/admin/reports` shows the result.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

ANONYMOUS = "(anonymous)"  # key for calls without a signed-in user; no username has "("


def percentile(ordered: Sequence[float], p: float) -> float | None:
    """The nearest-rank `p`th percentile of an ascending sequence; None when it is empty."""
    if not ordered:
        return None
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[rank - 1]


def is_error(status: int) -> bool:
    """A failed call: the gateway or the model answered 5xx, or nothing was answered (0)."""
    return status >= 500 or status == 0


def summarise(rows: Iterable[tuple[str, str | None, int, float]]) -> list[dict[str, Any]]:
    """One item per model, by name: {model, calls, errors, p50_ms, p95_ms, users}."""
    latencies: dict[str, list[float]] = {}
    errors: dict[str, int] = {}
    users: dict[str, dict[str, int]] = {}
    for model, username, status, latency_ms in rows:
        latencies.setdefault(model, []).append(latency_ms)
        errors[model] = errors.get(model, 0) + is_error(status)
        per_user = users.setdefault(model, {})
        name = username or ANONYMOUS
        per_user[name] = per_user.get(name, 0) + 1
    items = []
    for model in sorted(latencies):
        ordered = sorted(latencies[model])
        items.append(
            {
                "model": model,
                "calls": len(ordered),
                "errors": errors[model],
                "p50_ms": percentile(ordered, 50),
                "p95_ms": percentile(ordered, 95),
                "users": dict(sorted(users[model].items())),
            }
        )
    return items
