"""Process-wide resources opened at start-up: the database, Redis, identity state, audit.

They outlive config reloads (unlike `Runtime`), and are closed once at
shutdown. Redis is used only when a URL is given (GATEWAY_REDIS_URL).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

from aiohttp import web
from argon2 import PasswordHasher
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.writer import AuditWriter
from gateway.config.schema.auth import AuthConfig
from gateway.config.schema.top import Config
from gateway.metrics import Metrics
from gateway.security.hashpool import HashPool
from gateway.security.passwords import PasswordService
from gateway.state.gate import RedisGate
from gateway.state.identity import LocalIdentity, RedisIdentity, UserState
from gateway.state.interfaces import IdentityStore, Limiter, QuotaStore
from gateway.state.limiter import LocalLimiter, RedisLimiter
from gateway.state.pipelined import PipelinedRedis
from gateway.state.repair import StateRepair
from gateway.state.stores import Stores
from gateway.state.throttle import LocalThrottle, LoginThrottle, RedisThrottle
from gateway.store.audit import AuditStore
from gateway.store.engine import database_url, is_sqlite, make_engine, make_sessions, safe_url
from gateway.store.guard import DEFAULT_TIMEOUT, within
from gateway.store.migrate import current_revision, head_revision, upgrade
from gateway.store.tokens import RefreshTokenStore
from gateway.store.usage import UsageStore
from gateway.store.users import UserStore

log = logging.getLogger("gateway.services")

ENV_REDIS_URL = "GATEWAY_REDIS_URL"
ENV_REDIS_PREFIX = "GATEWAY_REDIS_PREFIX"


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    """Where the shared state lives; from the environment unless given."""

    database_url: str
    redis_url: str | None = None
    redis_prefix: str = "gateway:"

    @classmethod
    def from_env(cls, config: Config) -> ServiceSettings:
        return cls(
            database_url=database_url(config.base_dir),
            redis_url=os.environ.get(ENV_REDIS_URL) or None,
            redis_prefix=os.environ.get(ENV_REDIS_PREFIX, "gateway:"),
        )


@dataclass(slots=True)
class Services:
    settings: ServiceSettings
    engine: AsyncEngine
    users: UserStore
    refresh_tokens: RefreshTokenStore
    usage: UsageStore  # /admin/usage's reports
    identity: IdentityStore
    throttle: LoginThrottle
    limiter: Limiter  # request rate limits
    quotas: QuotaStore  # token quotas (the same GCRA buckets, counted in tokens)
    passwords: PasswordService
    redis: Redis | None
    # identity, role and rate limit in one Redis call (None without Redis)
    gate: RedisGate | None
    audit: AuditWriter  # queues the audit and report rows, writes them in batches
    metrics: Metrics  # this process's Prometheus registry (GET /metrics)
    # rebuilds Redis from the database after an outage or restart (None without Redis)
    repair: StateRepair | None = None
    # database.timeout (read at start-up): bounds every store call and the check below
    database_timeout: float = DEFAULT_TIMEOUT

    async def database_ok(self) -> bool:
        """Whether the database answers a query within database.timeout (for /readyz)."""
        try:
            await within(self.database_timeout, self._select_one())
        except Exception as exc:  # any driver error or the timeout means "not ready"
            # The type only: a driver's message may quote addresses or credentials.
            log.warning("database check failed", extra={"error": type(exc).__name__})
            return False
        return True

    async def _select_one(self) -> None:
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def close(self) -> None:
        await self.audit.close()  # before the engine goes: it writes out every queued row
        self.passwords.pool.close()
        if self.repair is not None:
            await self.repair.close()
        await self.identity.close()
        if self.gate is not None:
            await self.gate.close()
        if self.redis is not None:
            await self.redis.aclose()
        await self.engine.dispose()


SERVICES = web.AppKey("gateway.services", Services)  # the app's open services
# the stores the chain decides with (bound to the services above at start-up)
STORES = web.AppKey("gateway.stores", Stores)


def password_service(auth: AuthConfig) -> PasswordService:
    """The password policy and argon2id hasher of auth: (the gateway and the CLI alike)."""
    hashing = auth.hashing
    return PasswordService(
        auth.password_min_length,
        PasswordHasher(
            time_cost=hashing.time_cost,
            memory_cost=hashing.memory_cost // 1024,  # argon2 counts KiB
            parallelism=hashing.parallelism,
        ),
        HashPool(hashing.workers, hashing.queue),
    )


class StartupError(Exception):
    """The gateway cannot serve as configured; the message says how to fix it."""


async def ensure_schema(engine: AsyncEngine, url: str) -> None:
    """SQLite (one machine) is migrated in place; PostgreSQL must be upgraded on purpose."""
    current, head = await current_revision(engine), head_revision()
    if current == head:
        return
    if is_sqlite(url):
        log.info("migrating database", extra={"from": current, "to": head})
        await upgrade(url)
        return
    raise StartupError(
        f"database {safe_url(url)} is at schema {current or 'none'}, the gateway needs {head}: "
        "run `gateway db upgrade` once (not from every instance at the same time)"
    )


async def open_services(config: Config, settings: ServiceSettings) -> Services:
    timeout = config.database.timeout
    engine = make_engine(settings.database_url, timeout)
    try:
        await ensure_schema(engine, settings.database_url)
    except BaseException:
        await engine.dispose()
        raise
    sessions = make_sessions(engine)
    users = UserStore(sessions, timeout)

    async def load_user(user_id: str) -> UserState | None:
        record = await users.by_id(user_id)
        return UserState.of(record) if record is not None else None

    redis: Redis | None = None
    gate: RedisGate | None = None
    identity: LocalIdentity | RedisIdentity
    throttle: LocalThrottle | RedisThrottle
    limiter: LocalLimiter | RedisLimiter
    if settings.redis_url:
        redis = Redis.from_url(settings.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
        redis_identity = RedisIdentity(redis, settings.redis_prefix, load_user)
        throttle = RedisThrottle(config.auth.login_failures, redis, settings.redis_prefix)
        redis_limiter = RedisLimiter(redis, settings.redis_prefix, config.server.redis_failure)
        with contextlib.suppress(ValueError):  # a unix socket URL: the separate calls
            gate = RedisGate(PipelinedRedis(settings.redis_url), redis_identity, redis_limiter)
        identity, limiter = redis_identity, redis_limiter
    else:
        identity = LocalIdentity(load_user)
        throttle = LocalThrottle(config.auth.login_failures)
        limiter = LocalLimiter()
    states = await users.states()
    await identity.start(
        {uid: UserState(role, active, name) for uid, (role, active, name) in states.items()}
    )
    log.info(
        "services open",
        extra={
            "database": safe_url(settings.database_url),
            "redis": safe_url(settings.redis_url) if settings.redis_url else None,
            "users": len(states),
        },
    )
    audit = AuditWriter(AuditStore(engine, timeout), config.audit)
    try:
        await audit.recover()  # rows of gateway processes killed before writing them
        audit.start()
    except OSError as exc:
        await engine.dispose()
        raise StartupError(f"the audit journal cannot be used: {exc}") from None
    services = Services(
        settings=settings,
        engine=engine,
        users=users,
        refresh_tokens=RefreshTokenStore(sessions, timeout),
        usage=UsageStore(engine, timeout),
        identity=identity,
        throttle=throttle,
        limiter=limiter,
        quotas=limiter,
        passwords=password_service(config.auth),
        redis=redis,
        gate=gate,
        audit=audit,
        metrics=Metrics(audit),
        database_timeout=timeout,
    )
    if redis is not None and isinstance(identity, RedisIdentity):
        services.repair = await start_repair(services, redis, identity)
    return services


async def start_repair(services: Services, redis: Redis, identity: RedisIdentity) -> StateRepair:
    """Redis rebuilt from the database now (the database is the source of truth), then watched."""
    users, tokens = services.users, services.refresh_tokens

    async def read_users() -> dict[str, UserState]:
        states = await users.states()
        return {uid: UserState(role, active, name) for uid, (role, active, name) in states.items()}

    repair = StateRepair(
        redis, services.settings.redis_prefix, identity, read_users, tokens.revoked_access
    )
    await repair.start()
    return repair
