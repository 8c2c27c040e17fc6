"""Bound every store call by `database.timeout` and turn "cannot reach the database" into a 503.

`guarded` is a class decorator for the stores the handlers use: each public
coroutine method is bounded by the store's `timeout`, and a failure that means
the database cannot be reached (refused, reset, gone away, hung, pool
exhausted) leaves as `GatewayError(503, "database_down")` with `Retry-After`.
Everything else passes unchanged: our own refusals (404, 409 ...), integrity
errors, and programming errors, which stay 500s because they are bugs.

The 503 leaves at `timeout` even when the call is stuck (`within`): the call
runs as its own task, cancelled then and left to clean up behind the answer.
The driver has its own bounds as well (`engine.make_engine`), so the
connection such a call held is closed and replaced by the pool, never left
"in use".
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from sqlalchemy import exc as sa_exc

from gateway.config.schema.database import DEFAULT_DATABASE
from gateway.problems import GatewayError

log = logging.getLogger("gateway.store")

DEFAULT_TIMEOUT = DEFAULT_DATABASE.timeout  # seconds: when the caller names none
RETRY_AFTER = 1  # seconds: the pool reconnects at the next call, so retrying soon is cheap

# SQLSTATE classes that mean the server cannot serve (PostgreSQL manual, appendix A):
# 08 connection exception, 53 insufficient resources (too many connections),
# 57P operator intervention (shutdown, starting up), 58 system error (I/O).
DOWN_SQLSTATES = ("08", "53", "57P", "58")

_UNGUARDED = "__database_unguarded__"
LOG_EVERY = 10.0  # seconds: an outage fails every call; it is logged this often, with a count


class Bounded(Protocol):
    timeout: float  # seconds each guarded call may take


C = TypeVar("C", bound=type)
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
T = TypeVar("T")


def database_down() -> GatewayError:
    # The detail is fixed text: the driver's message may carry SQL, addresses or credentials.
    return GatewayError.unavailable(
        "the database is unreachable; try again shortly",
        code="database_down",
        retry_after=RETRY_AFTER,
    )


def unreachable(error: BaseException) -> bool:
    """Whether `error` means the database cannot be reached now (not that a query was wrong)."""
    # TimeoutError: connect or command timeout; OSError: refused, reset, no route;
    # sqlalchemy's TimeoutError: no pool connection came free in pool_timeout.
    if isinstance(error, TimeoutError | OSError | sa_exc.TimeoutError):
        return True
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated:  # the driver saw the connection die
            return True
        # PEP 249: OperationalError is the database's operation failing (an
        # unexpected disconnect, a locked or missing file), InterfaceError the
        # driver's link to it. IntegrityError, DataError and the rest are ours.
        if isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError):
            return True
        state = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
        return isinstance(state, str) and state.startswith(DOWN_SQLSTATES)
    return False


def unguarded(method: F) -> F:
    """Leave this method out of `guarded`: it bounds and handles its own failures."""
    setattr(method, _UNGUARDED, True)
    return method


def guarded(cls: C) -> C:
    """Wrap each public coroutine method of `cls` (see the module docstring)."""
    for name, member in list(vars(cls).items()):
        if (
            name.startswith("_")
            or not inspect.iscoroutinefunction(member)
            or getattr(member, _UNGUARDED, False)
        ):
            continue
        setattr(cls, name, _bounded(member, f"{cls.__name__}.{name}"))
    return cls


def _bounded(method: Callable[..., Awaitable[Any]], call: str) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def bounded(self: Bounded, *args: Any, **kwargs: Any) -> Any:
        try:
            return await within(self.timeout, method(self, *args, **kwargs))
        except GatewayError:
            raise  # a refusal of ours (404, 409, or an inner call's 503): already an answer
        except Exception as error:
            if not unreachable(error):
                raise
            _log_down(call, error)
            raise database_down() from None

    return bounded


_logged = {"at": -LOG_EVERY, "since": 0}  # when last logged, and calls failed since


def _log_down(call: str, error: BaseException) -> None:
    now = time.monotonic()
    _logged["since"] += 1
    if now - _logged["at"] < LOG_EVERY:
        return
    # The type only: the message may quote SQL, addresses or credentials.
    log.warning(
        "database unreachable",
        extra={"call": call, "error": type(error).__name__, "failed_calls": _logged["since"]},
    )
    _logged["at"], _logged["since"] = now, 0


async def within(seconds: float, call: Awaitable[T]) -> T:
    """`call`'s result, or TimeoutError after `seconds` without waiting for its clean-up.

    Unlike `asyncio.timeout`, which waits for the cancelled call to unwind: the
    call runs as a task of its own, and cancelled on a hung server it closes its
    connection (within the driver's own bounds) after the answer has gone.
    """
    task = asyncio.ensure_future(call)
    try:
        done, _ = await asyncio.wait((task,), timeout=seconds)
    except asyncio.CancelledError:  # the caller itself is gone (the client hung up)
        _abandon(task)
        raise
    if not done:
        _abandon(task)
        raise TimeoutError
    return task.result()


_finishing: set[asyncio.Future[Any]] = set()  # cancelled calls still cleaning up


def _abandon(task: asyncio.Future[Any]) -> None:
    """Cancel a call, keep it referenced until it is done, and drop its outcome quietly."""
    task.cancel()
    _finishing.add(task)
    task.add_done_callback(_finished)


def _finished(task: asyncio.Future[Any]) -> None:
    _finishing.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: a failure after the answer is no news
