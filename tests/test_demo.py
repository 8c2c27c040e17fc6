"""`make run`'s launcher: the DEMO model and the gateway start, and the printed curl lines work."""

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

ROOT = Path(__file__).resolve().parent.parent


def curl_commands(banner: str) -> list[str]:
    joined = banner.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip().startswith("curl ")]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_launcher_prints_curl_lines_that_work(tmp_path: Path) -> None:
    gateway_port, model_port = free_port(), free_port()
    text = (ROOT / "routes.yaml").read_text()
    text = text.replace("127.0.0.1:8080", f"127.0.0.1:{gateway_port}")
    text = text.replace("http://127.0.0.1:9001", f"http://127.0.0.1:{model_port}")
    config = tmp_path / "routes.yaml"
    config.write_text(text)
    shutil.copytree(ROOT / "policies", tmp_path / "policies")

    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.demo.launch", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        banner = ""
        for line in process.stdout:
            banner += line
            if line.startswith("stop with"):
                break
        assert "DEMO" in banner
        wait_for_port(gateway_port, process)  # type: ignore[arg-type]
        commands = curl_commands(banner)
        assert len(commands) >= 4
        outputs = []
        for command in commands:
            result = subprocess.run(
                ["bash", "-c", command + " --fail --max-time 20"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert result.returncode == 0, (command, result.stderr)
            outputs.append(result.stdout)
        assert json.loads(outputs[0]) == {"status": "ok"}
        completion = json.loads(outputs[2])
        assert completion["choices"][0]["message"]["content"].endswith("hello")
        events = re.findall(r"^data: (.+)$", outputs[3], re.MULTILINE)
        assert events[-1] == "[DONE]"
        assert len(events) > 3  # streamed as several events
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
