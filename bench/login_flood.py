"""Does a flood of valid sign-ins slow proxied routes? A proxied p99 idle, then in a flood.

Run from the repository root: `.venv/bin/python bench/login_flood.py` (about 35 s).
Starts nginx on core 0 answering `{"ok":true}` and one `gateway serve` on every core,
with the shipped argon2 parameters (time_cost 3, 64 MiB, parallelism 4) and the
default hashing pool (one thread fewer than the cores, 16 waiting jobs per thread).
A user `bench` is created with `gateway users create`. Then wrk, pinned to core 0:

1. idle: GET /bench/x at a fixed rate (--probe-rate) for --seconds; its p99.
2. flood: the same probe again, while a second wrk posts valid logins for `bench` at
   --flood-rate, far beyond what argon2 can do on this machine; the probe's p99.

The two take turns for --rounds. Prints each round, the median p99 of each phase
and their ratio (the issue's target: at most 2x), and what the logins got (200,
503 busy, anything else) from the gateway's audit rows; writes
bench/results/login_flood.json. /auth/login has no rate limit here: the shipped
per-address limit would stop a one-address flood before it reached the pool, and
the pool is what is measured (a flood from many addresses gets past that limit).

`--source DIR` runs the gateway from another checkout (e.g. `git archive` of an
older commit unpacked into DIR), to compare before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadgen import RATE_SCRIPT, run_wrk
from processes import LOAD_CORE, BenchError, Processes, free_port
from report import machine, shown_path
from stacks import (
    DATABASE,
    PASSWORD,
    ROOT,
    create_bench_user,
    environment,
    http,
    log_problems,
    start_nginx,
    tool_path,
)

RESULTS = ROOT / "bench" / "results" / "login_flood.json"
TARGET_RATIO = 2.0  # the issue: proxied p99 during the flood within 2x of idle
DRAIN = 3.0  # seconds after a flood for the pool's queue to empty before the next idle phase

CONFIG = """\
server:
  listen: 127.0.0.1:{port}
  shutdown_grace: 2s
auth:
  issuer: gateway
  access_ttl: 15m
{hashing}
policies: policies/
upstreams:
  bench: {{targets: ["http://127.0.0.1:{upstream_port}"]}}
