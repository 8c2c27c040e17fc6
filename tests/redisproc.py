"""A redis-server of a test's own on a free port, to kill (SIGKILL) and start again.

`start(port, folder, appendonly)` runs it; `kill` ends it the hard way (no
save, no clean shutdown: what a crash or an OOM kill does); `wait_ready`
waits until it answers PING (not -LOADING). With `appendonly=True` it keeps
an append-only file in `folder`, so a restart comes back with the data it
had; without, a restart comes back empty. Used by tests/state/test_redis_outage.py
and the chaos bench.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.processes import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def command(port: int, folder: Path, appendonly: bool) -> list[str]:
    """The redis-server command line: loopback only, RDB snapshots off."""
    persistence = ("--appendonly", "yes") if appendonly else ("--appendonly", "no")
    return [
        *(REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1"),
        *("--dir", str(folder), "--save", "", *persistence),
    ]


def start(port: int, folder: Path, appendonly: bool = False) -> subprocess.Popen[bytes]:
    """Start redis-server on 127.0.0.1:port and wait until it answers."""
    folder.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        command(port, folder, appendonly),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(port, process)
    except BaseException:
        kill(process)
        raise
    return process


def kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL: Redis gets no chance to save or to close its connections cleanly."""
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


def wait_ready(
    port: int, process: subprocess.Popen[bytes] | None = None, seconds: float = 10.0
) -> None:
    """Until Redis on `port` answers +PONG (it answers -LOADING while reading its file)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"redis-server exited early with {process.returncode}")
        if ping(port):
            return
        time.sleep(0.05)
    raise TimeoutError(f"redis on port {port} did not answer PING within {seconds}s")


def ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server that a test kills and starts again on the same port and folder."""

    def __init__(self, folder: Path, appendonly: bool = False, port: int | None = None) -> None:
        self.port = port or free_port()
        self.folder = folder
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = start(self.port, self.folder, self.appendonly)

    def kill(self) -> None:
        if self.process is not None:
            kill(self.process)
