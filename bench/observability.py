"""What do the access log and OpenTelemetry tracing cost on the full chain?

Run from the repository root: `.venv/bin/python bench/observability.py` (about
3 minutes; part of `make bench`). It runs bench/ab.py, the paired bench, on this
checkout four times over, each with other settings, against the first:

- A: `server.access_log: off`, tracing off (the baseline);
- the access log on (`stdout`, the default; the gateway's stdout is /dev/null
  here, so this is the cost of building and handing over the lines);
- tracing on, every request sampled (`OTEL_TRACES_SAMPLER=traceidratio`,
  `OTEL_TRACES_SAMPLER_ARG=1.0`), spans exported over OTLP/HTTP to
  bench/otlp_sink.py on LOAD_CORE, access log on;
- the same at a 1 % sample (`OTEL_TRACES_SAMPLER_ARG=0.01`).

Prints ab.py's table (req/s, CPU µs per request, paired ratio to A) and keeps
it as bench/results/observability.json. Figures only; the issue's budget for
the access log is 5 % of full-chain req/s (README "Access log").
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from ab import RESULTS as AB_RESULTS
from processes import LOAD_CORE, Processes, free_port
from stacks import environment

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "observability.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=10, help="turns of wrk per setting")
    parser.add_argument("--seconds", type=int, default=3, help="seconds of each wrk run")
    args = parser.parse_args()
    procs = Processes()
    try:
        port = free_port()
        sink = [sys.executable, str(BENCH / "otlp_sink.py"), str(port)]
        log = Path(tempfile.mkdtemp(prefix="bench-otlp-")) / "sink.log"
        procs.start(sink, LOAD_CORE, log, environment(), port)
        tracing = f".::OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:{port}"
        tracing += "::OTEL_TRACES_SAMPLER=traceidratio::OTEL_TRACES_SAMPLER_ARG="
        settings = [".::BENCH_ACCESS_LOG=off", ".", tracing + "1.0", tracing + "0.01"]
        ab = [sys.executable, str(BENCH / "ab.py"), "--cycles", str(args.cycles)]
        ab += ["--seconds", str(args.seconds), *settings]
        done = subprocess.run(ab, check=False)
    finally:
        procs.stop_all()
    if done.returncode == 0:
        RESULTS.write_text(AB_RESULTS.read_text())
        print(f"(kept as {RESULTS.relative_to(BENCH.parent)})")
    return done.returncode


if __name__ == "__main__":
    raise SystemExit(main())
