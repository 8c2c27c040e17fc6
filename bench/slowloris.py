"""Do /healthz and a proxied route still answer quickly under a slowloris and an idle flood?

Run from the repository root: `.venv/bin/python bench/slowloris.py` (about 1 minute;
`--seconds` sets the measured span, default 20).

The gateway runs with its defaults (server.max_connections 10000,
header_timeout 10s, keepalive_timeout 75s) on PROXY_CORE, in front of nginx on
LOAD_CORE. Then, at once:

- a slowloris of 500 connections (from 127.0.0.4), each sending a request head
  one header line a second and never finishing it, reconnecting whenever the
  gateway cuts it off (408 at header_timeout, or evicted);
- an idle flood of 20,000 connections (10,000 each from 127.0.0.2 and
  127.0.0.3, two processes: one may hold 20,000 files at most here) that send
  nothing: twice max_connections, so the gateway is at its cap throughout.

The idle connections never send a byte, so header_timeout closes each 10 s
after it connected (by design: a connection that sends no request is not
kept). The measured span therefore covers the gateway at its cap (about 8 s),
the mass close of 10,000 connections at their deadline, and the loris alone.

While both hold, a probe opens a new connection every 50 ms, as a monitoring
check or an admin's curl does, in turn for GET /healthz and GET /bench/x
(proxied to nginx) on the client listener, and GET /healthz on the status
listener (server.status_listen, the admin's port), and times connect to last
byte. Printed: p50, p99 and max per probe, before the flood (baseline) and
under it, plus failures; target: max under 100 ms. Also: the guard's cost per
request (its state moves) against one timer per connection (call_at and cancel
at each move), the design it replaces.

Writes bench/results/slowloris.json. Exit status 1 when a probe failed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from processes import LOAD_CORE, BenchError, Processes, free_port
from stacks import ROOT, environment, gateway_folder, serve, start_nginx

sys.path.insert(0, str(ROOT))
from gateway.server.connections import ConnectionGuard
from tests.processes import IdleFlood  # the tests' flood: one implementation

LORIS = 500
FLOOD = 10_000  # per process, two processes
PROBE_EVERY = 0.05  # seconds
TARGET_MS = 100.0
RESULTS = Path(__file__).resolve().parent / "results" / "slowloris.json"


# --- the slowloris (a process of its own: `--loris PORT COUNT`, until stdin closes) ----


async def loris(port: int, count: int) -> None:
    cut = 0
    done = asyncio.Event()

    async def one() -> None:
        nonlocal cut
        while not done.is_set():
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, local_addr=("127.0.0.4", 0)
                )
            except OSError:
                await asyncio.sleep(0.1)
                continue
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n")
            try:
                while not done.is_set():
                    try:
                        if not await asyncio.wait_for(reader.read(4096), 1.0):
                            break  # closed (or answered 408/503 and closed)
                    except TimeoutError:
                        writer.write(b"X-Slow: a\r\n")  # one more line; never the blank one
            except OSError:
                pass
            finally:
                writer.close()
            cut += 1

    tasks = [asyncio.create_task(one()) for _ in range(count)]
    await asyncio.to_thread(sys.stdin.read)  # until the bench closes our stdin
    done.set()
    await asyncio.gather(*tasks)
    print(cut, flush=True)  # how many times the gateway cut a loris connection


# --- probes -----------------------------------------------------------------------


def probe(port: int, path: str) -> tuple[float, float]:
    """Milliseconds from connect to the last byte of one GET on a new connection, and of
    those the connect's (the kernel's: a second or more when the backlog dropped a SYN)."""
    began = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        connected = time.perf_counter()
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    if not data.startswith(b"HTTP/1.1 200 "):
        raise BenchError(f"{path}: {data[:80]!r}")
    return (time.perf_counter() - began) * 1000, (connected - began) * 1000


def probe_for(port: int, status_port: int, seconds: float) -> dict[str, Any]:
    probes = {"/healthz": (port, "/healthz"), "/bench/x": (port, "/bench/x")}
    probes["status /healthz"] = (status_port, "/healthz")
    times: dict[str, list[float]] = {name: [] for name in probes}
    slowest: dict[str, tuple[float, float]] = {}  # name -> (ms, seconds into the span)
    connects: list[float] = []
    failures: list[str] = []
    began = time.monotonic()
    deadline = began + seconds
    while time.monotonic() < deadline:
        for path, found in times.items():
            sent = time.monotonic() - began
            try:
                total, connect = probe(*probes[path])
            except (OSError, BenchError) as exc:
                failures.append(f"{path}: {exc}")
            else:
                found.append(total)
                connects.append(connect)
                if total > slowest.get(path, (-1.0, 0.0))[0]:
                    slowest[path] = (total, sent)
            time.sleep(PROBE_EVERY)
    paths = {path: summary(found) for path, found in times.items()}
    for path, (_, sent) in slowest.items():
        paths[path]["max_at_s"] = round(sent, 2)  # when the slowest probe was sent
    return {"paths": paths, "connect": summary(connects), "failures": failures}


def summary(ms: list[float]) -> dict[str, float]:
    if not ms:
        return {"n": 0}
    ms = sorted(ms)
    pick = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]  # noqa: E731
    return {"n": len(ms), "p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": ms[-1]}


# --- the guard's cost -------------------------------------------------------------


class Sink:
    def drop(self, answer: bytes | None) -> None:
        pass


class Limits:
    header_timeout = 10.0
    keepalive_timeout = 75.0
    max_connections = 100_000
    server_header = "gateway"


def guard_cost(open_connections: int = 20_000, cycles: int = 200_000) -> dict[str, float]:
    """ns per request of the guard's moves (head started, complete, finished), with
    `open_connections` tracked, against a timer per connection rescheduled per move."""
    loop = asyncio.new_event_loop()
    guard = ConnectionGuard(lambda: Limits(), clock=loop.time)
    tracked = [guard.admit(Sink()) for _ in range(open_connections)]
    began = time.perf_counter_ns()
    for i in range(cycles):
        t = tracked[i % open_connections]
        assert t is not None
        guard.head_started(t)
        guard.head_complete(t)
        guard.finished(t, False)
    guard_ns = (time.perf_counter_ns() - began) / cycles
    began = time.perf_counter_ns()
    guard.sweep(Limits())  # nothing expired: looks at the fronts only
    sweep_us = (time.perf_counter_ns() - began) / 1000
    handles = [loop.call_at(loop.time() + 10, int) for _ in range(open_connections)]
    began = time.perf_counter_ns()
    for i in range(cycles):
        # per move: cancel the running deadline, start the next (head -> none -> idle)
        index = i % open_connections
        handles[index].cancel()
        handles[index] = loop.call_at(loop.time() + 10, int)
        handles[index].cancel()
        handles[index] = loop.call_at(loop.time() + 75, int)
    timers_ns = (time.perf_counter_ns() - began) / cycles
    loop.close()
    return {
        "guard_ns_per_request": guard_ns,
        "timers_ns_per_request": timers_ns,
        "sweep_us": sweep_us,
    }


# --- the run ----------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured span under load")
    parser.add_argument("--loris", nargs=2, metavar=("PORT", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loris:
        asyncio.run(loris(int(args.loris[0]), int(args.loris[1])))
        return 0

    cost = guard_cost()
    print(
        f"guard: {cost['guard_ns_per_request']:.0f} ns per request with 20,000 open "
        f"(a timer per connection: {cost['timers_ns_per_request']:.0f} ns); "
        f"a sweep with nothing due: {cost['sweep_us']:.1f} us"
    )
    procs = Processes()
    floods: list[IdleFlood] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-slowloris-") as tmp:
            work = Path(tmp)
            nginx = start_nginx(procs, work / "nginx", LOAD_CORE)
            folder, port = gateway_folder(work, "gateway", nginx.port, "auth: none")
            status_port = free_port()
            conf = folder / "routes.yaml"
            conf.write_text(
                conf.read_text().replace(
                    "server:\n", f"server:\n  status_listen: 127.0.0.1:{status_port}\n", 1
                )
            )
            gateway = serve(procs, folder, port, environment())
            baseline = probe_for(port, status_port, 3.0)
            print_row("baseline", baseline)

            loris_argv = [sys.executable, __file__, "--loris", str(port), str(LORIS)]
            slow = subprocess.Popen(
                loris_argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            began = time.monotonic()
            floods = [IdleFlood(port, FLOOD, "127.0.0.2"), IdleFlood(port, FLOOD, "127.0.0.3")]
            opened = [flood.wait_open() for flood in floods]
            flood_seconds = time.monotonic() - began
            print(f"flood: {sum(opened)} connections open in {flood_seconds:.1f} s; loris: {LORIS}")
            rss = psutil.Process(gateway.process.pid).memory_info().rss
            loaded = probe_for(port, status_port, args.seconds)
            print_row("under flood", loaded)
            closed = sum(flood.closed_by_server() for flood in floods)
            cut = int(slow.communicate(timeout=30)[0] or 0)  # closing stdin stops it
            print(f"idle connections the gateway closed to stay at its cap: {closed}")
            print(f"loris connections the gateway cut off (each reconnected): {cut}")
    finally:
        for flood in floods:
            flood.stop()
        procs.stop_all()
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "loris": LORIS,
        "idle": sum(opened),
        "flood_open_seconds": round(flood_seconds, 1),
        "idle_closed_by_gateway": closed,
        "loris_cut_by_gateway": cut,
        "gateway_rss_mib_under_flood": round(rss / 2**20, 1),
        "guard": cost,
        "baseline": baseline,
        "under_flood": loaded,
        "target_max_ms": TARGET_MS,
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    failed = baseline["failures"] or loaded["failures"]
    for failure in failed[:10]:
        print("FAILED", failure)
    return 1 if failed else 0


def print_row(name: str, row: dict[str, Any]) -> None:
    for path, s in row["paths"].items():
        if s["n"]:
            verdict = "ok" if s["max_ms"] < TARGET_MS else f"over {TARGET_MS:.0f} ms"
            print(
                f"{name:12} {path:15} n={s['n']:4}  p50 {s['p50_ms']:6.1f} ms  "
                f"p99 {s['p99_ms']:6.1f} ms  max {s['max_ms']:6.1f} ms "
                f"(at {s.get('max_at_s', 0):4.1f} s)  {verdict}"
            )
    c = row["connect"]
    if c["n"]:
        print(
            f"{name:12} {'connect':15} n={c['n']:4}  p50 {c['p50_ms']:6.1f} ms  "
            f"p99 {c['p99_ms']:6.1f} ms  max {c['max_ms']:6.1f} ms  (of the above)"
        )
    if row["failures"]:
        print(f"{name:12} failures: {len(row['failures'])}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        sys.exit(f"bench failed: {exc}")
