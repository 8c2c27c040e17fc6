"""The access log: one JSON line per request, written when its response has finished
(README "Access log"). server.access_log says where: stdout (default), stderr or off.

Lines come from gateway/audit/record.py, the function both ways through (the
lean server path and the aiohttp chain) record a request with, so every
request has its line, WebSockets at their close. A line holds the audit row's
fields (never a query value, a header or a body) and the trace id when
tracing is on.

The event loop never writes to the stream itself: lines are gathered for up to
FLUSH_INTERVAL (or FLUSH_BYTES), joined and handed to a thread that writes
them, one wake-up of that thread per batch rather than per request (each
wake-up costs a switch of the GIL); so a slow reader of stdout
(a full pipe, a paused terminal) costs the gateway no latency. If the writer
falls more than MAX_BACKLOG bytes behind, new lines are dropped and counted
(`dropped`, and `gateway_access_log_dropped` in /metrics) rather than held.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import queue
import threading
from typing import Final

import orjson

from gateway.audit.rows import AuditRow

log = logging.getLogger("gateway.access")

MAX_BACKLOG: Final = 16 * 1024 * 1024  # bytes handed to the writer thread and not yet written
FLUSH_INTERVAL: Final = 0.05  # seconds a line waits at most before it is handed over
FLUSH_BYTES: Final = 256 * 1024  # ... or until this many bytes of lines are waiting
_UTC = datetime.UTC


def access_line(row: AuditRow, model: str | None, trace_id: str | None) -> bytes:
    """The JSON line of one request (README "Access log": its fields)."""
    fields = {
        "ts": datetime.datetime.fromtimestamp(row.ts, _UTC).isoformat(timespec="milliseconds"),
        "request_id": row.request_id,
        "client": row.client_ip,
        "method": row.method,
        "path": row.path,
        "status": row.status,
        "bytes_in": row.bytes_in,
        "bytes_out": row.bytes_out,
        "duration_ms": row.latency_ms,
        "route": row.route,
        "upstream": row.upstream,
        "model": model,
        "user": row.username,
        "reason": row.reason,
    }
    if trace_id is not None:
        fields["trace_id"] = trace_id
    return orjson.dumps(fields) + b"\n"


class AccessLog:
    """Lines in, written by a thread of its own to file descriptor `fd`."""

    def __init__(self, fd: int, max_backlog: int = MAX_BACKLOG) -> None:
        self._fd = fd
        self._max_backlog = max_backlog
        self._flush_bytes = min(FLUSH_BYTES, max_backlog // 4)  # a batch always fits
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batches: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._backlog = 0  # bytes handed over and not yet written
        self._lock = threading.Lock()
        self.dropped = 0
        self._thread = threading.Thread(target=self._write_all, name="access-log", daemon=True)
        self._thread.start()

    def write(self, line: bytes) -> None:
        """One line, handed to the writer within FLUSH_INTERVAL."""
        self._pending.append(line)
        self._pending_bytes += len(line)
        if self._pending_bytes >= self._flush_bytes:
            self._hand_over()
        elif self._timer is None:
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            self._timer = loop.call_later(FLUSH_INTERVAL, self._hand_over)

    def _hand_over(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        batch = b"".join(self._pending)
        lines = len(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        with self._lock:
            if self._backlog + len(batch) > self._max_backlog:
                self.dropped += lines
                return
            self._backlog += len(batch)
        self._batches.put(batch)

    def _write_all(self) -> None:
        failed = False
        while (batch := self._batches.get()) is not None:
            view = memoryview(batch)
            while view and not failed:
                try:
                    view = view[os.write(self._fd, view) :]
                except InterruptedError:
                    continue
                except OSError as exc:  # a closed pipe: the lines have nowhere to go
                    failed = True
                    log.warning("access log cannot be written", extra={"error": str(exc)})
            with self._lock:
                self._backlog -= len(batch)

    def close(self) -> None:
        """Write what is pending and stop the thread (at shutdown)."""
        if self._pending:
            self._hand_over()
        self._batches.put(None)
        self._thread.join(timeout=5)
