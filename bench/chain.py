"""What each middleware stage costs a proxied request, against nginx and a bare aiohttp proxy.

Run from the repository root: `.venv/bin/python bench/chain.py` (about 2 minutes).
Starts nginx on core 0 answering `{"ok":true}`, then, on core 1, a bare aiohttp
proxy (bench/bare_proxy.py) and one `gateway serve` per row with the chain
switched on stage by stage. The same wrk load, from core 0, drives each row in
turn for several short rounds, so a slow spell of a shared machine hits every
row alike; each row's best round is reported. Prints req/s, p50 and p99
latency, the proxy's peak RSS and CPU use and the µs each stage adds per
request, and writes the figures to bench/results/chain.json.

Every row is checked before each round (one request must get nginx's 200
through the proxy); non-2xx answers, socket errors, gateway warnings or missing
audit rows are shown in the table's errors column and make the exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "chain.json"
BARE_PROXY = ROOT / "bench" / "bare_proxy.py"

LOAD_CORE = "0"  # nginx and wrk share one core ...
PROXY_CORE = "1"  # ... so the proxy under test has the other to itself
WARMUP = 2  # seconds of wrk before each measured run, not recorded
THREADS = 2  # wrk threads
RSS_INTERVAL = 0.05  # seconds between RSS samples
BUSY_PERCENT = 10  # machine CPU use before the start above which the figures are suspect
OTHER_PERCENT = 5  # the same for other processes on the proxy's core during a row
PATH = "/bench/item"
BODY = b'{"ok":true}'
JWT_SECRET = "bench-only-jwt-secret-never-use-it-00000"  # 40 characters, a test value
PASSWORD = "bench-password-0123"
REDIS_URL = "redis://127.0.0.1:6379/0"
MIB = 1024 * 1024

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    default_type application/json;
    keepalive_requests 10000000;  # never recycle wrk's or the proxies' connections
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 '{{"ok":true}}'; }}
    }}
}}
"""

# Every gateway row runs this file; only the options of the /bench/** route change.
GATEWAY_CONF = """\
server:
  listen: 127.0.0.1:{port}
  shutdown_grace: 2s
auth:
  issuer: gateway
  access_ttl: 15m
  password_hashing: {{time_cost: 1, memory_cost: 64KiB, parallelism: 1}}
policies: policies/
upstreams:
  bench: {{targets: ["http://127.0.0.1:{upstream_port}"]}}
routes:
  - {{path: /auth/login, methods: [POST], handler: auth.login, auth: none}}
  - {{path: /bench/**, upstream: bench{options}}}
"""

RATE_LIMIT = "rate_limit: {limit: 100000000, per: 1m, key: user}"  # never refuses


@dataclass(frozen=True, slots=True)
class Row:
    key: str  # for --rows
    name: str
    proxy: str  # "none" (wrk straight at nginx), "bare" or "gateway"
    options: str = ""  # the /bench/** route's options in routes.yaml
    redis: bool = False

    @property
    def needs_token(self) -> bool:
        return self.proxy == "gateway" and "auth: none" not in self.options


ROWS = (
    Row("direct", "upstream direct", "none"),
    Row("bare", "bare aiohttp proxy", "bare"),
    Row("off", "gateway, chain off", "gateway", "auth: none"),
    Row("jwt", "+ JWT", "gateway"),
    Row("policy", "+ policy", "gateway", "roles: [user]"),
    Row("limit", "+ rate limit", "gateway", f"roles: [user], {RATE_LIMIT}"),
    Row("redis", "full chain on Redis", "gateway", f"roles: [user], {RATE_LIMIT}", redis=True),
)


class BenchError(Exception):
    """A row could not be measured as described; the message says why."""


