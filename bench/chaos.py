"""`make chaos`: mixed load through two gateways while Redis, an upstream and the database fail.

A bounded run (60-120 s, `--duration`) on this machine only (loopback):

- two `gateway serve` instances sharing PostgreSQL (a database of the run's
  own, reached through a TCP proxy that can refuse, reset or freeze) and a
  Redis of the run's own (append-only file on, so a restart can bring its old
  data back, or start empty when the file is removed);
- the DEMO model as the upstream of a plain route and of a model route;
- a load of valid calls, invalid tokens, model calls (JSON and streamed),
  profile reads and sign-ins, each with an `X-Request-Id` of its own;
- on a schedule: Redis killed and brought back with its stale data, state
  changed on one instance meanwhile (a role, a deactivation, a logout); the
  upstream killed and restarted; the database proxy frozen, refusing and
  resetting; Redis killed again and brought back empty, with another change.

Then the invariants, each printed PASS or FAIL (exit 1 on any FAIL):

1. every answer is a 2xx/3xx/4xx, or a 502/503/504 `application/problem+json`;
   no 500 (a request cut mid-stream has no answer: counted, not judged);
2. every answered request has exactly one audit row, none has two;
3. the state changes made during the Redis outages hold on both instances,
   5 s after Redis returned, and again after both instances restart;
4. each gateway's RSS and open files return to their level after warm-up.

Needs PostgreSQL on GATEWAY_TEST_POSTGRES_URL (default: 127.0.0.1:5432, database
`test`, as on the CI machine) and redis-server on PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.processes import Processes, free_port  # noqa: E402
from tests.redisproc import RedisServer  # noqa: E402
from tests.tcpproxy import ProxyProcess  # noqa: E402

PASSWORD = "chaos password of the run 0123"
DEFAULT_POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
CONCURRENCY = 12  # client workers, split over both instances
RSS_SLACK = 40 * 1024 * 1024  # bytes an instance may keep over its warm-up RSS
FD_SLACK = 16  # open files an instance may keep over its warm-up count


def config_text(port_model: int) -> str:
    return f"""
server:
  listen: 127.0.0.1:8080
  max_body: 1MiB
  shutdown_grace: 10s
database:
  timeout: 2s
auth:
  issuer: gateway
  access_ttl: 15m
  password_min_length: 12
  login_failures: 1000/1m
  password_hashing: {{time_cost: 1, memory_cost: 64KiB, parallelism: 1}}
