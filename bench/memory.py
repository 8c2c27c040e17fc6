"""Does the gateway's memory stay flat with request count and with body size?

Run from the repository root: `.venv/bin/python bench/memory.py` (about 3 minutes).

1. Request count: the full chain (JWT + policy + rate limit + audit to SQLite)
   in front of nginx, driven by wrk in 3-second runs until 300,000 requests
   have passed; the gateway's RSS after each run. Target: RSS after 300,000
   within +20 MiB of RSS after the first 10,000. After each run, the audit
   writer's queue depth and lag (from /metrics) say whether it keeps up with
   the full chain's peak rate; at the end, every request must have its row.
2. Body size: 1 GiB uploaded through the gateway and 1 GiB downloaded through
   it (a small aiohttp upstream that discards and generates the bytes), the
   gateway's RSS sampled every 50 ms. Target: peak within +50 MiB of the RSS
   before the transfer.

Writes bench/results/memory.json. Exit status 1 when a request failed or an
answered request has no audit row.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from chain import FULL_CHAIN
from loadgen import run_wrk
from processes import LOAD_CORE, BenchError, Processes, free_port
from stacks import (
    DATABASE,
    ROOT,
    audit_rows,
    environment,
    gateway_folder,
    http,
    make_identity,
    serve,
    start_gateway,
    start_nginx,
    tool_path,
)

RESULTS = ROOT / "bench" / "results" / "memory.json"
MIB = 1024 * 1024
GIB = 1024 * MIB
TOTAL_REQUESTS = 300_000
FIRST = 10_000
CONNECTIONS = 32
CHUNK = 256 * 1024

STREAM_UPSTREAM = """
import sys
from aiohttp import web

CHUNK = b"x" * (256 * 1024)

async def sink(request):
    total = 0
    async for chunk in request.content.iter_any():
        total += len(chunk)
    return web.json_response({"received": total})

async def source(request):
    size = int(request.query["bytes"])
    response = web.StreamResponse()
    response.content_length = size
    await response.prepare(request)
    sent = 0
    while sent < size:
        part = CHUNK[: size - sent]
        await response.write(part)
        sent += len(part)
    await response.write_eof()
    return response

app = web.Application(client_max_size=0)
app.router.add_post("/sink", sink)
app.router.add_get("/source", source)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


def audit_gauges(metrics_url: str) -> dict[str, float]:
    """The audit writer's queue depth and lag from /metrics (loopback needs no token)."""
    text = http(metrics_url).decode()
    found = dict.fromkeys(("audit_queue_depth", "audit_lag_seconds"), 0.0)
    for line in text.splitlines():
        for name in found:
            if line.startswith(f"gateway_{name} "):
                found[name] = float(line.split()[1])
    return found


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / MIB


