"""Every open client connection, its state, and the limits on them: head time, idle time, count.

Independent of aiohttp: a server protocol reports its connection's moves to a
`ConnectionGuard` (made, head started, head complete, response finished,
lost) and lets the guard close it through `Guarded.drop`. Each connection is:

  WAITING  connected, nothing of a request yet      closed at header_timeout
  HEAD     part of a request head received          408, closed at header_timeout
  BUSY     a request in progress (head to response) never touched by the guard
  IDLE     keep-alive between requests              closed at keepalive_timeout
  LINGER   response sent, the unread body still     as IDLE
           arriving (the server reads and drops it)

The head deadline runs from connect (a new connection) or from the first byte
of the next head (keep-alive), so dribbling bytes never extends it, as
HAProxy's `timeout http-request`. WAITING and IDLE connections are closed
without an answer: a browser's pre-connection or a pooled keep-alive
connection must not read a 408 it never asked for (HAProxy's
`http-ignore-probes`; RFC 9112 §9.5 lets a server close an idle connection).

Connections enter the WAITING/HEAD list and the IDLE/LINGER list in the order
their clock starts, so both lists are ordered by deadline: a sweep every
fraction of a second looks at the front only, and costs nothing per idle
connection (one timer for 20,000 sockets, not 20,000 timers).

At `max_connections`, a new connection first evicts the connection that has
waited longest without a request in progress (front of either list), so an
idle flood or a slowloris can never lock a new client, such as an admin's
`/healthz`, out; only when every open connection is BUSY is the new one
refused (503 `overloaded`, then closed). Busy connections keep working.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Final, Protocol

from gateway.problems import PROBLEM_CONTENT_TYPE, GatewayError, render, title_for

log = logging.getLogger("gateway.connections")

WAITING: Final = 0
HEAD: Final = 1
BUSY: Final = 2
IDLE: Final = 3
LINGER: Final = 4
CLOSED: Final = 5

SWEEP_INTERVAL = 0.5  # seconds between sweeps at most; shorter when a timeout is shorter
SWEEP_FLOOR = 0.05  # seconds: never sweep more often than this
REPORT_EVERY = 10.0  # seconds: at most one log line about shed connections per this
# Connections one sweep closes before it lets the loop run again: 10,000 connections
# from one flood share one deadline, and closing them all in one go would stall
# every request for half a second. The rest follow in the next loop iteration.
# 64 closes take about 2.5 ms; 256 took 10 ms, and a request needs several
# iterations (bench/README.md "slowloris": p99 under the flood 102 -> 17-25 ms).
SWEEP_BATCH = 64


class Limits(Protocol):
    """The settings the guard reads (ServerConfig has them), looked up at every sweep."""

    @property
    def header_timeout(self) -> float: ...
    @property
    def keepalive_timeout(self) -> float: ...
    @property
    def max_connections(self) -> int: ...
    @property
    def server_header(self) -> str: ...


class Guarded(Protocol):
    """What the guard needs of a server connection."""

    def drop(self, answer: bytes | None) -> None:
        """Write `answer` (a whole HTTP response) when given, then close the connection."""


class Tracked:
    """One open connection as the guard sees it."""

    __slots__ = ("conn", "since", "state")

    def __init__(self, conn: Guarded, now: float) -> None:
        self.conn = conn
        self.state = WAITING
        self.since = now  # when its current clock started


def raw_problem(error: GatewayError, server: str) -> bytes:
    """A whole `Connection: close` HTTP/1.1 response carrying `error` as RFC 9457, for
    answers written outside any request (no request id came with one: a new one);
    `server`: server.server_header ("" for no Server header)."""
    request_id = str(uuid.uuid4())
    body = render(error, request_id)
    lines = [
        f"HTTP/1.1 {error.status} {title_for(error.status)}",
        *([f"Server: {server}"] if server else []),
        f"Content-Type: {PROBLEM_CONTENT_TYPE}",
        f"Content-Length: {len(body)}",
        f"X-Request-Id: {request_id}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in error.headers.items() if name != "Connection"),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# Verdicts on a request line (RFC 9112 §3: method SP request-target SP HTTP-version).
LINE_OK: Final = 0
LINE_HTTP09: Final = 1  # no version: an HTTP/0.9 request, which cannot read a status line
LINE_VERSION: Final = 2  # a well-formed version other than 1.0 and 1.1: 505
_SUPPORTED = frozenset({b"HTTP/1.1", b"HTTP/1.0"})
_VERSION = re.compile(rb"HTTP/[0-9](\.[0-9])?")  # HTTP/2 as h2c clients write it, too
_METHOD = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §9.1: a method is a token


def request_line_verdict(line: bytes) -> int:
    """LINE_OK, LINE_HTTP09 or LINE_VERSION for a request line (CR LF excluded).

    Anything else malformed is LINE_OK here: the HTTP parser refuses it (400).
    A header line is never taken for a request line: its name ends in ':',
    which no method has."""
    parts = line.split(b" ")
    if not _METHOD.fullmatch(parts[0]):
        return LINE_OK
    if len(parts) == 3:
        version = parts[2]
        if version in _SUPPORTED or not _VERSION.fullmatch(version):
            return LINE_OK
        return LINE_VERSION
    if len(parts) == 2 and parts[1][:1] == b"/":
        return LINE_HTTP09  # `GET /path`: how HTTP/0.9 asked (HTTP/1.0, RFC 1945 §4.1)
    return LINE_OK


class ConnectionGuard:
    """Tracks every open client connection of this process and enforces the limits."""

    def __init__(self, limits: Callable[[], Limits], clock: Callable[[], float]) -> None:
        self._limits_of = limits
        self._clock = clock
        self._heads: OrderedDict[Tracked, None] = OrderedDict()  # WAITING and HEAD
        self._idle: OrderedDict[Tracked, None] = OrderedDict()  # IDLE and LINGER
        self.open = 0
        self._max = limits().max_connections
        self._timer: asyncio.TimerHandle | None = None
        # counted since the last report line
        self.evicted = 0
        self.refused = 0
        self.head_timeouts = 0
        self._reported = clock()

    # --- moves reported by the connection ------------------------------------

    def admit(self, conn: Guarded) -> Tracked | None:
        """A new connection; None: refused (already answered and closed)."""
        if self.open >= self._max:
            victim = self._longest_waiting()
            if victim is None:  # every connection has a request in progress
                self.refused += 1
                conn.drop(raw_problem(_OVERLOADED, self._limits_of().server_header))
                return None
            self.evicted += 1
            # A half-sent head gets told why; a silent connection is just closed.
            answer = None
            if victim.state == HEAD:
                answer = raw_problem(_OVERLOADED, self._limits_of().server_header)
            self._drop(victim, answer)
        tracked = Tracked(conn, self._clock())
        self._heads[tracked] = None
        self.open += 1
        return tracked

    def head_started(self, tracked: Tracked) -> None:
        """Bytes of a request head arrived on a connection that was not reading one."""
        if tracked.state == WAITING:
            tracked.state = HEAD  # its clock runs from connect
        elif tracked.state == IDLE:
            del self._idle[tracked]
            tracked.state = HEAD
            tracked.since = self._clock()
            self._heads[tracked] = None

    def head_complete(self, tracked: Tracked) -> None:
        """A whole request head was parsed: the connection is busy until its response."""
        state = tracked.state
        if state in (WAITING, HEAD):
            del self._heads[tracked]
        elif state in (IDLE, LINGER):
            del self._idle[tracked]
        else:
            return
        tracked.state = BUSY

    def finished(self, tracked: Tracked, lingering: bool) -> None:
        """A response was sent; `lingering`: the request's unread body is still arriving."""
        if tracked.state != BUSY:
            return
        tracked.state = LINGER if lingering else IDLE
        tracked.since = self._clock()
        self._idle[tracked] = None

    def body_done(self, tracked: Tracked) -> None:
        """The unread body of a LINGER connection has all arrived: it is plainly idle."""
        if tracked.state == LINGER:
            tracked.state = IDLE

    def lost(self, tracked: Tracked) -> None:
        """The connection closed (either side)."""
        state = tracked.state
        if state == CLOSED:
            return
        if state in (WAITING, HEAD):
            del self._heads[tracked]
        elif state in (IDLE, LINGER):
            del self._idle[tracked]
        tracked.state = CLOSED
        self.open -= 1

    # --- the sweep -----------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = loop.call_later(self._interval(self._limits_of()), self._tick, loop)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        limits = self._limits_of()  # the live config: a reload applies at the next sweep
        more = True
        try:
            more = self.sweep(limits)
        finally:
            delay = 0.0 if more else self._interval(limits)
            self._timer = loop.call_later(delay, self._tick, loop)

    @staticmethod
    def _interval(limits: Limits) -> float:
        shortest = min(limits.header_timeout, limits.keepalive_timeout)
        return max(SWEEP_FLOOR, min(SWEEP_INTERVAL, shortest / 4))

    def sweep(self, limits: Limits, batch: int = SWEEP_BATCH) -> bool:
        """Close up to `batch` connections past their deadline, O(closed), not O(open);
        True: more are due."""
        self._max = limits.max_connections
        now = self._clock()
        heads, idle = self._heads, self._idle
        head_start = now - limits.header_timeout
        while heads and batch:
            tracked = next(iter(heads))
            if tracked.since > head_start:
                break
            batch -= 1
            if tracked.state == HEAD:
                self.head_timeouts += 1
                self._drop(tracked, raw_problem(_HEAD_TIMEOUT, limits.server_header))
            else:
                self._drop(tracked, None)
        idle_start = now - limits.keepalive_timeout
        while idle and batch:
            tracked = next(iter(idle))
            if tracked.since > idle_start:
                break
            batch -= 1
            self._drop(tracked, None)
        if now - self._reported >= REPORT_EVERY:
            self._report(now)
        return batch == 0

    def _longest_waiting(self) -> Tracked | None:
        head = next(iter(self._heads), None)
        idle = next(iter(self._idle), None)
        if head is None or (idle is not None and idle.since <= head.since):
            return idle
        return head

    def _drop(self, tracked: Tracked, answer: bytes | None) -> None:
        self.lost(tracked)  # its slot is free now, not when the close completes
        tracked.conn.drop(answer)

    def _report(self, now: float) -> None:
        # One line per REPORT_EVERY at most: under a flood, a line per connection
        # would be the next thing to exhaust (the disk, the log pipeline).
        if self.evicted or self.refused or self.head_timeouts:
            log.warning(
                "client connections shed",
                extra={
                    "open": self.open,
                    "max_connections": self._max,
                    "evicted": self.evicted,
                    "refused": self.refused,
                    "header_timeouts": self.head_timeouts,
                    "seconds": round(now - self._reported, 1),
                },
            )
        self.evicted = self.refused = self.head_timeouts = 0
        self._reported = now


_OVERLOADED = GatewayError.unavailable(
    "the gateway is at server.max_connections with every connection busy",
    code="overloaded",
    retry_after=1,
)
_HEAD_TIMEOUT = GatewayError.request_timeout(
    "header_timeout", "the request head did not arrive within server.header_timeout"
)
