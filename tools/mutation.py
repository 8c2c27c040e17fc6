"""Mutation check of the decision modules: does the suite notice when a decision is broken?

Each mutant in tools/mutations.toml names a file of gateway/, an exact snippet of it,
what the snippet becomes (a flipped comparison, a dropped check, an off-by-one, an
allow where there was a deny) and the focused tests that must then fail. For each
mutant the gateway/ package is copied into a temporary folder, the snippet replaced
there (the working tree is never touched), and the tests run against the copy with
`pytest -x`. A mutant is killed when pytest reports failing tests (exit 1); it
survives when they pass, which means a test is missing.

The check fails (exit 1) when
- a snippet is not in its file exactly once: the code changed under it, and the
  mutant must be rewritten for the new code rather than silently skipped;
- the focused tests fail, or cannot run, on the unmutated code (the baseline);
- a mutant's tests end in anything but pass or fail (a collection error, no test
  matched): that would count as a kill that proves nothing;
- fewer than --threshold of the mutants are killed (default: all of them).

The tests run on SQLite and in-process state (GATEWAY_TEST_POSTGRES_URL and
GATEWAY_TEST_REDIS_URL are cleared), so parallel mutants share no database.

Usage: python tools/mutation.py [--check] [-k NAME] [--jobs N] [--threshold 1.0]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MUTATIONS = Path(__file__).resolve().with_name("mutations.toml")
PACKAGE = "gateway"
# Plugins these focused runs do not use are left out; xdist stays, as the conftest's
# database fixtures ask for its worker_id.
PYTEST = (
    "-x",
    "-q",
    "-n",
    "0",
    "-p",
    "no:cacheprovider",
    "-p",
    "no:schemathesis",
    "-p",
    "no:hypothesispytest",
)
CLEARED = ("GATEWAY_TEST_POSTGRES_URL", "GATEWAY_TEST_REDIS_URL", "CI", "PYTEST_ADDOPTS")
KILLED, SURVIVED, BROKEN = "killed", "survived", "broken"
NOT_THE_COPY = 97  # the run imported the working tree's gateway/: it proves nothing


@dataclass(frozen=True, slots=True)
class Mutant:
    name: str
    file: str  # relative to the repository, under gateway/
    original: str
    mutated: str
    tests: tuple[str, ...]


class ListError(Exception):
    """The mutation list does not fit the code: the message says which mutant and why."""


def load(path: Path = MUTATIONS) -> list[Mutant]:
    """The mutants of the list, their fields checked (not yet against the code)."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    mutants: list[Mutant] = []
    names: set[str] = set()
    for index, entry in enumerate(data.get("mutant", []), 1):
        name = entry.get("name", f"#{index}")
        missing = {"name", "file", "original", "mutated", "tests"} - set(entry)
        if missing:
            raise ListError(f"{path.name}: mutant {name} lacks {', '.join(sorted(missing))}")
        if name in names:
            raise ListError(f"{path.name}: two mutants are named {name}")
        names.add(name)
        mutants.append(
            Mutant(name, entry["file"], entry["original"], entry["mutated"], tuple(entry["tests"]))
        )
    if not mutants:
        raise ListError(f"{path.name} lists no mutant")
    return mutants


def problems(mutants: Iterable[Mutant], root: Path = REPO) -> list[str]:
    """What is wrong between the list and the code: one line per broken mutant."""
    found: list[str] = []
    for m in mutants:
        where = f"mutant {m.name} ({m.file})"
        source = root / m.file
        if not m.file.startswith(f"{PACKAGE}/") or not source.is_file():
            found.append(f"{where}: no such file under {PACKAGE}/")
            continue
        count = source.read_text(encoding="utf-8").count(m.original)
        if count == 0:
            found.append(
                f"{where}: its original snippet is no longer in the file. The code changed: "
                f"rewrite the mutant in tools/mutations.toml for the new code "
                f"(same intent), do not delete it"
            )
        elif count > 1:
            found.append(f"{where}: its original snippet occurs {count} times; make it unique")
        if m.original == m.mutated:
            found.append(f"{where}: the mutated snippet is the original")
        if not m.tests:
            found.append(f"{where}: names no tests")
        for test in m.tests:
            if not (root / test.partition("::")[0]).is_file():
                found.append(f"{where}: no test file {test.partition('::')[0]}")
    return found


