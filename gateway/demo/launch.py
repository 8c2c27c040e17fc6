"""`make run`: start the DEMO model upstream, then the gateway in front of it.

Before this runs, `make run` has applied the migrations and seeded the
database (seed_data.py writes `.dev-credentials.json` beside routes.yaml).
Without GATEWAY_JWT_SECRET a random development secret is made once and kept
in `certs/dev-jwt-secret` (mode 0600, never committed). Prints curl lines
that work, and stops the demo model when the gateway exits.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

from gateway.config import load_config
from gateway.config.schema.top import Config
from gateway.logs import setup_logging
from gateway.security.keys import SECRET_ENV
from gateway.server.run import run as serve

CREDENTIALS_FILE = ".dev-credentials.json"


def _wait_for(host: str, port: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def dev_secret(config: Config) -> str:
    """GATEWAY_JWT_SECRET, or a development secret kept in certs/ for the next run."""
    existing = os.environ.get(SECRET_ENV)
    if existing:
        return existing
    path = config.base_dir / "certs" / "dev-jwt-secret"
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(secret + "\n")
    print(f"made a development JWT secret in {path} (set {SECRET_ENV} to use your own)")
    return secret


def demo_user(config: Config) -> tuple[str, str] | None:
    """A seeded account whose role passes the demo model's route."""
    path = config.base_dir / CREDENTIALS_FILE
    try:
        accounts = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    route = next((r for r in config.routes if r.model == "demo"), None)
    wanted = set(route.roles) if route is not None else set()
    for username, entry in sorted(accounts.items()):
        chain = config.policy.expand(entry["role"])
        if not wanted or wanted.intersection(chain):
            return username, entry["password"]
    return None


def banner(config: Config) -> str:
    base = f"{'https' if config.server.tls else 'http'}://{config.server.host}:{config.server.port}"
    json_header = "-H 'Content-Type: application/json'"
    account = demo_user(config)
    if account is None:
        sign_in = "# no seeded account found: run `python seed_data.py`, or create one with\n"
        sign_in += "#   gateway users create NAME --role user\n"
        login_body = '{"username":"NAME","password":"PASSWORD"}'
    else:
        sign_in = f"# signed in as the seeded user {account[0]} (see {CREDENTIALS_FILE})\n"
        login_body = json.dumps({"username": account[0], "password": account[1]})
    extract = "python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])'"
    chat = '{"messages":[{"role":"user","content":"hello"}]}'
    stream = '{"stream":true,"messages":[{"role":"user","content":"stream to me"}]}'
    return f"""
gateway starting on {base}  (demo model upstream: DEMO ONLY, not a real model)
try:
  curl -s {base}/healthz
{sign_in}  TOKEN=$(curl -s {base}/auth/login {json_header} -d {shlex.quote(login_body)} | {extract})
  curl -s {base}/models/demo/v1/models -H "Authorization: Bearer $TOKEN"
  curl -s {base}/models/demo/v1/chat/completions -H "Authorization: Bearer $TOKEN" \\
       {json_header} -d '{chat}'
  curl -sN {base}/models/demo/v1/chat/completions -H "Authorization: Bearer $TOKEN" \\
       {json_header} -d '{stream}'
example frontend: {base}/ (frontend/: sign in and ask the demo model)
dashboard: {base}/admin/ui (sign in as an admin; see {CREDENTIALS_FILE})
API description: {base}/openapi.json
stop with Ctrl-C
"""


def main() -> int:
    config_path = Path(sys.argv[1] if len(sys.argv) > 1 else "routes.yaml")
    config = load_config(config_path)
    os.environ[SECRET_ENV] = dev_secret(config)
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
    print(banner(config), flush=True)
    try:
        setup_logging("INFO")  # what `gateway serve --config PATH` does
        return serve(config_path)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=10)


if __name__ == "__main__":
    raise SystemExit(main())
