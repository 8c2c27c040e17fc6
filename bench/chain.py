"""The gateway against nginx, a bare aiohttp proxy, Flask and LiteLLM, and what each stage costs.

Run from the repository root: `.venv/bin/python bench/chain.py` (about 3 minutes).
Starts nginx on core 0 answering `{"ok":true}`, then, on core 1, each proxy under
test: nginx as a reverse proxy, a bare aiohttp proxy (bench/bare_proxy.py), Flask
with PyJWT and requests under gunicorn (bench/flask_stack.py, sync and gthread), and
one `gateway serve` per row with the chain switched on stage by stage; then the full
chain on Redis with `--workers 2` on both cores, and a small chat completion (POST)
through a `models:` entry and through LiteLLM's proxy (bench/model_path.py). The same
wrk load, from core 0 and with the same bearer token, drives each row in turn for
several short rounds, so a slow spell of a shared machine hits every row alike; each
row's best round is reported. Then the bare proxy and the full chain run at a fixed
rate, half the full chain's peak, for their p99 latency. Prints one table (req/s,
p50, p99, peak RSS, ratios to nginx, the bare proxy and Flask), the model and workers
comparisons, the fixed-rate figures and the targets of the issue, and writes them to
bench/results/chain.json.

Every row is checked before each round (one request must get nginx's 200 through the
proxy); non-2xx answers, socket errors, log warnings or missing audit rows are shown
in the table's errors column and make the exit status 1. Missed targets do not.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from loadgen import RATE_SCRIPT, THREADS, run_wrk
from model_path import (
    CHAT_PATH,
    CHAT_REQUEST,
    CHAT_SCRIPT,
    LITELLM_KEY,
    MODEL,
    completion_ok,
    metered_calls,
    script_matches,
)
from processes import (
    BOTH_CORES,
    LOAD_CORE,
    PROXY_CORE,
    BenchError,
    Processes,
    Usage,
    UsageSampler,
    tail,
)
from report import (
    FULL,
    RESULTS,
    comparisons,
    gateway_source,
    machine,
    rate_table,
    report,
    shown_path,
    table,
    warn_about_cores,
    write_results,
)
from stacks import (
    ROOT,
    Identity,
    Server,
    audit_rows,
    forget_redis_keys,
    litellm_missing,
    log_lines,
    log_problems,
    make_identity,
    redis_pid,
    redis_reachable,
    send,
    start_bare,
    start_flask,
    start_gateway,
    start_litellm,
    start_nginx,
    tool_path,
)

WARMUP = 2  # seconds of wrk per row before the rounds, not recorded
BUSY_PERCENT = 10  # machine CPU use before the start above which the figures are suspect
PATH = "/bench/item"
BODY = b'{"ok":true}'
RATE_LIMIT = "rate_limit: {limit: 100000000, per: 1m, key: user}"  # never refuses
FULL_CHAIN = f"roles: [user], {RATE_LIMIT}"


@dataclass(frozen=True, slots=True)
class Row:
    key: str  # for --rows
    name: str
    # "none" (wrk straight at the upstream), "nginx", "bare", "flask", "gateway" or "litellm"
    kind: str
    # gateway: the /bench/** route's options (the models: entry's, for a model row);
    # flask: gunicorn's worker class
    options: str = ""
    redis: bool = False
    model: bool = False  # a chat completion POST to a model (bench/model_path.py), not a GET
    workers: int = 1  # gateway: `serve --workers N`, on both cores when N > 1

    @property
    def checks_token(self) -> bool:
        """Whether the row refuses a request without the bearer token."""
        if self.kind in ("flask", "litellm"):
            return True
        return self.kind == "gateway" and "auth: none" not in self.options


ROWS = (
    Row("direct", "upstream direct", "none"),
    Row("nginx", "nginx proxy", "nginx"),
    Row("bare", "bare aiohttp proxy", "bare"),
    Row("flask_sync", "flask, gunicorn sync", "flask", "sync"),
    Row("flask_gthread", "flask, gunicorn gthread", "flask", "gthread"),
    Row("off", "gateway, chain off", "gateway", "auth: none"),
    Row("jwt", "+ JWT", "gateway"),
    Row("policy", "+ policy", "gateway", "roles: [user]"),
    Row(FULL, "+ rate limit = full chain", "gateway", FULL_CHAIN),
    Row("redis", "full chain on Redis", "gateway", FULL_CHAIN, redis=True),
    Row("workers", "full chain on Redis, 2 workers", "gateway", FULL_CHAIN, True, workers=2),
    Row("model", "gateway, model path", "gateway", FULL_CHAIN, model=True),
    Row("litellm", "LiteLLM proxy", "litellm", model=True),
)


@dataclass(slots=True)
class Target:
    """One row, ready for wrk: where to send it, and what it has measured so far."""

    row: Row
    url: str
    token: str
    process: subprocess.Popen[bytes] | None = None  # None: wrk goes straight to nginx
    log: Path | None = None
    checks: int = 0  # single requests sent by `check` and `refuses`
    warmup: dict[str, Any] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)  # wrk figures, one per round
    usage: list[Usage] = field(default_factory=list)  # the proxy's, one per round
    rate_runs: list[dict[str, Any]] = field(default_factory=list)  # fixed rate, warm-up first
    rate_usage: list[Usage] = field(default_factory=list)
    log_problems: dict[str, int] = field(default_factory=dict)
    log_offset: int = 0  # LiteLLM: its log's size once started; only what follows counts
    audit_rows: int | None = None  # in the gateway's audit_logs after it stopped
    metered: dict[str, int] | None = None  # model row: its report_logs after it stopped


# --- tools ------------------------------------------------------------------------


def ensure_tools(rows: Sequence[Row]) -> dict[str, str]:
    """nginx and wrk, installed from Debian's packages when missing; the Flask stack's
    packages, which only the bench extra brings. Returns the tools' paths."""
    found = {tool: shutil.which(tool, path=tool_path()) for tool in ("nginx", "wrk")}
    missing = [tool for tool, path in found.items() if path is None]
    if missing:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise BenchError(f"{' and '.join(missing)} not found: apt-get install -y nginx wrk")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (
            ["apt-get", "update", "-q"],
            ["apt-get", "install", "-y", "-q", "nginx", "wrk"],
        ):
            print(f"{' and '.join(missing)} not found; running: {' '.join(argv)}", flush=True)
            if subprocess.run(argv, env=env, check=False).returncode != 0:
                raise BenchError(f"{' '.join(argv)} failed")
        found = {tool: shutil.which(tool, path=tool_path()) for tool in ("nginx", "wrk")}
        if None in found.values():
            raise BenchError("apt-get installed nginx and wrk, but they are still not found")
    if shutil.which("taskset") is None:
        raise BenchError("taskset not found: apt-get install -y util-linux")
    if any(row.model for row in rows) and not script_matches():
        raise BenchError(f"{CHAT_SCRIPT.name} does not send model_path.CHAT_REQUEST")
    if any(row.kind == "flask" for row in rows):
        absent = [name for name in ("flask", "gunicorn", "requests") if not installed(name)]
        if absent:
            raise BenchError(
                f"{', '.join(absent)} not installed: install the bench extra, "
                f"{shown_path(sys.executable)} -m pip install -e '.[bench]' (make bench does), "
                "or leave out the flask rows with --rows"
            )
    return {tool: str(path) for tool, path in found.items()}


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# --- the rows ---------------------------------------------------------------------