def mutant_tree(m: Mutant | None, folder: Path, root: Path = REPO) -> None:
    """`folder` as the repository with the mutant applied: gateway/ copied, the rest linked."""
    for entry in root.iterdir():
        if entry.name in (PACKAGE, ".venv", ".git") or entry.name.endswith("_cache"):
            continue
        (folder / entry.name).symlink_to(entry)
    shutil.copytree(root / PACKAGE, folder / PACKAGE)  # bytecode too: the rest loads fast
    if m is None:
        return  # the baseline: the code as it is
    target = folder / m.file
    for stale in (target.parent / "__pycache__").glob(f"{target.stem}.*.pyc"):
        stale.unlink()  # compiled from the original, and it could pass for current
    text = target.read_text(encoding="utf-8")
    target.write_text(text.replace(m.original, m.mutated, 1), encoding="utf-8")


# What each run executes in a fresh interpreter: pytest from the tree, then a check that
# the gateway it tested is the copy (else the run proves nothing).
RUNNER = f"""
import sys
tree = sys.argv[1]
sys.path.insert(0, tree)
import pytest
code = int(pytest.main(sys.argv[2:]))
loaded = getattr(sys.modules.get("{PACKAGE}"), "__file__", None) or ""
if code in (0, 1) and not loaded.startswith(tree + "/{PACKAGE}/"):
    print("{PACKAGE} was imported from", loaded or "nowhere", "not from the copy")
    code = {NOT_THE_COPY}
sys.exit(code)
"""


@dataclass(slots=True)
class Run:
    mutant: Mutant | None  # None: the baseline
    tests: tuple[str, ...]
    code: int = -1
    output: str = ""
    seconds: float = 0.0

    @property
    def verdict(self) -> str:
        if self.code == 1:
            return KILLED
        return SURVIVED if self.code == 0 else BROKEN

    def tail(self) -> str:
        return "\n".join(self.output.strip().splitlines()[-15:])


def execute(run: Run) -> Run:
    """Build the run's tree in a temporary folder and run its tests there."""
    started = time.monotonic()
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    with tempfile.TemporaryDirectory(prefix="mutant-") as name:
        tree = Path(name)
        mutant_tree(run.mutant, tree)
        proc = subprocess.run(
            [sys.executable, "-c", RUNNER, str(tree), *PYTEST, *run.tests],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    run.code, run.output = proc.returncode, proc.stdout + proc.stderr
    run.seconds = time.monotonic() - started
    return run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check the list fits the code")
    parser.add_argument("-k", dest="only", action="append", help="run only this mutant (repeat)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("-v", dest="verbose", action="store_true", help="each mutant's time")
    parser.add_argument("--threshold", type=float, default=1.0, help="share that must be killed")
    args = parser.parse_args(argv)

    try:
        mutants = load()
    except (ListError, tomllib.TOMLDecodeError) as exc:
        print(f"mutation check: {exc}", file=sys.stderr)
        return 1
    if args.only:
        unknown = set(args.only) - {m.name for m in mutants}
        if unknown:
            print(f"mutation check: no mutant named {', '.join(sorted(unknown))}", file=sys.stderr)
            return 1
        mutants = [m for m in mutants if m.name in args.only]
    wrong = problems(mutants)
    if wrong:
        print("mutation check: tools/mutations.toml does not fit the code:", file=sys.stderr)
        for line in wrong:
            print(f"  {line}", file=sys.stderr)
        return 1
    if args.check:
        print(f"mutation check: {len(mutants)} mutants fit the code")
        return 0

    started = time.monotonic()
    # The baseline first (the longest run): every focused test, on the unmutated copy.
    every_test = tuple(sorted({t for m in mutants for t in m.tests}))
    runs = [Run(None, every_test), *(Run(m, m.tests) for m in mutants)]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        baseline, *results = pool.map(execute, runs)
    if baseline.code != 0:
        print(baseline.tail(), file=sys.stderr)
        print("mutation check: the focused tests fail on the unmutated code", file=sys.stderr)
        return 1
    for r in results:
        m = r.mutant
        assert m is not None
        if args.verbose:
            print(f"{r.verdict:8} {r.seconds:5.1f} s  {m.name}")
        if r.verdict == SURVIVED:
            print(f"SURVIVED {m.name} ({m.file}): {' '.join(m.tests)} still pass; add a test")
        elif r.verdict == BROKEN:
            print(f"BROKEN {m.name} ({m.file}): pytest neither passed nor failed:\n{r.tail()}")
    killed = sum(1 for r in results if r.verdict == KILLED)
    seconds = round(time.monotonic() - started)
    print(f"mutation check: {killed}/{len(results)} killed in {seconds} s")
    broken = any(r.verdict == BROKEN for r in results)
    return 1 if broken or killed < args.threshold * len(results) else 0


if __name__ == "__main__":
    sys.exit(main())
