"""A raw-socket upstream on 127.0.0.1 that answers each request with exact bytes.

aiohttp's own server never sends broken HTTP, so the answers a gateway must
refuse (garbage, duplicate Content-Length, a body on a 204, a NUL in a
field, ...) come from here: an asyncio server that reads each request head
(and a Content-Length body) and writes what it is told, byte for byte.

    async with RawUpstream(INVALID_ANSWERS["garbage"]) as raw:
        ...  # route an upstream to raw.url; raw.requests holds each head received

`INVALID_ANSWERS` names every invalid answer the gateway refuses with 502
`upstream_invalid`, so tests and chaos scripts share one list. Run alone, it
serves one of them until interrupted:

    python -m tests.rawupstream duplicate_content_length --port 9301
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@dataclass(frozen=True, slots=True)
class Reply:
    """What the upstream does with one request: wait, write, and maybe close."""

    data: bytes = b""  # written as is once the request was read; b"": nothing
    close: bool = True  # close the connection after writing (else read the next request)
    wait: asyncio.Event | None = None  # hold the answer until this is set


# bytes: that answer to every request, then close. A callable gets the request's
# number (0, 1, ... across all connections) and its head.
Answer = bytes | Reply | Callable[[int, bytes], "bytes | Reply"]

INVALID_ANSWERS: dict[str, bytes] = {
    "garbage": b"HELLO THERE\r\n\r\n",
    "not_http": b'{"ok": true}\n',
    "status_600": b"HTTP/1.1 600 Beyond\r\nContent-Length: 2\r\n\r\nok",
    "status_99": b"HTTP/1.1 099 Below\r\nContent-Length: 2\r\n\r\nok",
    "status_0": b"HTTP/1.1 000 Zero\r\nContent-Length: 2\r\n\r\nok",
    "duplicate_content_length": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!"
    ),
    "same_content_length_twice": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok"
    ),
    "content_length_list": b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",
    "content_length_and_chunked": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n"
    ),
    "chunked_and_content_length": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n"
    ),
    "body_on_204": b"HTTP/1.1 204 No Content\r\n\r\nhello",
    "length_on_204": b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
    "chunked_on_204": b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n",
    "response_after_204": b"HTTP/1.1 204 No Content\r\n\r\n" + OK,
    "body_on_304": b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\nhello",
    "nul_in_field": b"HTTP/1.1 200 OK\r\nX-Note: a\x00b\r\nContent-Length: 2\r\n\r\nok",
    "cr_in_field": b"HTTP/1.1 200 OK\r\nX-Note: a\rb\r\nContent-Length: 2\r\n\r\nok",
    "lf_in_field": b"HTTP/1.1 200 OK\r\nX-Note: a\nb\r\nContent-Length: 2\r\n\r\nok",
    "long_field": (
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"v" * 9000 + b"\r\nContent-Length: 2\r\n\r\nok"
    ),
    "long_status_line": b"HTTP/1.1 200 " + b"O" * 9000 + b"\r\nContent-Length: 2\r\n\r\nok",
    "too_many_fields": (
        b"HTTP/1.1 200 OK\r\n"
        + b"".join(b"X-F%d: v\r\n" % i for i in range(200))
        + b"Content-Length: 2\r\n\r\nok"
    ),
    "bad_chunk_size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
    "unasked_101": (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        b"\x81\x02hi"
    ),
}


class RawUpstream:
    """An asyncio server on 127.0.0.1 that answers each request as `answer` says."""

    def __init__(self, answer: Answer) -> None:
        self._answer = answer
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self.requests: list[bytes] = []  # each request head, in the order received
        self.connections = 0  # connections accepted
        self.closed_by_client = 0  # connections the client closed while this side kept them

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> RawUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> RawUpstream:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _reply(self, number: int, head: bytes) -> Reply:
        answer = self._answer
        if callable(answer):
            answer = answer(number, head)
        return answer if isinstance(answer, Reply) else Reply(answer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.closed_by_client += 1  # the gateway let go of this connection
                    return
                await _read_body(reader, head)
                number = len(self.requests)
                self.requests.append(head)
                reply = self._reply(number, head)
                if reply.wait is not None:
                    await reply.wait.wait()
                if reply.data:
                    writer.write(reply.data)
                    await writer.drain()
                if reply.close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:
            # close() ends it; swallowed, as asyncio's stream callback (3.11) reads
            # the exception of a cancelled task and logs a spurious error
            return
        finally:
            self._tasks.discard(task)
            writer.close()


async def _read_body(reader: asyncio.StreamReader, head: bytes) -> None:
    """Read a Content-Length or chunked request body, so the next request lines up."""
    lines = head.decode("latin-1").lower().split("\r\n")
    fields = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
    length = fields.get("content-length", "").strip()
    if length.isdigit():
        await reader.readexactly(int(length))
    elif "chunked" in fields.get("transfer-encoding", ""):
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=sorted(INVALID_ANSWERS))
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()

    async def serve() -> None:
        raw = await RawUpstream(Reply(INVALID_ANSWERS[args.case], close=False)).start(args.port)
        print(f"serving {args.case} on {raw.url}", flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
