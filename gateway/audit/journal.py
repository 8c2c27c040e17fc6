"""The audit journal: each answered request's row reaches the kernel before or as its answer ends.

Rows wait in the writer's memory queue until the next batch (audit.flush_interval),
so a SIGKILL or an OOM kill would lose them. Each process therefore also appends
every request's record to a journal file with one plain `os.write`: no fsync,
because the page cache outlives a killed process (a power cut is the database's
business, as it is for every row already handed to it).

Records are lines of `gateway/audit/rows.py` `journal_line`, keyed by the row's
journal id, unique across processes (a random boot id and a counter):

- provisional: when a response its handler streams (the proxy, an event stream)
  is prepared, before a byte of its head leaves, the row as known then (status,
  latency so far, bytes_out 0, reason `interrupted`) is written at once;
- final at once: a response whose whole body is known when its head is prepared
  (the proxy's small bodies, sent in one write) gets its final record then,
  counting its body; the audit stage writes another record only when the
  outcome changed (the client left mid-write) or a model call's report row
  comes with it. The stored row counts the head as well: only a row replayed
  after a kill lacks it;
- final: the audit stage's row, with the report row of a model call. A row made
  before its response goes out (local answers, every problem) is written at once
  when the head is prepared; a row made after a streamed response is buffered
  and written at the end of the event-loop turn with the others of that turn, or
  sooner with the next record written at once (one write for all of them).
  The turn ends before the writer can store the row (that needs an await), so a
  row never reaches the database or the spool before its final record.

Files are `<boot id>-<n>.journal` in the journal folder (mode 0700, files 0600),
each held under an exclusive flock by its process for as long as it exists. The
process rolls to a new file every ROLL_SECONDS, or sooner past ROLL_BYTES, and
writes into it again the provisional records of the requests still in flight, so
a long stream never pins an old file. A rolled file is tagged with the number of
rows the writer had taken by then; rows leave the writer's queue oldest first,
so once the writer reports that many settled (stored, spooled or refused), every
row of the file is stored elsewhere and the file is deleted. A clean shutdown
deletes the rest after the writer's last drain.

Replay, at start-up before serving: every journal file whose lock can be taken
(its process is gone) is read; per journal id a final record beats a provisional
one, and a later record an earlier one; the rows are inserted ignoring journal
ids already stored (rows written normally carry theirs), then the files are
deleted. Replaying a file twice therefore inserts nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import stat
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.audit.rows import AuditRow, ReportRow, Row, from_journal, journal_line

log = logging.getLogger("gateway.audit")

ROLL_SECONDS = 30.0  # a file older than this (and not empty) is rolled
ROLL_BYTES = 16 * 1024 * 1024  # a file larger than this is rolled at the next tick
TICK = 1.0  # seconds between looks at the current file's age and size
ERROR_LOG_EVERY = 1.0  # seconds: a failing journal is logged at most this often
SUFFIX = ".journal"
INTERRUPTED = "interrupted"  # the reason of a provisional row: its final record never came
CREATE_ATTEMPTS = 5


@dataclass(slots=True)
class JournalFile:
    path: Path
    fd: int  # open, under this process's exclusive flock
    mark: int = 0  # rows the writer had taken when the file was rolled


class Journal:
    """This process's journal files; `begin`, `record` and `end` are the request side."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._boot = os.urandom(10).hex()  # 80 random bits: no two processes share ids
        self._count = 0  # journal ids made
        self._made = 0  # files made
        self._loop: asyncio.AbstractEventLoop | None = None  # set while open
        self._current: JournalFile | None = None
        self._fd = -1  # the current file's descriptor (the request side's one lookup)
        self._size = 0
        self._born = 0.0
        self._old: deque[JournalFile] = deque()  # rolled, oldest first
        self._inflight: dict[str, bytes] = {}  # journal id → provisional record
        self._pending: list[bytes] = []  # final records of this event-loop turn
        self._tick: asyncio.TimerHandle | None = None
        self._taken: Callable[[], int] = lambda: 0
        self._last_error_log = -ERROR_LOG_EVERY
        self.errors = 0  # writes that failed (disk full, I/O error): those records are missing

    # --- the request side: O(1), no await ------------------------------------

    def new_id(self) -> str:
        self._count += 1
        return f"{self._boot}-{self._count:x}"

    def record(self, audit: AuditRow, report: ReportRow | None) -> None:
        """A final record, written now: its response's head has not left yet."""
        if self._fd >= 0:
            self._write_now(journal_line(True, audit, report))

    def begin(self, journal_id: str, audit: AuditRow, final: bool = False) -> None:
        """A record written now and kept until `end` or `forget` for the next roll:
        provisional, or `final` for a whole response that goes out with its head."""
        if self._fd >= 0:
            line = journal_line(final, audit)
            self._inflight[journal_id] = line
            self._write_now(line)

    def forget(self, journal_id: str) -> None:
        """The response of a `final` begin went out as recorded: nothing more to write."""
        self._inflight.pop(journal_id, None)

    def end(self, journal_id: str, audit: AuditRow, report: ReportRow | None) -> None:
        """The final record after `begin`: its response went out already; written this turn."""
        loop = self._loop
        if loop is None:
            return
        self._inflight.pop(journal_id, None)
        pending = self._pending
        pending.append(journal_line(True, audit, report))
        if len(pending) == 1:
            loop.call_soon(self._flush)

    def _write_now(self, line: bytes) -> None:
        pending = self._pending
        if pending:  # the final records waiting for the end of the turn go along: one write
            pending.append(line)
            self._pending = []
            line = b"".join(pending)
        self._write(line)

    def _flush(self) -> None:
        pending = self._pending
        if pending and self._fd >= 0:
            self._pending = []
            self._write(b"".join(pending))

    def _write(self, data: bytes) -> None:
        try:
            written = os.write(self._fd, data)  # O_APPEND: at the end, whatever else wrote
            if written != len(data):  # a full disk takes part of it; try the rest once
                written += os.write(self._fd, data[written:])
        except OSError as exc:
            self._failed("audit journal cannot be written: records are missing from it", exc)
            return
        self._size += written

    def _failed(self, message: str, exc: OSError) -> None:
        self.errors += 1
        now = time.monotonic()
        if now - self._last_error_log >= ERROR_LOG_EVERY:
            self._last_error_log = now
            log.error(
                message,
                extra={
                    "folder": str(self.folder),
                    "error": exc.strerror or type(exc).__name__,
                    "errors_total": self.errors,
                },
            )

    # --- files -----------------------------------------------------------------

    @property
    def files(self) -> list[Path]:
        """This process's journal files, oldest first (empty when not open)."""
        current = [self._current.path] if self._current is not None else []
        return [f.path for f in self._old] + current

    def open(self, taken: Callable[[], int]) -> None:
        """Create the folder and this process's first file; `taken` counts the writer's
        rows so far. Call it on the event loop; OSError when the folder is unusable."""
        make_folder(self.folder)
        self._current = self._create()
        self._fd = self._current.fd
        self._size = 0
        self._born = time.monotonic()
        self._taken = taken
        self._loop = asyncio.get_running_loop()
        self._tick = self._loop.call_later(TICK, self._on_tick)

    def _create(self) -> JournalFile:
        for _ in range(CREATE_ATTEMPTS):
            self._made += 1
            path = self.folder / f"{self._boot}-{self._made:06d}{SUFFIX}"
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.fchmod(fd, 0o600)  # whatever the umask left
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.fstat(fd).st_nlink:
                    return JournalFile(path, fd)
            except BlockingIOError:
                pass
            except BaseException:
                os.close(fd)
                raise
            # Another process's replay took the new, empty file between its creation
            # and the lock, and deletes it: start another.
            os.close(fd)
        raise OSError(f"no journal file could be created in {self.folder}")

    def _on_tick(self) -> None:
        loop = self._loop
        if loop is None:
            return
        size = self._size
        if size >= ROLL_BYTES or (size and time.monotonic() - self._born >= ROLL_SECONDS):
            self.roll()
        self._tick = loop.call_later(TICK, self._on_tick)

    def roll(self) -> None:
        """Go on in a new file; the current one is deleted once its rows have settled."""
        old = self._current
        if old is None:
            return
        self._flush()
        try:
            new = self._create()
        except OSError as exc:
            self._failed("audit journal cannot roll to a new file: the old one grows", exc)
            self._born = time.monotonic()  # the next attempt after another ROLL_SECONDS
            return
        old.mark = self._taken()
        self._old.append(old)
        self._current, self._fd, self._size = new, new.fd, 0
        self._born = time.monotonic()
        if self._inflight:  # requests still streaming: their records move on with them
            self._write(b"".join(self._inflight.values()))

    def release(self, settled: int) -> None:
        """Delete the rolled files all of whose rows are among the first `settled`."""
        old = self._old
        while old and old[0].mark <= settled:
            delete_files([old.popleft()])

    def close(self, delete: bool) -> None:
        """Stop: write what is buffered; `delete` (every row is stored) removes the files,
        otherwise they are left, unlocked, for the next start to replay."""
        if self._loop is None:
            return
        self._flush()
        if self._tick is not None:
            self._tick.cancel()
        files = [*self._old, *([self._current] if self._current is not None else [])]
        if delete:
            delete_files(files)
        else:
            close_files(files)
        self._loop, self._current, self._fd = None, None, -1
        self._old.clear()
        self._inflight.clear()


