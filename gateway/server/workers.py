"""`gateway serve --workers N`: N gateway processes on one port, and the parent that keeps them.

Each worker is an ordinary `gateway serve` process, started with the internal
`--worker-of PARENT_PID`, whose listening socket sets SO_REUSEPORT: the kernel
spreads new connections across the workers. The parent serves nothing. It
migrates a SQLite database once (so workers never race to do it), starts the
workers, forwards SIGTERM/SIGINT/SIGHUP to them, restarts one that dies (at
most RESTART_LIMIT times per RESTART_WINDOW each, then it stops them all and
exits 1), and exits 0 once every worker has drained and exited 0.

Workers share no memory: rate limits, revocations and user changes are
common to all of them only through Redis, so N > 1 requires GATEWAY_REDIS_URL.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from types import FrameType

from gateway.config.schema.top import Config
from gateway.logs import WORKER_ENV
from gateway.server.siblings import SIBLINGS_ENV

log = logging.getLogger("gateway.workers")

RESTART_LIMIT = 3  # restarts of one worker within RESTART_WINDOW; one more and the parent gives up
RESTART_WINDOW = 60.0  # seconds
KILL_MARGIN = 10.0  # seconds past server.shutdown_grace before a worker still running is killed
POLL_INTERVAL = 0.2  # seconds between looks at the workers (signals are handled at the next look)
PARENT_CHECK = 1.0  # seconds between a worker's looks at its parent
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # SIGHUP: reload routes.yaml


def workers_problem(workers: int, port: int, redis_url: str | None) -> str | None:
    """Why `workers` processes cannot serve as configured, with the fix; None: they can."""
    if workers <= 1:
        return None
    if not redis_url:
        return (
            f"--workers {workers} needs GATEWAY_REDIS_URL. Each worker is a process of its "
            "own: without Redis, rate limits, logouts (token revocations) and user changes "
            "would hold in one worker only. Set GATEWAY_REDIS_URL=redis://HOST:6379/0 so "
            "limits and revocations are global, or serve with --workers 1."
        )
    if not hasattr(socket, "SO_REUSEPORT"):
        return "--workers needs SO_REUSEPORT, which this platform lacks: run one process per port"
    if port == 0:
        return f"--workers {workers} needs a fixed port (server.listen or --port), not 0"
    return None


def serve_workers(
    config: Config, workers: int, host: str | None, port: int | None, log_level: str
) -> int:
    """Run `workers` worker processes until SIGTERM/SIGINT; 0 when every one drained cleanly."""
    from gateway.services import ENV_REDIS_URL

    listen_port = config.server.port if port is None else port
    problem = workers_problem(workers, listen_port, os.environ.get(ENV_REDIS_URL))
    if problem is not None:
        print(f"gateway serve: {problem}", file=sys.stderr)
        return 1
    if not _prepare_database(config):
        return 1
    argv = [sys.executable, "-m", "gateway", "serve", "--config", str(config.path)]
    argv += ["--port", str(listen_port), "--log-level", log_level]
    argv += ["--worker-of", str(os.getpid())]
    if host is not None:
        argv += ["--host", host]
    return Supervisor(argv, workers, config.server.shutdown_grace).run()


def _prepare_database(config: Config) -> bool:
    """Migrate SQLite once, here; refuse an old PostgreSQL schema once, not once per worker."""
    from gateway.services import ServiceSettings, StartupError, ensure_schema
    from gateway.store.connection_errors import (
        DB_CONNECT_TIMEOUT,
        database_errors,
        describe_connection_error,
    )
    from gateway.store.engine import make_engine, safe_url

    url = ServiceSettings.from_env(config).database_url

    async def prepare() -> None:
        engine = make_engine(url)
        try:
            await asyncio.wait_for(ensure_schema(engine, url), DB_CONNECT_TIMEOUT)
        finally:
            await engine.dispose()

    try:
        asyncio.run(prepare())
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return False
    except database_errors() as exc:
        log.error("cannot start: database %s: %s", safe_url(url), describe_connection_error(exc))
        return False
    return True


class Supervisor:
    """Starts the workers, forwards signals, restarts the ones that die, waits for the drain."""

    def __init__(self, argv: list[str], workers: int, grace: float) -> None:
        self.argv = argv
        self.count = workers
        self.grace = grace
        self.procs: list[subprocess.Popen[bytes]] = []
        self.restarts = [collections.deque[float]() for _ in range(workers)]
        self.signals: list[int] = []  # received, not yet forwarded
        self.stop_at: float | None = None  # monotonic time SIGTERM/SIGINT arrived
        self.failed = False
        self.folder = ""  # the workers' metrics sockets (gateway/server/siblings.py)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals.append(signum)  # the loop forwards it; a handler does no more

    def _spawn(self, slot: int) -> subprocess.Popen[bytes]:
        """Worker `slot` (its log lines say `worker: slot + 1`, gateway/logs.py)."""
        env = {**os.environ, WORKER_ENV: str(slot + 1), SIBLINGS_ENV: f"{self.folder}:{self.count}"}
        return subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, env=env)

    def run(self) -> int:
        previous = {signum: signal.signal(signum, self._on_signal) for signum in FORWARDED}
        self.folder = tempfile.mkdtemp(prefix="gateway-workers-")  # mode 0700
        try:
            self.procs = [self._spawn(slot) for slot in range(self.count)]
            log.info("workers started", extra={"pids": [p.pid for p in self.procs]})
            while not self._step():
                time.sleep(POLL_INTERVAL)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            shutil.rmtree(self.folder, ignore_errors=True)
        codes = [p.returncode for p in self.procs]
        log.info("workers stopped", extra={"exit_codes": codes})
        return 0 if not self.failed and all(code == 0 for code in codes) else 1

    def _step(self) -> bool:
        """Forward signals, then restart or reap workers; True when every worker is gone."""
        while self.signals:
            signum = self.signals.pop(0)
            if signum != signal.SIGHUP and self.stop_at is None:
                self.stop_at = time.monotonic()
                log.info("stopping workers", extra={"signal": signal.Signals(signum).name})
            self._send(signum)
        if self.stop_at is None:
            for slot, proc in enumerate(self.procs):
                code = proc.poll()
                if code is not None:
                    self._replace(slot, proc, code)
            return False
        running = [p for p in self.procs if p.poll() is None]
        if running and time.monotonic() > self.stop_at + self.grace + KILL_MARGIN:
            log.error(
                "workers did not stop in time; killed", extra={"pids": [p.pid for p in running]}
            )
            for proc in running:
                proc.kill()
                proc.wait()
            self.failed = True
            running = []
        return not running

    def _replace(self, slot: int, proc: subprocess.Popen[bytes], code: int) -> None:
        cause = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        now = time.monotonic()
        recent = self.restarts[slot]
        while recent and recent[0] < now - RESTART_WINDOW:
            recent.popleft()
        if len(recent) >= RESTART_LIMIT:
            log.error(
                "worker keeps dying; stopping every worker",
                extra={"worker_pid": proc.pid, "cause": cause, "restarts": len(recent)},
            )
            self.failed = True
            self.signals.append(signal.SIGTERM)
            return
        recent.append(now)
        self.procs[slot] = self._spawn(slot)
        log.error(
            "worker died; restarted",
            extra={"worker_pid": proc.pid, "cause": cause, "new_pid": self.procs[slot].pid},
        )

    def _send(self, signum: int) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signum)


async def exit_with_parent(parent: int, stop: Callable[[], None]) -> None:
    """In a worker: drain and stop if the parent that supervises it is gone (killed)."""
    while True:
        await asyncio.sleep(PARENT_CHECK)
        if os.getppid() != parent:
            break
    log.warning("the supervising process is gone; stopping", extra={"parent": parent})
    stop()