policies: policies/
upstreams:
  model:
    targets: [http://127.0.0.1:{port_model}]
    timeout: 10s
    connect_timeout: 1s
models:
  demo:
    url: http://127.0.0.1:{port_model}
    roles: [user]
    usage: openai
    timeout: 10s
    rate_limit: 100000/min
routes:
  - {{path: /auth/login, methods: [POST], handler: auth.login, auth: none}}
  - {{path: /auth/logout, methods: [POST], handler: auth.logout}}
  - {{path: /users/me/**, handler: users}}
  - {{path: /admin/**, handler: admin, roles: [admin]}}
  - {{path: /api/**, upstream: model, strip_prefix: /api, roles: [user]}}
  - {{path: /reports/**, upstream: model, strip_prefix: /reports, roles: [analyst]}}
"""


# --- the processes ---------------------------------------------------------------


class Redis(RedisServer):
    """The run's redis-server, with its append-only file on: a restart brings its data back,
    unless the file is removed first."""

    def restart(self, keep_data: bool) -> None:
        if not keep_data:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.start()


@dataclass
class Gateway:
    name: str
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def sample(self) -> tuple[int, int]:
        """(RSS bytes, open files) of the instance now."""
        assert self.process is not None
        proc = psutil.Process(self.process.pid)
        return proc.memory_info().rss, proc.num_fds()


@dataclass
class Stack:
    folder: Path
    processes: Processes
    database_url: str  # direct (migrations, checks)
    proxied_url: str  # through the TCP proxy (the gateways)
    db_proxy: ProxyProcess
    redis: Redis
    model_port: int
    config: Path
    env: dict[str, str]
    gateways: list[Gateway] = field(default_factory=list)
    model: subprocess.Popen[bytes] | None = None

    def start_model(self) -> None:
        argv = [sys.executable, "-m", "gateway.demo.model", "--port", str(self.model_port)]
        self.model = self.processes.start(
            argv, "0,1", self.folder / "model.log", env=self.env, port=self.model_port
        )

    def kill_model(self) -> None:
        if self.model is not None and self.model.poll() is None:
            self.model.kill()
            self.model.wait(timeout=10)

    def start_gateway(self, gateway: Gateway) -> None:
        argv = [
            *(sys.executable, "-m", "gateway", "serve", "--config", str(self.config)),
            *("--host", "127.0.0.1", "--port", str(gateway.port)),
        ]
        log = self.folder / f"{gateway.name}.log"
        gateway.process = self.processes.start(argv, "0,1", log, env=self.env, port=gateway.port)

    def stop_gateway(self, gateway: Gateway) -> None:
        if gateway.process is not None:
            self.processes.stop(gateway.process)  # SIGTERM: drain, flush the audit, exit


def cli(stack: Stack, *args: str, stdin: str | None = None) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *args, "--config", str(stack.config)],
        input=stdin,
        capture_output=True,
        text=True,
        env={**stack.env, "GATEWAY_DATABASE_URL": stack.database_url},
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"gateway {' '.join(args)} failed: {done.stderr[-2000:]}")


async def admin_sql(url: str, sql: str) -> None:
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


async def fetch(url: str, sql: str) -> list[asyncpg.Record]:
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn)
    try:
        return list(await connection.fetch(sql))
    finally:
        await connection.close()


# --- the load --------------------------------------------------------------------


@dataclass
class Outcome:
    request_id: str
    kind: str
    instance: str
    status: int | None  # None: no answer (connection cut, timed out)
    content_type: str = ""
    code: str | None = None  # the problem's code


@dataclass
class Load:
    tokens: dict[str, str]  # username -> access token (the load's own users)
    outcomes: list[Outcome] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    ids: itertools.count[int] = field(default_factory=itertools.count)

    def next_id(self) -> str:
        return f"chaos-{next(self.ids)}-{uuid.uuid4().hex[:6]}"


KINDS = (
    ("proxied", 40),
    ("bad_token", 15),
    ("model_json", 15),
    ("model_stream", 10),
    ("profile", 10),
    ("login", 10),
)


async def one_request(
    session: aiohttp.ClientSession, gateway: Gateway, load: Load, kind: str, rng: random.Random
) -> Outcome:
    request_id = load.next_id()
    user = rng.choice(sorted(load.tokens))
    headers = {"X-Request-Id": request_id, "Authorization": f"Bearer {load.tokens[user]}"}
    method, path, body = "GET", "/api/health", None
    if kind == "bad_token":
        headers["Authorization"] = "Bearer not.a.token"
    elif kind in ("model_json", "model_stream"):
        method, path = "POST", "/models/demo/v1/chat/completions"
        body = {
            "model": "demo",
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 8,
            "stream": kind == "model_stream",
        }
    elif kind == "profile":
        path = "/users/me"
    elif kind == "login":
        method, path = "POST", "/auth/login"
        del headers["Authorization"]
        body = {"username": user, "password": PASSWORD}
    outcome = Outcome(request_id, kind, gateway.name, None)
    try:
        async with session.request(method, gateway.url + path, json=body, headers=headers) as resp:
            data = await resp.read()  # the whole body: only then is the request answered
            outcome.status = resp.status
            outcome.content_type = resp.headers.get("Content-Type", "")
            if outcome.content_type.startswith("application/problem+json"):
                with contextlib.suppress(ValueError):
                    outcome.code = json.loads(data).get("code")
    except (aiohttp.ClientError, TimeoutError):
        pass  # no (complete) answer
    return outcome


async def worker(load: Load, gateway: Gateway, seed: int) -> None:
    rng = random.Random(seed)
    kinds = [k for k, weight in KINDS for _ in range(weight)]
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while not load.stop.is_set():
            load.outcomes.append(await one_request(session, gateway, load, rng.choice(kinds), rng))


# --- state changes made while Redis is down ----------------------------------------


@dataclass
class Change:
    """A change made on one instance during an outage, and how every instance must judge it."""

    what: str
    token: str  # the victim's access token, issued before the change
    path: str  # a request that shows the change
    expect: int  # its status once the change holds
    made: bool = False


async def sign_in(gateway: Gateway, username: str) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gateway.url + "/auth/login", json={"username": username, "password": PASSWORD}
        ) as resp,
    ):
        if resp.status != 200:
            raise RuntimeError(f"sign-in of {username} failed: {resp.status} {await resp.text()}")
        return str((await resp.json())["access_token"])


async def user_id(gateway: Gateway, admin: str, username: str) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            gateway.url + "/admin/users?limit=500", headers={"Authorization": f"Bearer {admin}"}
        ) as resp,
    ):
        items = (await resp.json())["items"]
    return str(next(u["id"] for u in items if u["username"] == username))


async def call(gateway: Gateway, method: str, path: str, token: str, body: Any = None) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.request(method, gateway.url + path, json=body, headers=headers) as resp,
        ):
            await resp.read()
            return resp.status
    except (aiohttp.ClientError, TimeoutError):
        return 0


async def prepare_changes(
    gateway: Gateway, admin: str, round_: int
) -> list[tuple[Change, Callable[[], Any]]]:
    """Victims signed in now; the changes, to be made later on `gateway`."""
    role = f"role-victim-{round_}"
    inactive = f"deact-victim-{round_}"
    leaver = f"logout-victim-{round_}"
    role_token, inactive_token, leaver_token = [
        await sign_in(gateway, name) for name in (role, inactive, leaver)
    ]
    role_id = await user_id(gateway, admin, role)
    inactive_id = await user_id(gateway, admin, inactive)
    return [
        (
            Change(f"{role}: analyst -> user", role_token, "/reports/health", 403),
            lambda: call(gateway, "PATCH", f"/admin/users/{role_id}", admin, {"role": "user"}),
        ),
        (
            Change(f"{inactive}: deactivated", inactive_token, "/api/health", 401),
            lambda: call(gateway, "PATCH", f"/admin/users/{inactive_id}", admin, {"active": False}),
        ),
        (
            Change(f"{leaver}: logged out", leaver_token, "/api/health", 401),
            lambda: call(gateway, "POST", "/auth/logout", leaver_token),
        ),
    ]


async def check_changes(gateways: list[Gateway], changes: list[Change]) -> list[str]:
    """Problems: a change some instance does not enforce."""
    problems = []
    for change in changes:
        for gateway in gateways:
            status = await call(gateway, "GET", change.path, change.token)
            if status != change.expect:
                problems.append(
                    f"{change.what}: {gateway.name} answered {status}, not {change.expect}"
                )
    return problems


# --- the run -----------------------------------------------------------------------


def log_entries(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a gateway's log (anything else skipped)."""
    entries = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                entries.append(entry)
    return entries


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    failed: bool = False

    def check(self, ok: bool, name: str, detail: str) -> None:
        self.failed |= not ok
        self.lines.append(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")

    def note(self, text: str) -> None:
        self.lines.append(f"      {text}")


async def run(duration: float, postgres: str, keep: bool) -> int:
    folder = Path(tempfile.mkdtemp(prefix="gateway-chaos-"))
    processes = Processes()
    name = f"gw_chaos_{uuid.uuid4().hex[:8]}"
    database_url = make_url(postgres).set(database=name).render_as_string(hide_password=False)
    report = Report()
    started = time.monotonic()
    log = print
    try:
        await admin_sql(postgres, f'CREATE DATABASE "{name}"')
        url = make_url(postgres)
        db_proxy = ProxyProcess(url.host or "127.0.0.1", url.port or 5432)
        proxied = url.set(database=name, port=db_proxy.port).render_as_string(hide_password=False)
        redis = Redis(folder / "redis", appendonly=True)
        shutil.copytree(REPO / "policies", folder / "policies")
        model_port = free_port()
        config = folder / "routes.yaml"
        config.write_text(config_text(model_port))
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "GATEWAY_JWT_SECRET": "chaos-secret-of-the-run-0123456789abcdef",
            "GATEWAY_DATABASE_URL": proxied,
            "GATEWAY_REDIS_PREFIX": "chaos:",
        }
        stack = Stack(
            folder, processes, database_url, proxied, db_proxy, redis, model_port, config, env
        )
        redis.start()
        env["GATEWAY_REDIS_URL"] = f"redis://127.0.0.1:{redis.port}/0"
        stack.start_model()
        cli(stack, "db", "upgrade")
        users = [f"load-{i}" for i in range(4)]
        victims = [f"{kind}-victim-{r}" for r in (1, 2) for kind in ("role", "deact", "logout")]
        cli(stack, "users", "create", "chaos-admin", "--role", "admin", stdin=PASSWORD + "\n")
        for username in users:
            cli(stack, "users", "create", username, "--role", "user", stdin=PASSWORD + "\n")
        for username in victims:
            role = "analyst" if username.startswith("role") else "user"
            cli(stack, "users", "create", username, "--role", role, stdin=PASSWORD + "\n")
        stack.gateways = [Gateway("gateway-a", free_port()), Gateway("gateway-b", free_port())]
        for gateway in stack.gateways:
            stack.start_gateway(gateway)
        a, b = stack.gateways
        admin = await sign_in(a, "chaos-admin")
        load = Load({u: await sign_in(a, u) for u in users})
        round1 = await prepare_changes(a, admin, 1)
        round2 = await prepare_changes(b, admin, 2)

        tasks = [
            asyncio.create_task(worker(load, stack.gateways[i % 2], seed=i))
            for i in range(CONCURRENCY)
        ]
        t0 = time.monotonic()

        async def at(fraction: float, what: str) -> None:
            await asyncio.sleep(max(0.0, t0 + fraction * duration - time.monotonic()))
            log(f"[{time.monotonic() - t0:6.1f}s] {what}")

        await at(0.08, "warm-up done: sampling RSS and open files")
        baseline = {g.name: g.sample() for g in stack.gateways}

        async def redis_outage(
            start: float, on: str, changes: list[tuple[Change, Callable[[], Any]]], keep: bool
        ) -> None:
            """Redis killed; `changes` made on one instance; Redis back with or without its data."""
            await at(start, "redis: SIGKILL")
            redis.kill()
            await at(start + 0.04, f"changes on {on} while Redis is down")
            for change, make in changes:
                change.made = await make() in (200, 204)
            back = "with its append-only file (stale data)" if keep else "empty"
            await at(start + 0.12, f"redis: restarted {back}")
            redis.restart(keep_data=keep)
            await at(start + 0.12 + 5.5 / duration, "checking the changes on both instances")
            problems = await check_changes(stack.gateways, [c for c, _ in changes])
            report.check(
                all(c.made for c, _ in changes) and not problems,
                f"state after Redis came back {'with stale data' if keep else 'empty'}",
                "; ".join(problems) or "role, deactivation and logout held on both within 5.5 s",
            )

        await redis_outage(0.10, "gateway-a", round1, keep=True)

        await at(0.30, "upstream: SIGKILL")
        stack.kill_model()
        await at(0.38, "upstream: restarted")
        stack.start_model()

        await at(0.44, "database proxy: frozen (SIGSTOP)")
        db_proxy.hang()
        await at(0.52, "database proxy: thawed")
        db_proxy.resume()
        await at(0.56, "database proxy: refusing")
        db_proxy.switch("refuse")
        await at(0.61, "database proxy: resetting")
        db_proxy.switch("reset")
        await at(0.66, "database proxy: forwarding")
        db_proxy.switch("forward")

        await redis_outage(0.72, "gateway-b", round2, keep=False)

        await at(1.0, "load stopped")
        load.stop.set()
        await asyncio.gather(*tasks)
        await asyncio.sleep(3)  # keep-alive connections of the load closed, buffers freed
        after = {g.name: g.sample() for g in stack.gateways}

        # Invariant 1: answers.
        answered = [o for o in load.outcomes if o.status is not None]
        unanswered = len(load.outcomes) - len(answered)
        bad = [
            o
            for o in answered
            if o.status is not None
            and (
                o.status >= 500
                and (o.status not in (502, 503, 504) or "problem+json" not in o.content_type)
            )
        ]
        statuses = Counter(o.status for o in answered)
        codes = Counter(o.code for o in answered if o.code)
        report.check(
            not bad,
            "every answer is 2xx-4xx or a 502/503/504 problem",
            f"{len(answered)} answered, {unanswered} cut or timed out; "
            f"statuses {dict(sorted(statuses.items()))}"
            + (
                f"; BAD: {[(o.request_id, o.status, o.content_type) for o in bad[:5]]}"
                if bad
                else ""
            ),
        )
        report.note(f"problem codes: {dict(codes.most_common())}")
        report.note(f"requests by kind: {dict(Counter(o.kind for o in load.outcomes))}")

        # Invariant 4: resources back to their level.
        for gateway in stack.gateways:
            (rss0, fd0), (rss1, fd1) = baseline[gateway.name], after[gateway.name]
            report.check(
                rss1 <= rss0 + RSS_SLACK and fd1 <= fd0 + FD_SLACK,
                f"{gateway.name} RSS and open files back to their level",
                f"RSS {rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MiB, open files {fd0} -> {fd1}",
            )

        # No crash: nothing unhandled in either instance's log.
        crashes = [
            f"{g.name}: {line[:160]}"
            for g in stack.gateways
            for line in (folder / f"{g.name}.log").read_text(errors="replace").splitlines()
            if "Traceback" in line or "unhandled error" in line
        ]
        report.check(
            not crashes, "no unhandled error in the logs", "; ".join(crashes[:3]) or "none"
        )
        levels = Counter(
            (entry.get("level"), entry.get("msg"))
            for g in stack.gateways
            for entry in log_entries(folder / f"{g.name}.log")
            if entry.get("level") in ("warning", "error")
        )
        report.note(f"warnings and errors logged: {dict(levels.most_common(8))}")

        # Invariant 3, after a restart of both instances.
        for gateway in stack.gateways:
            stack.stop_gateway(gateway)
        for gateway in stack.gateways:
            stack.start_gateway(gateway)
        problems = await check_changes(stack.gateways, [c for c, _ in round1 + round2])
        report.check(
            not problems,
            "state changes hold after both instances restart",
            "; ".join(problems) or "all six changes enforced on both",
        )
        # Invariant 2: the audit. Stopped cleanly, every row is in the database.
        for gateway in stack.gateways:
            stack.stop_gateway(gateway)
        rows = await fetch(
            database_url,
            "SELECT request_id, count(*) AS n FROM audit_logs "
            "WHERE request_id LIKE 'chaos-%' GROUP BY request_id",
        )
        counts = {r["request_id"]: r["n"] for r in rows}
        missing = [o.request_id for o in answered if o.request_id not in counts]
        doubled = [rid for rid, n in counts.items() if n > 1]
        report.check(
            not missing and not doubled,
            "every answered request has exactly one audit row",
            f"{len(answered)} answered, {len(counts)} with rows, {len(missing)} missing, "
            f"{len(doubled)} doubled" + (f"; missing e.g. {missing[:3]}" if missing else ""),
        )
    finally:
        processes.stop_all()
        with contextlib.suppress(Exception):
            redis.kill()  # type: ignore[possibly-undefined]
        with contextlib.suppress(Exception):
            db_proxy.close()  # type: ignore[possibly-undefined]
        with contextlib.suppress(Exception):
            await admin_sql(postgres, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            print(f"logs and files kept in {folder}")
    print()
    print(f"chaos run: {duration:.0f} s of load, {time.monotonic() - started:.0f} s in all")
    for line in report.lines:
        print(line)
    return 1 if report.failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=90.0, help="seconds of load (60-120)")
    parser.add_argument("--keep", action="store_true", help="keep the run's folder and logs")
    args = parser.parse_args()
    if not 30 <= args.duration <= 300:
        parser.error("--duration must be between 30 and 300 seconds")
    postgres = os.environ.get("GATEWAY_TEST_POSTGRES_URL", DEFAULT_POSTGRES)
    return asyncio.run(run(args.duration, postgres, args.keep))


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