def by_count(procs: Processes, work: Path, wrk: str) -> dict[str, Any]:
    upstream = start_nginx(procs, work / "nginx", LOAD_CORE)
    identity = make_identity(procs, work, upstream.port)
    gateway = start_gateway(procs, work, "full", upstream.port, FULL_CHAIN, identity, None)
    url = f"http://127.0.0.1:{gateway.port}/bench/item"
    pid = gateway.process.pid
    metrics = f"http://127.0.0.1:{gateway.port}/metrics"
    points: list[dict[str, float]] = [{"requests": 0, "rss_mib": round(rss_mib(pid), 1)}]
    done = 0
    errors = 0
    rates: list[float] = []
    while done < TOTAL_REQUESTS:
        seconds = 1 if done < FIRST else 3
        result = run_wrk(wrk, url, CONNECTIONS, seconds, identity.token)
        done += int(result["requests"] or 0)
        rates.append(float(result["rps"]))
        errors += int(result["non_2xx"]) + sum(result["socket_errors"].values())
        # Right at the end of a run at the full chain's peak rate: is the audit writer behind?
        audit = audit_gauges(metrics)
        point = {"requests": done, "rss_mib": round(rss_mib(pid), 1), **audit}
        points.append(point)
        print(
            f"  {done:>8,} requests  RSS {point['rss_mib']:.1f} MiB  "
            f"audit queue {audit['audit_queue_depth']:.0f} rows, "
            f"lag {audit['audit_lag_seconds']:.3f} s",
            flush=True,
        )
    first = next(p for p in points if p["requests"] >= FIRST)
    last = points[-1]
    procs.stop(gateway.process)  # drains: every queued audit row is written
    written = audit_rows(gateway.log.parent / DATABASE)
    procs.stop_all()
    return {
        "rps_median": round(sorted(rates)[len(rates) // 2]),
        "audit_queue_max": max(p.get("audit_queue_depth", 0) for p in points),
        "audit_lag_max_seconds": max(p.get("audit_lag_seconds", 0) for p in points),
        "audit_rows_written": written,
        "points": points,
        "rss_after_first_mib": first["rss_mib"],
        "first_at": first["requests"],
        "rss_at_end_mib": last["rss_mib"],
        "requests": last["requests"],
        "growth_mib": round(last["rss_mib"] - first["rss_mib"], 1),
        "target_mib": 20,
        "errors": errors,
    }


class Peak(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_mib(self.pid))
            time.sleep(0.05)


async def transfer(port: int, token: str) -> tuple[int, int]:
    """Upload 1 GiB and download 1 GiB through the gateway; the byte counts seen."""

    async def body() -> Any:
        chunk = b"y" * CHUNK
        for _ in range(GIB // CHUNK):
            yield chunk

    headers = {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.post(
            f"http://127.0.0.1:{port}/stream/sink", data=body(), headers=headers
        ) as response:
            if response.status != 200:
                raise BenchError(f"upload: {response.status} {await response.text()}")
            uploaded = int((await response.json())["received"])
        downloaded = 0
        async with session.get(
            f"http://127.0.0.1:{port}/stream/source?bytes={GIB}", headers=headers
        ) as response:
            if response.status != 200:
                raise BenchError(f"download: {response.status}")
            async for chunk in response.content.iter_chunked(CHUNK):
                downloaded += len(chunk)
    return uploaded, downloaded


def by_size(procs: Processes, work: Path) -> dict[str, Any]:
    stream_port = free_port()
    script = work / "stream_upstream.py"
    script.write_text(STREAM_UPSTREAM)
    argv = [sys.executable, str(script), str(stream_port)]
    procs.start(argv, LOAD_CORE, work / "stream_upstream.log", environment(), stream_port)
    nginx = start_nginx(procs, work / "nginx", LOAD_CORE)
    identity = make_identity(procs, work, nginx.port)
    # The bench's routes.yaml, plus a streaming upstream, its route and a 2 GiB max_body.
    folder, port = gateway_folder(work, "stream", nginx.port, "roles: [user]")
    routes = folder / "routes.yaml"
    routes.write_text(
        routes.read_text()
        .replace("server:\n", "server:\n  max_body: 2GiB\n")
        .replace(
            "routes:\n",
            f'  stream: {{targets: ["http://127.0.0.1:{stream_port}"], timeout: 10m}}\n'
            "routes:\n"
            "  - {path: /stream/**, upstream: stream, strip_prefix: /stream, roles: [user]}\n",
        )
    )
    for part in identity.database.parent.glob(DATABASE + "*"):
        shutil.copy2(part, folder / part.name)
    gateway = serve(procs, folder, port, environment())
    pid = gateway.process.pid
    before = rss_mib(pid)
    peak = Peak(pid)
    peak.start()
    started = time.monotonic()
    try:
        uploaded, downloaded = asyncio.run(transfer(port, identity.token))
    finally:
        peak.stop.set()
        peak.join()
    seconds = time.monotonic() - started
    procs.stop_all()
    if uploaded != GIB or downloaded != GIB:
        raise BenchError(f"bytes through: up {uploaded}, down {downloaded}; expected {GIB}")
    return {
        "bytes_each_way": GIB,
        "rss_before_mib": round(before, 1),
        "rss_peak_mib": round(peak.peak, 1),
        "growth_mib": round(peak.peak - before, 1),
        "target_mib": 50,
        "seconds": round(seconds, 1),
    }


def main() -> int:
    wrk = shutil.which("wrk", path=tool_path())
    if wrk is None or shutil.which("nginx", path=tool_path()) is None:
        print("bench/memory.py needs wrk and nginx (apt-get install -y wrk nginx)")
        return 1
    os.sched_setaffinity(0, {int(LOAD_CORE)})
    procs = Processes()
    with tempfile.TemporaryDirectory(prefix="gateway-memory-") as tmp:
        work = Path(tmp)
        try:
            print(f"1. RSS by request count (full chain, {TOTAL_REQUESTS:,} requests)", flush=True)
            (work / "count").mkdir()
            count = by_count(procs, work / "count", wrk)
            print("2. RSS while 1 GiB goes up and 1 GiB comes down", flush=True)
            (work / "size").mkdir()
            size = by_size(procs, work / "size")
        finally:
            procs.stop_all()
    result = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "by_count": count,
        "by_size": size,
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"\nRSS after {count['first_at']:,} requests {count['rss_after_first_mib']} MiB, "
        f"after {count['requests']:,}: {count['rss_at_end_mib']} MiB "
        f"(+{count['growth_mib']} MiB; target +20)"
    )
    print(
        f"1 GiB up + 1 GiB down: RSS {size['rss_before_mib']} -> peak {size['rss_peak_mib']} MiB "
        f"(+{size['growth_mib']} MiB; target +50) in {size['seconds']} s"
    )
    print(
        f"audit writer at ~{count['rps_median']:,} req/s: queue at most "
        f"{count['audit_queue_max']:.0f} rows, lag at most {count['audit_lag_max_seconds']:.3f} s; "
        f"{count['audit_rows_written']:,} rows written for {count['requests']:,} requests"
    )
    print(f"written to {RESULTS.relative_to(ROOT)}")
    # Requests wrk cut off when each run stopped have rows too (client_gone): more
    # rows than answered requests is expected; fewer would be rows lost.
    lost = (count["audit_rows_written"] or 0) < count["requests"]
    return 1 if count["errors"] or lost else 0


if __name__ == "__main__":
    sys.exit(main())
