"""The audit spool: an append-only JSON-lines file of rows the database could not take.

Blocking file I/O; the writer calls it through `asyncio.to_thread`. Appends
are fsynced, one per batch. Every change happens under an exclusive `flock`
on a lock file beside the spool, so gateway processes sharing one spool never
interleave an append with a replay; the lock file (not the spool) carries the
lock because a partial replay replaces the spool by rename.
"""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path


class Spool:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_path = path.with_name(path.name + ".lock")

    def size(self) -> int:
        """Bytes waiting to be replayed (0 when there is no spool file)."""
        try:
            info = self.path.stat()
        except OSError:
            return 0
        return info.st_size if stat.S_ISREG(info.st_mode) else 0  # a folder there is no spool

    def lock(self) -> int:
        """Wait for the exclusive lock; close the returned descriptor to release it."""
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def append(self, data: bytes, locked: bool = False) -> None:
        """Append whole lines and fsync them: once this returns they survive a crash.

        `locked`: the caller holds the lock already (a replay adding rows to its end).
        """
        fd = -1 if locked else self.lock()
        try:
            with open(self.path, "ab") as spool:
                spool.write(data)
                spool.flush()
                os.fsync(spool.fileno())
        finally:
            if fd >= 0:
                os.close(fd)

    def read(self, offset: int, max_lines: int) -> list[tuple[bytes, int]]:
        """Up to `max_lines` whole lines from byte `offset`, each with the offset after it.

        Call it holding the lock. A last line without its newline (a crash
        mid-append) is returned too, so the caller can report and skip it.
        """
        lines: list[tuple[bytes, int]] = []
        try:
            spool = open(self.path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            return lines
        with spool:
            spool.seek(offset)
            while len(lines) < max_lines:
                line = spool.readline()
                if not line:
                    break
                lines.append((line, spool.tell()))
        return lines

    def discard(self, offset: int) -> None:
        """Drop the first `offset` bytes (they reached the database). Call it holding the lock."""
        if offset <= 0:
            return
        if offset >= self.size():
            with open(self.path, "r+b") as spool:
                spool.truncate(0)
                os.fsync(spool.fileno())
            return
        # Part replayed: the rest goes to a new file that replaces the spool in
        # one rename, so a crash leaves either the old spool or the new one.
        rest = self.path.with_name(self.path.name + ".rest")
        with open(self.path, "rb") as source, open(rest, "wb") as target:
            source.seek(offset)
            while chunk := source.read(1024 * 1024):
                target.write(chunk)
            target.flush()
            os.fsync(target.fileno())
        os.replace(rest, self.path)
