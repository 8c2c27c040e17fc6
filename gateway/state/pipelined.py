"""A pipelined Redis connection for the one call on the request path (the gate's script).

redis-py's asyncio client costs about 200 µs of CPU per command (measured on
this machine with redis-py 8.1: a connection-pool checkout, a retry wrapper, a
task and timers per call, observability hooks), more than the rest of the
gateway's work on a request. This sends each command on one shared connection
the moment it is asked for and matches replies to callers in order (RESP
answers in order); commands issued in the same event-loop turn leave in one
write. Replies are parsed by hiredis (C). The rest of the gateway's Redis use
(logouts, user changes, login throttling) stays on redis-py: it is not per
request.

Failures are `RedisError`s (a ConnectionError for a lost or refused
connection, a TimeoutError past `timeout`, a ResponseError for an error
reply), so callers treat them as any Redis failure. A caller that timed out
leaves its place in the queue, and its late reply is dropped, so the order
holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
from collections import deque
from typing import Any, cast

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.pending: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.buffer: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses, only alike)
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        pending = self.pending
        while (reply := reader.gets()) is not False:
            if not pending:  # a reply nobody asked for: the stream is out of step
                self._broken(RedisConnectionError("unexpected reply from Redis"))
                return
            future = pending.popleft()
            if future.done():
                continue  # its caller timed out or was cancelled: the reply is dropped
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(ResponseError(str(reply)))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    def _broken(self, exc: Exception) -> None:
        if self.transport is not None:
            self.transport.abort()
            self.transport = None
        self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        while self.pending:
            future = self.pending.popleft()
            if not future.done():
                future.set_exception(exc)

    def flush(self) -> None:
        """Write every command queued in this loop turn, in one write."""
        buffer = self.buffer
        if buffer and self.transport is not None:
            self.transport.write(b"".join(buffer))
        buffer.clear()


class PipelinedRedis:
    """One connection, opened on first use and again after it is lost."""

    def __init__(self, url: str, timeout: float = 2.0) -> None:
        options = parse_url(url)
        if "path" in options:
            raise ValueError("a unix socket Redis URL is not supported here")
        self._host = str(options.get("host", "localhost"))
        self._port = int(options.get("port", 6379))
        self._db = int(options.get("db", 0))
        self._username = options.get("username")
        self._password = options.get("password")
        self._ssl = ssl.create_default_context() if url.startswith("rediss://") else None
        self._timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task[_Protocol] | None = None
        self._scripts: dict[str, bytes] = {}  # sha1 → script

    async def call(self, *args: object) -> Any:
        """Send one command and return its reply (an error reply raises ResponseError)."""
        try:
            async with asyncio.timeout(self._timeout):
                protocol = await self._connection()
                return await self._send(protocol, args)
        except TimeoutError:
            raise RedisTimeoutError(f"no reply from Redis within {self._timeout} s") from None
        except OSError as exc:
            raise RedisConnectionError(f"cannot reach Redis: {exc}") from None

    def script(self, text: str) -> str:
        """Register a Lua script; returns its sha1 for `evalsha`."""
        sha = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()
        self._scripts[sha] = text.encode()
        return sha

    async def evalsha(self, sha: str, keys: list[str], args: list[object]) -> Any:
        """Run a registered script (loaded into Redis when Redis does not know it)."""
        try:
            return await self.call("EVALSHA", sha, len(keys), *keys, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await self.call("SCRIPT", "LOAD", self._scripts[sha])
        return await self.call("EVALSHA", sha, len(keys), *keys, *args)

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(BaseException):
                await self._connecting
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()

    def _send(self, protocol: _Protocol, args: tuple[object, ...]) -> asyncio.Future[Any]:
        future = asyncio.get_running_loop().create_future()
        protocol.pending.append(future)
        if not protocol.buffer:
            asyncio.get_running_loop().call_soon(protocol.flush)
        protocol.buffer.append(hiredis.pack_command(args))  # type: ignore[arg-type]
        return future

    async def _connection(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and protocol.transport is not None:
            return protocol
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(_Protocol, self._host, self._port, ssl=self._ssl)
        setup: list[asyncio.Future[Any]] = []
        if self._password is not None:
            auth = ("AUTH", self._username, self._password) if self._username else None
            setup.append(self._send(protocol, auth or ("AUTH", self._password)))
        if self._db:
            setup.append(self._send(protocol, ("SELECT", self._db)))
        for step in setup:
            await step
        self._protocol = protocol
        return protocol
