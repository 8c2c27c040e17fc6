"""A bounded pool of low-priority threads for password hashing, refusing work beyond its queue.

argon2id is deliberately expensive (tens of milliseconds and 64 MiB per call
with the shipped parameters). Run in the default executor, a flood of
sign-ins queues without bound and its threads compete with the event loop
for every core, so proxied routes slow down with it. This pool holds a fixed
number of worker threads and a fixed number of waiting jobs: a call beyond
both fails at once with 503 `busy` and `Retry-After: 1`, the answer HAProxy
gives when a backend's queue is full (`maxqueue`). The workers run at a
lower scheduling priority than the event loop, so when both want a core the
loop gets the far larger share of it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from gateway.problems import GatewayError

T = TypeVar("T")

# nice(1) steps above the event loop's: at 19 the Linux scheduler gives a runnable
# event loop thread about 68 times the CPU share of a worker (weights 1024 and 15),
# yet an idle core still hashes at full speed. bench/login_flood.py, 5 rounds:
# proxied p99 during a flood 1.80x the idle figure at 19, 3.69x at 10, for the
# same number of sign-ins served.
WORKER_NICENESS = 19
QUEUE_PER_WORKER = 16  # waiting jobs allowed per worker when the queue is not configured
RETRY_AFTER = 1  # seconds: one queue's worth of hashes drains in about that long


def default_workers() -> int:
    """One fewer than the CPUs this process may use (at least one): a core stays for the loop."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus - 1)


def worker_cpus() -> frozenset[int] | None:
    """The CPUs hashing may use: all this process may use but one, left to the event loop.

    None with a single CPU (nothing to leave) or where affinity is not per thread.
    """
    if sys.platform != "linux":
        return None
    cpus = sorted(os.sched_getaffinity(0))
    return frozenset(cpus[1:]) if len(cpus) > 1 else None


def _start_worker(cpus: frozenset[int] | None) -> None:
    """Thread initializer: this worker thread only, below the loop's priority, off one core.

    argon2 runs its lanes (`parallelism`) in threads of their own, created by
    this one: they inherit both settings, so one hash cannot spread over every
    core however many lanes it has.
    """
    # On Linux both calls with this thread's id change this one thread; elsewhere
    # they would change the whole process, event loop included, so leave them.
    if sys.platform == "linux":
        with contextlib.suppress(OSError):  # a sandbox may forbid it; hashing still works
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICENESS)
        if cpus is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(threading.get_native_id(), cpus)


def busy() -> GatewayError:
    return GatewayError.unavailable(
        "too many passwords are being checked right now; retry after Retry-After seconds",
        code="busy",
        retry_after=RETRY_AFTER,
    )


class HashPool:
    """`workers` threads and at most `queue` jobs waiting for them; more is 503 `busy`."""

    __slots__ = ("_executor", "_lock", "_pending", "capacity", "queue", "workers")

    def __init__(self, workers: int | None = None, queue: int | None = None) -> None:
        self.workers = workers if workers is not None else default_workers()
        self.queue = queue if queue is not None else QUEUE_PER_WORKER * self.workers
        if self.workers < 1 or self.queue < 0:
            raise ValueError(f"need workers >= 1 and queue >= 0, not {self.workers}, {self.queue}")
        self.capacity = self.workers + self.queue  # running plus waiting
        # Threads start on first use, so a CLI that only hashes inline starts none.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.workers,
            thread_name_prefix="password-hash",
            initializer=_start_worker,
            initargs=(worker_cpus(),),
        )
        self._lock = threading.Lock()  # _pending is released from worker threads
        self._pending = 0

    @property
    def pending(self) -> int:
        """Jobs running or waiting now."""
        return self._pending

    def admit(self) -> None:
        """`busy()` now if a job would be refused now: callers skip the work leading up to it."""
        if self._pending >= self.capacity:
            raise busy()

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` on a worker thread, or `busy()` at once when the pool is full."""
        with self._lock:
            if self._pending >= self.capacity:
                raise busy()
            self._pending += 1
        try:
            future = self._executor.submit(function, *args)
        except RuntimeError:  # shut down: the gateway is stopping
            self._release()
            raise busy() from None
        # Released when the job is really over, not when its caller stops
        # waiting: a client that hangs up cannot free a slot a thread still
        # works in (a job still queued is cancelled with its caller).
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def _release(self, _: object = None) -> None:
        with self._lock:
            self._pending -= 1

    def close(self) -> None:
        """Stop taking jobs and drop the queued ones; a running hash finishes on its own."""
        self._executor.shutdown(wait=False, cancel_futures=True)