routes:
  - {{path: /auth/login, methods: [POST], handler: auth.login, auth: none}}
  - {{path: /bench/**, upstream: bench, auth: none}}
"""

# wrk posting one valid login per send, paced by bench/fixed_rate.lua.
FLOOD_SCRIPT = """\
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
dofile("{rate_script}")
"""


def gateway_folder(work: Path, upstream_port: int, args: argparse.Namespace) -> tuple[Path, int]:
    folder = work / "gateway"
    folder.mkdir()
    (folder / "policies").mkdir()
    (folder / "policies" / "roles.yaml").write_text("roles:\n  user: {}\n")
    pool = {"workers": args.workers, "queue": args.queue}
    options = ", ".join(f"{key}: {value}" for key, value in pool.items() if value is not None)
    hashing = f"  password_hashing: {{{options}}}" if options else ""
    port = free_port()
    text = CONFIG.format(port=port, upstream_port=upstream_port, hashing=hashing)
    (folder / "routes.yaml").write_text(text)
    return folder, port


def gateway_env(source: Path) -> dict[str, str]:
    env = environment()
    env["PYTHONPATH"] = os.pathsep.join([str(source), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def flood(wrk: str, url: str, script: Path, rate: float, seconds: int) -> subprocess.Popen[str]:
    """wrk posting logins at `rate` per second for `seconds`, in the background."""
    argv = ["taskset", "-c", LOAD_CORE, wrk, "-t1", "-c64", f"-d{seconds}s", "-s", str(script)]
    argv += [url, "--", f"{rate:.3f}"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def login_outcomes(database: Path) -> dict[str, int]:
    """Status -> count of /auth/login audit rows in the stopped gateway's database."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            rows = db.execute(
                "SELECT status, reason, count(*) FROM audit_logs WHERE path = '/auth/login' "
                "GROUP BY status, reason ORDER BY status"
            ).fetchall()
    except sqlite3.Error as exc:
        return {f"unreadable: {exc}": 0}
    return {f"{status} {reason or ''}".strip(): int(count) for status, reason, count in rows}


def run(args: argparse.Namespace, procs: Processes, work: Path) -> dict[str, Any]:
    wrk = args.wrk
    upstream = start_nginx(procs, work / "upstream", LOAD_CORE)
    folder, port = gateway_folder(work, upstream.port, args)
    source = args.source.resolve()
    env = gateway_env(source)
    create_bench_user(folder, env, cwd=source)
    every_core = f"0-{(os.cpu_count() or 1) - 1}"
    argv = [sys.executable, "-m", "gateway", "serve", "--config", str(folder / "routes.yaml")]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    log = folder / "gateway.log"
    gateway = procs.start(argv, every_core, log, env, port, cwd=source)
    base = f"http://127.0.0.1:{port}"
    login = {"username": "bench", "password": PASSWORD}
    http(f"{base}/auth/login", data=login)  # the user signs in, the route proxies
    http(f"{base}/bench/x")
    script = work / "login_flood.lua"
    body = json.dumps(login)
    script.write_text(FLOOD_SCRIPT.format(body=body, rate_script=RATE_SCRIPT))

    probe_url = f"{base}/bench/x"
    run_wrk(wrk, probe_url, 4, 2, None, args.probe_rate)  # warm-up, not reported
    idle: list[dict[str, Any]] = []
    during: list[dict[str, Any]] = []
    floods: list[str] = []
    # Idle and flood phases take turns, so a slow spell of a shared machine
    # hits both alike; each phase is reported by its median round.
    for _ in range(args.rounds):
        idle.append(run_wrk(wrk, probe_url, 4, args.seconds, None, args.probe_rate))
        flooding = flood(wrk, f"{base}/auth/login", script, args.flood_rate, args.seconds + 2)
        try:
            time.sleep(1.0)  # the pool fills, and its queue with it
            during.append(run_wrk(wrk, probe_url, 4, args.seconds, None, args.probe_rate))
            floods.append(flooding.communicate(timeout=args.seconds + 30)[0])
        finally:
            if flooding.poll() is None:
                flooding.kill()
                flooding.wait()
        time.sleep(DRAIN)
    procs.stop(gateway)  # writes out its audit rows
    idle_p99 = statistics.median(r["p99_ms"] for r in idle)
    flood_p99 = statistics.median(r["p99_ms"] for r in during)
    return {
        "idle": idle,
        "flood": during,
        "idle_p99_ms": idle_p99,
        "flood_p99_ms": flood_p99,
        "ratio": round(flood_p99 / idle_p99, 2),
        "logins": login_outcomes(folder / DATABASE),
        "flood_wrk": [out.strip().splitlines()[-6:] for out in floods],
        "gateway_log_problems": dict(log_problems(log)),
    }


def report(args: argparse.Namespace, result: dict[str, Any]) -> None:
    print(
        f"proxied GET at {args.probe_rate:g}/s; logins at {args.flood_rate:g}/s in the flood; "
        f"{args.rounds} rounds of {args.seconds} s each"
    )
    print(f"{'':12}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}{'non-2xx':>10}")
    for name in ("idle", "flood"):
        for number, row in enumerate(result[name], 1):
            line = f"{row['p50_ms']:>10.2f}{row['p99_ms']:>10.2f}{row['rps']:>10.1f}"
            print(f"{name} {number:<6}{line}{row['non_2xx']:>10}")
    verdict = "within" if result["ratio"] <= TARGET_RATIO else "OVER"
    print(
        f"median p99: idle {result['idle_p99_ms']:.2f} ms, flood {result['flood_p99_ms']:.2f} ms: "
        f"{result['ratio']:.2f}x ({verdict} the {TARGET_RATIO:g}x target)"
    )
    print("logins:", ", ".join(f"{k}: {v}" for k, v in result["logins"].items()) or "none")
    if result["gateway_log_problems"]:
        print("gateway log:", result["gateway_log_problems"])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=int, default=5, help="each measured phase (5)")
    parser.add_argument("--rounds", type=int, default=2, help="idle/flood turns (2)")
    parser.add_argument("--probe-rate", type=float, default=200, help="proxied GETs/s (200)")
    parser.add_argument("--flood-rate", type=float, default=200, help="logins/s (200)")
    parser.add_argument("--workers", type=int, help="password_hashing.workers (default: auto)")
    parser.add_argument("--queue", type=int, help="password_hashing.queue (default: auto)")
    parser.add_argument("--source", type=Path, default=ROOT, help="the gateway's checkout")
    parser.add_argument("--wrk", default="wrk", help="the wrk binary (wrk)")
    parser.add_argument("--no-save", action="store_true", help="do not write the JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    procs = Processes()
    os.environ["PATH"] = tool_path()
    try:
        with tempfile.TemporaryDirectory(prefix="login-flood-") as tmp:
            result = run(args, procs, Path(tmp))
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
    report(args, result)
    if not args.no_save:
        document = {
            "bench": "login_flood",
            "command": " ".join([shown_path(sys.executable), *sys.argv]),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            **result,
        }
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(document, indent=2) + "\n")
        print(f"results in {RESULTS.relative_to(ROOT)}")
    return 0  # a missed target is reported, not an error (as in bench/chain.py)


if __name__ == "__main__":
    sys.exit(main())
