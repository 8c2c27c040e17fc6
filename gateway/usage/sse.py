"""Server-sent events read as they pass: split the byte stream into events, hold none back.

A StreamTap is fed the response bytes chunk by chunk, exactly as they arrive,
and returns the bytes to send to the client now. It finds the events (lines
ending in LF or CRLF, a blank line ends an event; `:` lines are comments;
several `data:` lines join with LF) and shows each complete event's data to
`observe`, where a format subclass records usage.

With `strip_usage`, one kind of event (the usage chunk the gateway asked for
and the client did not) is removed whole, blank line included. To know an
event is that one, its `data:` has to be read, so an event is held back only
while `judge` says it might still be it (Verdict.HOLD); once it cannot be,
its bytes go out at once. Holding is bounded: an event over MAX_EVENT bytes
is released as is, and neither judged nor observed (memory stays flat).

Not supported: a lone CR as a line end (no OpenAI-style server sends it); such
a stream still passes unchanged, only its usage is not read.
"""

from __future__ import annotations

from enum import Enum

from gateway.usage.reader import UNKNOWN, Usage

MAX_EVENT = 64 * 1024
_BOM = b"\xef\xbb\xbf"


class Verdict(Enum):
    RELEASE = "release"  # not the event to strip: its bytes go out now
    STRIP = "strip"  # the event to strip, so far: hold it, discard it once complete
    HOLD = "hold"  # might still turn out to be it: hold it


def is_event_stream(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == "text/event-stream"


def _strip_eol(line: bytes) -> bytes:
    if line.endswith(b"\n"):
        line = line[:-1]
    if line.endswith(b"\r"):
        line = line[:-1]
    return line


class StreamTap:
    """Incremental SSE pass-through; subclasses say what to strip and what to record."""

    def __init__(self, *, strip_usage: bool = False) -> None:
        self.strip_usage = strip_usage
        self.usage: Usage = UNKNOWN
        self._out = bytearray()  # released during the current feed()
        self._held = bytearray()  # bytes of the current event not yet released
        self._line = bytearray()  # the current line so far (first 2 bytes only when oversize)
        self._data = bytearray()  # the current event's data, `data:` lines joined by LF
        self._data_lines = 0
        self._size = 0  # bytes of the current event so far
        self._oversize = False
        self._first_line = True
        self._verdict = self._fresh_verdict()

    # -- hooks for a format ---------------------------------------------------------

    def judge(self, data: bytes) -> Verdict:
        """Is an event with this data (so far) the one to strip? Called only when stripping."""
        return Verdict.RELEASE

    def observe(self, data: bytes) -> None:
        """Every complete event's data (within MAX_EVENT): record usage from it here."""

    # -- the stream -----------------------------------------------------------------

    def feed(self, chunk: bytes) -> bytes:
        """Take the next bytes from upstream; return the bytes to send to the client now."""
        pos, end_of_chunk = 0, len(chunk)
        while pos < end_of_chunk:
            newline = chunk.find(b"\n", pos)
            end = end_of_chunk if newline < 0 else newline + 1
            piece = chunk[pos:end]
            self._route(piece)
            if newline < 0:
                self._partial(piece)
            else:
                self._complete(piece)
            pos = end
        if not self.strip_usage:
            return chunk  # nothing is ever held: pass the very same bytes on
        out = bytes(self._out)
        self._out.clear()
        return out

    def finish(self) -> tuple[bytes, Usage]:
        """Upstream is done: the bytes still held (if any), and the usage seen (or UNKNOWN).

        An unterminated last event (a client would discard it) still passes, and its
        data still counts; if it is the event to strip, it is stripped.
        """
        if self._line and not self._oversize:
            self._complete(b"")
        if self._size:
            self._end_event()
        out = bytes(self._out) if self.strip_usage else b""
        self._out.clear()
        return out, self.usage

    # -- internals ------------------------------------------------------------------

    def _fresh_verdict(self) -> Verdict:
        return Verdict.HOLD if self.strip_usage else Verdict.RELEASE

    def _route(self, piece: bytes) -> None:
        self._size += len(piece)
        if self._size > MAX_EVENT and not self._oversize:
            self._oversize = True
            self._data.clear()
            del self._line[2:]
            self._release()
        if not self.strip_usage:
            return
        if self._verdict is Verdict.RELEASE:
            self._out += piece
        else:
            self._held += piece

    def _release(self) -> None:
        self._verdict = Verdict.RELEASE
        self._out += self._held
        self._held.clear()

    def _partial(self, piece: bytes) -> None:
        if self._oversize:
            # only whether the line is blank matters now: two bytes tell ("\r" + "\n")
            self._line += piece[: max(0, 2 - len(self._line))]
        else:
            self._line += piece

    def _complete(self, piece: bytes) -> None:
        if self._oversize:
            blank = len(self._line) + len(piece) <= 2 and not _strip_eol(bytes(self._line) + piece)
            self._line.clear()
            if blank:
                self._end_event()
            return
        line = _strip_eol(bytes(self._line) + piece if self._line else piece)
        self._line.clear()
        if self._first_line:
            self._first_line = False
            line = line.removeprefix(_BOM)
        if not line:
            self._end_event()
            return
        name, _, value = line.partition(b":")
        if name != b"data":
            return  # a comment (empty name), `event:`, `id:`, `retry:`: no verdict changes
        if value.startswith(b" "):
            value = value[1:]
        if self._data_lines:
            self._data += b"\n"
        self._data += value
        self._data_lines += 1
        if self._verdict is not Verdict.RELEASE:
            self._verdict = self.judge(bytes(self._data))
            if self._verdict is Verdict.RELEASE:
                self._release()

    def _end_event(self) -> None:
        if self._verdict is Verdict.STRIP:
            self._held.clear()
        else:
            self._out += self._held
            self._held.clear()
        if self._data_lines and not self._oversize:
            self.observe(bytes(self._data))
        self._data.clear()
        self._data_lines = 0
        self._size = 0
        self._oversize = False
        self._verdict = self._fresh_verdict()
