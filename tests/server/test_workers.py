"""`gateway serve --workers N`: processes sharing one port, global limits through Redis,
the parent's signal forwarding, drain and restarts. Real processes throughout."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import psutil
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway.cli import main
from gateway.server.workers import workers_problem
from tests.conftest import MakeUpstream, WriteConfig
from tests.processes import free_port, serve_command, wait_for_port

Start = Callable[[str], tuple[subprocess.Popen[bytes], int, Path]]


def worker_env(redis_url: str | None, prefix: str = "gateway:") -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("GATEWAY_REDIS_URL", None)
    if redis_url:
        env["GATEWAY_REDIS_URL"] = redis_url
        env["GATEWAY_REDIS_PREFIX"] = prefix
    return env


def listening_pids(parent: int, port: int) -> set[int]:
    """The parent's children that have a listening socket on `port`."""
    pids = set()
    for child in psutil.Process(parent).children():
        try:
            connections = child.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in connections):
            pids.add(child.pid)
    return pids


def wait_for_listeners(
    process: subprocess.Popen[bytes], port: int, count: int, seconds: float = 30.0
) -> set[int]:
    deadline = time.monotonic() + seconds
    while True:
        assert process.poll() is None, f"the parent exited with {process.returncode}"
        pids = listening_pids(process.pid, port)
        if len(pids) == count:
            return pids
        assert time.monotonic() < deadline, f"{count} workers did not listen within {seconds}s"
        time.sleep(0.1)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # orphans wait to be reaped
    except psutil.NoSuchProcess:
        return True


def log_messages(path: Path) -> list[dict[str, object]]:
    complete = path.read_text().rpartition("\n")[0]
    return [json.loads(line) for line in complete.splitlines() if line.startswith("{")]


# --- without Redis -------------------------------------------------------------------


def test_several_workers_without_redis_refuse_to_start(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    config = write_config("routes: []\n")
    result = subprocess.run(
        serve_command(config, free_port(), "--workers", "2"),
        env=worker_env(None),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    err = result.stderr.decode()
    assert "gateway serve: --workers 2 needs GATEWAY_REDIS_URL." in err
    assert "Set GATEWAY_REDIS_URL=redis://HOST:6379/0 so limits and revocations are global" in err
    assert "or serve with --workers 1" in err
    assert not (tmp_path / "gateway.db").exists()  # refused before touching anything


def test_workers_problem() -> None:
    assert workers_problem(1, 8080, None) is None  # one process: in-process state is fine
    assert workers_problem(4, 8080, "redis://127.0.0.1:6379/0") is None
    assert "GATEWAY_REDIS_URL" in (workers_problem(2, 8080, None) or "")
    assert workers_problem(2, 0, "redis://r") == (
        "--workers 2 needs a fixed port (server.listen or --port), not 0"
    )


@pytest.mark.parametrize("count", ["0", "-1", "two"])
def test_workers_must_be_a_positive_number(count: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "--workers", count])
    assert info.value.code == 2
    assert "expected a whole number of at least 1" in capsys.readouterr().err


# --- with Redis ----------------------------------------------------------------------


@pytest.fixture
def start_workers(
    write_config: WriteConfig, tmp_path: Path, redis_url: str, redis_prefix: str
) -> Iterator[Start]:
    """Start `gateway serve --workers 2` on a free port; wait until both workers listen."""
    started: list[subprocess.Popen[bytes]] = []

    def start(text: str) -> tuple[subprocess.Popen[bytes], int, Path]:
        port = free_port()
        log = tmp_path / "gateway.log"
        with log.open("wb") as stderr:
            process = subprocess.Popen(
                serve_command(write_config(text), port, "--workers", "2"),
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=worker_env(redis_url, redis_prefix),
            )
        started.append(process)
        wait_for_port(port, process, seconds=30)
        wait_for_listeners(process, port, 2)
        return process, port, log

    yield start
    for process in started:
        if process.poll() is None:
            for child in psutil.Process(process.pid).children():
                child.kill()
            process.kill()
            process.wait(timeout=10)


def upstream_app(arrived: asyncio.Event | None = None) -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"hello": True})

    async def slow(request: web.Request) -> web.Response:
        if arrived is not None:
            arrived.set()
        await asyncio.sleep(1.0)
        return web.json_response({"done": True})

    app = web.Application()
    app.router.add_get("/hello", hello)
    app.router.add_get("/slow", slow)
    return app


def config_text(upstream_port: int) -> str:
    return f"""\
        server: {{shutdown_grace: 20s}}
        upstreams:
          up: {{targets: ["http://127.0.0.1:{upstream_port}"]}}
        routes:
          - path: /limited/**
            upstream: up
            strip_prefix: /limited
            auth: none
            rate_limit: {{limit: 3, per: 1m, key: route}}
          - {{path: /up/**, upstream: up, strip_prefix: /up, auth: none}}
        """


async def test_two_workers_listen_on_one_port_and_share_one_rate_limit(
    start_workers: Start, upstream: MakeUpstream
) -> None:
    server = await upstream(upstream_app())
    assert server.port is not None
    process, port, _ = await asyncio.to_thread(start_workers, config_text(server.port))
    workers = listening_pids(process.pid, port)
    assert len(workers) == 2
    assert process.pid not in workers
    parent_sockets = psutil.Process(process.pid).net_connections(kind="tcp")
    assert not [c for c in parent_sockets if c.status == psutil.CONN_LISTEN]  # it serves nothing

    # A new connection per request: the kernel spreads them over both workers,
    # and the limit of 3 per minute holds for all of them together.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        statuses = []
        for _ in range(20):
            async with session.get(f"http://127.0.0.1:{port}/limited/hello") as response:
                statuses.append(response.status)
        assert collections.Counter(statuses) == {200: 3, 429: 17}
        async with session.get(f"http://127.0.0.1:{port}/up/hello") as response:
            assert response.status == 200  # another route: its own (absent) limit


