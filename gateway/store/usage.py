"""Token usage per model and/or user over a time window, for `/admin/usage`.

The query reads only the columns the figures need, streamed in partitions,
and `UsageTally` folds them as they come: per group it keeps counters and the
latencies (percentiles need every value), never whole rows. Token sums count
only calls whose usage is known; a call without usage (NULL `total_tokens`)
adds to `unknown_usage_calls`, never to the sums as zero.

A call counts for the model that answered it (`calls`, `errors`, tokens,
latencies). The models that failed before it, by fallback (`failed_models`),
count a `failed_attempts` each, and the first of them, the model the request
asked for, a `fell_back`: so a primary that keeps falling back shows, with
`calls` 0 when no request of the window was answered by it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.report import is_error, percentile
from gateway.store.guard import DEFAULT_TIMEOUT, guarded
from models import ReportLog

GROUP_KEYS = ("model", "user")  # what `group_by` may name, in column order
FIGURES = (
    "calls",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "unknown_usage_calls",
    "p50_ms",
    "p95_ms",
    "ttfb_p50_ms",
    "failed_attempts",
    "fell_back",
)
_PARTITION = 1000  # rows fetched per round trip while streaming a window

# (model, username, status, latency_ms, ttfb_ms, prompt, completion, total, failed_models)
UsageRow = tuple[
    str, str | None, int, float, float | None, int | None, int | None, int | None, str | None
]


def columns(group_by: Sequence[str]) -> tuple[str, ...]:
    """The item keys, in order: the asked-for group keys, then every figure."""
    return (*(key for key in GROUP_KEYS if key in group_by), *FIGURES)


@dataclass(slots=True)
class _Group:
    calls: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    unknown_usage_calls: int = 0
    failed_attempts: int = 0
    fell_back: int = 0
    latencies: list[float] = field(default_factory=list)
    ttfbs: list[float] = field(default_factory=list)


class UsageTally:
    """Folds usage rows into one group per (model, user) as `group_by` asks."""

    def __init__(self, group_by: Sequence[str]) -> None:
        self._by_model = "model" in group_by
        self._by_user = "user" in group_by
        self.columns = columns(group_by)
        self._groups: dict[tuple[str | None, str | None], _Group] = {}

    def _group(self, model: str, username: str | None) -> _Group:
        key = (model if self._by_model else None, username if self._by_user else None)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group()
        return group

    def add(self, rows: Iterable[UsageRow]) -> None:
        for model, username, status, latency, ttfb, prompt, completion, total, failed in rows:
            if failed:
                # Each model that failed and handed the request on; the first one is
                # the model the request asked for, which therefore fell back.
                for position, name in enumerate(failed.split(",")):
                    other = self._group(name, username)
                    other.failed_attempts += 1
                    other.fell_back += not position
            group = self._group(model, username)
            group.calls += 1
            group.errors += is_error(status)
            group.latencies.append(latency)
            if ttfb is not None:
                group.ttfbs.append(ttfb)
            if total is None:
                group.unknown_usage_calls += 1
            else:
                # known usage: a part the model did not report adds nothing
                group.prompt_tokens += prompt or 0
                group.completion_tokens += completion or 0
                group.total_tokens += total

    def items(self) -> list[dict[str, Any]]:
        """One item per group, by model then user (calls without a user last)."""

        def order(key: tuple[str | None, str | None]) -> tuple[str, bool, str]:
            model, user = key
            return (model or "", user is None, user or "")

        items = []
        for key in sorted(self._groups, key=order):
            group = self._groups[key]
            group.latencies.sort()
            group.ttfbs.sort()
            values = {
                "model": key[0],
                "user": key[1],
                "calls": group.calls,
                "errors": group.errors,
                "prompt_tokens": group.prompt_tokens,
                "completion_tokens": group.completion_tokens,
                "total_tokens": group.total_tokens,
                "unknown_usage_calls": group.unknown_usage_calls,
                "p50_ms": percentile(group.latencies, 50),
                "p95_ms": percentile(group.latencies, 95),
                "ttfb_p50_ms": percentile(group.ttfbs, 50),
                "failed_attempts": group.failed_attempts,
                "fell_back": group.fell_back,
            }
            items.append({name: values[name] for name in self.columns})
        return items


def to_csv(items: Iterable[dict[str, Any]], names: Sequence[str]) -> str:
    """The items as CSV (RFC 4180): a header row of `names`, an empty cell for null."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(names)
    for item in items:
        writer.writerow(["" if item[name] is None else item[name] for name in names])
    return out.getvalue()


@guarded  # bounded by `timeout` as a whole; an unreachable database is a 503
class UsageStore:
    def __init__(self, engine: AsyncEngine, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._engine = engine
        self.timeout = timeout

    async def tally(self, since: datetime, until: datetime, group_by: Sequence[str]) -> UsageTally:
        """Every model call with `since <= ts < until`, folded by `group_by`."""
        query = select(
            ReportLog.model,
            ReportLog.username,
            ReportLog.status,
            ReportLog.latency_ms,
            ReportLog.ttfb_ms,
            ReportLog.prompt_tokens,
            ReportLog.completion_tokens,
            ReportLog.total_tokens,
            ReportLog.failed_models,
        ).where(ReportLog.ts >= since, ReportLog.ts < until)
        tally = UsageTally(group_by)
        async with self._engine.connect() as connection:
            result = await connection.stream(query.execution_options(yield_per=_PARTITION))
            async for partition in result.partitions(_PARTITION):
                tally.add(partition)
        return tally
