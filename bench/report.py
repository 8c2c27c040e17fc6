"""What bench/chain.py prints and saves: the table, the fixed-rate figures, the targets.

Each row is reported by its best round; the ratios compare best rounds. The JSON in
bench/results/chain.json also holds every round, the machine and the versions.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
from loadgen import RATE_SCRIPT, THREADS
from stacks import ROOT, redis_version

if TYPE_CHECKING:
    from chain import Target
    from processes import Usage

RESULTS = ROOT / "bench" / "results" / "chain.json"
MIB = 1024 * 1024
FULL = "limit"  # the row that is "the full chain" in the targets and the fixed-rate phase
OTHER_PERCENT = 5  # above this share of the proxy's core, other users make a row suspect


def table(targets: Sequence[Target]) -> list[dict[str, Any]]:
    """The printed and saved rows: each row's best round, its ratios to the reference
    rows' best, and the µs per request a gateway row adds to the one above it."""
    best = {t.row.key: max(t.rounds, key=lambda r: r["rps"]) for t in targets}
    median = {t.row.key: statistics.median(r["rps"] for r in t.rounds) for t in targets}
    references = reference_rows(best)
    rows: list[dict[str, Any]] = []
    above = "bare" if "bare" in best else None  # the first gateway row against the bare proxy
    for target in targets:
        key = target.row.key
        rps = best[key]["rps"]
        # With the proxy's core saturated, 1e6/rps is its CPU µs per request. The stages
        # are the one-process GET rows, each against the one above; the model row is
        # against the full chain (its model path's own work and the POST body); the
        # workers row, on two cores, against none.
        stage = target.row.kind == "gateway" and target.row.workers == 1
        base = (FULL if FULL in best else None) if target.row.model else above
        added = added_median = None
        if stage and base is not None:
            added = round(1e6 / rps - 1e6 / best[base]["rps"], 1)
            added_median = round(1e6 / median[key] - 1e6 / median[base], 1)
        if stage and not target.row.model:
            above = key
        runs = [target.warmup, *target.rounds, *target.rate_runs]
        non_2xx = sum(r["non_2xx"] for r in runs)
        socket_errors: Counter[str] = Counter()
        for run in runs:
            socket_errors.update(run["socket_errors"])
        errors = [f"non-2xx {non_2xx}"] if non_2xx else []
        errors += [f"{name} {n}" for name, n in socket_errors.items() if n]
        problems = sum(target.log_problems.values())
        if problems:
            what = "warn/err" if target.row.kind == "gateway" else "lines"
            errors.append(f"log {problems} {what}")
        answered = target.checks + sum(r["requests"] or 0 for r in runs)
        # Requests wrk cut off as it stopped may add rows (client_gone), never take any away.
        if target.audit_rows is not None and target.audit_rows < answered:
            errors.append(f"audit {answered - target.audit_rows} rows missing")
        # Every answered call of the model row must have a report row with its usage read.
        metered = target.metered
        if target.row.model and target.row.kind == "gateway":
            if metered is None:
                errors.append("usage: no report_logs")
            elif metered["metered"] < answered:
                errors.append(f"usage {answered - metered['metered']} calls unmetered")
        measured = sum(r["requests"] or 0 for r in target.rounds)
        usage = target.usage
        proxy = bool(usage) and target.process is not None  # direct: no proxy to sample
        cpu = sum(u.cpu_seconds for u in usage)
        ratios = {
            f"ratio_to_{name}": round(rps / best[ref]["rps"], 3) if ref else None
            for name, ref in references.items()
        }
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
                "peak_rss_mib": round(max(u.rss_peak for u in usage) / MIB, 1) if proxy else None,
                "rss_first_round_start_mib": round(usage[0].rss_start / MIB, 1) if proxy else None,
                "rss_last_round_end_mib": round(usage[-1].rss_end / MIB, 1) if proxy else None,
                **shares(usage, proxy, both_cores=target.row.workers > 1),
                "cpu_us_per_request": round(cpu * 1e6 / measured, 1)
                if proxy and measured
                else None,
                **ratios,
                "added_us_per_request": added,
                "added_us_per_request_median": added_median,
                "requests_measured": measured,
                "requests_answered": answered,
                "non_2xx": non_2xx,
                "socket_errors": dict(socket_errors),
                "log_problems": target.log_problems,
                "audit_rows": target.audit_rows,
                "report_rows": metered["report_rows"] if metered else None,
                "metered_calls": metered["metered"] if metered else None,
                "metered_tokens": metered["tokens"] if metered else None,
                "errors": "; ".join(errors),
            }
        )
    return rows


