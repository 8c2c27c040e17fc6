"""Route lookup cost as the route table grows: RouteTable.match at 10 to 10,000 routes.

Run from the repository root: `.venv/bin/python bench/route_matching.py`.
Prints ns per lookup for a hit on the last-defined route, a hit in the middle
of the table and a 404, each with the cache warm (the same path again) and
cold (a new path every call), beside a naive linear regex scan for scale, and
writes the figures to bench/results/route_matching.json.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway.config.schema.routes import Route
from gateway.problems import GatewayError
from gateway.routing import CACHE_SIZE, RouteTable, compile_pattern

SIZES = (10, 100, 1_000, 10_000)
LOOKUPS = 10_000  # per timed run
RUNS = 7  # best of
RESULTS = Path(__file__).resolve().parent / "results" / "route_matching.json"

# One service's routes: static prefixes, {param}s and ** in the proportions of
# a typical routes.yaml. A table of n routes holds n / 10 services.
SERVICE = (
    ("/svc{s}/health", ("GET",)),
    ("/svc{s}/items", ("GET", "POST")),
    ("/svc{s}/items/{{id}}", ("GET", "PUT", "DELETE")),
    ("/svc{s}/items/{{id}}/comments", ("GET", "POST")),
    ("/svc{s}/users/{{user}}/settings", ("GET", "PATCH")),
    ("/svc{s}/static/**", ("GET",)),
    ("/svc{s}/v2/{{tenant}}/reports/{{report}}", ("GET",)),
    ("/svc{s}/admin/**", None),
    ("/api/v1/svc{s}/**", None),
    ("/svc{s}/items/{{id}}/comments/{{cid}}", ("GET", "DELETE")),
)


def build_routes(count: int) -> list[Route]:
    routes: list[Route] = []
    for s in range(count // len(SERVICE)):
        for template, methods in SERVICE:
            routes.append(
                Route(
                    index=len(routes),
                    path=compile_pattern(template.format(s=s)),
                    methods=frozenset(methods) if methods else None,
                    upstream=f"svc{s}",
                )
            )
    return routes


def cases(count: int) -> dict[str, tuple[Callable[[int], str], int | None]]:
    """Case name → (path for call i, index of the route it must find or None for 404)."""
    last, middle = count // len(SERVICE) - 1, count // len(SERVICE) // 2
    return {
        "last": (lambda i: f"/svc{last}/items/{i}/comments/{i + 1}", count - 1),
        "middle": (lambda i: f"/svc{middle}/items/{i}", middle * len(SERVICE) + 2),
        "miss": (lambda i: f"/svc{middle}/items/{i}/nothing", None),
    }


def time_lookups(match: Callable[[str, str], object], paths: Sequence[str]) -> float:
    """ns per call of match("GET", path) over `paths`, 404s included."""
    gc.disable()
    try:
        start = time.perf_counter_ns()
        for path in paths:
            try:  # noqa: SIM105  (suppress() would add its own cost to each call)
                match("GET", path)
            except GatewayError:
                pass
        elapsed = time.perf_counter_ns() - start
    finally:
        gc.enable()
    return elapsed / len(paths)


class LinearTable:
    """The router without the trie: one regex per route, tried in order."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self.compiled = [(_regex(r.path), r) for r in routes]

    def match(self, method: str, path: str) -> Route:
        matched = False
        for regex, route in self.compiled:
            if regex.fullmatch(path) is not None:
                if route.methods is None or method in route.methods:
                    return route
                matched = True
        raise GatewayError(405 if matched else 404, "bench", "")


def _regex(pattern: str) -> re.Pattern[str]:
    rest = pattern.endswith("/**")
    body = pattern[: -len("/**")] if rest else pattern
    text = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(body))
    return re.compile(text + ("(?:/.*)?" if rest else ""))


