"""AuditWriter: batches, a full queue, the spool while the database is down, replay, shutdown.

Outages are real: the audit table renamed away under a running gateway (the
database answers, the table is gone), and a database that does not exist
yet (SQLite: its folder is missing; PostgreSQL: it is not created) and is
then created and migrated. Nothing stops the shared PostgreSQL server.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from gateway.audit.report import percentile, summarise
from gateway.audit.rows import AuditRow, audit_row, from_spool, report_row, to_spool
from gateway.audit.writer import AuditWriter
from gateway.config import ConfigError, load_config
from gateway.config.schema.database import AuditConfig
from gateway.services import SERVICES
from gateway.store.audit import AuditStore, _SqliteTime
from gateway.store.engine import make_engine
from gateway.store.migrate import upgrade_sync
from models import AuditLog, ReportLog
from tests.conftest import MakeGateway, WriteConfig, off_loop, postgres_admin
from tests.identity import Client
from tests.processes import free_port, start_gateway, stop


def row(request_id: str, status: int = 200) -> AuditRow:
    return audit_row(
        ts=1_700_000_000.0,
        request_id=request_id,
        user_id="u1",
        username="alice",
        role="user",
        method="GET",
        path="/x",
        route="/x",
        upstream=None,
        status=status,
        latency=0.012,
        client_ip="127.0.0.1",
        bytes_in=0,
        bytes_out=10,
        reason=None,
    )


async def request_ids(url: str, model: type[Any] = AuditLog) -> list[str]:
    engine = make_engine(url)
    try:
        async with engine.connect() as connection:
            result = await connection.execute(select(model.request_id).order_by(model.id))
            return [r for (r,) in result]
    finally:
        await engine.dispose()


def spooled(path: Path) -> list[tuple[str, str]]:
    """(table, request_id) of each spool line, in file order."""
    if not path.exists():
        return []
    entries = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    return [(e["table"], e["row"]["request_id"]) for e in entries]


async def rename_table(url: str, old: str, new: str) -> None:
    engine = make_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text(f"ALTER TABLE {old} RENAME TO {new}"))
    finally:
        await engine.dispose()


# --- rows and reports are plain values ----------------------------------------------------


def test_rows_cut_long_values_to_their_columns() -> None:
    long = audit_row(
        ts=0.0,
        request_id="r",
        user_id=None,
        username=None,
        role=None,
        method="M" * 40,
        path="/" + "p" * 5000,
        route=None,
        upstream=None,
        status=200,
        latency=0.0,
        client_ip="9" * 100,
        bytes_in=0,
        bytes_out=0,
        reason=None,
    )
    assert len(long.method) == 16
    assert len(long.path) == 2048
    assert long.client_ip == "9" * 64


def test_rows_survive_the_spool_format() -> None:
    audit = row("r1")
    report = report_row(audit, "m1")
    for original in (audit, report):
        assert from_spool(orjson.loads(orjson.dumps(to_spool(original)))) == original
    for bad in ([], {"table": "users", "row": {}}, {"table": "audit_logs", "row": {"x": 1}}):
        with pytest.raises(ValueError, match="spool"):
            from_spool(bad)


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(10, 101, 10)]  # 10 .. 100
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 100.0
    assert percentile([7.0], 95) == 7.0
    assert percentile([], 50) is None


def test_summary_counts_errors_and_users() -> None:
    items = summarise(
        [
            ("b", "bob", 200, 5.0),
            ("a", "alice", 200, 1.0),
            ("a", "alice", 502, 3.0),
            ("a", None, 0, 2.0),
            ("a", "bob", 404, 4.0),
        ]
    )
    assert items == [
        {
            "model": "a",
            "calls": 4,
            "errors": 2,
            "p50_ms": 2.0,
            "p95_ms": 4.0,
            "users": {"(anonymous)": 1, "alice": 2, "bob": 1},
        },
        {"model": "b", "calls": 1, "errors": 0, "p50_ms": 5.0, "p95_ms": 5.0, "users": {"bob": 1}},
    ]


# --- the audit: section of routes.yaml ------------------------------------------------


def test_audit_section_defaults_and_values(write_config: WriteConfig, tmp_path: Path) -> None:
    default = load_config(write_config("routes: []\n")).audit
    assert default == AuditConfig(spool=tmp_path / "audit.spool")
    assert (default.queue_size, default.batch_size, default.flush_interval) == (100_000, 200, 0.1)
    path = write_config(
        "audit:\n  queue_size: 1000\n  batch_size: 50\n  flush_interval: 2s\n  spool: var/a.spool\n"
    )
    assert load_config(path).audit == AuditConfig(1000, 50, 2.0, tmp_path / "var" / "a.spool")


def test_audit_section_is_strict(write_config: WriteConfig) -> None:
    path = write_config(
        "audit:\n"
        "  queue_size: 0\n"
        "  batch_size: 10\n"
        "  flush_interval: 0ms\n"
        "  spool_dir: x\n"
        "  batch: 3\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    known = "(known keys: queue_size, batch_size, flush_interval, spool, journal)"
    assert [(p.line, p.message) for p in info.value.problems] == [
        (2, "audit.queue_size: must be at least 1"),
        (4, "audit.flush_interval: must be longer than zero"),
        (5, "audit.spool_dir: unknown key `spool_dir`; did you mean `spool`?"),
        (6, f"audit.batch: unknown key {known}"),
    ]


def test_batch_may_not_exceed_the_queue(write_config: WriteConfig) -> None:
    path = write_config("audit:\n  queue_size: 10\n  batch_size: 20\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [(p.line, p.message) for p in info.value.problems] == [
        (
            3,
            "audit.batch_size: 20 is more than audit.queue_size (10); "
            "a batch is taken from the queue",
        )
    ]


# --- the writer on its own ------------------------------------------------------------


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[AuditStore]:
    engine = make_engine(database_url)
    yield AuditStore(engine)
    await engine.dispose()


def test_sqlite_times_are_written_as_sqlalchemy_writes_them() -> None:
    # The cached form must give exactly SQLAlchemy's SQLite DATETIME text.
    as_text = _SqliteTime()
    rng = random.Random(7)
    moments = [rng.uniform(0, 2e9) for _ in range(20_000)]
    moments += [1_780_000_000.9999996, 1_780_000_000.0000004, 0.0, 1_780_000_001.5]
    for ts in sorted(moments) + moments:  # in order (the cache's case) and shuffled
        expected = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        assert as_text(ts) == expected, ts


async def test_every_column_reads_back_as_written(store: AuditStore, database_url: str) -> None:
    # The rows go to the driver in its own SQL: times and NULLs must read back
    # through the ORM exactly as the ORM would have written them.
    audit = audit_row(
        ts=1_780_000_000.123456,
        request_id="rb-1",
        user_id="u1",
        username="ann",
        role="user",
        method="POST",
        path="/models/m/v1",
        route="/models/m/**",
        upstream="m",
        status=502,
        latency=0.25,
        client_ip="10.0.0.1",
        bytes_in=12,
        bytes_out=34,
        reason="upstream_reset",
    )
    report = report_row(audit, "m", 0.1, None, attempts=3)
    await store.insert([audit, report])
    engine = make_engine(database_url)
    try:
        async with engine.connect() as connection:
            [stored] = (await connection.execute(select(AuditLog))).all()
            [stored_report] = (await connection.execute(select(ReportLog))).all()
    finally:
        await engine.dispose()
    when = stored.ts if stored.ts.tzinfo else stored.ts.replace(tzinfo=UTC)
    assert when.timestamp() == pytest.approx(1_780_000_000.123456, abs=1e-6)
    assert (stored.request_id, stored.status, stored.latency_ms) == ("rb-1", 502, 250.0)
    assert (stored.reason, stored.client_ip, stored.bytes_out) == ("upstream_reset", "10.0.0.1", 34)
    assert (stored_report.model, stored_report.attempts) == ("m", 3)
    assert stored_report.total_tokens is None  # unknown stays unknown
    assert stored_report.ttfb_ms == 100.0


async def test_a_full_queue_drops_counts_and_logs_once(
    store: AuditStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = AuditWriter(store, AuditConfig(5, 5, 3600.0, tmp_path / "audit.spool"))
    with caplog.at_level(logging.ERROR, logger="gateway.audit"):
        for i in range(8):
            writer.submit(row(f"q-{i}"))
    assert writer.depth == 5
    assert writer.dropped == 3
    assert [r.getMessage() for r in caplog.records] == ["audit queue full: rows are being dropped"]
    await writer.close()
    writer.submit(row("late"))
    assert writer.dropped == 4  # after close nothing is taken, and it is counted


async def test_batches_keep_order_and_both_tables(
    store: AuditStore, database_url: str, tmp_path: Path
) -> None:
    writer = AuditWriter(store, AuditConfig(100, 3, 3600.0, tmp_path / "audit.spool"))
    for i in range(10):
        audit = row(f"b-{i}")
        writer.submit(audit)
        if i % 4 == 0:
            writer.submit(report_row(audit, "m1"))
    await writer.close()
    assert await request_ids(database_url) == [f"b-{i}" for i in range(10)]
    assert await request_ids(database_url, ReportLog) == ["b-0", "b-4", "b-8"]
    assert writer.spool_bytes == 0


async def test_a_row_the_database_refuses_costs_only_itself(
    store: AuditStore, database_url: str, tmp_path: Path
) -> None:
    writer = AuditWriter(store, AuditConfig(100, 10, 3600.0, tmp_path / "audit.spool"))
    writer.submit(row("good-1"))
    writer.submit(row("poison", status=2**70))  # no integer column takes it
    writer.submit(row("good-2"))
    await writer.flush()
    assert await request_ids(database_url) == ["good-1", "good-2"]
    assert writer.dropped == 1
    assert writer.spool_bytes == 0  # the database answered: nothing to replay
    await writer.close()


async def test_the_background_task_writes_a_full_batch(
    store: AuditStore, database_url: str, tmp_path: Path
) -> None:
    writer = AuditWriter(store, AuditConfig(100, 4, 3600.0, tmp_path / "audit.spool"))
    writer.start()
    for i in range(4):
        writer.submit(row(f"t-{i}"))  # the fourth wakes the task: no hour-long wait
    for _ in range(500):
        if await request_ids(database_url):
            break
        await asyncio.sleep(0.01)
    assert await request_ids(database_url) == [f"t-{i}" for i in range(4)]
    await writer.close()


# --- a database that is down, then comes up -----------------------------------------


@dataclass
class Outage:
    url: str  # a database that does not answer yet
    bring_up: Callable[[], None]


@pytest.fixture
def outage(database_url: str, tmp_path: Path, sqlite_template: Path) -> Iterator[Outage]:
    """SQLite: a file in a folder not made yet. PostgreSQL: a database not created yet."""
    if database_url.startswith("sqlite"):
        folder = tmp_path / "later"

        def make_sqlite() -> None:
            folder.mkdir()
            (folder / "gateway.db").write_bytes(sqlite_template.read_bytes())

        yield Outage(f"sqlite+aiosqlite:///{folder / 'gateway.db'}", make_sqlite)
        return
    name = f"gw_outage_{uuid.uuid4().hex[:10]}"
    url = make_url(database_url).set(database=name)

    def make_postgres() -> None:
        postgres_admin(database_url, f'CREATE DATABASE "{name}"')
        off_loop(upgrade_sync, url.render_as_string(False))

    yield Outage(url.render_as_string(False), make_postgres)
    postgres_admin(database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_rows_are_spooled_while_down_and_replayed_in_order_after_a_restart(
    outage: Outage, tmp_path: Path
) -> None:
    spool = tmp_path / "audit.spool"
    settings = AuditConfig(1000, 4, 3600.0, spool)
    engine = make_engine(outage.url)
    writer = AuditWriter(AuditStore(engine), settings)
    for i in range(10):
        audit = row(f"d-{i}")
        writer.submit(audit)
        if i in (2, 7):
            writer.submit(report_row(audit, "m1"))
    await writer.flush()
    assert writer.depth == 0
    assert not writer.failing  # spooled is not failing: nothing is lost
    expected = [("audit_logs", f"d-{i}") for i in range(10)]
    expected.insert(3, ("report_logs", "d-2"))
    expected.insert(9, ("report_logs", "d-7"))
    assert spooled(spool) == expected
    writer.submit(row("d-10"))
    await writer.close()  # still down at shutdown: the rest joins the spool
    await engine.dispose()
    assert spooled(spool) == [*expected, ("audit_logs", "d-10")]

    outage.bring_up()
    engine = make_engine(outage.url)
    writer = AuditWriter(AuditStore(engine), settings)  # the next start
    writer.submit(row("after-restart"))
    await writer.flush()
    await writer.close()
    await engine.dispose()
    assert await request_ids(outage.url) == [*(f"d-{i}" for i in range(11)), "after-restart"]
    assert await request_ids(outage.url, ReportLog) == ["d-2", "d-7"]
    assert spool.read_bytes() == b""  # replayed, then truncated


async def test_rows_queued_during_a_replay_join_the_spool_and_keep_their_order(
    outage: Outage, tmp_path: Path
) -> None:
    spool = tmp_path / "audit.spool"
    settings = AuditConfig(1000, 4, 3600.0, spool)
    engine = make_engine(outage.url)
    writer = AuditWriter(AuditStore(engine), settings)
    for i in range(10):
        writer.submit(row(f"s-{i}"))
    await writer.flush()
    assert len(spooled(spool)) == 10
    outage.bring_up()
    for i in range(10, 19):
        writer.submit(row(f"s-{i}"))  # more than a batch waits when the replay starts
    await writer.flush()
    await writer.close()
    await engine.dispose()
    assert await request_ids(outage.url) == [f"s-{i}" for i in range(19)]
    assert spool.read_bytes() == b""
    assert writer.dropped == 0


async def test_a_torn_last_line_is_reported_and_skipped_and_the_rest_replayed(
    outage: Outage, tmp_path: Path
) -> None:
    spool = tmp_path / "audit.spool"
    engine = make_engine(outage.url)
    writer = AuditWriter(AuditStore(engine), AuditConfig(1000, 3, 3600.0, spool))
    for i in range(7):
        writer.submit(row(f"p-{i}"))
    await writer.flush()
    await writer.close()
    await engine.dispose()
    # A torn last line, as a crash in the middle of an append would leave.
    with spool.open("ab") as file:
        file.write(b'{"table": "audit_logs", "row": {"ts": 1')
    outage.bring_up()
    engine = make_engine(outage.url)
    writer = AuditWriter(AuditStore(engine), AuditConfig(1000, 3, 3600.0, spool))
    await writer.flush()
    await writer.close()
    await engine.dispose()
    assert await request_ids(outage.url) == [f"p-{i}" for i in range(7)]
    assert writer.dropped == 1  # the torn line, reported and skipped
    assert spool.read_bytes() == b""


# --- under a running gateway ------------------------------------------------------------


def audit_config(spool: Path) -> str:
    return f"""
        routes:
          - {{path: /public/**, upstream: nowhere, auth: none}}
        upstreams:
          nowhere: {{targets: ["http://127.0.0.1:9"]}}
        audit: {{flush_interval: 1h, batch_size: 5, spool: "{spool}"}}
        """


async def test_gateway_spools_while_the_table_is_gone_and_replays_when_it_is_back(
    gateway: MakeGateway, database_url: str, tmp_path: Path
) -> None:
    spool = tmp_path / "spool" / "audit.spool"
    spool.parent.mkdir()
    client = await gateway(audit_config(spool), database_url=database_url)
    writer = client.app[SERVICES].audit
    sent: list[str] = []

    async def call(name: str, path: str = "/healthz") -> int:
        sent.append(name)
        resp = await client.get(path, headers={"X-Request-Id": name})
        return resp.status

    for i in range(3):
        await call(f"a-{i}")
    await writer.flush()
    await rename_table(database_url, "audit_logs", "audit_logs_away")
    try:
        for i in range(12):
            await call(f"b-{i}", "/missing" if i % 3 else "/healthz")
        await writer.flush()
        assert [rid for _, rid in spooled(spool)] == [f"b-{i}" for i in range(12)]
        assert writer.spool_bytes == spool.stat().st_size > 0
        assert await call("ready-while-spooling", "/readyz") == 200  # spooling loses nothing
        await call("c-0")
        await writer.flush()  # the spool is not empty: newer rows queue up behind it
        assert [rid for _, rid in spooled(spool)][-2:] == ["ready-while-spooling", "c-0"]
    finally:
        await rename_table(database_url, "audit_logs_away", "audit_logs")
    await call("d-0")
    await writer.flush()
    assert await request_ids(database_url) == sent
    assert writer.spool_bytes == 0


async def test_readyz_is_503_audit_failing_when_even_the_spool_cannot_be_written(
    gateway: MakeGateway, database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = tmp_path / "not-a-file"
    spool.mkdir()  # a folder where the spool file should be: every append fails
    client: Client = await gateway(audit_config(spool), database_url=database_url)
    writer = client.app[SERVICES].audit
    assert (await client.get("/readyz")).status == 200
    await writer.flush()
    await rename_table(database_url, "audit_logs", "audit_logs_away")
    try:
        for i in range(4):
            await client.get("/healthz", headers={"X-Request-Id": f"f-{i}"})
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="gateway.audit"):
            await writer.flush()
            await writer.flush()
        messages = [r.getMessage() for r in caplog.records if r.name == "gateway.audit"]
        assert (
            messages
            == ["audit spool cannot be written: rows kept in memory until the queue is full"] * 2
        )  # each attempt, at ERROR
        assert writer.failing
        assert writer.depth == 4  # kept, not lost
        resp = await client.get("/readyz", headers={"X-Request-Id": "f-ready"})
        assert resp.status == 503
        body = await resp.json()
        assert body["code"] == "audit_failing"
        assert "audit" in body["detail"]
        assert str(spool) not in body["detail"]
    finally:
        await rename_table(database_url, "audit_logs_away", "audit_logs")
    await writer.flush()
    assert not writer.failing
    assert (await client.get("/readyz")).status == 200
    ids = await request_ids(database_url)  # (the last /readyz is still queued)
    assert ids[-5:] == ["f-0", "f-1", "f-2", "f-3", "f-ready"]


# --- a real process, a real SIGTERM -----------------------------------------------------


async def test_sigterm_writes_every_queued_row(
    write_config: WriteConfig,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GATEWAY_DATABASE_URL", database_url)
    # An hour between writes and batches as large as the queue: every row is
    # still queued when the signal comes, so only the shutdown drain writes it.
    path = write_config("routes: []\naudit: {flush_interval: 1h, batch_size: 100000}\n")
    port = free_port()
    process = start_gateway(path, port, tmp_path / "gateway.log")
    count = 57
    try:
        async with aiohttp.ClientSession() as session:
            for i in range(count):
                target = "/healthz" if i % 2 else f"/nothing/{i}"
                async with session.get(
                    f"http://127.0.0.1:{port}{target}", headers={"X-Request-Id": f"s-{i}"}
                ) as resp:
                    await resp.read()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 30) == 0
    finally:
        stop(process)
    assert await request_ids(database_url) == [f"s-{i}" for i in range(count)]


def test_the_spool_never_holds_a_half_written_batch_of_the_writer(tmp_path: Path) -> None:
    """Appends are whole lines: what a reader sees always parses line by line."""
    from gateway.audit.spool import Spool

    spool = Spool(tmp_path / "audit.spool")
    lines = b"".join(orjson.dumps(to_spool(row(f"w-{i}"))) + b"\n" for i in range(50))
    spool.append(lines)
    spool.append(lines)
    assert len(spool.read(0, 1000)) == 100
    first_ten = spool.read(0, 10)
    spool.discard(first_ten[-1][1])
    rest = spool.read(0, 1000)
    assert len(rest) == 90
    assert from_spool(orjson.loads(rest[0][0])).request_id == "w-10"
    spool.discard(rest[-1][1])
    assert spool.size() == 0