def shares(usage: Sequence[Usage], proxy: bool, both_cores: bool = False) -> dict[str, int | None]:
    """Who used the two cores during a row's runs, in percent of one core. `both_cores`:
    the proxy ran on both (the workers row), so only the two cores' sum tells "other"."""
    wall = sum(u.wall_seconds for u in usage)
    if not wall:
        return dict.fromkeys(("cpu_percent", "load_core_percent", "other_percent"))

    def percent(seconds: float) -> int:
        return round(100 * seconds / wall)

    cpu = sum(u.cpu_seconds for u in usage)
    # Anyone but the proxy on its core, and anyone but wrk, the upstream and the
    # bench on theirs: a shared machine's other work, which makes a row suspect.
    other_proxy_core = sum(u.proxy_core.busy for u in usage) - cpu if proxy else 0.0
    other_load_core = sum(u.load_core.busy - u.load_cpu_seconds for u in usage)
    steal = percent(sum(u.proxy_core.steal + u.load_core.steal for u in usage))
    if both_cores:
        other = other_proxy_core + other_load_core  # the proxy's time counted once, off both
        return {
            "cpu_percent": percent(cpu),
            "load_core_percent": percent(sum(u.load_core.busy for u in usage)),
            "other_percent": percent(max(other, 0)),
            "other_percent_proxy_core": None,
            "other_percent_load_core": None,
            "steal_percent": steal,
        }
    return {
        # The proxy's CPU time: near 100 when the proxy is the bottleneck. Near 100 for
        # core 0: the upstream and wrk are.
        "cpu_percent": percent(cpu) if proxy else None,
        "load_core_percent": percent(sum(u.load_core.busy for u in usage)),
        "other_percent": percent(max(other_proxy_core, 0) + max(other_load_core, 0)),
        "other_percent_proxy_core": percent(other_proxy_core) if proxy else None,
        "other_percent_load_core": percent(other_load_core),
        "steal_percent": steal,
    }


def reference_rows(best: dict[str, dict[str, Any]]) -> dict[str, str | None]:
    """The rows every row is compared with; Flask's is the faster of its two modes."""
    flask = [key for key in ("flask_sync", "flask_gthread") if key in best]
    return {
        "nginx_proxy": "nginx" if "nginx" in best else None,
        "bare": "bare" if "bare" in best else None,
        "flask": max(flask, key=lambda key: best[key]["rps"]) if flask else None,
    }


def rate_table(targets: Sequence[Target], rate: int | None) -> list[dict[str, Any]]:
    """The fixed-rate rows: each row's round with the lowest p99 (the warm-up left out)."""
    rows = []
    for target in targets:
        if rate is None or not target.rate_runs:
            continue
        rounds = target.rate_runs[1:]
        best = min(rounds, key=lambda r: r["p99_ms"])
        rows.append(
            {
                "row": target.row.name,
                "key": target.row.key,
                "rps": round(best["rps"]),
                "p50_ms": round(best["p50_ms"], 3),
                "p99_ms": round(best["p99_ms"], 3),
                **shares(target.rate_usage, proxy=True),
                "rps_rounds": [round(r["rps"]) for r in rounds],
                "p50_ms_rounds": [round(r["p50_ms"], 3) for r in rounds],
                "p99_ms_rounds": [round(r["p99_ms"], 3) for r in rounds],
                "p90_ms_rounds": [round(r["p90_ms"] or 0, 3) for r in rounds],
            }
        )
    return rows


# The baselines for later work, req/s against req/s (best rounds): (what, row,
# reference row). Figures only, no target yet.
COMPARISONS = (
    ("gateway model path / bare aiohttp proxy", "model", "bare"),
    ("gateway model path / LiteLLM proxy", "model", "litellm"),
    ("full chain on Redis, 2 workers / 1 worker", "workers", "redis"),
)


