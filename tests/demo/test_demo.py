"""`make run`'s steps on a copy of the shipped config: migrate, seed, launch (on another
port, as `make run PORT=…`); the printed curl lines then work, signed in as dev-user."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
MARK = "=====next====="


def commands_of(banner: str) -> list[str]:
    joined = banner.replace("\\\n", " ")
    lines = [line.strip() for line in joined.splitlines()]
    return [line for line in lines if line.startswith(("curl ", "TOKEN="))]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_make_run_steps_print_curl_lines_that_work(tmp_path: Path) -> None:
    gateway_port, model_port = free_port(), free_port()
    text = (ROOT / "routes.yaml").read_text()
    text = text.replace("http://127.0.0.1:9001", f"http://127.0.0.1:{model_port}")
    config = tmp_path / "routes.yaml"
    config.write_text(text)
    shutil.copytree(ROOT / "policies", tmp_path / "policies")
    shutil.copytree(ROOT / "frontend", tmp_path / "frontend")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("GATEWAY_JWT_SECRET", None)  # make run works without one: a dev secret is made

    # the same steps as `make run`
    for step in (
        [sys.executable, "-m", "gateway", "certs", "dev", "--config", str(config)],
        [sys.executable, "-m", "gateway", "db", "upgrade", "--config", str(config)],
        [sys.executable, str(ROOT / "seed_data.py"), "--config", str(config)],
    ):
        done = subprocess.run(step, capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 0, done.stderr
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.demo.launch", str(config), "--port", str(gateway_port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        banner = ""
        for line in process.stdout:
            banner += line
            if line.startswith("stop with"):
                break
        assert "DEMO" in banner
        assert f"gateway starting on http://127.0.0.1:{gateway_port}" in banner
        assert '"username": "dev-user"' in banner  # as the README shows, not the admin
        assert (tmp_path / "certs" / "dev-jwt-secret").stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "certs" / "server.key").stat().st_mode & 0o777 == 0o600
        wait_for_port(gateway_port, process)  # type: ignore[arg-type]
        commands = commands_of(banner)
        assert len(commands) == 5
        script = f"\necho {MARK}\n".join(
            f"{c} --fail --max-time 20" if c.startswith("curl") else c for c in commands
        )
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        health, _token, models, completion, stream = result.stdout.split(MARK + "\n")
        assert json.loads(health) == {"status": "ok"}
        assert json.loads(models)["data"][0]["id"] == "demo"
        reply = json.loads(completion)["choices"][0]["message"]["content"]
        assert reply.endswith("hello")
        events = re.findall(r"^data: (.+)$", stream, re.MULTILINE)
        assert events[-1] == "[DONE]"
        assert len(events) > 3  # streamed as several events
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
