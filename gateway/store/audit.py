"""Queries on audit and report rows: batched inserts, the audit-log pages, report windows.

Inserts are one executemany per table per batch, in one transaction: the
writer's whole cost per batch is one round trip per table. Pages go newest
first by id (insertion order), with the last id as the cursor, so rows written
while someone pages never shift the pages they have not read yet.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.rows import AuditRow, ReportRow, Row, to_params
from gateway.store.guard import DEFAULT_TIMEOUT, guarded, unguarded
from gateway.store.users import bad_cursor, decode_cursor, encode_cursor, iso_utc
from models import AuditLog, ReportLog


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """What `/admin/audit-logs` narrows the rows to; None: no condition."""

    username: str | None = None
    status: tuple[int, int] | None = None  # inclusive range: (404, 404) or (400, 499)
    path_prefix: str | None = None
    since: datetime | None = None  # aware


def _item(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "ts": iso_utc(row.ts),
        "request_id": row.request_id,
        "user_id": row.user_id,
        "username": row.username,
        "role": row.role,
        "method": row.method,
        "path": row.path,
        "route": row.route,
        "upstream": row.upstream,
        "status": row.status,
        "latency_ms": row.latency_ms,
        "client_ip": row.client_ip,
        "bytes_in": row.bytes_in,
        "bytes_out": row.bytes_out,
        "reason": row.reason,
    }


def decode_id_cursor(cursor: str) -> int:
    (last_id,) = decode_cursor(cursor, 1)
    if not isinstance(last_id, int) or isinstance(last_id, bool) or not 0 < last_id < 2**63:
        raise bad_cursor()
    return last_id


_PLACEHOLDERS: dict[str, Callable[[int], str]] = {
    "qmark": lambda _: "?",  # sqlite
    "numeric_dollar": lambda n: f"${n}",  # asyncpg
    "format": lambda _: "%s",
    "numeric": lambda n: f":{n}",
}


def insert_sql(table: str, columns: Sequence[str], paramstyle: str) -> str:
    """INSERT INTO table (columns) VALUES (placeholders), in the driver's own paramstyle."""
    mark = _PLACEHOLDERS[paramstyle]
    marks = ", ".join(mark(n) for n in range(1, len(columns) + 1))
    # Table and column names are this module's constants, never request data.
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"  # noqa: S608