def prepare(
    row: Row, procs: Processes, work: Path, upstream_port: int, identity: Identity, prefix: str
) -> Target:
    """Start the row's proxy and check it: it passes the token's request, refuses none."""
    upstream = f"http://127.0.0.1:{upstream_port}"
    if row.kind == "none":
        server = None
    elif row.kind == "nginx":
        server = start_nginx(procs, work / "nginx-proxy", PROXY_CORE, upstream_port)
    elif row.kind == "bare":
        server = start_bare(procs, work, upstream)
    elif row.kind == "flask":
        server = start_flask(procs, work, upstream, row.options)
    elif row.kind == "litellm":
        server = start_litellm(procs, work, upstream_port)
    else:
        redis_prefix = prefix if row.redis else None
        options, model_options = ("", row.options) if row.model else (row.options, None)
        server = start_gateway(
            procs,
            work,
            row.key,
            upstream_port,
            options,
            identity,
            redis_prefix,
            model_options=model_options,
            workers=row.workers,
        )
    path = PATH
    if row.model:
        path = CHAT_PATH if row.kind == "litellm" else f"/models/{MODEL}{CHAT_PATH}"
    token = LITELLM_KEY if row.kind == "litellm" else identity.token
    if server is None:
        target = Target(row, upstream + path, token)
    else:
        url = f"http://127.0.0.1:{server.port}{path}"
        target = Target(row, url, token, server.process, server.log)
    check(target)
    if row.checks_token:
        refuses(target)
    if row.kind == "litellm" and target.log is not None:
        # Its start-up lines and the refusal's traceback (see `refuses`) are not problems.
        target.log_offset = target.log.stat().st_size
    return target


