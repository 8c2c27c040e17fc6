"""One async engine per process for SQLite (aiosqlite, WAL) or PostgreSQL (asyncpg).

Every wait in the driver is bounded by `timeout` (database.timeout): reaching
the server, each statement, a free pool connection, SQLite's lock. A server
that hangs then costs a connection at most that long, and the pool replaces
it by itself; `guard.py` bounds each store call as a whole on top of this.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from gateway.store.guard import DEFAULT_TIMEOUT

ENV_DATABASE_URL = "GATEWAY_DATABASE_URL"


def database_url(config_dir: Path, environ: Mapping[str, str] | None = None) -> str:
    """GATEWAY_DATABASE_URL, or the SQLite file gateway.db beside routes.yaml."""
    env = os.environ if environ is None else environ
    url = env.get(ENV_DATABASE_URL)
    if url:
        return url
    return f"sqlite+aiosqlite:///{config_dir / 'gateway.db'}"


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def safe_url(url: str) -> str:
    """The URL with any password masked, for logs and messages."""
    return make_url(url).render_as_string(hide_password=True)


def make_engine(url: str, timeout: float = DEFAULT_TIMEOUT) -> AsyncEngine:
    """The engine for `url`; `timeout` (seconds) bounds each wait in the driver."""
    if is_sqlite(url):
        # sqlite3's own wait for a lock, and busy_timeout below: a locked file is
        # waited for at most `timeout`, then the call fails (OperationalError).
        engine = create_async_engine(url, connect_args={"timeout": timeout})
        busy_ms = max(1, round(timeout * 1000))

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            # WAL: readers never block the writer; NORMAL is durable in WAL mode.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
            cursor.close()

        return engine
    return create_async_engine(
        url,
        pool_size=10,
        max_overflow=10,
        pool_pre_ping=True,  # a connection the server dropped is replaced at checkout
        pool_timeout=timeout,  # all 20 in use (each bounded below): wait this long at most
        # asyncpg: `timeout` bounds connecting, `command_timeout` every statement
        # (the ping included), so a frozen server cannot pin a pooled connection.
        connect_args={"timeout": timeout, "command_timeout": timeout},
    )


def make_sessions(engine: AsyncEngine) -> async_sessionmaker[Any]:
    return async_sessionmaker(engine, expire_on_commit=False)
