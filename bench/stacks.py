"""What answers wrk in each row of bench/chain.py: how each server is configured and started.

The upstream nginx runs on LOAD_CORE; every proxy under test (nginx, the bare aiohttp
proxy, Flask under gunicorn, LiteLLM's proxy, `gateway serve`) on PROXY_CORE, each in its
own folder; `gateway serve --workers 2` on both cores.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from model_path import (
    CHAT_PATH,
    COMPLETION,
    LITELLM_DROPPED,
    LITELLM_ENVIRONMENT,
    model_entry,
    write_litellm_config,
)
from processes import BOTH_CORES, PROXY_CORE, BenchError, Processes, free_port, tail

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
JWT_SECRET = "bench-only-jwt-secret-never-use-it-00000"  # 40 characters, a test value
PASSWORD = "bench-password-0123"
REDIS_URL = "redis://127.0.0.1:6379/0"
DATABASE = "gateway.db"  # the gateway's SQLite file, beside its routes.yaml
LITELLM = Path(sys.executable).with_name("litellm")  # litellm[proxy]'s command, in this venv

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    default_type application/json;
    keepalive_requests 10000000;  # never recycle wrk's or the proxies' connections
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
{server}
}}
"""

# `{"ok":true}` for any request; the model rows' fake OpenAI completion for their POST.
UPSTREAM_SERVER = """\
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 '{{"ok":true}}'; }}
        location = {chat_path} {{ return 200 '{completion}'; }}
    }}"""

# nginx as a reverse proxy, as one would set it up: keep-alive connections to the upstream.
PROXY_SERVER = """\
    upstream bench_upstream {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""

# Every gateway row runs this file; only the options of the /bench/** route change, and the
# model row adds its models: section.
GATEWAY_CONF = """\
server:
  listen: 127.0.0.1:{port}
  shutdown_grace: 2s
  access_log: ${{BENCH_ACCESS_LOG:-stdout}}  # bench/observability.py turns it off
auth:
  issuer: gateway
  access_ttl: 15m
  password_hashing: {{time_cost: 1, memory_cost: 64KiB, parallelism: 1}}
policies: policies/
upstreams:
  bench: {{targets: ["http://127.0.0.1:{upstream_port}"]}}