def check(target: Target) -> None:
    """One request through the proxy must get nginx's 200 and body (for a model row, the
    chat completion's: its answer and usage)."""
    target.checks += 1
    model = target.row.model
    try:
        status, body = send(target.url, target.token, CHAT_REQUEST if model else None)
        if status != 200 or not (completion_ok(body) if model else body == BODY):
            expected = "the completion" if model else repr(BODY)
            raise BenchError(f"{target.url} answered {status} {body[:200]!r}, not 200 {expected}")
    except BenchError as exc:
        raise failed(target, exc) from None


def refuses(target: Target) -> None:
    """One request without the token must get a 401: the row really checks it.

    LiteLLM without a database refuses it with a 500 (it looks for its prisma client,
    which litellm[proxy] does not bring, and logs the traceback); any 4xx or 5xx will do.
    """
    target.checks += 1
    try:
        status, body = send(target.url, data=CHAT_REQUEST if target.row.model else None)
        refused = status >= 400 if target.row.kind == "litellm" else status == 401
        if not refused:
            raise BenchError(f"{target.url} without a token: {status} {body[:200]!r}, not 401")
    except BenchError as exc:
        raise failed(target, exc) from None


def failed(target: Target, exc: BaseException) -> BenchError:
    """`exc` with the row's name and the end of its proxy's log."""
    log = f"\n--- {target.log.name}:\n{tail(target.log)}" if target.log else ""
    return BenchError(f"{target.row.name}: {exc}{log}")


def measure(
    target: Target, args: argparse.Namespace, seconds: int, rate: float | None = None
) -> tuple[dict[str, Any], Usage]:
    """Check the row, then one wrk run of `seconds` with the CPU and memory use sampled."""
    check(target)
    pid = target.process.pid if target.process else None
    load = [args.upstream_pid]
    if target.row.redis and args.redis_pid is not None:
        load.append(args.redis_pid)  # Redis works for this row: not "other"
    sampler = UsageSampler(pid, load)
    sampler.start()
    try:
        script = CHAT_SCRIPT if target.row.model else None
        figures = run_wrk(
            args.tools["wrk"], target.url, args.connections, seconds, target.token, rate, script
        )
    except BenchError as exc:
        raise failed(target, exc) from None
    finally:
        usage = sampler.finish()
    return figures, usage


def finish(target: Target, procs: Processes) -> None:
    """Stop the row's proxy and read its log; for a gateway, count its audit rows."""
    if target.process is None or target.log is None:
        return
    procs.stop(target.process)  # a gateway writes out its audit queue as it stops
    if target.row.kind == "gateway":
        target.log_problems = dict(log_problems(target.log))
        prefix = f"/models/{MODEL}/" if target.row.model else "/bench/"
        target.audit_rows = audit_rows(target.log.parent / "gateway.db", prefix)
        if target.row.model:
            target.metered = metered_calls(target.log.parent / "gateway.db")
    else:
        target.log_problems = dict(log_lines(target.log, target.log_offset))


@contextlib.contextmanager
def upstream_nginx(procs: Processes, work: Path) -> Iterator[Server]:
    """The upstream: nginx, 1 worker, on LOAD_CORE."""
    server = start_nginx(procs, work / "nginx-upstream", LOAD_CORE)
    try:
        yield server
    finally:
        procs.stop(server.process)