# --- processes -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Processes:
    """Every process the bench starts, each in its own session, stopped on any exit."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def start(
        self, argv: Sequence[str], core: str, log: Path, env: dict[str, str], port: int
    ) -> subprocess.Popen[bytes]:
        with log.open("ab") as stderr:
            process = subprocess.Popen(
                ["taskset", "-c", core, *argv],  # taskset execs argv: the pid is the server's
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=env,
                start_new_session=True,  # Ctrl-C reaches the bench, which stops them in order
            )
        self.running.append(process)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise BenchError(f"{argv[0]} exited with {process.returncode}:\n{tail(log)}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return process
            time.sleep(0.05)
        raise BenchError(f"nothing listened on port {port} within 15 s:\n{tail(log)}")

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.terminate()  # nginx: fast shutdown; gateway: drain, then exit
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # its own session: it and its workers
                process.wait(timeout=10)
        if process in self.running:
            self.running.remove(process)

    def stop_all(self) -> None:
        for process in reversed(self.running):
            self.stop(process)


def tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass(frozen=True, slots=True)
class Usage:
    """What the proxy process used during the measured run."""

    rss_start: int  # bytes
    rss_peak: int
    rss_end: int
    cpu_seconds: float  # user + system
    wall_seconds: float
    core_busy_seconds: float  # PROXY_CORE's busy time, whoever used it


class UsageSampler(threading.Thread):
    """Samples one process's RSS every RSS_INTERVAL, and its CPU time and the busy
    time of PROXY_CORE at both ends."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.first = self.process.memory_info().rss
        self.peak = self.first
        self.cpu = self._cpu()
        self.core = core_busy()
        self.began = time.monotonic()
        self._done = threading.Event()

    def _cpu(self) -> float:
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def run(self) -> None:
        while not self._done.wait(RSS_INTERVAL):
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return

    def finish(self) -> Usage:
        self._done.set()
        self.join()
        last = self.process.memory_info().rss
        wall = time.monotonic() - self.began
        cpu, core = self._cpu() - self.cpu, core_busy() - self.core
        return Usage(self.first, max(self.peak, last), last, cpu, wall, core)


def core_busy() -> float:
    """Seconds PROXY_CORE has spent busy since boot (all but idle and iowait)."""
    times = psutil.cpu_times(percpu=True)[int(PROXY_CORE)]
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


# --- wrk -------------------------------------------------------------------------

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def run_wrk(url: str, connections: int, seconds: int, token: str | None) -> dict[str, Any]:
    argv = ["taskset", "-c", LOAD_CORE, "wrk", f"-t{THREADS}", f"-c{connections}"]
    argv += [f"-d{seconds}s", "--latency"]
    if token:
        argv += ["-H", f"Authorization: Bearer {token}"]
    done = subprocess.run(
        [*argv, url], capture_output=True, text=True, timeout=seconds + 30, check=False
    )
    out = done.stdout
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    latency = {
        pct: float(value) * _UNIT_MS[unit]
        for pct, value, unit in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
    }
    total = re.search(r"^\s+(\d+) requests in ([\d.]+)(us|ms|s|m)", out, re.M)
    if done.returncode != 0 or rps is None or "50" not in latency or "99" not in latency:
        raise BenchError(f"wrk failed ({done.returncode}):\n{out}{done.stderr}")
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(rps.group(1)),
        "p50_ms": latency["50"],
        "p75_ms": latency.get("75"),
        "p90_ms": latency.get("90"),
        "p99_ms": latency["99"],
        "requests": int(total.group(1)) if total else None,
        "seconds": float(total.group(2)) * _UNIT_MS[total.group(3)] / 1000 if total else None,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": dict(
            zip(("connect", "read", "write", "timeout"), map(int, errors.groups()), strict=True)
        )
        if errors
        else {},
    }


# --- the rows --------------------------------------------------------------------


def http(url: str, token: str | None = None, data: dict[str, str] | None = None) -> bytes:
    """One request; anything but a 200 is a BenchError with the status and body."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = None
    if data is not None:
        body = json.dumps(data).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=body, headers=headers)  # noqa: S310 (loopback)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return bytes(response.read())
    except urllib.error.HTTPError as exc:
        raise BenchError(f"{url}: {exc.code} {exc.read()[:500]!r}") from None
    except OSError as exc:  # refused, reset, timed out (URLError is an OSError)
        raise BenchError(f"{url}: {exc}") from None


def environment(redis_prefix: str | None) -> dict[str, str]:
    """The bench's environment without any GATEWAY_* of the caller's, plus the bench's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["GATEWAY_JWT_SECRET"] = JWT_SECRET
    env["PYTHONUNBUFFERED"] = "1"
    if redis_prefix is not None:
        env["GATEWAY_REDIS_URL"] = REDIS_URL
        env["GATEWAY_REDIS_PREFIX"] = redis_prefix
    return env


