"""`make run`: start the DEMO model upstream, then the gateway in front of it.

Prints curl lines that work against the shipped routes.yaml, and stops the
demo model when the gateway exits.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from gateway.cli import main as gateway_main
from gateway.config import load_config


def _wait_for(host: str, port: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def main() -> int:
    config_path = Path(sys.argv[1] if len(sys.argv) > 1 else "routes.yaml")
    config = load_config(config_path)
    demo = config.upstreams.get("demo")
    process = None
    if demo is not None:
        target = demo.targets[0]
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway.demo.model",
                "--host",
                target.host,
                "--port",
                str(target.port),
                "--name",
                "demo",
            ],
        )
        if not _wait_for(target.host, target.port):
            print("the demo model did not start", file=sys.stderr)
            process.terminate()
            return 1
    base = f"{'https' if config.server.tls else 'http'}://{config.server.host}:{config.server.port}"
    print(
        f"""
gateway starting on {base}  (demo model upstream: DEMO ONLY, not a real model)
try:
  curl -s {base}/healthz
  curl -s {base}/models/demo/v1/models
  curl -s {base}/models/demo/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{{"messages":[{{"role":"user","content":"hello"}}]}}'
  curl -sN {base}/models/demo/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{{"stream":true,"messages":[{{"role":"user","content":"stream to me"}}]}}'
stop with Ctrl-C
""",
        flush=True,
    )
    try:
        return gateway_main(["serve", "--config", str(config_path)])
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=10)


if __name__ == "__main__":
    raise SystemExit(main())
