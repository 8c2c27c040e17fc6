"""`make run`: start the DEMO model upstream, then the gateway in front of it.

Before this runs, `make run` has applied the migrations and seeded the
database (seed_data.py writes `.dev-credentials.json` beside routes.yaml).
Without GATEWAY_JWT_SECRET a random development secret is made once and kept
in `certs/dev-jwt-secret` (mode 0600, never committed). Prints curl lines
that work, and stops the demo model when the gateway exits.

Usage: `python -m gateway.demo.launch [CONFIG] [--port N]` (`make run CONFIG=… PORT=…`).
A port already taken, the gateway's or the demo model's, is one line on
stderr naming it and its holder, and exit 1, before anything starts.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from gateway.config import load_config
from gateway.config.schema.top import Config
from gateway.demo.credentials import CREDENTIALS_FILE, accounts_for
from gateway.logs import setup_logging
from gateway.ports import busy_line, in_use
from gateway.security.keys import SECRET_ENV
from gateway.server.run import run as serve
from gateway.store.connection_errors import masked_url
from gateway.store.engine import database_url


def _wait_for(
    host: str, port: int, process: subprocess.Popen[bytes], seconds: float = 10.0
) -> bool:
    """Whether `process` (still running) listens on host:port within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
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


def demo_user(config: Config, database: str | None = None) -> tuple[str, str] | None:
    """A seeded account of `database` (a masked URL; default: the one the gateway uses) that
    the demo model's route admits: one of a role the route names (dev-user, as the README
    shows) before one that only inherits it (dev-admin)."""
    if database is None:
        database = masked_url(database_url(config.base_dir))
    accounts = accounts_for(config.base_dir / CREDENTIALS_FILE, database)
    route = next((r for r in config.routes if r.model == "demo"), None)
    wanted = set(route.roles) if route is not None else set()

    def rank(item: tuple[str, dict[str, str]]) -> tuple[int, str]:
        name, entry = item
        return (0 if not wanted or entry["role"] in wanted else 1, name)

    for username, entry in sorted(accounts.items(), key=rank):
        chain = config.policy.expand(entry["role"])
        if not wanted or wanted.intersection(chain):
            return username, entry["password"]
    return None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def banner(config: Config, port: int | None = None) -> str:
    scheme = "https" if config.server.tls else "http"
    port = config.server.port if port is None else port
    base = f"{scheme}://{_url_host(config.server.host)}:{port}"
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


def busy_ports(config: Config, config_path: Path, port: int) -> list[str]:
    """One line for each port `make run` needs that is taken: the gateway's, the demo
    model's."""
    lines = []
    if in_use(config.server.host, port):
        lines.append(
            busy_line(
                config.server.host,
                port,
                f"the gateway's port, server.listen in {config_path}",
                f"make run PORT={_suggest(port)}, or CONFIG=another.yaml with its own "
                "server.listen",
            )
        )
    demo = config.upstreams.get("demo")
    if demo is not None:
        target = demo.targets[0]
        if in_use(target.host, target.port):
            lines.append(
                busy_line(
                    target.host,
                    target.port,
                    f"the demo model's port, models.demo.url in {config_path}",
                    "make run CONFIG=another.yaml whose models.demo.url names a free port",
                )
            )
    return lines


def _suggest(port: int) -> int:
    return port + 1 if port < 65535 else 8080


def arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.demo.launch", description=__doc__.splitlines()[0]
    )
    parser.add_argument("config", nargs="?", type=Path, default=Path("routes.yaml"))
    parser.add_argument(
        "--port", type=int, help="the gateway's port (default: server.listen's; make run PORT=N)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments(argv)
    config_path: Path = args.config
    config = load_config(config_path)
    port = config.server.port if args.port is None else args.port
    busy = busy_ports(config, config_path, port)
    if busy:
        print("\n".join(busy), file=sys.stderr)
        return 1
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
        if not _wait_for(target.host, target.port, process):
            print("the demo model did not start", file=sys.stderr)
            process.terminate()
            return 1
    print(banner(config, port), flush=True)
    try:
        setup_logging("INFO")  # what `gateway serve --config PATH` does
        return serve(config_path, port=port)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=10)


if __name__ == "__main__":
    raise SystemExit(main())
