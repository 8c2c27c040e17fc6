"""The database layer: migrations match models.py, SQLite runs in WAL mode."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection

from gateway.store.engine import make_engine
from gateway.store.migrate import current_revision, head_revision
from models import Base


async def test_migrations_produce_exactly_the_models(database_url: str) -> None:
    engine = make_engine(database_url)
    try:

        def diff(connection: Connection) -> list[Any]:
            context = MigrationContext.configure(connection)
            return list(compare_metadata(context, Base.metadata))

        async with engine.connect() as connection:
            differences = await connection.run_sync(diff)
        assert differences == []  # a model change without a migration fails here
        assert await current_revision(engine) == head_revision()
    finally:
        await engine.dispose()


async def test_sqlite_uses_wal_and_foreign_keys(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        async with engine.connect() as connection:
            mode = (await connection.execute(text("PRAGMA journal_mode"))).scalar()
            keys = (await connection.execute(text("PRAGMA foreign_keys"))).scalar()
        assert mode == "wal"
        assert keys == 1
    finally:
        await engine.dispose()