routes:
  - {{path: /auth/login, methods: [POST], handler: auth.login, auth: none}}
  - {{path: /bench/**, upstream: bench{options}}}
{models}"""


@dataclass(frozen=True, slots=True)
class Server:
    """A started server: its process (the master, for nginx and gunicorn), port and log."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path


def environment(redis_prefix: str | None = None) -> dict[str, str]:
    """The bench's environment without any GATEWAY_* of the caller's, plus the bench's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["GATEWAY_JWT_SECRET"] = JWT_SECRET
    env["PYTHONUNBUFFERED"] = "1"
    if redis_prefix is not None:
        env["GATEWAY_REDIS_URL"] = REDIS_URL
        env["GATEWAY_REDIS_PREFIX"] = redis_prefix
    return env


def send(
    url: str, token: str | None = None, data: dict[str, Any] | None = None
) -> tuple[int, bytes]:
    """One request: its status and body (a refused connection is a BenchError)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = None
    if data is not None:
        body = json.dumps(data).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=body, headers=headers)  # noqa: S310 (loopback)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, bytes(exc.read())
    except OSError as exc:  # refused, reset, timed out (URLError is an OSError)
        raise BenchError(f"{url}: {exc}") from None


def http(url: str, token: str | None = None, data: dict[str, Any] | None = None) -> bytes:
    """One request that must get a 200; its body."""
    status, body = send(url, token, data)
    if status != 200:
        raise BenchError(f"{url}: {status} {body[:500]!r}")
    return body


# --- nginx, the bare proxy, Flask -------------------------------------------------


def start_nginx(
    procs: Processes, folder: Path, core: str, upstream_port: int | None = None
) -> Server:
    """nginx, 1 worker, everything in `folder`: the upstream answering `{"ok":true}`, or,
    given `upstream_port`, a reverse proxy to it with keep-alive connections."""
    folder.mkdir()
    port = free_port()
    if upstream_port is None:
        server = UPSTREAM_SERVER.format(port=port, chat_path=CHAT_PATH, completion=COMPLETION)
    else:
        server = PROXY_SERVER.format(port=port, upstream_port=upstream_port)
    conf = folder / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=folder, server=server))
    log = folder / "nginx-error.log"
    nginx = shutil.which("nginx", path=tool_path()) or "nginx"
    argv = [nginx, "-p", str(folder), "-e", str(log), "-c", str(conf)]
    return Server(procs.start(argv, core, log, environment(), port), port, log)


def tool_path() -> str:
    """PATH with the sbin folders, where Debian puts nginx."""
    return os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])


def start_bare(procs: Processes, work: Path, upstream: str) -> Server:
    """bench/bare_proxy.py: aiohttp and uvloop, nothing else."""
    port, log = free_port(), work / "bare_proxy.log"
    argv = [sys.executable, str(BENCH / "bare_proxy.py"), upstream, str(port)]
    return Server(procs.start(argv, PROXY_CORE, log, environment(), port), port, log)


def start_flask(procs: Processes, work: Path, upstream: str, worker: str) -> Server:
    """bench/flask_stack.py under gunicorn, 1 worker of class `worker` (sync or gthread)."""
    port, log = free_port(), work / f"gunicorn-{worker}.log"
    argv = [sys.executable, "-m", "gunicorn", "--workers", "1", "--worker-class", worker]
    if worker == "gthread":
        argv += ["--threads", "8"]
    argv += ["--bind", f"127.0.0.1:{port}", "--log-level", "warning", "flask_stack:app"]
    env = environment()
    env["BENCH_UPSTREAM"] = upstream
    return Server(procs.start(argv, PROXY_CORE, log, env, port, cwd=BENCH), port, log)


# --- the gateway ------------------------------------------------------------------


def gateway_folder(
    work: Path, name: str, upstream_port: int, options: str, models: str = ""
) -> tuple[Path, int]:
    """A folder with a routes.yaml (the /bench/** route with `options`, then the `models:`
    section given, if any) and policies/."""
    folder = work / name
    shutil.copytree(ROOT / "policies", folder / "policies")
    port = free_port()
    options = f", {options}" if options else ""
    text = GATEWAY_CONF.format(
        port=port, upstream_port=upstream_port, options=options, models=models
    )
    (folder / "routes.yaml").write_text(text)
    return folder, port


def serve(
    procs: Processes, folder: Path, port: int, env: dict[str, str], workers: int = 1
) -> Server:
    """`gateway serve` on PROXY_CORE with the folder's routes.yaml; with `workers` > 1,
    `--workers N` on both cores (the parent and the workers it starts inherit the pinning)."""
    log = folder / "gateway.log"
    argv = [sys.executable, "-m", "gateway", "serve", "--config", str(folder / "routes.yaml")]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    core = PROXY_CORE
    if workers > 1:
        argv += ["--workers", str(workers)]
        core = BOTH_CORES
    return Server(procs.start(argv, core, log, env, port), port, log)


@dataclass(frozen=True, slots=True)
class Identity:
    """The one bearer token every row's requests carry, and the database that knows it."""

    token: str
    database: Path  # migrated, with the user `bench` (role user); copied into each gateway


def create_bench_user(folder: Path, env: dict[str, str], cwd: Path | None = None) -> None:
    """`gateway users create bench --role user` with the folder's routes.yaml (`cwd`: the
    checkout whose gateway runs, when it is not this one)."""
    argv = [sys.executable, "-m", "gateway", "users", "create", "bench", "--role", "user"]
    created = subprocess.run(
        [*argv, "--config", str(folder / "routes.yaml")],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
        check=False,
    )
    if created.returncode != 0:
        raise BenchError(f"gateway users create: {created.stdout}{created.stderr}")


def make_identity(procs: Processes, work: Path, upstream_port: int) -> Identity:
    """Create the user `bench` and log in once, through a gateway of its own.

    Each gateway row then starts from a copy of this database, so that the one token
    is valid in all of them (same secret, issuer and user id, never revoked).
    """
    folder, port = gateway_folder(work, "identity", upstream_port, "auth: none")
    env = environment()
    create_bench_user(folder, env)
    gateway = serve(procs, folder, port, env)
    try:
        login = {"username": "bench", "password": PASSWORD}
        reply = json.loads(http(f"http://127.0.0.1:{port}/auth/login", data=login))
    except (BenchError, ValueError) as exc:
        raise BenchError(f"log in: {exc}\n--- gateway.log:\n{tail(gateway.log)}") from None
    finally:
        procs.stop(gateway.process)  # it closes the database before the copies are made
    return Identity(str(reply["access_token"]), folder / DATABASE)


def start_gateway(
    procs: Processes,
    work: Path,
    name: str,
    upstream_port: int,
    options: str,
    identity: Identity,
    redis_prefix: str | None,
    *,
    model_options: str | None = None,
    workers: int = 1,
) -> Server:
    """`gateway serve` with its own folder and a copy of the identity's database; given
    `model_options`, with the model rows' models: entry, those being its route options."""
    models = "" if model_options is None else model_entry(upstream_port, model_options)
    folder, port = gateway_folder(work, name, upstream_port, options, models)
    for part in identity.database.parent.glob(DATABASE + "*"):  # with -wal/-shm, if any
        shutil.copy2(part, folder / part.name)
    return serve(procs, folder, port, environment(redis_prefix), workers)


# --- LiteLLM ----------------------------------------------------------------------

LITELLM_START_TIMEOUT = 60  # seconds: LiteLLM imports for about 8 s on an idle core


def litellm_missing() -> str | None:
    """None when LiteLLM's proxy can be started here, else why not."""
    if importlib.util.find_spec("litellm") is None or not LITELLM.exists():
        return "litellm[proxy] not installed: pip install -e '.[bench]' (make bench does)"
    return None


def start_litellm(procs: Processes, work: Path, upstream_port: int) -> Server:
    """LiteLLM's proxy, 1 uvicorn worker, with the master key and no database, in front of
    the upstream's fake completion as an `openai/` model (bench/model_path.py)."""
    config, logging = write_litellm_config(work / "litellm", upstream_port)
    port, log = free_port(), config.parent / "litellm.log"
    argv = [str(LITELLM), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--num_workers", "1", "--log_config", str(logging)]
    env = {k: v for k, v in environment().items() if not k.startswith("LITELLM_")}
    for name in LITELLM_DROPPED:
        env.pop(name, None)
    env.update(LITELLM_ENVIRONMENT)
    process = procs.start(argv, PROXY_CORE, log, env, port, timeout=LITELLM_START_TIMEOUT)
    return Server(process, port, log)


def log_problems(log: Path) -> Counter[str]:
    """Warnings and errors the gateway logged: "level: message" → how many times."""
    found: Counter[str] = Counter()
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            found[f"stderr: {line[:120]}"] += 1  # not a log line: a traceback or a crash
            continue
        if entry.get("level") in ("warning", "error", "critical"):
            found[f"{entry['level']}: {entry.get('msg')}"] += 1
    return found


def log_lines(log: Path, offset: int = 0) -> Counter[str]:
    """Anything nginx (at warn), gunicorn (at warning) or the bare proxy wrote to its log;
    for LiteLLM, anything past `offset`, the log's size once it had started."""
    found: Counter[str] = Counter()
    with log.open("rb") as file:
        file.seek(offset)
        text = file.read().decode(errors="replace")
    for line in text.splitlines():
        if line.strip():
            found[line[:160]] += 1
    return found


def audit_rows(database: Path, prefix: str = "/bench/") -> int | None:
    """Audit rows of requests under `prefix` in a stopped gateway's SQLite database (None: no
    table)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            query = "SELECT count(*) FROM audit_logs WHERE path LIKE ?"
            return int(db.execute(query, (prefix + "%",)).fetchone()[0])
    except sqlite3.Error:
        return None


# --- Redis ------------------------------------------------------------------------


def redis_reachable() -> str | None:
    """None when Redis answers PING at REDIS_URL, else why not."""
    from redis import Redis
    from redis.exceptions import RedisError

    try:
        client = Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
        try:
            client.ping()
        finally:
            client.close()
    except (RedisError, OSError) as exc:
        return f"Redis at {REDIS_URL} not reachable ({exc})"
    return None


def redis_server() -> dict[str, Any]:
    """Redis's INFO server section; empty when it does not answer."""
    from redis import Redis
    from redis.exceptions import RedisError

    with contextlib.suppress(RedisError, OSError):
        client = Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
        try:
            return dict(client.info("server"))
        finally:
            client.close()
    return {}


def redis_version() -> str | None:
    version = redis_server().get("redis_version")
    return str(version) if version is not None else None


def redis_pid() -> int | None:
    """The Redis server's pid, when it runs on this machine (it does at 127.0.0.1)."""
    pid = redis_server().get("process_id")
    return int(pid) if pid is not None and psutil.pid_exists(int(pid)) else None


def forget_redis_keys(prefix: str) -> None:
    """Remove what the Redis row wrote under its own prefix."""
    from redis import Redis
    from redis.exceptions import RedisError

    with contextlib.suppress(RedisError, OSError):
        client = Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=5)
        try:
            keys = list(client.scan_iter(match=prefix + "*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()
