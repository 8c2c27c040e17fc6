"""wrk, the load generator: closed loop (as fast as the proxy answers) or at a fixed rate.

wrk runs pinned to LOAD_CORE, beside the upstream nginx. The fixed rate comes from
bench/fixed_rate.lua, which paces every connection on one timeline per wrk thread.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from processes import LOAD_CORE, BenchError

THREADS = 2  # wrk threads
RATE_SCRIPT = Path(__file__).resolve().with_name("fixed_rate.lua")

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def run_wrk(
    wrk: str,
    url: str,
    connections: int,
    seconds: int,
    token: str | None,
    rate: float | None = None,
    script: Path | None = None,
) -> dict[str, Any]:
    """One wrk run against `url`: its req/s, latency percentiles and errors.

    `rate`: requests per second in all, spread over the threads; None runs closed loop.
    `script`: a wrk script that shapes the request (bench/chat_completion.lua), closed loop
    only: wrk runs one script, and the fixed rate is one.
    """
    argv = ["taskset", "-c", LOAD_CORE, wrk, f"-t{THREADS}", f"-c{connections}"]
    argv += [f"-d{seconds}s", "--latency"]
    if token:
        argv += ["-H", f"Authorization: Bearer {token}"]
    if rate is not None and script is not None:
        raise BenchError("wrk runs one script: a fixed rate or a request script, not both")
    if rate is not None:
        argv += ["-s", str(RATE_SCRIPT), url, "--", f"{rate / THREADS:.3f}"]
    elif script is not None:
        argv += ["-s", str(script), url]
    else:
        argv.append(url)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=False)
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
