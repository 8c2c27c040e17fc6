"""AuditWriter: rows in from requests without waiting, out to the database in batches.

`submit` is a bounded deque append: O(1), never awaits, never blocks. When the
queue is full the row is dropped and counted (logged at most once a second).
One background task takes batches of `batch_size` rows, when that many are
waiting or every `flush_interval`, and writes each with one executemany per
table. While the database does not answer, batches go to the spool file and
are replayed, in order, before any newer row once it answers again. If even
the spool cannot be written, rows stay queued (until the queue is full),
every attempt is logged at ERROR and `failing` turns /readyz to 503.
`close` writes out everything, to the database or else the spool.

Every request's record also goes to this process's journal (gateway/audit/journal.py)
before or as its response ends; `recover`, at start-up, replays the journals of
processes killed before their rows were written, and the writer tells the journal
how many rows have settled so that it can delete the files nobody needs anymore.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Sequence

import orjson

from gateway.audit.journal import (
    Journal,
    claim_orphans,
    close_files,
    delete_files,
    read_records,
)
from gateway.audit.rows import ReportRow, Row, from_spool, to_spool
from gateway.audit.spool import Spool
from gateway.config.schema.database import AuditConfig
from gateway.store.audit import AuditStore

log = logging.getLogger("gateway.audit")

DB_TIMEOUT = 10.0  # seconds one batch may take before the database counts as down
RETRY_AFTER = 1.0  # seconds between attempts to reach a database that is down
DROP_LOG_EVERY = 1.0  # seconds: a full queue is logged at most this often


class AuditWriter:
    def __init__(self, store: AuditStore, config: AuditConfig) -> None:
        self.store = store
        self.spool = Spool(config.spool)
        # the journal folder; by default `audit.journal` beside the spool file
        self.journal = Journal(config.journal or config.spool.with_name("audit.journal"))
        self._taken = 0  # rows ever queued; all but the queued ones have settled
        self._limit = config.queue_size
        self._batch = config.batch_size
        self._interval = config.flush_interval
        self._queue: deque[Row] = deque()
        self._wake = asyncio.Event()
        self._flushing = asyncio.Lock()  # one drain at a time: the loop's, or flush()'s
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._spooled = self.spool.size() > 0  # rows wait in the spool: they go first
        self._retry_at = 0.0  # monotonic time before which the database is not tried
        self._down = False
        self._last_drop_log = -DROP_LOG_EVERY
        self.dropped = 0  # rows lost: queue full, shut down, or refused by the database
        self.failing = False  # the database is down and the spool cannot be written

    # --- the request side ---------------------------------------------------

    def submit(self, row: Row) -> None:
        """Queue a row for writing. O(1); never waits."""
        queue = self._queue
        if len(queue) >= self._limit or self._closed:
            self._drop()
            return
        queue.append(row)
        self._taken += 1
        if len(queue) >= self._batch:
            self._wake.set()

    def _drop(self) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_EVERY:
            self._last_drop_log = now
            log.error(
                "audit rows dropped: the writer is closed"
                if self._closed
                else "audit queue full: rows are being dropped",
                extra={"dropped_total": self.dropped, "queue_size": self._limit},
            )

    # --- what metrics read --------------------------------------------------

    @property
    def depth(self) -> int:
        """Rows waiting in memory."""
        return len(self._queue)

    @property
    def spool_bytes(self) -> int:
        return self.spool.size()

    @property
    def lag_seconds(self) -> float:
        """How long the oldest queued row has waited (0 when none waits)."""
        queue = self._queue
        return max(0.0, time.time() - queue[0].ts) if queue else 0.0

    # --- the writing side ---------------------------------------------------

    async def recover(self) -> None:
        """Replay the journals of gateway processes that are gone; call it before serving.

        Their rows go where a batch goes (the database, or the spool while it is
        down), inserted only where their journal id is not stored yet; then the
        files are deleted. Files whose rows nothing took are left for the next start."""
        files = await asyncio.to_thread(claim_orphans, self.journal.folder)
        if not files:
            return
        try:
            rows, unreadable = await asyncio.to_thread(read_records, files)
            if unreadable:
                self.dropped += unreadable
                log.error("audit journal lines unreadable; skipped", extra={"lines": unreadable})
            async with self._flushing:
                for start in range(0, len(rows), self._batch):
                    batch = await self._unstored(rows[start : start + self._batch])
                    if batch and not await self._write(batch):
                        log.error(
                            "audit journal kept for the next start: "
                            "neither the database nor the spool took its rows",
                            extra={"folder": str(self.journal.folder), "rows": len(rows)},
                        )
                        return
            await asyncio.to_thread(delete_files, files)
            replayed, files = len(files), []
        finally:
            close_files(files)
        log.info("audit journal replayed", extra={"rows": len(rows), "files": replayed})

    def start(self) -> None:
        """Open this process's journal (OSError when its folder is unusable) and start
        writing batches."""
        self.journal.open(lambda: self._taken)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="audit-writer")

    async def _run(self) -> None:
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                async with self._flushing:
                    await self._drain()
            except Exception:  # the loop must outlive any one failure
                log.exception("audit writer failed; retrying")

    async def flush(self) -> None:
        """Write out every queued row now (the spool first), trying the database at once."""
        async with self._flushing:
            self._retry_at = 0.0
            await self._drain()

    async def close(self) -> None:
        """Stop taking rows and write out all of them: to the database, or else the spool."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._wake.set()
            await asyncio.wait([self._task])  # it finishes the batch in hand, then stops
        async with self._flushing:
            # A database found down a moment ago is not waited for again: the
            # rows go to the spool, and the next start replays them.
            await self._drain()
        if self._queue:
            log.error(
                "audit rows not written at shutdown: neither the database nor the spool "
                "took them; the journal keeps those of answered requests for the next start",
                extra={"rows": len(self._queue), "spool": str(self.spool.path)},
            )
        # Every row stored: the journal has nothing left to replay. Otherwise its
        # files stay, and the next start replays the rows they hold.
        self.journal.close(delete=not self._queue)

    async def _drain(self) -> None:
        try:
            await self._drain_queue()
        finally:
            # Rows leave the queue oldest first and go back to its front when
            # nothing took them: every row ever queued but those queued now has settled.
            self.journal.release(self._taken - len(self._queue))

    async def _drain_queue(self) -> None:
        if self._spooled and time.monotonic() >= self._retry_at:
            await self._replay()
        queue = self._queue
        while queue:
            batch = [queue.popleft() for _ in range(min(self._batch, len(queue)))]
            if not await self._write(batch):
                queue.extendleft(reversed(batch))  # kept, oldest first, for the next attempt
                return

    async def _write(self, batch: list[Row]) -> bool:
        """Write a batch to the database, or else the spool; False if neither took it."""
        if not self._spooled and time.monotonic() >= self._retry_at:
            batch = await self._store(batch)
            if not batch:
                return True
        return await self._to_spool(batch)

    async def _store(self, rows: Sequence[Row]) -> list[Row]:
        """Insert `rows`; returns those not written because the database is down."""
        try:
            async with asyncio.timeout(DB_TIMEOUT):
                await self.store.insert(rows)
        except Exception as exc:
            if not await self._answers():
                self._went_down(exc)
                return list(rows)
        else:
            self._came_up()
            return []
        # The database answers but refused the batch: one row at a time, so a
        # row it cannot take costs only itself.
        for index, row in enumerate(rows):
            try:
                async with asyncio.timeout(DB_TIMEOUT):
                    await self.store.insert((row,))
            except Exception as exc:
                if not await self._answers():
                    self._went_down(exc)
                    return list(rows[index:])
                self.dropped += 1
                log.error(
                    "audit row refused by the database; dropped",
                    extra={"request_id": row.request_id, "error": type(exc).__name__},
                )
        self._came_up()
        return []

    async def _unstored(self, rows: list[Row]) -> list[Row]:
        """`rows` less those stored already (a replay after a crash may repeat them).

        Database down: all of them; they go to the spool, whose replay asks again."""
        try:
            async with asyncio.timeout(DB_TIMEOUT):
                stored = await self.store.stored(rows)
        except Exception:  # the database cannot say now; the spool's replay will
            return rows
        if not stored:
            return rows
        return [r for r in rows if (type(r) is ReportRow, r.journal_id) not in stored]

    async def _answers(self) -> bool:
        try:
            async with asyncio.timeout(DB_TIMEOUT):
                return await self.store.answers()
        except TimeoutError:
            return False

    def _went_down(self, exc: BaseException) -> None:
        self._retry_at = time.monotonic() + RETRY_AFTER
        if not self._down:
            self._down = True
            # The type only: a driver's message may quote the statement and its rows.
            log.warning(
                "audit database unreachable: spooling rows",
                extra={"error": type(exc).__name__, "spool": str(self.spool.path)},
            )

    def _came_up(self) -> None:
        self.failing = False
        if self._down:
            self._down = False
            log.info("audit database answers again")

    async def _to_spool(self, rows: Sequence[Row], locked: bool = False) -> bool:
        data = b"".join(orjson.dumps(to_spool(row)) + b"\n" for row in rows)
        try:
            await asyncio.to_thread(self.spool.append, data, locked)
        except OSError as exc:
            self.failing = True
            log.error(
                "audit spool cannot be written: rows kept in memory until the queue is full",
                extra={
                    "spool": str(self.spool.path),
                    "error": exc.strerror or type(exc).__name__,
                    "queued": len(self._queue) + len(rows),
                },
            )
            return False
        self.failing = False
        self._spooled = True
        return True

    async def _replay(self) -> None:
        """Insert the spool's rows, oldest first, then cut what was written from it."""
        try:
            fd = await asyncio.to_thread(self.spool.lock)
        except OSError as exc:
            log.error("audit spool cannot be locked", extra={"error": exc.strerror})
            return
        offset = 0  # bytes of the spool that reached the database
        replayed = 0
        done = False
        try:
            while True:
                lines = await asyncio.to_thread(self.spool.read, offset, self._batch)
                if not lines:
                    done = True
                    break
                rows, ends = self._decode(lines)
                fresh = await self._unstored(rows)
                left = await self._store(fresh) if fresh else []
                replayed += len(fresh) - len(left)
                if left:  # down again: the spool keeps what was not written
                    first = next(i for i, row in enumerate(rows) if row is left[0])
                    if first:
                        offset = ends[first - 1]
                    break
                offset = lines[-1][1]
                if len(self._queue) >= self._batch:
                    # Rows keep coming while a long spool replays: they join its
                    # end (order kept), so the queue never fills and drops them.
                    await self._spill()
            await asyncio.to_thread(self.spool.discard, offset)
            self._spooled = not done
        except OSError as exc:
            log.error(
                "audit spool cannot be replayed",
                extra={"spool": str(self.spool.path), "error": exc.strerror},
            )
        finally:
            os.close(fd)
        if replayed:
            log.info("audit spool replayed", extra={"rows": replayed, "left": self.spool.size()})

    async def _spill(self) -> None:
        """Move every queued row to the end of the spool, whose lock `_replay` holds."""
        rows = list(self._queue)
        self._queue.clear()
        if not await self._to_spool(rows, locked=True):
            self._queue.extendleft(reversed(rows))

    def _decode(self, lines: list[tuple[bytes, int]]) -> tuple[list[Row], list[int]]:
        """The rows of spool lines, with the offset after each; unreadable lines are skipped."""
        rows: list[Row] = []
        ends: list[int] = []
        for line, end in lines:
            try:
                rows.append(from_spool(orjson.loads(line)))
                ends.append(end)
            except (ValueError, orjson.JSONDecodeError):
                self.dropped += 1
                log.error("audit spool line unreadable; skipped", extra={"offset": end})
        return rows, ends
