"""A model call's token usage, read from the response as it passes to the client.

SSE responses go through the format's stream tap (every byte out at once;
only a usage event the gateway itself asked for is stripped). Other
responses are passed on untouched while their first MAX_PARSE bytes are kept
to read the usage at the end. Nothing is ever held back from the client.
"""

from __future__ import annotations

from gateway.usage import MAX_PARSE, UNKNOWN, RequestPlan, StreamTap, Usage, UsageReader
from gateway.usage.sse import is_event_stream


class Meter:
    __slots__ = ("_buffer", "_plan", "_reader", "_tap", "usage")

    def __init__(self, reader: UsageReader, plan: RequestPlan | None) -> None:
        self._reader = reader
        self._plan = plan
        self._tap: StreamTap | None = None
        self._buffer: bytearray | None = None
        self.usage: Usage = UNKNOWN

    @property
    def plan(self) -> RequestPlan | None:
        """What the reader made of the request body (None: not read)."""
        return self._plan

    def start(self, content_type: str) -> bool:
        """Begin with the response head; True when the body may change length (stripping)."""
        if is_event_stream(content_type):
            strip = self._plan is not None and self._plan.injected_usage
            self._tap = self._reader.stream(strip_usage=strip)
            return strip
        self._buffer = bytearray()
        return False

    @property
    def streaming(self) -> bool:
        """Whether the response is an event stream (known once `start` was called)."""
        return self._tap is not None

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to send to the client now."""
        if self._tap is not None:
            return self._tap.feed(chunk)
        buffer = self._buffer
        if buffer is not None:
            if len(buffer) + len(chunk) > MAX_PARSE:
                self._buffer = None  # too large to read: usage stays unknown
            else:
                buffer += chunk
        return chunk

    def finish(self) -> bytes:
        """The last bytes to send; sets `usage`."""
        if self._tap is not None:
            rest, self.usage = self._tap.finish()
            return rest
        if self._buffer is not None:
            self.usage = self._reader.from_json(bytes(self._buffer))
        return b""
