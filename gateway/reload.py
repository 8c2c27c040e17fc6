"""Hot reload: routes.yaml and policies/ read again on a change or on SIGHUP, swapped in whole.

Parse → validate → build → swap (STYLE lesson 6): `load_config` parses and
validates everything, `Runtime.build` builds every config-derived object
(keys, verifier, route table, policy sets, pools), and only when both worked
does `RuntimeHolder.swap` replace the one reference. On any failure the old
config keeps serving; the problems are logged at ERROR and kept for
/admin/config until a reload succeeds. Each attempt is one audit row.

Requests in flight keep the Runtime they pinned; the holder closes a retired
Runtime's pools once its last request has ended. Pools of unchanged upstreams
are taken over by the new Runtime, and so are the cached JWK Sets of outside issuers
whose jwks_url is unchanged (their keys and refetch clock carry over; a new URL is
fetched before the swap). What `Services` holds (database, Redis,
identity, rate-limit buckets, the audit writer) is not touched; the settings
it was built from need a restart, and a reload that changes them says so.

The watcher polls once a second: mtime, size and SHA-256 of routes.yaml and
of every policy file, so an edit, an atomic rename, a touch, or a policy file
added or removed all count. SIGHUP (`request`) reloads at once, changed or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from aiohttp import web

from gateway.audit.rows import AuditRow, audit_row
from gateway.config import Config, ConfigError, load_config
from gateway.config.policies import POLICY_SUFFIXES
from gateway.config.yamlsource import ConfigProblem
from gateway.runtime import ReloadFailure, Runtime, RuntimeHolder
from gateway.security.keys import KeyConfigError

log = logging.getLogger("gateway.reload")

POLL_INTERVAL = 1.0  # seconds between looks at the files
METHOD = "RELOAD"  # the audit row's method; its path is the config file's
OK, INVALID = 200, 400  # audit status: reloaded / refused (the input was at fault)

# (file, mtime_ns, size, sha256) of routes.yaml, then each policy file by name
Fingerprint = tuple[tuple[str, int, int, str], ...]


def policy_files(directory: Path) -> list[Path]:
    """The files `load_policies` reads, in its order; none when the folder is missing."""
    try:
        entries = list(directory.iterdir())
    except OSError:
        return []
    return sorted(
        (
            p
            for p in entries
            if p.suffix in POLICY_SUFFIXES and not p.name.startswith(".") and p.is_file()
        ),
        key=lambda p: p.name,
    )


def fingerprint(config_path: Path, policies_dir: Path) -> Fingerprint:
    """What the watcher compares; blocking file reads (small files, once a second)."""
    entries = []
    for path in (config_path, *policy_files(policies_dir)):
        try:
            info = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            entries.append((str(path), -1, -1, ""))  # gone: a change too
            continue
        entries.append((str(path), info.st_mtime_ns, info.st_size, digest))
    return tuple(entries)


def _tls_file(name: str) -> Callable[[Config], object]:
    return lambda c: getattr(c.server.tls, name) if c.server.tls is not None else None


# What only a restart applies: each setting (as README "Hot reload" names it) and how to
# read it from a Config. The listener, its certificate files (gateway/tls/server.py
# watches the files named at start), the extra listeners, and what `Services` was
# built from; everything else a reload applies.
RESTART_ONLY: dict[str, Callable[[Config], object]] = {
    "server.listen": lambda c: (c.server.host, c.server.port),
    "server.tls.cert": _tls_file("cert"),
    "server.tls.key": _tls_file("key"),
    "server.tls.redirect_http": _tls_file("redirect_http"),
    "server.status_listen": lambda c: c.server.status_listen,
    "server.access_log": lambda c: c.server.access_log,
    "server.shutdown_grace": lambda c: c.server.shutdown_grace,
    "server.redis_failure": lambda c: c.server.redis_failure,
    "auth.login_failures": lambda c: c.auth.login_failures,
    "auth.password_min_length": lambda c: c.auth.password_min_length,
    "auth.password_hashing": lambda c: c.auth.hashing,
    "audit": lambda c: c.audit,
    "database": lambda c: c.database,
}


def needs_restart(old: Config, new: Config) -> list[str]:
    """Settings changed by `new` that only a restart applies (the listener, `Services`)."""
    return [name for name, read in RESTART_ONLY.items() if read(old) != read(new)]


def build_problem(config_path: Path, exc: Exception) -> ConfigProblem:
    """A failure to build a Runtime from a valid config, as FILE:LINE: message (the line
    of the `auth.keys` entry at fault; 0 when no one line is)."""
    line = exc.line if isinstance(exc, KeyConfigError) else 0
    return ConfigProblem(str(config_path), line, str(exc) or type(exc).__name__)


class Reloader:
    """Watches the config files of `holder.current` and swaps in a new Runtime."""

    def __init__(
        self,
        holder: RuntimeHolder,
        extra_handlers: Iterable[str] = (),
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self.holder = holder
        self.path = holder.current.config.path
        self._extra_handlers = frozenset(extra_handlers)
        self._interval = poll_interval
        # Taken now, beside the load that built `holder.current`.
        self._seen = fingerprint(self.path, holder.current.config.policies_dir)
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._submit: Callable[[AuditRow], None] | None = None
        self.counts = {"ok": 0, "failed": 0}  # reloads by result, for /metrics

    def start(self, submit: Callable[[AuditRow], None]) -> None:
        """Start watching; `submit` takes each reload's audit row."""
        self._submit = submit
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="config-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def request(self) -> None:
        """Reload now, whether the files changed or not (the SIGHUP handler)."""
        self._wake.set()

    async def _watch(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            forced = self._wake.is_set()
            self._wake.clear()
            try:
                await self._check(forced)
            except Exception:  # the watcher must outlive any one failure
                log.exception("config watcher failed; watching on")

    async def _check(self, forced: bool) -> None:
        policies_dir = self.holder.current.config.policies_dir
        seen = await asyncio.to_thread(fingerprint, self.path, policies_dir)
        if seen == self._seen and not forced:
            return
        # Taken before the load: a change made while loading is seen next time.
        self._seen = seen
        if await self.reload("sighup" if forced else "file_change"):
            moved = self.holder.current.config.policies_dir
            if moved != policies_dir:  # `policies:` now names another folder: watch it
                self._seen = await asyncio.to_thread(fingerprint, self.path, moved)

    async def reload(self, trigger: str) -> bool:
        """Load, validate and build the config afresh; swap it in only if all of that worked."""
        async with self._lock:
            started = time.monotonic()
            old = self.holder.current
            try:
                config = await asyncio.to_thread(load_config, self.path, self._extra_handlers)
                # builds the keys and verifier, the route table and the pools
                runtime = Runtime.build(
                    config, old.version + 1, reuse=old.pools, reuse_jwks=old.jwks_caches()
                )
                # a new issuer's keys, before its first token (one down is logged, not fatal)
                await runtime.load_issuer_keys()
            except ConfigError as exc:
                problems, unforeseen = [str(p) for p in exc.problems], None
            except Exception as exc:  # unusable keys (KeyConfigError), or anything unforeseen
                problems = [str(build_problem(self.path, exc))]
                unforeseen = None if isinstance(exc, KeyConfigError) else exc
            else:
                self.holder.swap(runtime)
                self.holder.last_error = None
                self._record(OK, "config_reloaded", started)
                self.counts["ok"] += 1
                log.info(
                    "config reloaded",
                    extra={
                        "trigger": trigger,
                        "version": runtime.version,
                        "file_hash": config.file_hash,
                        "policies_hash": config.policy.digest,
                        "routes": len(config.routes),
                        "upstreams": len(config.upstreams),
                        "pools_kept": sum(
                            1 for name, p in runtime.pools.items() if old.pools.get(name) is p
                        ),
                    },
                )
                restart = needs_restart(old.config, config)
                if restart:
                    log.warning(
                        "config reloaded, but these changes need a restart: %s",
                        ", ".join(restart),
                        extra={"settings": restart},
                    )
                return True
            self.holder.last_error = ReloadFailure(at=time.time(), problems=tuple(problems))
            self._record(INVALID, "config_invalid", started)
            self.counts["failed"] += 1
            log.error(
                "config reload failed; version %d keeps serving:\n%s",
                old.version,
                "\n".join(problems),
                extra={"trigger": trigger, "version": old.version, "problems": problems},
                exc_info=unforeseen,  # a traceback only for what no check foresaw
            )
            return False

    def _record(self, status: int, reason: str, started: float) -> None:
        if self._submit is None:
            return
        self._submit(
            audit_row(
                ts=time.time(),
                request_id=str(uuid.uuid4()),
                user_id=None,
                username=None,
                role=None,
                method=METHOD,
                path=str(self.path),
                route=None,
                upstream=None,
                status=status,
                latency=time.monotonic() - started,
                client_ip="",
                bytes_in=0,
                bytes_out=0,
                reason=reason,
            )
        )


RELOADER = web.AppKey("gateway.reloader", Reloader)
