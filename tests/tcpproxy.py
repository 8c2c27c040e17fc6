"""A TCP proxy that can refuse, reset or hang on command: a broken database on loopback.

Tests and chaos scripts put it between the gateway and PostgreSQL (or Redis)
to make the server look gone without touching the shared server itself.

Run it as its own process, so that it can be frozen::

    python -m tests.tcpproxy LISTEN_PORT TARGET_HOST TARGET_PORT [--control PORT]

Modes:

- ``forward`` (the start): bytes pass both ways.
- ``refuse``: the server is gone. The listening socket is closed, so new
  connections are refused (ECONNREFUSED), and open ones are closed (FIN).
- ``reset``: the server is sick. New connections are accepted and reset at
  once (RST: ``SO_LINGER`` 0), and open ones are reset too.
- hang: ``kill -STOP PID`` freezes the whole proxy. The kernel still accepts
  new connections into the backlog, but nothing is read or answered, exactly
  like a frozen host; ``kill -CONT PID`` thaws it (mode unchanged).

Switching:

- Signals (fire and forget): ``SIGUSR1`` refuse, ``SIGUSR2`` reset,
  ``SIGHUP`` forward.
- The control socket (acknowledged; ``--control PORT``, loopback): send one
  line ``forward``, ``refuse``, ``reset`` or ``mode``; the answer is one line
  ``ok MODE`` once the switch is done (``error ...`` for anything else).
  ``send_command`` does this from Python; ``ProxyProcess`` starts the proxy as
  a child process and offers ``switch(mode)``, ``hang()``, ``resume()`` and
  ``close()``.

When the listener is up, the proxy prints ``ready`` on stdout, once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import struct
import subprocess
import sys

from tests.processes import REPO, free_port

MODES = ("forward", "refuse", "reset")
CHUNK = 65536


def rst(writer: asyncio.StreamWriter) -> None:
    """Abort with an RST instead of a FIN: SO_LINGER on, linger time 0 (POSIX close(2))."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class Proxy:
    def __init__(self, listen_port: int, target_host: str, target_port: int) -> None:
        self.listen_port = listen_port
        self.target = (target_host, target_port)
        self.mode = "forward"
        self._server: asyncio.Server | None = None
        # every open pair (client side, server side), so a switch can end them
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter | None]] = set()

    async def listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._client, "127.0.0.1", self.listen_port, reuse_address=True
            )

    async def switch(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(mode)
        self.mode = mode
        if mode == "refuse":
            if self._server is not None:
                self._server.close()
                self._server = None
            for client, upstream in list(self._pairs):
                client.transport.close()
                if upstream is not None:
                    upstream.transport.close()
            self._pairs.clear()
        elif mode == "reset":
            await self.listen()
            for client, upstream in list(self._pairs):
                rst(client)
                if upstream is not None:
                    upstream.transport.close()
            self._pairs.clear()
        else:
            await self.listen()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode != "forward":
            rst(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            rst(writer)  # the target itself is down: say so the way it would
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)
        try:
            await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        finally:
            self._pairs.discard(pair)
            for side in (writer, up_writer):
                side.transport.close()

    async def serve_control(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while line := await reader.readline():
                command = line.decode("ascii", "replace").strip()
                if command in MODES:
                    await self.switch(command)
                    writer.write(f"ok {self.mode}\n".encode())
                elif command == "mode":
                    writer.write(f"ok {self.mode}\n".encode())
                else:
                    writer.write(f"error unknown command {command!r}\n".encode())
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError, RuntimeError):
        if writer.can_write_eof():
            writer.write_eof()


class ProxyProcess:
    """The proxy as a child process (so it can be frozen), driven through its control socket."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.port = free_port()
        self.control_port = free_port()
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "tests.tcpproxy", str(self.port)),
                *(target_host, str(target_port), "--control", str(self.control_port)),
            ],
            stdout=subprocess.PIPE,
            cwd=REPO,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != b"ready":
            self.close()
            raise RuntimeError("the TCP proxy did not start")

    def switch(self, mode: str) -> None:
        answer = send_command(self.control_port, mode)
        if answer != f"ok {mode}":
            raise RuntimeError(f"the TCP proxy answered {answer!r} to {mode!r}")

    def hang(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a frozen process cannot die of SIGTERM
            self.process.kill()
        self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def send_command(control_port: int, command: str, timeout: float = 5.0) -> str:
    """Send one control line and return the proxy's answer (e.g. ``ok refuse``)."""
    with socket.create_connection(("127.0.0.1", control_port), timeout=timeout) as sock:
        sock.sendall(command.encode("ascii") + b"\n")
        answer = b""
        while not answer.endswith(b"\n"):
            data = sock.recv(256)
            if not data:
                break
            answer += data
    return answer.decode("ascii").strip()


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.tcpproxy", description=__doc__)
    parser.add_argument("listen_port", type=int)
    parser.add_argument("target_host")
    parser.add_argument("target_port", type=int)
    parser.add_argument("--control", type=int, default=None, help="control socket port")
    args = parser.parse_args(argv)
    proxy = Proxy(args.listen_port, args.target_host, args.target_port)
    await proxy.listen()
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()  # signal switches in flight, kept from the GC
    switches = ((signal.SIGUSR1, "refuse"), (signal.SIGUSR2, "reset"), (signal.SIGHUP, "forward"))
    for signum, mode in switches:

        def on_signal(mode: str = mode) -> None:
            task = loop.create_task(proxy.switch(mode))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        loop.add_signal_handler(signum, on_signal)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    control = None
    if args.control is not None:
        control = await asyncio.start_server(proxy.serve_control, "127.0.0.1", args.control)
    print("ready", flush=True)
    await stop.wait()
    if control is not None:
        control.close()
    await proxy.switch("refuse")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
