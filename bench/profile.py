"""Where does the full chain spend its CPU? py-spy samples one gateway under wrk load.

Run from the repository root: `.venv/bin/python bench/profile.py` (about 30 s; it
installs py-spy into the venv when it is missing). Starts nginx (the upstream) on
LOAD_CORE and one full-chain `gateway serve` (JWT + policy + rate limit + audit to
SQLite, as bench/ab.py runs it) on PROXY_CORE, drives it with wrk from LOAD_CORE and
records it with py-spy meanwhile. Prints two tables of the busiest functions: by
their own samples (where the CPU is) and by the samples under them (which parts of
the way cost what), each as a share of all the gateway's samples. `--path` profiles
another GET route, `--model` the model path (chain.py's `models:` entry and
chat completion POST), `--rate` a fixed rate; `--flame FILE` also writes
py-spy's SVG.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

from ab import FULL_CHAIN, PATH
from chain import ensure_tools
from loadgen import RATE_SCRIPT
from model_path import CHAT_PATH, CHAT_REQUEST, CHAT_SCRIPT, MODEL, model_entry
from processes import LOAD_CORE, Processes
from stacks import environment, gateway_folder, http, make_identity, serve, start_nginx

VENV_BIN = Path(sys.executable).parent


def py_spy() -> str:
    tool = VENV_BIN / "py-spy"
    if not tool.exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=True)
    return str(tool)


def frames(line: str) -> tuple[list[str], int]:
    """One collapsed stack of py-spy's raw format: its frames (outermost first), samples."""
    stack, _, count = line.rpartition(" ")
    names = []
    for frame in stack.split(";"):
        name, _, where = frame.partition(" (")
        where = where.rstrip(")").rsplit(":", 1)[0]
        names.append(f"{name} ({shorten(where)})")
    return names, int(count)


def shorten(path: str) -> str:
    for marker, keep in (("site-packages/", ""), ("/gateway/", "gateway/"), ("python3.11/", "")):
        if marker in path:
            return keep + path.split(marker, 1)[1]
    return path


def start_load(
    url: str, token: str, seconds: int, rate: float | None, model: bool
) -> threading.Thread:
    """wrk -c32 on LOAD_CORE for `seconds`, in a thread; closed loop, or `rate` req/s;
    `model`: the chat completion POST of bench/chat_completion.lua."""
    argv = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", "-c32", f"-d{seconds}s"]
    argv += ["-H", f"Authorization: Bearer {token}"]
    if model:
        argv += ["-s", str(CHAT_SCRIPT), url]
    else:
        argv += [url] if rate is None else ["-s", str(RATE_SCRIPT), url, "--", str(rate)]
    load = threading.Thread(target=subprocess.run, args=(argv,), kwargs={"capture_output": True})
    load.start()
    return load


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=15, help="seconds of load and sampling")
    parser.add_argument("--path", default=PATH, help=f"the GET path to load (default {PATH})")
    parser.add_argument("--top", type=int, default=30, help="rows in each table")
    parser.add_argument("--rate", type=float, help="a fixed rate (req/s), not closed loop")
    parser.add_argument(
        "--model", action="store_true", help="the model path: chain.py's models: entry, POSTed"
    )
    parser.add_argument("--flame", type=Path, help="also write py-spy's flame graph here")
    args = parser.parse_args()
    ensure_tools(())
    spy = py_spy()
    procs = Processes()
    work = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    try:
        upstream = start_nginx(procs, work / "up", LOAD_CORE)
        identity = make_identity(procs, work, upstream.port)
        if args.model:  # chain.py's model row: the same entry, the full chain's options
            models = model_entry(upstream.port, FULL_CHAIN)
            folder, port = gateway_folder(work, "gateway", upstream.port, "", models)
            args.path = f"/models/{MODEL}{CHAT_PATH}"
        else:
            folder, port = gateway_folder(work, "gateway", upstream.port, FULL_CHAIN)
        for part in identity.database.parent.glob(identity.database.name + "*"):
            (folder / part.name).write_bytes(part.read_bytes())
        gateway = serve(procs, folder, port, environment())
        url = f"http://127.0.0.1:{port}{args.path}"
        http(url, identity.token, CHAT_REQUEST if args.model else None)  # must answer 200
        raw = work / "profile.txt"
        load = start_load(url, identity.token, args.seconds + 2, args.rate, args.model)
        record = [spy, "record", "--pid", str(gateway.process.pid), "--rate", "250"]
        record += ["--duration", str(args.seconds), "--nonblocking", "--format", "raw"]
        subprocess.run([*record, "--output", str(raw)], capture_output=True, check=True)
        if args.flame:
            load.join()
            load = start_load(url, identity.token, args.seconds + 2, args.rate, args.model)
            flame = [spy, "record", "--pid", str(gateway.process.pid), "--rate", "250"]
            flame += ["--duration", str(args.seconds), "--nonblocking", "--output", str(args.flame)]
            subprocess.run(flame, capture_output=True, check=True)
        load.join()
    finally:
        procs.stop_all()
    own: Counter[str] = Counter()
    under: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        if not line.strip():
            continue
        names, count = frames(line)
        total += count
        own[names[-1]] += count
        for name in set(names):
            under[name] += count
    load = f"{args.rate:,.0f} req/s" if args.rate else "closed loop"
    print(f"{total} samples of {args.path} under wrk -c32 ({load}), {args.seconds} s")
    for title, counts in (("own", own), ("under", under)):
        print(f"\n{title:>6} %  function")
        for name, count in counts.most_common(args.top):
            print(f"{100 * count / total:8.1f}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