def make_folder(folder: Path) -> None:
    """The journal folder, mode 0700 even if it was there with another mode."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(folder.stat().st_mode) != 0o700:
        folder.chmod(0o700)


# --- replay at start-up (blocking: the writer runs these in a thread) ---------------


def claim_orphans(folder: Path) -> list[JournalFile]:
    """The journal files in `folder` whose process is gone, each now locked by this one."""
    try:
        paths = sorted(p for p in folder.iterdir() if p.name.endswith(SUFFIX))
    except FileNotFoundError:
        return []
    claimed: list[JournalFile] = []
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue  # deleted since the listing: rolled and settled, or replayed
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_nlink == 0:
                os.close(fd)  # another replay took it and deleted it meanwhile
                continue
        except BlockingIOError:
            os.close(fd)  # a live process's file
            continue
        except BaseException:
            os.close(fd)
            raise
        claimed.append(JournalFile(path, fd))
    return claimed


def read_records(files: list[JournalFile]) -> tuple[list[Row], int]:
    """The rows to replay from `files` and the number of unreadable lines.

    Per journal id the final record wins over a provisional one, and a later
    record over an earlier one; rows keep the order their ids first appeared in.
    A provisional row keeps the `interrupted` reason it was written with."""
    best: dict[str, tuple[bool, AuditRow, ReportRow | None]] = {}
    unreadable = 0
    for file in files:
        os.lseek(file.fd, 0, os.SEEK_SET)
        with open(file.fd, "rb", closefd=False) as stream:
            for line in stream:
                try:
                    final, audit, report = from_journal(line)
                except ValueError:  # a line torn by a full disk, or not a journal's
                    unreadable += 1
                    continue
                key = str(audit.journal_id)
                seen = best.get(key)
                if seen is None or final or not seen[0]:
                    best[key] = (final, audit, report)
    rows: list[Row] = []
    for _, audit, report in best.values():
        rows.append(audit)
        if report is not None:
            rows.append(report)
    return rows, unreadable


def delete_files(files: list[JournalFile]) -> None:
    """Delete, then unlock: no replay can claim a file between the two."""
    for file in files:
        with contextlib.suppress(FileNotFoundError):
            file.path.unlink()
        os.close(file.fd)


def close_files(files: list[JournalFile]) -> None:
    for file in files:
        os.close(file.fd)
