"""Start the bench's servers pinned to a core, sample what they use, and stop them on any exit.

Shared by bench/chain.py, bench/stacks.py and bench/loadgen.py.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

LOAD_CORE = "0"  # the upstream nginx and wrk share one core ...
PROXY_CORE = "1"  # ... so the proxy under test has the other to itself
BOTH_CORES = f"{LOAD_CORE},{PROXY_CORE}"  # `gateway serve --workers 2`: shares core 0 with the load
RSS_INTERVAL = 0.05  # seconds between RSS samples
START_TIMEOUT = 15  # seconds a server has to listen on its port


class BenchError(Exception):
    """A row could not be measured as described; the message says why."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Processes:
    """Every process the bench starts, each in its own session, stopped on any exit."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        argv: Sequence[str],
        core: str,
        log: Path,
        env: dict[str, str],
        port: int,
        cwd: Path | None = None,
        timeout: float = START_TIMEOUT,
    ) -> subprocess.Popen[bytes]:
        """`argv` pinned to `core` (one, or a taskset list), its stderr in `log`; returns once
        it listens on `port`, within `timeout` seconds."""
        with log.open("ab") as stderr:
            process = subprocess.Popen(
                ["taskset", "-c", core, *argv],  # taskset execs argv: the pid is the server's
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=env,
                cwd=cwd,
                start_new_session=True,  # Ctrl-C reaches the bench, which stops them in order
            )
        self.running.append(process)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise BenchError(f"{argv[0]} exited with {process.returncode}:\n{tail(log)}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return process
            time.sleep(0.05)
        raise BenchError(f"nothing listened on port {port} within {timeout:.0f} s:\n{tail(log)}")

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            # nginx: fast shutdown; gunicorn: stops its worker; gateway: drain, then exit
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # its own session: it and its workers
                process.wait(timeout=10)
        if process in self.running:
            self.running.remove(process)

    def stop_all(self) -> None:
        for process in reversed(self.running):
            self.stop(process)


@dataclass(frozen=True, slots=True)
class CoreTimes:
    """Seconds a core has spent, since boot, working for this machine and taken from it."""

    busy: float  # user, nice, system, irq and softirq: whoever it was for
    steal: float  # taken by the hypervisor for other guests of a shared host

    @classmethod
    def of(cls, core: str) -> CoreTimes:
        times = psutil.cpu_times(percpu=True)[int(core)]
        # A process's CPU time includes the softirq work (its loopback traffic) done in its
        # context, which /proc/stat books as softirq: so busy counts both.
        busy = times.user + times.nice + times.system
        busy += getattr(times, "irq", 0.0) + getattr(times, "softirq", 0.0)
        return cls(float(busy), float(getattr(times, "steal", 0.0)))

    def __sub__(self, other: CoreTimes) -> CoreTimes:
        return CoreTimes(self.busy - other.busy, self.steal - other.steal)


@dataclass(frozen=True, slots=True)
class Usage:
    """What the proxy and the load used during one measured run, and what the cores did."""

    rss_start: int  # bytes, the proxy's process and its workers together
    rss_peak: int
    rss_end: int
    cpu_seconds: float  # user + system of the proxy's processes
    load_cpu_seconds: float  # the same for wrk, the upstream nginx and the bench itself
    wall_seconds: float
    proxy_core: CoreTimes  # PROXY_CORE's time during the run, whoever used it
    load_core: CoreTimes  # LOAD_CORE's


class UsageSampler(threading.Thread):
    """Samples the RSS of the proxy's processes every RSS_INTERVAL; at both ends, their CPU
    time, that of the load (`load_pids` and their children: the upstream nginx, Redis for
    its row; the bench itself and its waited-for children: wrk) and the times of both
    cores, so that anyone else on either core shows.

    The children count because nginx and gunicorn serve from a worker under a master:
    the row's memory is the master's and the worker's. They are listed once, at the
    start: the bench's servers keep their workers for their whole life.
    """

    def __init__(self, pid: int | None, load_pids: Sequence[int]) -> None:
        super().__init__(daemon=True)
        self.tree = family(pid) if pid is not None else []
        self.load = [psutil.Process(), *(p for load in load_pids for p in family(load))]
        self.first = self._rss()
        self.peak = self.first
        self.cpu = cpu_seconds(self.tree)
        self.load_cpu = cpu_seconds(self.load), children_cpu()
        self.cores = CoreTimes.of(PROXY_CORE), CoreTimes.of(LOAD_CORE)
        self.began = time.monotonic()
        self._done = threading.Event()

    def _rss(self) -> int:
        total = 0
        for process in self.tree:
            with contextlib.suppress(psutil.Error):
                total += process.memory_info().rss
        return total

    def run(self) -> None:
        while not self._done.wait(RSS_INTERVAL):
            self.peak = max(self.peak, self._rss())

    def finish(self) -> Usage:
        """Stop sampling; call it after wrk has exited and been waited for."""
        self._done.set()
        self.join()
        last = self._rss()
        wall = time.monotonic() - self.began
        cpu = spent(self.cpu, cpu_seconds(self.tree))
        load_cpu = spent(self.load_cpu[0], cpu_seconds(self.load))
        load_cpu += children_cpu() - self.load_cpu[1]
        proxy_core = CoreTimes.of(PROXY_CORE) - self.cores[0]
        load_core = CoreTimes.of(LOAD_CORE) - self.cores[1]
        return Usage(
            self.first, max(self.peak, last), last, cpu, load_cpu, wall, proxy_core, load_core
        )


def family(pid: int) -> list[psutil.Process]:
    """A process and its children."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def cpu_seconds(processes: Sequence[psutil.Process]) -> dict[int, float]:
    """User + system seconds of each process, by pid."""
    seconds: dict[int, float] = {}
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            seconds[process.pid] = float(times.user + times.system)
    return seconds


def spent(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(seconds - before.get(pid, seconds) for pid, seconds in after.items())


def children_cpu() -> float:
    """User + system seconds of this process's children that have been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
