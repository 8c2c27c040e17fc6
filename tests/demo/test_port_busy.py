"""A port already taken, for `make run`'s launcher and for `gateway serve`: one line on
stderr naming the port, its holder (this test process) and how to pick another; no
traceback, exit 1; and `make run PORT=…` reaches the launcher."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import REPO, free_port, shipped_config

SECRET = {"GATEWAY_JWT_SECRET": "test-secret-of-the-gateway-suite-0123456789"}


@pytest.fixture
def taken() -> Iterator[int]:
    """A port this process listens on (so /proc names this pid as its holder)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
        env={**os.environ, **SECRET},
    )


def only_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def free_now(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_launcher_names_the_busy_gateway_port_and_starts_nothing(
    tmp_path: Path, taken: int
) -> None:
    model_port = free_port()
    config = shipped_config(tmp_path, taken, model_port)

    done = run("-m", "gateway.demo.launch", str(config), cwd=tmp_path)

    assert done.returncode == 1
    line = only_line(done.stderr)
    assert line.startswith(f"port {taken} (127.0.0.1:{taken}, the gateway's port")
    assert f"already in use by pid {os.getpid()} (" in line
    assert f"make run PORT={taken + 1}, or CONFIG=" in line
    assert free_now(model_port)  # the demo model was not started
    assert not (tmp_path / "certs" / "dev-jwt-secret").exists()


def test_launcher_names_the_busy_demo_model_port(tmp_path: Path, taken: int) -> None:
    config = shipped_config(tmp_path, free_port(), taken)

    done = run("-m", "gateway.demo.launch", str(config), cwd=tmp_path)

    assert done.returncode == 1
    line = only_line(done.stderr)
    assert line.startswith(f"port {taken} (127.0.0.1:{taken}, the demo model's port")
    assert "models.demo.url" in line
    assert f"by pid {os.getpid()} (" in line
    assert "make run CONFIG=" in line


def test_launcher_names_both_when_both_are_busy(tmp_path: Path, taken: int) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        model_port = int(other.getsockname()[1])
        config = shipped_config(tmp_path, taken, model_port)

        done = run("-m", "gateway.demo.launch", str(config), cwd=tmp_path)

    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert [line.split(" ", 2)[:2] for line in lines] == [
        ["port", str(taken)],
        ["port", str(model_port)],
    ]


def test_gateway_serve_on_a_busy_port_logs_one_line_and_exits_1(tmp_path: Path, taken: int) -> None:
    config = shipped_config(tmp_path, taken)

    done = run("-m", "gateway", "serve", "--config", str(config), cwd=tmp_path)

    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    busy = [line for line in done.stderr.splitlines() if "already in use" in line]
    assert len(busy) == 1, done.stderr
    assert f'"cannot start: port {taken} (127.0.0.1:{taken}, server.listen)' in busy[0]
    assert f"by pid {os.getpid()} (" in busy[0]
    assert "gateway serve --port N" in busy[0]


def test_make_run_passes_port_to_the_launcher() -> None:
    dry = subprocess.run(
        ["make", "--no-print-directory", "-n", "run", "PORT=8123", "CONFIG=other.yaml"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )

    assert dry.returncode == 0, dry.stderr
    # (under `make test` a nested make would add "Leaving directory" lines otherwise)
    launch = [line for line in dry.stdout.splitlines() if "gateway.demo.launch" in line][-1]
    assert launch.endswith("-m gateway.demo.launch other.yaml --port 8123")