async def test_one_metrics_scrape_counts_the_requests_of_every_worker(
    start_workers: Start, upstream: MakeUpstream
) -> None:
    """Whichever worker the kernel hands the scrape to, /metrics has every worker's
    series, labelled `worker` (README "Metrics"), so the totals are the whole gateway's."""
    server = await upstream(upstream_app())
    assert server.port is not None
    _, port, _ = await asyncio.to_thread(start_workers, config_text(server.port))
    connector = aiohttp.TCPConnector(force_close=True)  # a new connection each: both workers
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(40):
            async with session.get(f"http://127.0.0.1:{port}/up/hello") as response:
                assert response.status == 200
        for _ in range(4):  # scrapes land on either worker; each sees both
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                assert response.status == 200
                text = await response.text()
            families = {f.name: f for f in text_string_to_metric_families(text)}
            per_worker = collections.Counter[str]()
            for sample in families["gateway_requests"].samples:
                if sample.name == "gateway_requests_total" and sample.labels["route"] == "/up/**":
                    per_worker[sample.labels["worker"]] += int(sample.value)
            assert sum(per_worker.values()) == 40
            assert set(per_worker) == {"1", "2"}  # the kernel spread 40 connections over both
            assert all(count > 0 for count in per_worker.values())
            states = {
                s.labels["state"]: s.value for s in families["gateway_metrics_workers"].samples
            }
            assert states == {"answered": 2, "missing": 0}
            builds = {s.labels["worker"] for s in families["gateway_build_info"].samples}
            assert builds == {"1", "2"}  # every family, not only the request counters
            pids = {s.value for s in families["process_start_time_seconds"].samples}
            assert len(pids) == 2 or len(families["process_open_fds"].samples) == 2


async def test_a_worker_that_does_not_answer_is_missing_from_the_scrape_not_failing_it(
    start_workers: Start, upstream: MakeUpstream
) -> None:
    server = await upstream(upstream_app())
    assert server.port is not None
    process, port, _ = await asyncio.to_thread(start_workers, config_text(server.port))
    stuck = sorted(listening_pids(process.pid, port))[0]
    os.kill(stuck, signal.SIGSTOP)  # alive but answering nothing
    try:
        connector = aiohttp.TCPConnector(force_close=True)
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            text = None
            for _ in range(20):  # a connection the kernel queues for the stopped one waits
                try:
                    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                        assert response.status == 200
                        text = await response.text()
                        break
                except TimeoutError:
                    continue
        assert text is not None, "the running worker never got the scrape"
        families = {f.name: f for f in text_string_to_metric_families(text)}
        states = {s.labels["state"]: s.value for s in families["gateway_metrics_workers"].samples}
        assert states == {"answered": 1, "missing": 1}
        assert len({s.labels["worker"] for s in families["gateway_build_info"].samples}) == 1
    finally:
        os.kill(stuck, signal.SIGCONT)


async def test_sigterm_drains_every_worker_and_the_parent_exits_0(
    start_workers: Start, upstream: MakeUpstream
) -> None:
    arrived = asyncio.Event()
    server = await upstream(upstream_app(arrived))
    assert server.port is not None
    process, port, log = await asyncio.to_thread(start_workers, config_text(server.port))
    workers = listening_pids(process.pid, port)
    async with aiohttp.ClientSession() as session:
        in_flight = asyncio.ensure_future(session.get(f"http://127.0.0.1:{port}/up/slow"))
        await asyncio.wait_for(arrived.wait(), 10)  # the request is inside a worker now
        process.send_signal(signal.SIGTERM)
        response = await in_flight
        assert response.status == 200
        assert await response.json() == {"done": True}
    assert await asyncio.to_thread(process.wait, 30) == 0
    assert all(gone(pid) for pid in workers)
    entries = log_messages(log)
    messages = [entry["msg"] for entry in entries]
    assert "stopping workers" in messages
    assert messages.count("stopped") == 2  # each worker drained and said so
    # Every line names its process; a worker's also its number.
    stopped = [e for e in entries if e["msg"] == "stopped"]
    assert sorted(e["worker"] for e in stopped) == [1, 2]  # type: ignore[type-var]
    assert {e["pid"] for e in stopped} == set(workers)
    assert all(
        e["pid"] == process.pid and "worker" not in e
        for e in entries
        if e["msg"] == "workers stopped"
    )
    assert messages[-1] == "workers stopped"


def test_a_worker_that_dies_is_logged_and_replaced(start_workers: Start) -> None:
    process, port, log = start_workers(config_text(free_port()))
    first = listening_pids(process.pid, port)
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        now = listening_pids(process.pid, port)
        if len(now) == 2 and victim not in now:
            break
        assert time.monotonic() < deadline, "no replacement worker within 30s"
        time.sleep(0.1)
    assert first - now == {victim}  # only the killed worker was replaced
    assert len(now - first) == 1
    died = [e for e in log_messages(log) if e["msg"] == "worker died; restarted"]
    assert len(died) == 1
    assert died[0]["worker_pid"] == victim
    assert died[0]["cause"] == "signal SIGKILL"
    assert died[0]["level"] == "error"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert all(gone(pid) for pid in now)


def test_workers_stop_when_the_parent_is_killed(start_workers: Start) -> None:
    process, port, _ = start_workers(config_text(free_port()))
    workers = listening_pids(process.pid, port)
    process.kill()  # no chance to forward anything
    process.wait()
    deadline = time.monotonic() + 30
    while not all(gone(pid) for pid in workers):
        assert time.monotonic() < deadline, "orphaned workers still running after 30s"
        time.sleep(0.1)
