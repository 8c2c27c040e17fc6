"""`gateway models add` and `gateway models list`: the AI team's models in routes.yaml.

`add` splices the entry into routes.yaml's text (`config/model_entry.py`),
writes the result to a temp file beside routes.yaml, validates it with the
real `load_config`, and only then replaces routes.yaml, by one atomic rename
(what a reloading gateway watches for). `list` prints one line per model,
with an HTTP probe of every target: a GET of the model's `health_path`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import stat
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.cli.config_file import config_argument, load_or_report
from gateway.config import Config, ConfigError, ConfigProblem, load_config
from gateway.config.schema.upstreams import UpstreamConfig, UpstreamTarget
from gateway.config.units import format_duration

if TYPE_CHECKING:  # imported when `models add` (ruamel.yaml) or `list` (aiohttp) runs
    import aiohttp

    from gateway.config.model_entry import Placement


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    models = commands.add_parser("models", help="the AI team's models: add one, list them")
    model_commands = models.add_subparsers(dest="models_command", required=True, metavar="COMMAND")
    add = model_commands.add_parser(
        "add", help="register a model in routes.yaml (comments kept) once the result validates"
    )
    add.add_argument("name", help="the model's name: upstream NAME, route /models/NAME/**")
    add.add_argument("url", help="where the model listens: http(s)://host:port[/base-path]")
    add.add_argument("--roles", help="comma-separated roles that may call it (default: any user)")
    add.add_argument(
        "--rate-limit", help="per user, e.g. 30/min; off for none (default: 60/min per user)"
    )
    add.add_argument("--timeout", help="whole-response timeout, e.g. 2m (default: 5m)")
    add.add_argument("--usage", help="token usage format of its responses: openai")
    add.add_argument("--token-limit", help="tokens per user, e.g. 100000/day (needs --usage)")
    add.add_argument("--fallback", help="comma-separated models to try when it fails")
    config_argument(add)
    add.set_defaults(run=run_add)
    listing = model_commands.add_parser("list", help="each model, its settings and its health")
    config_argument(listing)
    listing.set_defaults(run=run_list)


def run_add(args: argparse.Namespace) -> int:
    return add_model(
        args.config,
        args.name,
        args.url,
        args.roles,
        args.rate_limit,
        args.timeout,
        usage=args.usage,
        token_limit=args.token_limit,
        fallback=args.fallback,
    )


def run_list(args: argparse.Namespace) -> int:
    return list_models(args.config)


# --- add ----------------------------------------------------------------------------


def add_model(
    path: Path,
    name: str,
    url: str,
    roles: str | None = None,
    rate_limit: str | None = None,
    timeout: str | None = None,
    *,
    usage: str | None = None,
    token_limit: str | None = None,
    fallback: str | None = None,
) -> int:
    """`gateway models add`: 0 once routes.yaml holds the checked entry; else 1, file untouched."""
    from gateway.config.model_entry import PlacementError, entry_fields, place_entry

    path = path.resolve()  # a symlinked routes.yaml: replace the file it points at
    before = load_or_report(path)
    if before is None:
        print(f"gateway models add: fix {path} first (see gateway check)", file=sys.stderr)
        return 1
    clash = _name_clash(before, name)
    if clash is not None:
        print(clash, file=sys.stderr)
        return 1
    original = path.read_bytes()
    fields = entry_fields(
        url, roles, rate_limit, timeout, usage=usage, token_limit=token_limit, fallback=fallback
    )
    try:
        placement = place_entry(original.decode("utf-8"), name, fields)
    except PlacementError as exc:
        print(f"gateway models add: {path}: {exc}; add the entry by hand", file=sys.stderr)
        return 1
    try:
        temp = _write_beside(path, placement.text.encode("utf-8"))
    except OSError as exc:
        print(
            f"gateway models add: cannot write beside {path}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    try:
        try:
            after = load_config(temp)
        except ConfigError as exc:
            for problem in exc.problems:
                print(_as_original(problem, temp, path, placement), file=sys.stderr)
            print(f"gateway models add: {name!r} not added; {path} is unchanged", file=sys.stderr)
            return 1
        if path.read_bytes() != original:
            print(
                f"gateway models add: {path} changed meanwhile; nothing written, try again",
                file=sys.stderr,
            )
            return 1
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    _sync_folder(path.parent)
    _print_added(after, name, path)
    return 0


def _name_clash(config: Config, name: str) -> str | None:
    if name in config.models:
        return (
            f"{config.path}:{config.models[name].line}: models.{name}: {name!r} is already a "
            "model; edit that entry, or choose another name"
        )
    if name in config.upstreams:
        return (
            f"{config.path}:{config.upstreams[name].line}: upstreams.{name}: {name!r} is already "
            "an upstream, and a model becomes an upstream of its own name; choose another name"
        )
    return None


def _write_beside(path: Path, data: bytes) -> Path:
    """`data` in a new temp file in routes.yaml's folder, with routes.yaml's mode (and owner)."""
    info = path.stat()
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    temp = Path(name)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp, stat.S_IMODE(info.st_mode))
        with contextlib.suppress(OSError):  # only root may give a file away; keep what we can
            os.chown(temp, info.st_uid, info.st_gid)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable."""
    with contextlib.suppress(OSError):
        handle = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


