"""Run the gateway as a real process (`python -m gateway serve`) for end-to-end tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
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
    """The shipped routes.yaml (and policies/) in `folder`, listening on `port`, its DEMO
    model at `model_port` when given, argon2 at its cheapest."""
    from tests.identity import CHEAP_HASHING

    shutil.copytree(REPO / "policies", folder / "policies")
    shipped = (REPO / "routes.yaml").read_text()
    text = shipped.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
    assert text != shipped, "the shipped routes.yaml no longer listens on 127.0.0.1:8080"
    if model_port is not None:
        text = text.replace("127.0.0.1:9001", f"127.0.0.1:{model_port}")
    config = folder / "routes.yaml"
    config.write_text(text.replace("auth:\n", f"auth:\n  {CHEAP_HASHING}\n", 1))
    return config


def create_user(config: Path, username: str, role: str, password: str) -> None:
    """`gateway users create` (the password on stdin), as an operator would."""
    created = subprocess.run(
        [
            *(sys.executable, "-m", "gateway", "users", "create", username),
            *("--role", role, "--config", str(config)),
        ],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert created.returncode == 0, created.stderr