def check(table: RouteTable, count: int) -> None:
    """The paths timed must find what they claim to (no timing is asserted)."""
    for name, (make_path, expected) in cases(count).items():
        try:
            found: int | str = table.match("GET", make_path(7)).route.index
        except GatewayError as error:
            found = error.code
        assert found == (expected if expected is not None else "no_route"), (count, name, found)


def measure() -> list[dict[str, float]]:
    """Best of RUNS per figure; the runs interleave the sizes so that a slow
    spell of a shared machine hits every size alike instead of one."""
    tables: dict[int, RouteTable] = {}
    rows: dict[int, dict[str, float]] = {}
    for count in SIZES:
        routes = build_routes(count)
        start = time.perf_counter_ns()
        tables[count] = RouteTable(routes)
        build_ms = (time.perf_counter_ns() - start) / 1e6
        check(tables[count], count)
        rows[count] = {"routes": count, "build_ms": round(build_ms, 2)}
        linear = LinearTable(routes)
        for name, (make_path, _) in cases(count).items():
            sample = [make_path(i) for i in range(max(20, 100_000 // count))]
            spent = min(time_lookups(linear.match, sample) for _ in range(3))
            rows[count][f"{name}_linear_ns"] = round(spent)
    best: dict[tuple[int, str], float] = {}
    fresh = 0  # a cold path is never used twice, in any run
    for _ in range(RUNS):
        for count, table in tables.items():
            for name, (make_path, _) in cases(count).items():
                warm = [make_path(0)] * LOOKUPS
                cold = [make_path(fresh + i) for i in range(LOOKUPS)]
                fresh += LOOKUPS
                for key, paths in ((f"{name}_warm_ns", warm), (f"{name}_cold_ns", cold)):
                    spent = time_lookups(table.match, paths)
                    best[count, key] = min(best.get((count, key), spent), spent)
    for (count, key), spent in best.items():
        rows[count][key] = round(spent)
    return [rows[count] for count in SIZES]


COLUMNS = (
    ("routes", "routes"),
    ("build_ms", "build ms"),
    ("last_warm_ns", "last warm"),
    ("last_cold_ns", "last cold"),
    ("middle_warm_ns", "mid warm"),
    ("middle_cold_ns", "mid cold"),
    ("miss_warm_ns", "404 warm"),
    ("miss_cold_ns", "404 cold"),
    ("last_linear_ns", "linear last"),
    ("miss_linear_ns", "linear 404"),
)


def main() -> None:
    began = time.perf_counter()
    rows = measure()
    first, last = rows[0], rows[-1]
    ratios = {key: round(last[key] / first[key], 2) for key, _ in COLUMNS[2:]}
    widths = [max(len(title), 8) for _, title in COLUMNS]
    print(f"RouteTable.match, ns per lookup (best of {RUNS} runs of {LOOKUPS})")
    print("  ".join(title.rjust(w) for (_, title), w in zip(COLUMNS, widths, strict=True)))
    for row in rows:
        cells = [f"{row[key]:,.2f}" if key == "build_ms" else f"{row[key]:,}" for key, _ in COLUMNS]
        print("  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)))
    ratio_cells = ["10k/10", ""] + [f"{ratios[key]:.2f}x" for key, _ in COLUMNS[2:]]
    print("  ".join(c.rjust(w) for c, w in zip(ratio_cells, widths, strict=True)))
    elapsed = time.perf_counter() - began
    print(f"cache size {CACHE_SIZE}; {elapsed:.1f} s; results in {RESULTS}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(
        json.dumps(
            {
                "bench": "route_matching",
                "unit": "ns per RouteTable.match call",
                "python": sys.version.split()[0],
                "platform": platform.platform(),
                "lookups_per_run": LOOKUPS,
                "best_of": RUNS,
                "cache_size": CACHE_SIZE,
                "results": rows,
                "ratio_10000_vs_10": ratios,
                "seconds": round(elapsed, 1),
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    os.replace(tmp, RESULTS)


if __name__ == "__main__":
    main()