def _as_original(problem: ConfigProblem, temp: Path, path: Path, placement: Placement) -> str:
    """A problem found in the temp file, told in routes.yaml's terms: FILE:LINE only for
    lines routes.yaml has; a problem of the new entry (not in routes.yaml) names no line."""
    new = range(placement.shifted_from - placement.added_lines, placement.shifted_from)

    def where(match: re.Match[str]) -> str:
        line = int(match.group(1))
        if line in new:
            return "the new entry"
        return f"{path}:{placement.original_line(line)}"

    message = re.sub(re.escape(str(temp)) + r":(\d+)", where, problem.message)
    message = message.replace(str(temp), str(path))
    if problem.file != str(temp):  # policies/ and the like: their own files
        return str(ConfigProblem(problem.file, problem.line, message))
    if problem.line in new:
        return f"gateway models add: {message}"
    return str(ConfigProblem(str(path), placement.original_line(problem.line), message))


def _print_added(config: Config, name: str, path: Path) -> None:
    upstream = config.upstreams[name]
    route = next(r for r in config.routes if r.model == name)
    limit = route.rate_limit
    print(f"added model {name} at {path}:{config.models[name].line}")
    print(f"  route    /models/{name}/** -> {', '.join(t.url for t in upstream.targets)}")
    print(f"  roles    {', '.join(route.roles) or 'any signed-in user'}")
    print(f"  limit    {f'{limit.rate} by {limit.key}' if limit else 'off'}")
    print(f"  timeout  {_timeouts(upstream.timeout, upstream.connect_timeout)}")
    model = config.models[name]
    if model.usage:
        quota = model.token_limit
        spent = f", token limit {quota.rate} by {quota.key}" if quota else ""
        print(f"  usage    {model.usage}{spent}")
    if model.fallback:
        print(f"  fallback {' -> '.join(model.fallback)} (at most {model.attempts} calls)")
    print("a running gateway reloads routes.yaml by itself within a second (else restart it);")
    print("check with `gateway models list` and GET /admin/routes")


# --- list ---------------------------------------------------------------------------


ANSWER_TIMEOUT = 5.0  # seconds after connecting for a health answer's head


@dataclass(frozen=True, slots=True)
class Probe:
    """A GET of a target's health path: up (any answer below 500) or down, and why."""

    ms: float
    status: int | None = None  # the answer's status; None: no answer
    reason: str | None = None  # why it is down; None: up

    @property
    def up(self) -> bool:
        return self.reason is None

    def __str__(self) -> str:
        if self.up:
            return f"up {self.status} ({self.ms:.1f} ms)"
        return f"DOWN {self.reason} ({self.ms:.1f} ms)"


async def probe(
    session: aiohttp.ClientSession, upstream: UpstreamConfig, target: UpstreamTarget, path: str
) -> Probe:
    """GET the target's base path + `path`: connected within the upstream's connect_timeout,
    answered within ANSWER_TIMEOUT more. Below 500 is up (a 404 still answers); a 5xx,
    a failed connection or no answer in time is down."""
    import aiohttp

    from gateway.tls.upstream import upstream_ssl

    url = target.origin + target.base_path + path
    timeout = aiohttp.ClientTimeout(
        total=upstream.connect_timeout + ANSWER_TIMEOUT,
        sock_connect=upstream.connect_timeout,
        sock_read=ANSWER_TIMEOUT,
    )
    started = time.perf_counter()
    try:
        async with session.get(
            url,
            timeout=timeout,
            ssl=upstream_ssl(upstream),
            allow_redirects=False,  # a 3xx is an answer
            headers={"User-Agent": "gateway-models-list"},
        ) as response:
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Probe(_ms(started), reason=_why(exc, upstream))
    elapsed = _ms(started)
    if status >= 500:
        return Probe(elapsed, status, f"answered {status}")
    return Probe(elapsed, status)


def _why(exc: BaseException, upstream: UpstreamConfig) -> str:
    import aiohttp

    from gateway.proxy.health import failure_text

    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return f"no connection within {format_duration(upstream.connect_timeout)}"
    if isinstance(exc, TimeoutError):
        return f"no answer within {format_duration(ANSWER_TIMEOUT)}"
    return failure_text(exc)


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


async def probe_models(config: Config) -> dict[str, list[Probe]]:
    """Every target of every model probed at once; results in config order."""
    import aiohttp

    names = list(config.models)
    targets = [(n, t) for n in names for t in config.upstreams[n].targets]
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True, limit=0)
    ) as session:
        results = await asyncio.gather(
            *(
                probe(session, config.upstreams[n], t, config.models[n].health_path)
                for n, t in targets
            )
        )
    probes: dict[str, list[Probe]] = {name: [] for name in names}
    for (name, _), result in zip(targets, results, strict=True):
        probes[name].append(result)
    return probes


def list_models(path: Path) -> int:
    """`gateway models list`: one line per model, in config order; 1 only for a bad config."""
    config = load_or_report(path)
    if config is None:
        return 1
    if not config.models:
        print(f"{config.path}: no models")
        return 0
    probes = asyncio.run(probe_models(config))
    rows = [("NAME", "URL", "ROLES", "RATE LIMIT", "TIMEOUT", "HEALTH", "EXTRAS")]
    for name, model in config.models.items():
        upstream = config.upstreams[name]
        route = next(r for r in config.routes if r.model == name)
        limit = route.rate_limit
        extras = []
        if model.usage:
            extras.append(f"usage {model.usage}")
        if model.token_limit:
            extras.append(f"token_limit {model.token_limit.rate} by {model.token_limit.key}")
        if model.fallback:
            extras.append(f"fallback {','.join(model.fallback)}")
        rows.append(
            (
                name,
                ", ".join(t.url for t in upstream.targets),
                ",".join(route.roles) or ("-" if route.auth == "none" else "any"),
                f"{limit.rate} by {limit.key}" if limit else "off",
                _timeouts(upstream.timeout, upstream.connect_timeout),
                ", ".join(str(p) for p in probes[name]),
                "; ".join(extras) or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _timeouts(timeout: float, connect: float) -> str:
    return f"{format_duration(timeout)} (connect {format_duration(connect)})"