@dataclass(slots=True)
class Target:
    """One row, ready for wrk: where to send it, and what it has measured so far."""

    row: Row
    url: str
    token: str | None = None
    process: subprocess.Popen[bytes] | None = None  # None: wrk goes straight to nginx
    log: Path | None = None
    checks: int = 0  # single requests sent by `check`
    warmup: dict[str, Any] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)  # wrk figures, one per round
    usage: list[Usage] = field(default_factory=list)  # the proxy's, one per round
    log_problems: dict[str, int] = field(default_factory=dict)
    audit_rows: int | None = None  # in the gateway's audit_logs after it stopped


def start_gateway(
    row: Row, procs: Processes, work: Path, upstream_port: int, redis_prefix: str | None
) -> Target:
    """A fresh folder (routes.yaml, policies/, empty SQLite database), a user, a token."""
    folder = work / row.key
    shutil.copytree(ROOT / "policies", folder / "policies")
    port = free_port()
    options = f", {row.options}" if row.options else ""
    config = folder / "routes.yaml"
    config.write_text(GATEWAY_CONF.format(port=port, upstream_port=upstream_port, options=options))
    env = environment(redis_prefix if row.redis else None)
    gateway = [sys.executable, "-m", "gateway"]
    if row.needs_token:
        created = subprocess.run(
            [*gateway, "users", "create", "bench", "--role", "user", "--config", str(config)],
            input=PASSWORD + "\n",
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        if created.returncode != 0:
            raise BenchError(f"gateway users create: {created.stdout}{created.stderr}")
    log = folder / "gateway.log"
    serve = [*gateway, "serve", "--config", str(config), "--host", "127.0.0.1"]
    process = procs.start([*serve, "--port", str(port)], PROXY_CORE, log, env, port)
    target = Target(row, f"http://127.0.0.1:{port}{PATH}", process=process, log=log)
    if row.needs_token:
        login = {"username": "bench", "password": PASSWORD}
        reply = json.loads(http(f"http://127.0.0.1:{port}/auth/login", data=login))
        target.token = reply["access_token"]
    return target


def prepare(
    row: Row, procs: Processes, work: Path, nginx_port: int, args: argparse.Namespace
) -> Target:
    """Start the row's proxy (none, bare or a gateway) and check it."""
    upstream = f"http://127.0.0.1:{nginx_port}"
    if row.proxy == "none":
        target = Target(row, upstream + PATH)
    elif row.proxy == "bare":
        port, log = free_port(), work / "bare_proxy.log"
        argv = [sys.executable, str(BARE_PROXY), upstream, str(port)]
        process = procs.start(argv, PROXY_CORE, log, environment(None), port)
        target = Target(row, f"http://127.0.0.1:{port}{PATH}", process=process, log=log)
    else:
        target = start_gateway(row, procs, work, nginx_port, args.redis_prefix)
    check(target)
    return target


def check(target: Target) -> None:
    """One request through the proxy must get nginx's 200 and body."""
    target.checks += 1
    try:
        body = http(target.url, target.token)
        if body != BODY:
            raise BenchError(f"{target.url} answered {body[:200]!r}, not {BODY!r}")
    except BenchError as exc:
        raise failed(target, exc) from None


def failed(target: Target, exc: BaseException) -> BenchError:
    """`exc` with the row's name and the end of its proxy's log."""
    log = f"\n--- {target.log.name}:\n{tail(target.log)}" if target.log else ""
    return BenchError(f"{target.row.name}: {exc}{log}")


def measure_round(target: Target, seconds: int, connections: int) -> None:
    """Check the row, then one wrk run of `seconds` with the proxy's usage sampled."""
    check(target)
    sampler = UsageSampler(target.process.pid) if target.process else None
    if sampler:
        sampler.start()
    try:
        figures = run_wrk(target.url, connections, seconds, target.token)
    except BenchError as exc:
        raise failed(target, exc) from None
    finally:
        if sampler:
            target.usage.append(sampler.finish())
    target.rounds.append(figures)


def finish(target: Target, procs: Processes) -> None:
    """Stop the row's proxy; for a gateway, read its log and count its audit rows."""
    if target.process is None:
        return
    procs.stop(target.process)  # a gateway writes out its audit queue as it stops
    if target.row.proxy == "gateway" and target.log is not None:
        target.log_problems = dict(log_problems(target.log))
        target.audit_rows = audit_rows(target.log.parent / "gateway.db")


def log_problems(log: Path) -> Counter[str]:
    """Warnings and errors the gateway logged: "level: message" → how many times."""
    found: Counter[str] = Counter()
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            found[f"stderr: {line[:120]}"] += 1  # not a log line: a traceback or a crash
            continue
        if entry.get("level") in ("warning", "error", "critical"):
            found[f"{entry['level']}: {entry.get('msg')}"] += 1
    return found


def audit_rows(database: Path) -> int | None:
    """Audit rows of /bench/ requests in a stopped gateway's SQLite database (None: no table)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            query = "SELECT count(*) FROM audit_logs WHERE path LIKE '/bench/%'"
            return int(db.execute(query).fetchone()[0])
    except sqlite3.Error:
        return None


def redis_reachable() -> str | None:
    """None when Redis answers PING at REDIS_URL, else why not."""
    from redis import Redis
    from redis.exceptions import RedisError

    try:
        client = Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
        try:
            client.ping()
        finally:
            client.close()
    except (RedisError, OSError) as exc:
        return f"Redis at {REDIS_URL} not reachable ({exc})"
    return None


def forget_redis_keys(prefix: str) -> None:
    """Remove what the Redis row wrote under its own prefix."""
    from redis import Redis
    from redis.exceptions import RedisError

    with contextlib.suppress(RedisError, OSError):
        client = Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=5)
        try:
            keys = list(client.scan_iter(match=prefix + "*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


@contextlib.contextmanager
def nginx(procs: Processes, work: Path) -> Iterator[int]:
    """The upstream: nginx, 1 worker, on LOAD_CORE, everything in `work`; yields its port."""
    port = free_port()
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=work, port=port))
    log = work / "nginx-error.log"
    argv = ["nginx", "-p", str(work), "-e", str(log), "-c", str(conf)]
    process = procs.start(argv, LOAD_CORE, log, environment(None), port)
    try:
        yield port
    finally:
        procs.stop(process)


# --- report ----------------------------------------------------------------------


def table(targets: Sequence[Target]) -> list[dict[str, Any]]:
    """The printed and saved rows: each row's best round, its ratio to the bare proxy's
    best, and the µs per request it adds to the row above."""
    best = {t.row.key: max(t.rounds, key=lambda r: r["rps"]) for t in targets}
    median = {t.row.key: statistics.median(r["rps"] for r in t.rounds) for t in targets}
    bare = best["bare"]["rps"] if "bare" in best else None
    rows: list[dict[str, Any]] = []
    previous: Target | None = None
    for target in targets:
        key = target.row.key
        rps = best[key]["rps"]
        # Each gateway row against the row above it (the first against the bare proxy):
        # with the proxy's core saturated, 1e6/rps is its CPU µs per request.
        added = added_median = None
        if target.row.proxy == "gateway" and previous and previous.row.proxy != "none":
            added = round(1e6 / rps - 1e6 / best[previous.row.key]["rps"], 1)
            added_median = round(1e6 / median[key] - 1e6 / median[previous.row.key], 1)
        runs = [target.warmup, *target.rounds]
        non_2xx = sum(r["non_2xx"] for r in runs)
        socket_errors: Counter[str] = Counter()
        for run in runs:
            socket_errors.update(run["socket_errors"])
        errors = [f"non-2xx {non_2xx}"] if non_2xx else []
        errors += [f"{name} {n}" for name, n in socket_errors.items() if n]
        problems = sum(target.log_problems.values())
        if problems:
            errors.append(f"log {problems} warn/err")
        answered = target.checks + sum(r["requests"] or 0 for r in runs)
        # Requests wrk cut off as it stopped may add rows (client_gone), never take any away.
        if target.audit_rows is not None and target.audit_rows < answered:
            errors.append(f"audit {answered - target.audit_rows} rows missing")
        measured = sum(r["requests"] or 0 for r in target.rounds)
        usage = target.usage
        cpu = sum(u.cpu_seconds for u in usage)
        core = sum(u.core_busy_seconds for u in usage)
        rows.append(
            {
                "row": target.row.name,
                "key": key,
                "rps": round(rps),
                "p50_ms": round(best[key]["p50_ms"], 3),
                "p99_ms": round(best[key]["p99_ms"], 3),
                "rps_median": round(median[key]),
                "rps_rounds": [round(r["rps"]) for r in target.rounds],
                "p50_ms_rounds": [round(r["p50_ms"], 3) for r in target.rounds],
                "p99_ms_rounds": [round(r["p99_ms"], 3) for r in target.rounds],
                "peak_rss_mib": round(max(u.rss_peak for u in usage) / MIB, 1) if usage else None,
                "rss_first_round_start_mib": round(usage[0].rss_start / MIB, 1) if usage else None,
                "rss_last_round_end_mib": round(usage[-1].rss_end / MIB, 1) if usage else None,
                # The proxy's CPU time over wrk's running time: near 100 when the proxy is
                # the bottleneck. other_percent: what else ran on its core meanwhile.
                "cpu_percent": round(100 * cpu / sum(r["seconds"] or 0 for r in target.rounds))
                if usage
                else None,
                "other_percent": round(100 * (core - cpu) / sum(u.wall_seconds for u in usage))
                if usage
                else None,
                "cpu_us_per_request": round(cpu * 1e6 / measured, 1)
                if usage and measured
                else None,
                "ratio_to_bare": round(rps / bare, 3) if bare else None,
                "added_us_per_request": added,
                "added_us_per_request_median": added_median,
                "requests_measured": measured,
                "requests_answered": answered,
                "non_2xx": non_2xx,
                "socket_errors": dict(socket_errors),
                "gateway_log_problems": target.log_problems,
                "audit_rows": target.audit_rows,
                "errors": "; ".join(errors),
            }
        )
        previous = target
    return rows


COLUMNS = (
    ("row", "row", "<"),
    ("rps", "req/s", ">"),
    ("p50_ms", "p50 ms", ">"),
    ("p99_ms", "p99 ms", ">"),
    ("peak_rss_mib", "peak RSS MiB", ">"),
    ("cpu_percent", "CPU %", ">"),
    ("other_percent", "other %", ">"),
    ("ratio_to_bare", "x bare", ">"),
    ("added_us_per_request", "+µs/req", ">"),
    ("errors", "errors", "<"),
)


def cell(key: str, value: Any) -> str:
    if value is None or value == "":
        return "-" if key != "errors" else ""
    if key == "rps":
        return f"{value:,}"
    if key in ("p50_ms", "p99_ms"):
        return f"{value:.2f}"
    if key == "ratio_to_bare":
        return f"{value:.2f}x"
    if key == "added_us_per_request":
        return f"{value:+.1f}"
    return str(value)


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    cells = [[title for _, title, _ in COLUMNS]]
    cells += [[cell(key, row[key]) for key, _, _ in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    for line in cells:
        parts = [
            f"{text:{align}{width}}"
            for text, width, (_, _, align) in zip(line, widths, COLUMNS, strict=True)
        ]
        print("  ".join(parts).rstrip())


def command_output(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError as exc:
        return f"unavailable ({exc})"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0].split(" Copyright")[0] if lines else ""


def shown_path(path: str) -> str:
    """`path` relative to the repository root when it is inside it (.venv/bin/python)."""
    resolved = Path(path).absolute()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else path


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": command_output(["nproc"]),
        "cpu_model": cpu,
        "platform": platform.platform(),
    }


def versions() -> dict[str, str | None]:
    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    return {
        "python": sys.version.split()[0],
        "aiohttp": version("aiohttp"),
        "uvloop": version("uvloop"),
        "nginx": command_output(["nginx", "-v"]),
        "wrk": command_output(["wrk", "-v"]),
    }


def gateway_source() -> dict[str, Any]:
    """Which gateway was measured: the commit, uncommitted changes, the audit stage."""
    commit = command_output(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "gateway"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    app = (ROOT / "gateway" / "app.py").read_text()
    stages = re.search(r"^def chain\(.*?^    \]", app, re.M | re.S)  # THE literal list
    audit = "audit_stage" in app or bool(stages and re.search(r"\baudit\w*\(", stages[0]))
    return {"commit": commit, "gateway_dir_dirty": bool(dirty), "audit_in_chain": audit}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    keys = [row.key for row in ROWS]
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--connections", type=int, default=32, help="wrk -c (default 32)")
    parser.add_argument(
        "--duration", type=int, default=10, help="measured seconds per row (default 10)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="split --duration into this many wrk runs per row, the rows taking turns "
        "(default 5: 2 s each); 1 measures each row in one run",
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
    args.rows = [row for row in ROWS if row.key in wanted]
    args.redis_prefix = f"bench-chain-{uuid.uuid4().hex[:12]}:"
    return args


def run_rows(args: argparse.Namespace, procs: Processes, work: Path) -> list[Target]:
    """Start every row's proxy, warm each up, then measure them in turns."""
    targets: list[Target] = []
    with nginx(procs, work) as nginx_port:
        for row in args.rows:
            if row.redis and (why := redis_reachable()):
                args.skipped.append({"row": row.name, "why": why})
                print(f"  {row.name}: skipped, {why}", flush=True)
                continue
            targets.append(prepare(row, procs, work, nginx_port, args))
        for target in targets:  # right before the rounds, so no pool has gone idle
            try:
                target.warmup = run_wrk(target.url, args.connections, WARMUP, target.token)
            except BenchError as exc:
                raise failed(target, exc) from None
        names = ", ".join(t.row.key for t in targets)
        print(f"  started, checked and warmed up: {names}", flush=True)
        seconds = args.duration // args.rounds
        for index in range(args.rounds):
            # The rows take turns, in alternating order, so that a slow spell of a
            # shared machine hits every row alike instead of one.
            for target in targets if index % 2 == 0 else targets[::-1]:
                measure_round(target, seconds, args.connections)
            figures = ", ".join(f"{t.row.key} {t.rounds[-1]['rps']:,.0f}" for t in targets)
            print(f"  round {index + 1}/{args.rounds}, req/s: {figures}", flush=True)
        for target in targets:
            finish(target, procs)
    return targets


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.skipped = []
    began = time.perf_counter()
    # SIGTERM unwinds like Ctrl-C does, through the finally blocks that stop every process.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
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
        f"{PROXY_CORE}; audit stage in the chain: {'yes' if source['audit_in_chain'] else 'no'}",
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
    print()
    print(f"best of {args.rounds} rounds of {seconds} s per row")
    print_table(rows)
    for note in args.skipped:
        print(f"skipped {note['row']}: {note['why']}")
    shared = [row["key"] for row in rows if (row["other_percent"] or 0) > OTHER_PERCENT]
    if shared:
        print(f"warning: other processes ran on core {PROXY_CORE} during {', '.join(shared)}")
    elapsed = time.perf_counter() - began
    print(f"{elapsed:.0f} s; results in {RESULTS.relative_to(ROOT)}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp_file = RESULTS.with_suffix(".json.tmp")
    document = {
        "bench": "chain",
        "command": " ".join([shown_path(sys.executable), *sys.argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": host,
        "versions": versions(),
        "gateway": source,
        "cpu_busy_before_percent": busy,
        "load": {
            "connections": args.connections,
            "threads": THREADS,
            "rounds": args.rounds,
            "seconds_per_round": seconds,
            "warmup_s": WARMUP,
            "path": PATH,
            "cores": {"nginx_and_wrk": LOAD_CORE, "proxy": PROXY_CORE},
        },
        "units": {
            "rps": "requests per second, the row's best round (p50_ms, p99_ms: that round's)",
            "added_us_per_request": "1e6/rps of the row minus 1e6/rps of the row above",
            "added_us_per_request_median": "the same from each row's median round",
        },
        "results": rows,
        "skipped": args.skipped,
        "seconds": round(elapsed, 1),
    }
    tmp_file.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp_file, RESULTS)
    failed = [row["row"] for row in rows if row["errors"]]
    if failed:
        print(f"errors under load in: {', '.join(failed)} (see the errors column)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
