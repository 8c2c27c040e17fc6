"""Is checkout B slower than checkout A on the full chain? Paired, alternating short runs.

Run from the repository root:

    git worktree add /tmp/before <commit>      # or: git archive <commit> | tar -x -C DIR
    .venv/bin/python bench/ab.py /tmp/before .  # about 3 minutes with the defaults

On a shared VM the req/s of one `bench/chain.py` run moves by 10-15 % from
one minute to the next, more than a change worth measuring costs. This bench
starts one full-chain gateway per checkout (JWT + policy + rate limit +
audit to SQLite, each with its own database and identity, each checkout's
own code) on PROXY_CORE, all at once, behind one nginx upstream on
LOAD_CORE, and then gives wrk to each in turn for `--seconds`, `--cycles`
times, reversing the order every cycle. Neighbouring runs share the
machine's mood, so the ratio of each pair is steadier than either figure.

A checkout may carry environment variables for its gateway, `DIR::NAME=VALUE::…`,
so one checkout can be compared with itself under another setting (the same
folder twice is allowed when the settings differ):

    .venv/bin/python bench/ab.py . .::OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318

Printed per checkout: best and median req/s, and the gateway's CPU µs per
request (utime + stime from /proc over the run); then for each checkout
after the first, the median and quartiles of its paired ratio to the first.
Writes bench/results/ab.json.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from chain import ensure_tools
from processes import LOAD_CORE, BenchError, Processes
from stacks import start_nginx

RESULTS = Path(__file__).resolve().parent / "results" / "ab.json"
FULL_CHAIN = "roles: [user], rate_limit: {limit: 100000000, per: 1m, key: user}"
PATH = "/bench/item"


def serve_checkout(upstream_port: int) -> None:
    """`--serve`, run with a checkout as the working folder: its own bench helpers
    (its routes.yaml template, policies) and its own gateway (`-m gateway` finds
    the package in the working folder first); print {port, token, pid} and serve
    until stdin closes."""
    sys.path.insert(0, str(Path.cwd() / "bench"))
    for name in ("stacks", "processes"):
        sys.modules.pop(name, None)
    theirs = importlib.import_module("stacks")
    procs = importlib.import_module("processes").Processes()
    try:
        work = Path(tempfile.mkdtemp(prefix="bench-ab-"))
        identity = theirs.make_identity(procs, work, upstream_port)
        folder, port = theirs.gateway_folder(work, "gateway", upstream_port, FULL_CHAIN)
        for part in identity.database.parent.glob(identity.database.name + "*"):
            shutil.copy2(part, folder / part.name)
        gateway = theirs.serve(procs, folder, port, theirs.environment())
        theirs.http(f"http://127.0.0.1:{port}{PATH}", identity.token)  # must answer 200
        line = {"port": port, "token": identity.token, "pid": gateway.process.pid}
        print(json.dumps(line), flush=True)
        sys.stdin.read()
    finally:
        procs.stop_all()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(port: int, token: str, seconds: int) -> int:
    """Requests wrk completed in `seconds` against the gateway on `port`."""
    argv = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", "-c32", f"-d{seconds}s"]
    argv += ["-H", f"Authorization: Bearer {token}", f"http://127.0.0.1:{port}{PATH}"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    found = re.search(r"(\d+) requests in", done.stdout)
    if found is None or "Non-2xx" in done.stdout:
        raise BenchError(f"wrk: {done.stdout}{done.stderr}")
    return int(found.group(1))


def spec_of(text: str) -> tuple[str, Path, dict[str, str]]:
    """`DIR[::NAME=VALUE…]` → (its label, the folder, the variables for its gateway)."""
    folder, *pairs = text.split("::")
    path = Path(folder).resolve()
    extra = dict(pair.split("=", 1) for pair in pairs)
    label = str(path) + "".join(f" {k}={v}" for k, v in extra.items())
    return label, path, extra


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "checkouts", nargs="*", help="two or more checkout folders (DIR[::NAME=VALUE…]); A first"
    )
    parser.add_argument("--cycles", type=int, default=16, help="turns of wrk per checkout")
    parser.add_argument("--seconds", type=int, default=3, help="seconds of each wrk run")
    parser.add_argument("--serve", type=int, metavar="UPSTREAM_PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_checkout(args.serve)
        return 0
    if len(args.checkouts) < 2:
        parser.error("name two checkouts or more")
    specs = [spec_of(text) for text in args.checkouts]
    checkouts = [label for label, _, _ in specs]
    if len(set(checkouts)) < len(checkouts):
        parser.error("each checkout once (or with other variables: DIR::NAME=VALUE)")
    ensure_tools(())  # nginx and wrk, from Debian's packages when missing
    procs = Processes()
    servers: list[tuple[str, subprocess.Popen[str], dict[str, Any]]] = []
    runs: dict[str, dict[str, list[float]]] = {str(c): {"rps": [], "cpu_us": []} for c in checkouts}
    try:
        upstream = start_nginx(procs, Path(tempfile.mkdtemp(prefix="bench-ab-")) / "up", LOAD_CORE)
        for checkout, folder, extra in specs:
            argv = [sys.executable, str(Path(__file__).resolve()), "--serve", str(upstream.port)]
            server = subprocess.Popen(  # its cwd decides which checkout's code serves
                argv,
                cwd=folder,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, **extra},
            )
            assert server.stdout is not None
            started = server.stdout.readline()
            if not started:
                raise BenchError(f"{checkout}: the gateway did not start")
            servers.append((checkout, server, json.loads(started)))
        for cycle in range(args.cycles):
            for checkout, _, info in servers if cycle % 2 == 0 else reversed(servers):
                before = cpu_seconds(info["pid"])
                count = wrk(info["port"], info["token"], args.seconds)
                spent = cpu_seconds(info["pid"]) - before
                runs[str(checkout)]["rps"].append(round(count / args.seconds, 1))
                runs[str(checkout)]["cpu_us"].append(round(spent / count * 1e6, 1))
    finally:
        for _, server, _ in servers:
            if server.stdin is not None:
                server.stdin.close()
            server.wait(timeout=30)
        procs.stop_all()
    first = runs[str(checkouts[0])]
    result: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cycles": args.cycles,
        "seconds": args.seconds,
        "checkouts": {},
    }
    for checkout in checkouts:
        run = runs[str(checkout)]
        row: dict[str, Any] = {
            "rps_best": max(run["rps"]),
            "rps_median": statistics.median(run["rps"]),
            "cpu_us_min": min(run["cpu_us"]),
            "cpu_us_median": statistics.median(run["cpu_us"]),
            "runs": run,
        }
        line = (
            f"{checkout!s:40s} req/s best {row['rps_best']:7.0f} median "
            f"{row['rps_median']:7.0f}   CPU µs/request min {row['cpu_us_min']:6.1f} "
            f"median {row['cpu_us_median']:6.1f}"
        )
        if run is not first:
            ratios = [b / a for a, b in zip(first["rps"], run["rps"], strict=True)]
            quartiles = statistics.quantiles(ratios, n=4)
            row["paired_rps_ratio_median"] = round(quartiles[1], 3)
            row["paired_rps_ratio_quartiles"] = [round(quartiles[0], 3), round(quartiles[2], 3)]
            line += (
                f"   paired req/s vs A: {quartiles[1]:.3f}x ({quartiles[0]:.3f}-{quartiles[2]:.3f})"
            )
        result["checkouts"][str(checkout)] = row
        print(line)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
