"""What the proxy needs of a client's request, and where its answer goes.

The proxy (gateway/proxy/forward.py, models.py) reads an `Incoming` request
and answers through an `Outgoing` sink. Two servers provide them: the lean
server path (gateway/server/lean.py), which serves upstream routes on the
gateway's own listener, and aiohttp's web.Request with `WebOutgoing` below,
which serves them wherever the app runs on aiohttp's own server (a plain
AppRunner, `web.run_app`).
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web
from aiohttp.streams import StreamReader
from multidict import CIMultiDict, CIMultiDictProxy


class Incoming(Protocol):
    """The client's request, as aiohttp's web.Request also offers it."""

    @property
    def method(self) -> str: ...

    @property
    def headers(self) -> CIMultiDictProxy[str]: ...

    @property
    def remote(self) -> str | None: ...

    @property
    def scheme(self) -> str: ...

    @property
    def body_exists(self) -> bool: ...

    @property
    def content_length(self) -> int | None: ...

    @property
    def content(self) -> StreamReader: ...

    async def read(self) -> bytes: ...


class Outgoing(Protocol):
    """The response to the client: whole, or a head and then streamed chunks."""

    async def whole(self, status: int, reason: str, headers: CIMultiDict[str], body: bytes) -> None:
        """The head and the whole body, in one write."""
        ...

    async def start(
        self, status: int, reason: str, headers: CIMultiDict[str], length: int | None
    ) -> None:
        """The head of a streamed body (`length`: its Content-Length; None: chunked)."""
        ...

    async def write(self, chunk: bytes) -> None: ...

    async def finish(self) -> None:
        """The end of a streamed body."""
        ...

    def cut(self) -> None:
        """Abort the client's connection: a body cut short must not pass for a whole one."""
        ...

    def client_gone(self) -> bool:
        """Whether the client's connection is closed or closing."""
        ...


class WebOutgoing:
    """An `Outgoing` over aiohttp's web.Response/StreamResponse, for a web.Request."""

    __slots__ = ("request", "response")

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response: web.StreamResponse | None = None  # once a head was made

    async def whole(self, status: int, reason: str, headers: CIMultiDict[str], body: bytes) -> None:
        response = web.Response(status=status, reason=reason, headers=headers, body=body)
        self.response = response
        # Sent here, as a streamed one is, so the audit counts what was written (head
        # included); a Response keeps its head until the body goes with it.
        await response.prepare(self.request)
        await response.write_eof()

    async def start(
        self, status: int, reason: str, headers: CIMultiDict[str], length: int | None
    ) -> None:
        response = web.StreamResponse(status=status, reason=reason, headers=headers)
        if length is not None:
            response.content_length = length
        self.response = response
        await response.prepare(self.request)

    async def write(self, chunk: bytes) -> None:
        assert self.response is not None
        await self.response.write(chunk)

    async def finish(self) -> None:
        assert self.response is not None
        await self.response.write_eof()

    def cut(self) -> None:
        transport = self.request.transport
        if transport is not None:
            transport.abort()

    def client_gone(self) -> bool:
        transport = self.request.transport
        return transport is None or transport.is_closing()
