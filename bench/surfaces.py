"""The frontend's surfaces: static files against nginx, WebSocket messages against a direct line.

Run from the repository root: `.venv/bin/python bench/surfaces.py` (about 80 s; part of
`make bench`). Every server under test runs alone on PROXY_CORE, the load on LOAD_CORE:

- **static**: one hashed 16 KiB script (`app.3f9a2b1c.js`), served by nginx (1 worker,
  `sendfile on`) and by `gateway serve` with a `static:` route (`auth: none`, so the
  row measures file serving, not JWTs); wrk -c32 for `--seconds` each. Then py-spy
  samples the gateway under the same load: the top frames by own samples.
- **websocket**: an aiohttp echo upstream (LOAD_CORE); `--connections` aiohttp clients
  each send a 64-byte text message and wait for its echo, again and again, for
  `--seconds`, straight to the upstream and then through a `websocket: true` route of
  the gateway. Messages/s and round-trip p50/p99 for each, and what the gateway adds.

Figures only, no targets (README "Benchmarks"). Writes bench/results/surfaces.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from profile import frames, py_spy
from typing import Any

from chain import ensure_tools
from processes import LOAD_CORE, PROXY_CORE, Processes, free_port
from stacks import NGINX_CONF, ROOT, environment, tool_path

RESULTS = ROOT / "bench" / "results" / "surfaces.json"
ASSET = "app.3f9a2b1c.js"  # a hashed name: the gateway sends it `immutable`
ASSET_SIZE = 16 * 1024
MESSAGE = "m" * 64

STATIC_SERVER = """\
    sendfile on;
    tcp_nopush on;
    types {{ text/javascript js; text/html html; }}
    server {{
        listen 127.0.0.1:{port};
        root {root};
        etag on;
    }}"""

GATEWAY_CONF = """\
server:
  listen: 127.0.0.1:{port}
  shutdown_grace: 2s
  access_log: off
auth:
  issuer: gateway
policies: policies/
upstreams:
  echo: {{targets: ["http://127.0.0.1:{echo_port}"]}}
routes:
  - {{path: /ws/**, upstream: echo, websocket: true, auth: none, rate_limit: off}}
  - {{path: /**, static: site, auth: none}}
"""


def wrk(url: str, seconds: int) -> dict[str, Any]:
    """wrk -t1 -c32 on LOAD_CORE: requests/s and latency percentiles (ms)."""
    argv = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", "-c32", f"-d{seconds}s", "--latency", url]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    latency = dict(re.findall(r"\s+(50|99)%\s+([\d.]+\w+)", out))
    return {
        "req_per_s": round(rate),
        "non_2xx": int(errors.group(1)) if errors else 0,
        "p50": latency.get("50"),
        "p99": latency.get("99"),
    }


def site(work: Path) -> Path:
    folder = work / "site"
    folder.mkdir()
    (folder / ASSET).write_bytes(b"/* bench */ " + b"x" * (ASSET_SIZE - 12))
    (folder / "index.html").write_text("<!doctype html><title>bench</title>")
    return folder


def start_gateway(procs: Processes, work: Path, echo_port: int) -> int:
    folder = work / "gateway"
    folder.mkdir()
    shutil.copytree(ROOT / "policies", folder / "policies")
    shutil.copytree(work / "site", folder / "site")
    port = free_port()
    (folder / "routes.yaml").write_text(GATEWAY_CONF.format(port=port, echo_port=echo_port))
    env = environment()
    argv = [sys.executable, "-m", "gateway", "serve", "--config", str(folder / "routes.yaml")]
    procs.start(argv, PROXY_CORE, folder / "gateway.log", env, port)
    return port


def start_nginx(procs: Processes, work: Path) -> int:
    folder = work / "nginx"
    folder.mkdir()
    port = free_port()
    server = STATIC_SERVER.format(port=port, root=work / "site")
    conf = folder / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=folder, server=server))
    nginx = shutil.which("nginx", path=tool_path()) or "nginx"
    argv = [nginx, "-p", str(folder), "-e", str(folder / "error.log"), "-c", str(conf)]
    procs.start(argv, PROXY_CORE, folder / "error.log", environment(), port)
    return port


def profile(pid: int, url: str, seconds: int, top: int) -> list[dict[str, Any]]:
    """py-spy's busiest functions (own samples) in the gateway while wrk loads `url`."""
    raw = Path(tempfile.mkstemp(suffix=".txt")[1])
    argv = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", "-c32", f"-d{seconds + 2}s", url]
    load = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    record = [py_spy(), "record", "--pid", str(pid), "--rate", "250", "--nonblocking"]
    record += ["--duration", str(seconds), "--format", "raw", "--output", str(raw)]
    subprocess.run(record, capture_output=True, check=True)
    load.wait()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        if line.strip():
            names, count = frames(line)
            own[names[-1]] += count
            total += count
    raw.unlink()
    return [
        {"share": round(100 * count / total, 1), "function": name}
        for name, count in own.most_common(top)
    ]


# --- WebSockets -------------------------------------------------------------------------