def run_rows(args: argparse.Namespace, procs: Processes, work: Path) -> list[Target]:
    """Start every row's proxy, warm each up, measure them in turns, then at a fixed rate."""
    targets: list[Target] = []
    with upstream_nginx(procs, work) as upstream:
        args.upstream_pid = upstream.process.pid
        args.redis_pid = redis_pid() if any(row.redis for row in args.rows) else None
        identity = make_identity(procs, work, upstream.port)
        for row in args.rows:
            why = redis_reachable() if row.redis else None
            if row.kind == "litellm":
                why = why or litellm_missing()
            if why is None and row.kind == "litellm":
                # LiteLLM is the one proxy here that may not start offline: skip, not stop.
                started = list(procs.running)
                try:
                    targets.append(prepare(row, procs, work, upstream.port, identity, ""))
                except BenchError as exc:
                    why = f"LiteLLM's proxy did not start or answer here: {exc}"
                    for process in [p for p in procs.running if p not in started]:
                        procs.stop(process)
                else:
                    continue
            if why:
                args.skipped.append({"row": row.name, "why": why})
                print(f"  {row.name}: skipped, {why}", flush=True)
                continue
            targets.append(prepare(row, procs, work, upstream.port, identity, args.redis_prefix))
        for target in targets:  # right before the rounds, so no pool has gone idle
            target.warmup, _ = measure(target, args, WARMUP)
        names = ", ".join(t.row.key for t in targets)
        print(f"  started, checked and warmed up: {names}", flush=True)
        seconds = args.duration // args.rounds
        for index in range(args.rounds):
            # The rows take turns, in alternating order, so that a slow spell of a
            # shared machine hits every row alike instead of one.
            for target in targets if index % 2 == 0 else targets[::-1]:
                figures, usage = measure(target, args, seconds)
                target.rounds.append(figures)
                target.usage.append(usage)
            figures_line = ", ".join(f"{t.row.key} {t.rounds[-1]['rps']:,.0f}" for t in targets)
            print(f"  round {index + 1}/{args.rounds}, req/s: {figures_line}", flush=True)
        fixed_rate(targets, args)
        for target in targets:
            finish(target, procs)
    args.upstream_log_problems = dict(log_lines(upstream.log))
    return targets