def comparisons(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each comparison with its ratio (None when either row was not measured)."""
    by_key = {row["key"]: row for row in rows}
    found = []
    for what, key, reference in COMPARISONS:
        ratio = None
        if key in by_key and reference in by_key:
            ratio = round(by_key[key]["rps"] / by_key[reference]["rps"], 3)
        found.append({"comparison": what, "row": key, "reference": reference, "ratio": ratio})
    return found


# The targets of issues 7 and 13: (what, row, reference row, target, "min" or "max").
# The reference "rate" compares p99s at the fixed rate; "cpu_us" is the row's own
# CPU µs per request, an absolute figure.
TARGETS = (
    ("full chain >= 2.0x bare aiohttp proxy, req/s", FULL, "bare", 2.0, "min"),
    ("full chain >= 0.20x nginx proxy, req/s", FULL, "nginx_proxy", 0.20, "min"),
    ("full chain <= 170 µs of CPU per request", FULL, "cpu_us", 170.0, "max"),
    ("full chain >= 6x flask (faster gunicorn mode), req/s", FULL, "flask", 6.0, "min"),
    ("full chain p99 <= 1.2x bare's, both at half the full chain's peak", FULL, "rate", 1.2, "max"),
    ("full chain on Redis >= 0.8x full chain, req/s", "redis", FULL, 0.8, "min"),
    ("full chain on Redis, 2 workers >= 1.7x 1 worker, req/s", "workers", "redis", 1.7, "min"),
    ("gateway model path >= 1.5x bare aiohttp proxy, req/s", "model", "bare", 1.5, "min"),
)


def target_checks(
    rows: Sequence[dict[str, Any]], rate_rows: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each target with its figure and PASS or MISS (n/a when a row was not measured)."""
    by_key = {row["key"]: row for row in rows}
    rate = {row["key"]: row for row in rate_rows}
    checks = []
    for what, key, reference, goal, sense in TARGETS:
        ratio = None
        if reference == "rate":
            if key in rate and "bare" in rate:
                ratio = rate[key]["p99_ms"] / rate["bare"]["p99_ms"]
        elif reference == "cpu_us":
            if key in by_key:
                ratio = by_key[key].get("cpu_us_per_request")
        elif key in by_key:
            ratio = by_key[key].get(f"ratio_to_{reference}")
            if ratio is None and reference in by_key:
                ratio = by_key[key]["rps"] / by_key[reference]["rps"]
        verdict = "n/a"
        if ratio is not None:
            verdict = "PASS" if (ratio >= goal if sense == "min" else ratio <= goal) else "MISS"
        checks.append(
            {
                "target": what,
                "ratio": round(ratio, 3) if ratio is not None else None,
                "goal": goal,
                "verdict": verdict,
            }
        )
    return checks


COLUMNS = (
    ("row", "row", "<"),
    ("rps", "req/s", ">"),
    ("p50_ms", "p50 ms", ">"),
    ("p99_ms", "p99 ms", ">"),
    ("peak_rss_mib", "peak RSS MiB", ">"),
    ("cpu_percent", "CPU %", ">"),
    ("load_core_percent", "core 0 %", ">"),
    ("other_percent", "other %", ">"),
    ("ratio_to_nginx_proxy", "x nginx-proxy", ">"),
    ("ratio_to_bare", "x bare", ">"),
    ("ratio_to_flask", "x flask", ">"),
    ("added_us_per_request", "+µs/req", ">"),
    ("errors", "errors", "<"),
)

RATE_COLUMNS = (
    ("row", "row", "<"),
    ("rps", "req/s", ">"),
    ("p50_ms", "p50 ms", ">"),
    ("p99_ms", "p99 ms", ">"),
    ("cpu_percent", "CPU %", ">"),
    ("load_core_percent", "core 0 %", ">"),
    ("other_percent", "other %", ">"),
)


def cell(key: str, value: Any) -> str:
    if value is None or value == "":
        return "-" if key != "errors" else ""
    if key == "rps":
        return f"{value:,}"
    if key in ("p50_ms", "p99_ms"):
        return f"{value:.2f}"
    if key.startswith("ratio_to_"):
        return f"{value:.2f}x"
    if key == "added_us_per_request":
        return f"{value:+.1f}"
    return str(value)


def print_table(columns: Sequence[tuple[str, str, str]], rows: Sequence[dict[str, Any]]) -> None:
    cells = [[title for _, title, _ in columns]]
    cells += [[cell(key, row[key]) for key, _, _ in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    for line in cells:
        parts = [
            f"{text:{align}{width}}"
            for text, width, (_, _, align) in zip(line, widths, columns, strict=True)
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
    cpu, flags = "unknown", ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line
    system = "unknown"
    with contextlib.suppress(OSError):
        release = Path("/etc/os-release").read_text()
        if found := re.search(r'^PRETTY_NAME="?([^"\n]*)', release, re.M):
            system = found.group(1)
    return {
        "nproc": command_output(["nproc"]),
        "cpu_model": cpu,
        "virtual_machine": " hypervisor" in flags,
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "os": system,
        "platform": platform.platform(),
    }


def versions(tools: dict[str, str]) -> dict[str, str | None]:
    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    packages = (
        "aiohttp",
        "uvloop",
        "flask",
        "werkzeug",
        "gunicorn",
        "requests",
        "PyJWT",
        "litellm",
        "uvicorn",
    )
    return {
        "python": sys.version.split()[0],
        **{package.lower(): version(package) for package in packages},
        "redis_py": version("redis"),
        "redis_server": redis_version(),
        "nginx": command_output([tools["nginx"], "-v"]),
        "wrk": command_output([tools["wrk"], "-v"]),
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


def report(
    args: argparse.Namespace, rows: list[dict[str, Any]], rate_rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Print the table, the comparisons, the fixed-rate figures and the targets; returns
    the targets."""
    seconds = args.duration // args.rounds
    print()
    print(
        f"best of {args.rounds} rounds of {seconds} s per row, wrk -t{THREADS} "
        f"-c{args.connections}, the same bearer token on every request"
    )
    print_table(COLUMNS, rows)
    for note in args.skipped:
        print(f"skipped {note['row']}: {note['why']}")
    print_comparisons(rows)
    if rate_rows:
        full = next(row for row in rows if row["key"] == FULL)
        print()
        print(
            f"fixed rate {args.rate:,} req/s, half the full chain's peak of {full['rps']:,} "
            f"(wrk -t{THREADS} -c{args.connections} -s bench/{RATE_SCRIPT.name}); "
            f"lowest p99 of {args.rounds} rounds of {args.rate_seconds} s"
        )
        print_table(RATE_COLUMNS, rate_rows)
        short = [row["row"] for row in rate_rows if row["rps"] < 0.95 * args.rate]
        if short:
            print(f"warning: below the fixed rate (the proxy fell behind): {', '.join(short)}")
    elif args.rate_seconds:
        print("fixed-rate phase left out: it needs the rows bare and limit")
    checks = target_checks(rows, rate_rows)
    print()
    print("targets (figures, not the exit status):")
    width = max(len(check["target"]) for check in checks)
    for check in checks:
        unit = " µs" if "µs" in check["target"] else "x"
        ratio = f"{check['ratio']:.2f}{unit}" if check["ratio"] is not None else "-"
        print(f"  {check['target']:<{width}}  {ratio:>9}  {check['verdict']}")
    return checks


def print_comparisons(rows: Sequence[dict[str, Any]]) -> None:
    """The model and workers rows against their references, and what the model row metered."""
    found = [c for c in comparisons(rows) if any(row["key"] == c["row"] for row in rows)]
    if not found:
        return
    print()
    print("baselines, req/s over req/s (best rounds):")
    width = max(len(c["comparison"]) for c in found)
    for c in found:
        ratio = f"{c['ratio']:.2f}x" if c["ratio"] is not None else "-"
        shown = ratio if c["ratio"] is not None else f"- (no {c['reference']} row)"
        print(f"  {c['comparison']:<{width}}  {shown:>6}")
    for row in rows:
        if row["report_rows"] is not None:
            print(
                f"  {row['row']} metered: {row['report_rows']:,} report rows, "
                f"{row['metered_calls']:,} with usage read ({row['metered_tokens']:,} tokens), "
                f"for {row['requests_answered']:,} answered calls"
            )


def warn_about_cores(rows: Sequence[dict[str, Any]], rate_rows: Sequence[dict[str, Any]]) -> None:
    """Say which rows shared the bench's cores with other processes or the hypervisor."""
    named = [(row["key"], row) for row in rows]
    named += [(f"{row['key']} at the fixed rate", row) for row in rate_rows]
    for field, what in (
        ("other_percent", "other processes used the bench's cores"),
        ("steal_percent", "the hypervisor took CPU time from the bench"),
    ):
        hit = [name for name, row in named if (row[field] or 0) > OTHER_PERCENT]
        if hit:
            print(f"warning: {what} during {', '.join(hit)}")


def write_results(args: argparse.Namespace, document: dict[str, Any]) -> None:
    """bench/results/chain.json: `document` with the command, date and versions."""
    best = {row["key"]: {"rps": row["rps"]} for row in document["results"]}
    full = {
        "bench": "chain",
        "command": " ".join([shown_path(sys.executable), *sys.argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": versions(args.tools),
        "references": reference_rows(best),
        **document,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp_file = RESULTS.with_suffix(".json.tmp")
    tmp_file.write_text(json.dumps(full, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp_file, RESULTS)