class _SqliteTime:
    """How SQLAlchemy's SQLite DATETIME stores a time: naive UTC text with microseconds.

    strftime took ~4 us a row, most of a batch's time on the event loop (2.2 ms
    for 300 rows); rows of one second share their date and time text, so only
    the microseconds are formatted per row (~0.5 us)."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, ts: float) -> str:
        second = int(ts)
        micros = round((ts - second) * 1_000_000)
        if micros == 1_000_000:  # rounded up into the next second
            second, micros = second + 1, 0
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{micros:06d}"


def _aware_ts(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


@guarded  # the admin API's reads: bounded by `timeout`, an unreachable database is a 503
class AuditStore:
    def __init__(self, engine: AsyncEngine, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._engine = engine
        self.timeout = timeout
        dialect = engine.dialect
        style = dialect.paramstyle
        if style not in _PLACEHOLDERS:  # a driver this was not written for: the ORM way
            self._audit_sql = self._report_sql = ""
        else:
            self._audit_sql = insert_sql("audit_logs", AuditRow._fields, style)
            self._report_sql = insert_sql("report_logs", ReportRow._fields, style)
        self._ts: Callable[[float], object] = (
            _SqliteTime() if dialect.name == "sqlite" else _aware_ts
        )

    @unguarded  # the audit writer bounds its batches itself, and spools on any failure
    async def insert(self, rows: Sequence[Row]) -> None:
        """Write a batch: one executemany per table, both in one transaction.

        The rows go to the driver as tuples in its own SQL: the ORM's per-row
        parameter processing cost ~38 us of CPU a row (on SQLite, measured),
        most of the audit writer's whole cost."""
        if not self._audit_sql:
            return await self._insert_orm(rows)
        ts = self._ts
        audit = [(ts(r[0]), *r[1:]) for r in rows if type(r) is AuditRow]
        reports = [(ts(r[0]), *r[1:]) for r in rows if type(r) is ReportRow]
        async with self._engine.begin() as connection:
            if audit:
                await connection.exec_driver_sql(self._audit_sql, audit)
            if reports:
                await connection.exec_driver_sql(self._report_sql, reports)

    async def _insert_orm(self, rows: Sequence[Row]) -> None:
        audit = [to_params(r) for r in rows if type(r) is AuditRow]
        reports = [to_params(r) for r in rows if type(r) is ReportRow]
        async with self._engine.begin() as connection:
            if audit:
                await connection.execute(insert(AuditLog), audit)
            if reports:
                await connection.execute(insert(ReportLog), reports)

    @unguarded  # the audit writer bounds its replays itself
    async def stored(self, rows: Sequence[Row]) -> set[tuple[bool, str]]:
        """(is a report row, journal id) of those `rows` that are stored already.

        Only replays ask (a journal after a crash, the spool): the same row may
        be in both, or stored just before the crash. Rows are looked for among
        those written since an hour before the oldest one asked about, through
        the ts index, so live inserts pay for no index on journal ids."""
        found: set[tuple[bool, str]] = set()
        async with self._engine.connect() as connection:
            for model, kind in ((AuditLog, AuditRow), (ReportLog, ReportRow)):
                picked = [r for r in rows if type(r) is kind and r.journal_id]
                if not picked:
                    continue
                since = datetime.fromtimestamp(min(r.ts for r in picked) - 3600, UTC)
                ids = [r.journal_id for r in picked]
                result = await connection.execute(
                    select(model.journal_id).where(model.ts >= since, model.journal_id.in_(ids))
                )
                found.update((kind is ReportRow, str(j)) for j in result.scalars())
        return found

    @unguarded  # answers False, never raises: the writer asks it when a batch failed
    async def answers(self) -> bool:
        """Whether the database takes queries on both tables now (False: it is down)."""
        try:
            async with self._engine.connect() as connection:
                await connection.execute(select(AuditLog.id).limit(1))
                await connection.execute(select(ReportLog.id).limit(1))
        except Exception:  # any driver or connection error means "not now"
            return False
        return True

    async def page(
        self, limit: int, cursor: str | None, where: AuditFilter
    ) -> tuple[list[dict[str, Any]], str | None]:
        query = select(AuditLog)
        if where.username is not None:
            query = query.where(AuditLog.username == where.username)
        if where.status is not None:
            low, high = where.status
            query = query.where(AuditLog.status.between(low, high))
        if where.path_prefix is not None:
            query = query.where(AuditLog.path.startswith(where.path_prefix, autoescape=True))
        if where.since is not None:
            query = query.where(AuditLog.ts >= where.since)
        if cursor:
            query = query.where(AuditLog.id < decode_id_cursor(cursor))
        query = query.order_by(AuditLog.id.desc()).limit(limit + 1)
        async with self._engine.connect() as connection:
            rows = list((await connection.execute(query)).all())
        items = [_item(r) for r in rows[:limit]]
        more = len(rows) > limit
        return items, encode_cursor([items[-1]["id"]]) if more else None

    async def report_rows(self, since: datetime) -> list[tuple[str, str | None, int, float]]:
        """(model, username, status, latency_ms) of every model call since `since`."""
        query = select(
            ReportLog.model, ReportLog.username, ReportLog.status, ReportLog.latency_ms
        ).where(ReportLog.ts >= since)
        async with self._engine.connect() as connection:
            result = await connection.execute(query)
            return [(r.model, r.username, r.status, r.latency_ms) for r in result]