def echo_server(port: int) -> None:
    """The WebSocket upstream: echoes every message (`--echo PORT`)."""
    from aiohttp import WSMsgType, web

    async def echo(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == WSMsgType.TEXT:
                await sock.send_str(msg.data)
        return sock

    app = web.Application()
    app.router.add_get("/ws/echo", echo)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def ping_pong(url: str, connections: int, seconds: float) -> dict[str, Any]:
    """`connections` WebSockets, each sending MESSAGE and awaiting its echo in a loop."""
    import aiohttp

    rtts: list[float] = []
    async with aiohttp.ClientSession() as session:
        sockets = [await session.ws_connect(url) for _ in range(connections)]
        deadline = time.perf_counter() + seconds

        async def loop(sock: aiohttp.ClientWebSocketResponse) -> None:
            while (start := time.perf_counter()) < deadline:
                await sock.send_str(MESSAGE)
                reply = await sock.receive_str()
                assert reply == MESSAGE, reply
                rtts.append(time.perf_counter() - start)

        await asyncio.gather(*(loop(sock) for sock in sockets))
        for sock in sockets:
            await sock.close()
    quantiles = statistics.quantiles(rtts, n=100)
    return {
        "messages_per_s": round(len(rtts) / seconds),
        "rtt_p50_ms": round(quantiles[49] * 1000, 3),
        "rtt_p99_ms": round(quantiles[98] * 1000, 3),
    }


def websocket_rows(gateway_port: int, echo_port: int, args: argparse.Namespace) -> dict[str, Any]:
    """Ping-pong straight to the upstream and through the gateway, on LOAD_CORE."""
    rows = {}
    for name, port in (("direct", echo_port), ("gateway", gateway_port)):
        argv = ["taskset", "-c", LOAD_CORE, sys.executable, __file__, "--ping-pong"]
        argv += [f"ws://127.0.0.1:{port}/ws/echo", str(args.connections), str(args.seconds)]
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        rows[name] = json.loads(out)
    direct, through = rows["direct"], rows["gateway"]
    rows["added_p50_ms"] = round(through["rtt_p50_ms"] - direct["rtt_p50_ms"], 3)
    rows["added_p99_ms"] = round(through["rtt_p99_ms"] - direct["rtt_p99_ms"], 3)
    rows["ratio"] = round(through["messages_per_s"] / direct["messages_per_s"], 3)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="seconds of load per row")
    parser.add_argument("--connections", type=int, default=8, help="WebSockets at once")
    parser.add_argument("--top", type=int, default=15, help="profile rows to print")
    parser.add_argument("--echo", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ping-pong", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo is not None:
        echo_server(args.echo)
        return 0
    if args.ping_pong is not None:
        url, connections, seconds = args.ping_pong
        print(json.dumps(asyncio.run(ping_pong(url, int(connections), float(seconds)))))
        return 0
    ensure_tools(())
    procs = Processes()
    work = Path(tempfile.mkdtemp(prefix="bench-surfaces-"))
    try:
        site(work)
        echo_port = free_port()
        echo_argv = [sys.executable, __file__, "--echo", str(echo_port)]
        procs.start(echo_argv, LOAD_CORE, work / "echo.log", environment(), echo_port)
        nginx_port = start_nginx(procs, work)
        static = {"nginx": wrk(f"http://127.0.0.1:{nginx_port}/{ASSET}", args.seconds)}
        procs.stop(procs.running[-1])  # nginx off PROXY_CORE before the gateway's turn
        gateway_port = start_gateway(procs, work, echo_port)
        gateway = procs.running[-1]
        url = f"http://127.0.0.1:{gateway_port}/{ASSET}"
        static["gateway"] = wrk(url, args.seconds)
        static["ratio"] = round(static["gateway"]["req_per_s"] / static["nginx"]["req_per_s"], 3)
        top = profile(gateway.pid, url, args.seconds, args.top)
        sockets = websocket_rows(gateway_port, echo_port, args)
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    document = {"static": static, "static_profile_own": top, "websocket": sockets}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")
    print(f"static {ASSET} ({ASSET_SIZE // 1024} KiB), wrk -c32, {args.seconds} s each:")
    for name in ("nginx", "gateway"):
        row = static[name]
        print(f"  {name:8} {row['req_per_s']:>8,} req/s  p50 {row['p50']}  p99 {row['p99']}")
    print(f"  gateway / nginx: {static['ratio']:.3f}")
    print("  gateway's busiest functions (own samples):")
    for row in top:
        print(f"    {row['share']:5.1f} %  {row['function']}")
    print(f"WebSocket ping-pong, {args.connections} connections, 64-byte text, {args.seconds} s:")
    for name in ("direct", "gateway"):
        row = sockets[name]
        print(
            f"  {name:8} {row['messages_per_s']:>8,} msg/s  "
            f"rtt p50 {row['rtt_p50_ms']} ms  p99 {row['rtt_p99_ms']} ms"
        )
    print(
        f"  through the gateway: {sockets['ratio']:.3f} of direct, "
        f"+{sockets['added_p50_ms']} ms p50, +{sockets['added_p99_ms']} ms p99"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
