"""`gateway certs dev`: a local CA and a localhost server certificate, and how to use them."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gateway.cli.config_file import config_argument


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    certs = commands.add_parser("certs", help="TLS certificates for development")
    certs_commands = certs.add_subparsers(dest="certs_command", required=True, metavar="COMMAND")
    dev = certs_commands.add_parser(
        "dev", help="make a local CA (reused if present) and a server certificate for localhost"
    )
    dev.add_argument(
        "--dir", type=Path, default=Path("certs"), help="output folder (default: certs beside it)"
    )
    dev.add_argument(
        "--force", action="store_true", help="make a new CA even if one exists (trust it again)"
    )
    config_argument(dev)
    dev.set_defaults(run=run_dev)


def run_dev(args: argparse.Namespace) -> int:
    from gateway.security.certs import CertificateError, dev_certs, trust_instructions

    config: Path = args.config
    directory: Path = args.dir
    base = config.resolve().parent  # like every relative path of routes.yaml
    folder = directory if directory.is_absolute() else base / directory
    try:
        made = dev_certs(folder, force=args.force)
    except CertificateError as exc:
        print(f"gateway certs dev: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"gateway certs dev: {folder}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"CA certificate:     {made.ca_cert} ({'kept' if made.ca_reused else 'new'})")
    print(f"CA key:             {made.ca_key} (mode 0600)")
    print(f"server certificate: {made.server_cert} (localhost, 127.0.0.1, ::1)")
    print(f"server key:         {made.server_key} (mode 0600)")
    cert, key = (os.path.relpath(p, base) for p in (made.server_cert, made.server_key))
    print(f"In {config}: server: {{tls: {{cert: {cert}, key: {key}}}}}")
    print()
    print(trust_instructions(made, healthz_url(config)))
    return 0


# The names the development certificate is for (gateway/security/certs.py DEV_HOSTS).
CERTIFIED = ("localhost", "127.0.0.1", "::1")


def healthz_url(config_path: Path) -> str:
    """/healthz over HTTPS at the port `config_path` serves on; when it serves plain HTTP,
    a note saying so and what switches it over. A generic PORT when it does not load."""
    from gateway.config import ConfigError, load_config

    try:
        server = load_config(config_path).server
    except (ConfigError, OSError):
        return "https://localhost:PORT/healthz  (PORT: server.listen's)"
    host = server.host if server.host in CERTIFIED else "localhost"
    shown = f"[{host}]" if ":" in host else host
    url = f"https://{shown}:{server.port}/healthz"
    if server.tls is not None:
        return url
    return (
        f"{url}  (once server.tls is set in {config_path}; "
        f"it serves plain http://{shown}:{server.port} now)"
    )
