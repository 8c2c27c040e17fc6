"""One async engine per process for SQLite (aiosqlite, WAL) or PostgreSQL (asyncpg)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

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


def make_engine(url: str) -> AsyncEngine:
    if is_sqlite(url):
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            # WAL: readers never block the writer; NORMAL is durable in WAL mode.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=10000")
            cursor.close()

        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


def make_sessions(engine: AsyncEngine) -> async_sessionmaker[Any]:
    return async_sessionmaker(engine, expire_on_commit=False)
