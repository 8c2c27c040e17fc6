"""`gateway serve`: run the gateway in the foreground, in one process or several."""

from __future__ import annotations

import argparse

from gateway.cli.config_file import config_argument, load_or_report


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser("serve", help="run the gateway in the foreground")
    config_argument(serve)
    serve.add_argument("--host", help="listen address (default: server.listen)")
    serve.add_argument("--port", type=int, help="listen port (default: server.listen)")
    serve.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    serve.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="processes sharing the port (SO_REUSEPORT); more than 1 needs GATEWAY_REDIS_URL",
    )
    serve.add_argument("--worker-of", type=int, help=argparse.SUPPRESS)  # set by --workers' parent
    serve.set_defaults(run=run)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def run(args: argparse.Namespace) -> int:
    from gateway.logs import setup_logging
    from gateway.server.run import run as run_server

    setup_logging(args.log_level.upper())
    config = load_or_report(args.config)
    if config is None:
        return 1
    if args.workers > 1:
        from gateway.server.workers import serve_workers

        return serve_workers(config, args.workers, args.host, args.port, args.log_level)
    return run_server(args.config, args.host, args.port, worker_of=args.worker_of)