def fixed_rate(targets: Sequence[Target], args: argparse.Namespace) -> None:
    """The bare proxy and the full chain at half the full chain's peak, in turns."""
    by_key = {t.row.key: t for t in targets}
    pair = [by_key[key] for key in ("bare", FULL) if key in by_key]
    if len(pair) < 2 or args.rate_seconds == 0:
        args.rate = None
        return
    args.rate = round(max(r["rps"] for r in by_key[FULL].rounds) / 2)
    for target in pair:
        figures, _ = measure(target, args, WARMUP, args.rate)
        target.rate_runs.append(figures)
    for index in range(args.rounds):
        for target in pair if index % 2 == 0 else pair[::-1]:
            figures, usage = measure(target, args, args.rate_seconds, args.rate)
            target.rate_runs.append(figures)
            target.rate_usage.append(usage)
        figures_line = ", ".join(f"{t.row.key} {t.rate_runs[-1]['p99_ms']:.2f}" for t in pair)
        print(
            f"  fixed rate {args.rate:,} req/s, round {index + 1}/{args.rounds}, "
            f"p99 ms: {figures_line}",
            flush=True,
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    keys = [row.key for row in ROWS]
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--connections", type=int, default=32, help="wrk -c (default 32)")
    parser.add_argument(
        "--duration", type=int, default=6, help="measured seconds per row (default 6)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="split --duration into this many wrk runs per row, the rows taking turns "
        "(default 3: 2 s each); also the number of fixed-rate rounds",
    )
    parser.add_argument(
        "--rate-seconds",
        type=int,
        default=8,
        help="seconds of each fixed-rate round (default 8; 0 leaves the fixed-rate phase out)",
    )
    parser.add_argument(
        "--rows",
        default=",".join(keys),
        help=f"comma-separated, in this order: {','.join(keys)} (default: all)",
    )
    args = parser.parse_args(argv)
    wanted = [key.strip() for key in args.rows.split(",") if key.strip()]
    unknown = sorted(set(wanted) - set(keys))
    if unknown or not wanted:
        parser.error(f"--rows: unknown {', '.join(unknown) or '(none given)'}; known: {keys}")
    if args.connections < THREADS:
        parser.error(f"--connections: at least {THREADS} (one per wrk thread)")
    if args.rounds < 1 or args.duration < args.rounds or args.duration % args.rounds:
        parser.error("--duration must be a multiple of --rounds (wrk runs whole seconds)")
    if args.rate_seconds < 0:
        parser.error("--rate-seconds: 0 or more")
    args.rows = [row for row in ROWS if row.key in wanted]
    args.redis_prefix = f"bench-chain-{uuid.uuid4().hex[:12]}:"
    args.skipped = []
    args.rate = None
    args.upstream_log_problems = {}
    args.redis_pid = None
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()
    # SIGTERM unwinds like Ctrl-C does, through the finally blocks that stop every process.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        args.tools = ensure_tools(args.rows)
    except BenchError as exc:
        print(f"bench/chain.py: {exc}", file=sys.stderr)
        return 1
    host = machine()  # before the pinning below, which `nproc` would report
    os.sched_setaffinity(0, {int(LOAD_CORE)})  # the bench's own RSS sampling stays off core 1
    source = gateway_source()
    # A shared machine: say so when something else is already using the CPU.
    busy = psutil.cpu_percent(interval=1.0)
    if busy > BUSY_PERCENT:
        print(f"warning: the machine is {busy:.0f}% busy before the bench starts", flush=True)
    seconds = args.duration // args.rounds
    print(
        f"wrk -t{THREADS} -c{args.connections}, {args.rounds} x {seconds} s per row after "
        f"{WARMUP} s of warm-up; nginx and wrk on core {LOAD_CORE}, the proxy on core "
        f"{PROXY_CORE} (2 workers: both); audit stage in the chain: "
        f"{'yes' if source['audit_in_chain'] else 'no'}",
        flush=True,
    )
    procs = Processes()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-chain-") as tmp:
            targets = run_rows(args, procs, Path(tmp))
    except BenchError as exc:
        print(f"bench/chain.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench/chain.py: interrupted; every process it started is stopped", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        if any(row.redis for row in args.rows):
            forget_redis_keys(args.redis_prefix)
    rows = table(targets)
    rate_rows = rate_table(targets, args.rate)
    checks = report(args, rows, rate_rows)
    warn_about_cores(rows, rate_rows)
    if args.upstream_log_problems:
        print(f"the upstream nginx logged: {args.upstream_log_problems}", file=sys.stderr)
    elapsed = time.perf_counter() - began
    print(f"{elapsed:.0f} s; results in {RESULTS.relative_to(ROOT)}")
    document = {
        "machine": host,
        "gateway": source,
        "cpu_busy_before_percent": busy,
        "load": {
            "generator": "wrk",
            "connections": args.connections,
            "threads": THREADS,
            "rounds": args.rounds,
            "seconds_per_round": seconds,
            "warmup_s": WARMUP,
            "path": PATH,
            "model_rows": {
                "request": f"POST {CHAT_PATH} (the gateway's under /models/{MODEL}), "
                f"wrk -s bench/{CHAT_SCRIPT.name}",
                "body": CHAT_REQUEST,
            },
            "token": "one bearer token, the gateway's, on every request of every row "
            "(LiteLLM: its master key)",
            "cores": {
                "nginx_upstream_and_wrk": LOAD_CORE,
                "proxy": PROXY_CORE,
                "gateway_workers": BOTH_CORES,
            },
        },
        "units": {
            "rps": "requests per second, the row's best round (p50_ms, p99_ms: that round's)",
            "peak_rss_mib": "the proxy's processes (master and worker) together",
            "ratio_to_*": "rps over the reference row's rps, each its best round",
            "added_us_per_request": "1e6/rps of the row minus 1e6/rps of the gateway row "
            "above (the first: the bare proxy)",
            "added_us_per_request_median": "the same from each row's median round",
        },
        "results": rows,
        "fixed_rate": {
            "rate_rps": args.rate,
            "how": f"wrk -s bench/{RATE_SCRIPT.name}: every wrk thread paces its connections "
            "on one timeline; each row's round with the lowest p99",
            "rounds": args.rounds,
            "seconds_per_round": args.rate_seconds,
            "results": rate_rows,
        },
        "comparisons": comparisons(rows),
        "targets": checks,
        "skipped": args.skipped,
        "upstream_log_problems": args.upstream_log_problems,
        "seconds": round(elapsed, 1),
    }
    write_results(args, document)
    failed_rows = [row["row"] for row in rows if row["errors"]]
    if failed_rows or args.upstream_log_problems:
        print(
            f"errors under load in: {', '.join(failed_rows) or 'the upstream nginx'} "
            "(see the errors column)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
