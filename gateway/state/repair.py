"""Rebuilds the shared state in Redis from the database, whenever Redis may have lost some of it.

Redis holds a cache of what the database says: each user's role and status,
and the revoked access tokens. It can miss writes (a logout while it was
down), come back empty, or come back with an old snapshot (`appendonly yes`).
`StateRepair` rewrites every key from the database:

- at start-up;
- when Redis answers again after a call of this process failed (a write may
  have been lost);
- when Redis lost or replaced its data without this process seeing a
  failure (restarted between two requests): a marker key (PREFIX+"epoch",
  set by the first rebuild after it went missing) and the server's `run_id`
  (new at every restart) are checked every second, off the request path.

While Redis is down, requests are answered from this process's memory; the
repair refreshes that memory from the database every few seconds, so a
deactivation or logout made on another instance holds here too.

Two instances rebuilding at once are safe: a user value is only written over
a value stamped before the rebuild's database read began (SET_USER_LUA in
gateway/state/identity.py), and revocations only add keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.state.identity import RedisIdentity, UserState

log = logging.getLogger("gateway.redis")

PROBE_EVERY = 1.0  # seconds between checks of the marker and run_id
LOCAL_REFRESH_EVERY = 5.0  # seconds between database reads into memory while Redis is down
# Seconds at least between two rebuilds, or after one failed: a flapping Redis
# must not become a full read of the users table every second.
REBUILD_GAP = 2.0
PING_TIMEOUT = 1.0  # seconds /readyz waits for Redis

ReadUsers = Callable[[], Awaitable[Mapping[str, UserState]]]
ReadRevoked = Callable[[], Awaitable[tuple[tuple[str, float], ...]]]


class StateRepair:
    """The background task keeping Redis a faithful cache of the database."""

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        identity: RedisIdentity,
        read_users: ReadUsers,
        read_revoked: ReadRevoked,
        probe_every: float = PROBE_EVERY,
    ) -> None:
        self._redis = redis
        self._identity = identity
        self._read_users = read_users
        self._read_revoked = read_revoked
        self._probe_every = probe_every
        self._marker_key = f"{prefix}epoch"
        self._marker: bytes | None = None  # the marker Redis held at our last rebuild
        self._run_id: str | None = None  # the Redis server of our last rebuild
        self._repaired_failures = -1  # identity.health.failures when it began
        self._next_rebuild_at = 0.0
        self._refreshed_at = float("-inf")
        self._database_warned = False
        self._task: asyncio.Task[None] | None = None
        self.rebuilds = 0  # completed rebuilds in this process

    async def start(self) -> None:
        """Rebuild once (Redis down: fill memory from the database instead), then keep watch."""
        await self.tick()
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="state-repair")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def reachable(self) -> bool:
        """Whether Redis answers a PING within PING_TIMEOUT (for /readyz; never hangs)."""
        try:
            async with asyncio.timeout(PING_TIMEOUT):
                await self._redis.ping()
        except (RedisError, OSError, TimeoutError):
            return False
        return True

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._probe_every)
            try:
                await self.tick()
            except Exception:  # a bug must not end the watch; the next tick tries again
                log.exception("redis state repair failed")

    async def tick(self) -> None:
        """One check: rebuild when Redis may have lost state; refresh memory while it is down."""
        health = self._identity.health
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(self._marker_key)
                pipe.info("server")
                marker, server = await pipe.execute(raise_on_error=False)
            if isinstance(marker, Exception):
                raise marker
        except (RedisError, OSError) as exc:
            health.failed(exc)
            await self._refresh_memory()
            return
        reason = self._reason(marker, run_id(server))
        if reason is None:
            health.succeeded()
        elif time.monotonic() >= self._next_rebuild_at:
            await self.rebuild(reason)

    def _reason(self, marker: bytes | None, run_id: str) -> str | None:
        """Why Redis may not hold what the database says (None: it does)."""
        if self._repaired_failures < 0:
            return "start-up"
        if self._identity.health.failures != self._repaired_failures:
            return "redis answered again after a failed call"
        if marker is None:
            return "redis lost its data (the epoch marker is missing)"
        if marker != self._marker:
            return "another instance rebuilt redis (the epoch marker changed)"
        if run_id != self._run_id:
            return "redis restarted"
        return None

    async def rebuild(self, reason: str) -> None:
        """Rewrite every user key and revocation from the database (errors logged, retried)."""
        health = self._identity.health
        failures = health.failures
        self._next_rebuild_at = time.monotonic() + REBUILD_GAP
        try:
            # The marker first: if Redis loses its data while we write, the
            # marker goes too and the next tick rebuilds again.
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.time()
                pipe.set(self._marker_key, secrets.token_hex(8), nx=True)
                pipe.get(self._marker_key)
                pipe.info("server")
                clock, _, marker, server = await pipe.execute(raise_on_error=False)
            for reply in (clock, marker):
                if isinstance(reply, Exception):
                    raise reply
            seconds, micros = clock
        except (RedisError, OSError) as exc:
            health.failed(exc)
            return
        since = int(seconds) * 1_000_000 + int(micros)  # Redis clock: the stamps' clock
        read_at = time.monotonic()
        snapshot = await self._read_database()
        if snapshot is None:
            return
        users, revoked = snapshot
        try:
            written = await self._identity.write_all(users, revoked, since)
        except (RedisError, OSError) as exc:
            health.failed(exc)
            return
        self._marker, self._run_id = marker, run_id(server)
        self._repaired_failures = failures
        self._identity.local.absorb(users, revoked, read_at)
        self._refreshed_at = read_at
        self.rebuilds += 1
        health.succeeded()
        log.info(
            "redis state rebuilt from the database",
            extra={
                "reason": reason,
                "users": len(users),
                "users_written": written,
                "revocations": len(revoked),
            },
        )

    async def _refresh_memory(self) -> None:
        """While Redis is down: this process's memory from the database, every few seconds."""
        if time.monotonic() < self._refreshed_at + LOCAL_REFRESH_EVERY:
            return
        read_at = self._refreshed_at = time.monotonic()
        snapshot = await self._read_database()
        if snapshot is not None:
            self._identity.local.absorb(*snapshot, read_at)

    async def _read_database(
        self,
    ) -> tuple[Mapping[str, UserState], tuple[tuple[str, float], ...]] | None:
        """Every user's state and every unexpired revocation; None if the database fails."""
        try:
            users = await self._read_users()
            revoked = await self._read_revoked()
        except Exception as exc:  # any driver or timeout error: tried again later
            if not self._database_warned:
                self._database_warned = True
                log.warning(
                    "redis state repair cannot read the database; retrying",
                    extra={"error": type(exc).__name__},
                )
            return None
        if self._database_warned:
            self._database_warned = False
            log.warning("redis state repair reads the database again")
        return users, revoked


def run_id(server: object) -> str:
    """The server's run_id from INFO ("" where INFO is refused, as on some managed services)."""
    return str(server.get("run_id", "")) if isinstance(server, dict) else ""
