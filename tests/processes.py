"""Run the gateway as a real process (`python -m gateway serve`) for end-to-end tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited early with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listened on port {port} within {seconds}s")


def serve_command(config: Path, port: int, *extra: str) -> list[str]:
    """`python -m gateway serve` on 127.0.0.1:port with `config`, plus `extra` options."""
    return [
        *(sys.executable, "-m", "gateway", "serve", "--config", str(config)),
        *("--host", "127.0.0.1", "--port", str(port), *extra),
    ]


def start_gateway(
    config: Path, port: int, stderr_path: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start `gateway serve` on 127.0.0.1:port; its stderr (JSON logs) goes to stderr_path."""
    stderr = open(stderr_path, "wb") if stderr_path else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(
        serve_command(config, port),
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_for_port(port, process)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)


def shipped_config(folder: Path, port: int, model_port: int | None = None) -> Path:
    """The shipped routes.yaml (and policies/, frontend/) in `folder`, listening on `port`,
    its DEMO model at `model_port` when given, argon2 at its cheapest."""
    from tests.identity import CHEAP_HASHING

    shutil.copytree(REPO / "policies", folder / "policies")
    shutil.copytree(REPO / "frontend", folder / "frontend")  # its static: route's folder
    shipped = (REPO / "routes.yaml").read_text()
    text = shipped.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
    assert text != shipped, "the shipped routes.yaml no longer listens on 127.0.0.1:8080"
    if model_port is not None:
        text = text.replace("127.0.0.1:9001", f"127.0.0.1:{model_port}")
    config = folder / "routes.yaml"
    config.write_text(text.replace("auth:\n", f"auth:\n  {CHEAP_HASHING}\n", 1))
    return config


def users_create(
    config: Path, username: str, role: str, password: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`gateway users create` (the password on stdin), as an operator would; `env` is
    added to this process's environment."""
    return subprocess.run(
        [
            *(sys.executable, "-m", "gateway", "users", "create", username),
            *("--role", role, "--config", str(config)),
        ],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **env} if env is not None else None,
    )


def create_user(config: Path, username: str, role: str, password: str) -> None:
    """`users_create` that must succeed."""
    created = users_create(config, username, role, password)
    assert created.returncode == 0, created.stderr


# A process that opens COUNT idle connections to PORT from SOURCE (a loopback
# address of its own, so the flood does not use up the ephemeral ports of
# 127.0.0.1 that other tests bind), prints how many it opened, then on each
# line read from stdin prints how many of them the server has closed.
_HOLD_SCRIPT = """
import errno, resource, select, socket, sys
port, count, source = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = []
while len(held) < count:
    # Connects in batches without blocking: a SYN the server's backlog drops
    # delays its own socket by a retransmit, not the whole flood.
    batch = []
    for _ in range(min(500, count - len(held))):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_IP, getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24), 1)
        sock.bind((source, 0))
        sock.setblocking(False)
        if sock.connect_ex(("127.0.0.1", port)) not in (0, errno.EINPROGRESS):
            sys.exit("connect failed")
        batch.append(sock)
    waiting = select.poll()
    for sock in batch:
        waiting.register(sock, select.POLLOUT)
    pending = {sock.fileno() for sock in batch}
    while pending:
        ready = waiting.poll(15_000)
        if not ready:
            sys.exit("connects timed out")
        for fd, _event in ready:
            waiting.unregister(fd)
            pending.discard(fd)
    for sock in batch:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            sys.exit("connect failed")
        held.append(sock)
print(len(held), flush=True)
poller = select.poll()
for sock in held:
    poller.register(sock, select.POLLIN | select.POLLRDHUP)
closed = set()
for _ in sys.stdin:
    for fd, _event in poller.poll(0):
        closed.add(fd)  # readable on a connection never asked anything: the peer closed it
    print(len(closed), flush=True)
"""


class IdleFlood:
    """`count` idle connections to 127.0.0.1:port held by a process of their own."""

    def __init__(self, port: int, count: int, source: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _HOLD_SCRIPT, str(port), str(count), source],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.opened = -1

    def wait_open(self) -> int:
        """Block until every connection is open; how many are (0: some could not connect)."""
        assert self.process.stdout is not None
        self.opened = int(self.process.stdout.readline() or 0)
        return self.opened

    def closed_by_server(self) -> int:
        """How many of the held connections the server has closed by now."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        return int(self.process.stdout.readline())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
