"""The audit journal: file modes, records before the head, replay, rolling, clean shutdown.

A process that is gone is played by a Journal closed without deleting its
files (they stay, unlocked, as a killed process leaves them); the real
SIGKILL of a real `gateway serve` under load is tests/audit/test_audit_sigkill.py.
Databases are real (SQLite and PostgreSQL); nothing is mocked.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import select

from gateway.audit.journal import INTERRUPTED, SUFFIX, Journal
from gateway.audit.rows import AuditRow, audit_row, from_journal, report_row, to_spool
from gateway.audit.writer import AuditWriter
from gateway.config import load_config
from gateway.config.schema.database import AuditConfig
from gateway.services import SERVICES
from gateway.store.audit import AuditStore
from gateway.store.engine import make_engine
from models import AuditLog, ReportLog
from tests.audit.test_audit_writer import rename_table
from tests.conftest import MakeGateway, MakeUpstream, WriteConfig
from tests.processes import free_port, serve_command


def row(
    request_id: str,
    journal_id: str,
    status: int = 200,
    bytes_out: int = 10,
    reason: str | None = None,
) -> AuditRow:
    return audit_row(
        ts=1_700_000_000.0,
        request_id=request_id,
        user_id=None,
        username=None,
        role=None,
        method="GET",
        path="/x",
        route="/x",
        upstream="up",
        status=status,
        latency=0.01,
        client_ip="127.0.0.1",
        bytes_in=0,
        bytes_out=bytes_out,
        reason=reason,
        journal_id=journal_id,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def journal_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*" + SUFFIX))


def records(folder: Path) -> list[tuple[bool, str, int, int, str | None]]:
    """(final, request_id, status, bytes_out, reason) of every journal line, in file order."""
    found = []
    for path in journal_files(folder):
        for line in path.read_bytes().splitlines(keepends=True):
            final, audit, _ = from_journal(line)
            found.append((final, audit.request_id, audit.status, audit.bytes_out, audit.reason))
    return found


async def stored(url: str, model: type[Any] = AuditLog) -> list[tuple[Any, ...]]:
    """(request_id, reason (report rows: status), bytes_out, journal_id) of every row of
    `model`, oldest first."""
    engine = make_engine(url)
    try:
        async with engine.connect() as connection:
            second = model.reason if model is AuditLog else model.status
            query = select(model.request_id, second, model.bytes_out, model.journal_id)
            result = await connection.execute(query.order_by(model.id))
            return [tuple(r) for r in result]
    finally:
        await engine.dispose()


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[AuditStore]:
    engine = make_engine(database_url)
    yield AuditStore(engine)
    await engine.dispose()


def writer_of(store: AuditStore, tmp_path: Path, folder: Path) -> AuditWriter:
    return AuditWriter(store, AuditConfig(100, 10, 3600.0, tmp_path / "audit.spool", folder))


def dead_journal(folder: Path, *rows: AuditRow) -> Journal:
    """A journal opened on the running loop, holding `rows` as final records."""
    journal = Journal(folder)
    journal.open(lambda: 0)
    for audit in rows:
        journal.record(audit, None)
    return journal


# --- the configuration ----------------------------------------------------------------


def test_the_journal_folder_is_configurable_and_defaults_beside_the_spool(
    write_config: WriteConfig, tmp_path: Path, store: AuditStore
) -> None:
    default = load_config(write_config("routes: []\n")).audit
    assert default.journal is None
    assert AuditWriter(store, default).journal.folder == tmp_path / "audit.journal"
    spool_elsewhere = load_config(write_config("audit: {spool: var/a.spool}\n")).audit
    assert AuditWriter(store, spool_elsewhere).journal.folder == tmp_path / "var" / "audit.journal"
    configured = load_config(write_config("audit: {journal: state/journal}\n")).audit
    assert configured.journal == tmp_path / "state" / "journal"
    assert AuditWriter(store, configured).journal.folder == tmp_path / "state" / "journal"


def test_an_unusable_journal_folder_stops_the_start(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    (tmp_path / "taken").write_text("a file where the journal folder should be")
    path = write_config("routes: []\naudit: {journal: taken}\n")
    result = subprocess.run(
        serve_command(path, free_port()), capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    assert "the audit journal cannot be used" in result.stderr
    assert str(tmp_path / "taken") in result.stderr


# --- files and records ------------------------------------------------------------------


async def test_journal_files_are_0600_in_a_0700_folder(tmp_path: Path) -> None:
    folder = tmp_path / "journal"
    folder.mkdir()
    folder.chmod(0o755)  # there already, too open: tightened
    umask = os.umask(0)  # the most permissive umask: the modes are the journal's own
    try:
        journal = dead_journal(folder, row("r-1", "j-1"))
        journal.roll()
    finally:
        os.umask(umask)
    assert mode(folder) == 0o700
    assert len(journal.files) == 2
    assert [mode(path) for path in journal.files] == [0o600, 0o600]
    journal.close(delete=True)
    assert list(folder.iterdir()) == []


@pytest.fixture
async def streaming_up(upstream: MakeUpstream) -> AsyncIterator[tuple[TestServer, asyncio.Event]]:
    """An upstream whose /slow sends its head and a first chunk, then waits for `go`;
    /small answers a short body at once."""
    go = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first ")
        await go.wait()
        await response.write(b"last")
        await response.write_eof()
        return response

    async def small(request: web.Request) -> web.Response:
        return web.Response(body=b'{"ok":true}', content_type="application/json")

    app = web.Application()
    app.router.add_get("/slow", slow)
    app.router.add_get("/small", small)
    server = await upstream(app)
    yield server, go
    go.set()


async def test_a_record_is_in_the_journal_before_the_head_reaches_the_client(
    gateway: MakeGateway,
    tmp_path: Path,
    streaming_up: tuple[TestServer, asyncio.Event],
) -> None:
    server, go = streaming_up
    client = await gateway(
        f"""
        routes:
          - {{path: /up/**, upstream: up, strip_prefix: /up, auth: none}}
        upstreams:
          up: {{targets: ["http://127.0.0.1:{server.port}"]}}
        audit: {{flush_interval: 1h, journal: j}}
        """
    )
    folder = tmp_path / "j"
    # A local answer: its row is made before its head goes out, so its final record.
    resp = await client.get("/healthz", headers={"X-Request-Id": "local-1"})
    assert resp.status == 200
    assert records(folder) == [(True, "local-1", 200, resp.content_length or -1, None)]

    # A small proxied answer goes out whole with its head: one record, final at once.
    resp = await client.get("/up/small", headers={"X-Request-Id": "small-1"})
    assert await resp.read() == b'{"ok":true}'
    await asyncio.sleep(0.05)  # no second record follows at the end of the turn
    assert records(folder)[1:] == [(True, "small-1", 200, 11, None)]

    # A streamed answer: the head is out, the body is not finished.
    resp = await client.get("/up/slow", headers={"X-Request-Id": "stream-1"})
    assert resp.status == 200
    assert await resp.content.readexactly(6) == b"first "
    assert records(folder)[2:] == [(False, "stream-1", 200, 0, INTERRUPTED)]

    go.set()
    assert await resp.read() == b"last"
    for _ in range(200):  # the final record is written at the end of the loop turn
        if len(records(folder)) == 4:
            break
        await asyncio.sleep(0.01)
    final, request_id, status, bytes_out, reason = records(folder)[3]
    assert (final, request_id, status, reason) == (True, "stream-1", 200, None)
    assert bytes_out > 0

    # Every row written normally carries the journal id its records have.
    await client.app[SERVICES].audit.flush()
    async with client.app[SERVICES].engine.connect() as connection:
        ids = dict(
            (await connection.execute(select(AuditLog.request_id, AuditLog.journal_id))).all()
        )
        query = select(AuditLog.bytes_out).where(AuditLog.request_id == "small-1")
        small_bytes_out = (await connection.execute(query)).scalar_one()
    assert small_bytes_out > 11  # the stored row counts the head as well
    journaled = {}
    for path in journal_files(folder):
        for line in path.read_bytes().splitlines():
            _, audit, _ = from_journal(line)
            journaled[audit.request_id] = audit.journal_id
    assert ids == journaled
    assert len(set(ids.values())) == 3


# --- replay -------------------------------------------------------------------------------


async def test_replay_takes_the_final_record_else_the_provisional_one(
    store: AuditStore, database_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "journal"
    journal = dead_journal(folder)
    cut = journal.new_id()  # killed mid-stream: only the provisional record
    journal.begin(cut, row("cut", cut, bytes_out=0, reason=INTERRUPTED))
    done = journal.new_id()  # provisional, then final, with a model call's report row
    journal.begin(done, row("done", done, bytes_out=0, reason=INTERRUPTED))
    final = row("done", done, bytes_out=5000)
    journal.end(done, final, report_row(final, "m1"))
    local = journal.new_id()
    journal.record(row("local", local, status=404, bytes_out=120, reason="not_found"), None)
    journal.close(delete=False)  # the process is gone: its files stay, unlocked

    writer = writer_of(store, tmp_path, folder)
    await writer.recover()
    assert await stored(database_url) == [
        ("cut", INTERRUPTED, 0, cut),
        ("done", None, 5000, done),
        ("local", "not_found", 120, local),
    ]
    assert [r[0] for r in await stored(database_url, ReportLog)] == ["done"]
    assert journal_files(folder) == []
    await writer.close()


async def test_replaying_a_journal_twice_inserts_nothing_twice(
    store: AuditStore, database_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "journal"
    # One row reached the database before the process died; two did not.
    first = writer_of(store, tmp_path, folder)
    first.journal.open(lambda: 0)  # the writer's task is not needed: flush() writes
    written = row("written", first.journal.new_id())
    first.submit(written)
    first.journal.record(written, None)
    await first.flush()
    for name in ("queued-1", "queued-2"):
        audit = row(name, first.journal.new_id())
        first.submit(audit)
        first.journal.record(audit, None)
    [path] = journal_files(folder)
    first.journal.close(delete=False)  # killed: the queue is lost, the journal is not
    aside = tmp_path / "copy"
    shutil.copyfile(path, aside)

    expected = ["written", "queued-1", "queued-2"]
    for _ in range(2):
        writer = writer_of(store, tmp_path, folder)
        await writer.recover()
        assert [r[0] for r in await stored(database_url)] == expected
        assert journal_files(folder) == []
        assert writer.dropped == 0  # a stored journal id is skipped, not refused and dropped
        await writer.close()
        shutil.copyfile(aside, path)  # the same journal again


async def test_a_spooled_row_already_stored_from_the_journal_is_not_stored_twice(
    store: AuditStore, database_url: str, tmp_path: Path
) -> None:
    # Killed while the database was down: the rows were spooled and journaled both.
    # The next start replays the journal first; the spool's replay must skip them.
    folder = tmp_path / "journal"
    first = writer_of(store, tmp_path, folder)
    rows = [row(f"spooled-{i}", f"j-{i}") for i in range(3)]
    first.spool.append(b"".join(orjson.dumps(to_spool(r)) + b"\n" for r in rows))
    await store.insert(rows[:2])  # what the journal's replay already stored
    writer = writer_of(store, tmp_path, folder)
    await writer.flush()  # replays the spool
    assert [r[0] for r in await stored(database_url)] == [
        "spooled-0",
        "spooled-1",
        "spooled-2",
    ]
    assert writer.spool.size() == 0
    await writer.close()


async def test_a_live_process_journal_is_not_replayed(
    store: AuditStore, database_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "journal"
    live = dead_journal(folder, row("live", "j-live"))
    other = writer_of(store, tmp_path, folder)
    await other.recover()  # the file is locked by its process: left alone
    assert await stored(database_url) == []
    assert len(journal_files(folder)) == 1
    live.close(delete=False)
    await other.recover()
    assert [r[0] for r in await stored(database_url)] == ["live"]


async def test_a_torn_line_is_skipped_and_counted_and_the_rest_replayed(
    store: AuditStore, database_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "journal"
    dead_journal(folder, row("a", "j-a"), row("b", "j-b")).close(delete=False)
    [path] = journal_files(folder)
    with path.open("ab") as file:
        file.write(b'[true,[1700000000.0,"torn"')  # the disk filled up mid-line
    writer = writer_of(store, tmp_path, folder)
    await writer.recover()
    assert [r[0] for r in await stored(database_url)] == ["a", "b"]
    assert writer.dropped == 1
    assert journal_files(folder) == []


# --- while serving: rolling, and shutting down ----------------------------------------


async def test_a_roll_carries_requests_in_flight_and_settled_files_are_deleted(
    store: AuditStore, database_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "journal"
    writer = writer_of(store, tmp_path, folder)
    writer.start()
    journal = writer.journal
    done = row("done", journal.new_id())
    writer.submit(done)
    journal.record(done, None)
    streaming = journal.new_id()
    journal.begin(streaming, row("streaming", streaming, bytes_out=0, reason=INTERRUPTED))
    [first] = journal.files
    journal.roll()
    assert journal.files[0] == first
    second = journal.files[1]
    assert first.exists()  # "done" has not reached the database yet
    assert records(folder)[-1] == (False, "streaming", 200, 0, INTERRUPTED)  # moved on

    await writer.flush()  # "done" is stored: nothing in the first file is needed anymore
    assert journal.files == [second]
    assert not first.exists()

    final = row("streaming", streaming, bytes_out=700)
    writer.submit(final)
    journal.end(streaming, final, None)
    await asyncio.sleep(0)  # the end of the loop turn writes the final record
    assert records(folder)[-1] == (True, "streaming", 200, 700, None)
    journal.roll()
    [third] = [p for p in journal.files if p != second]
    assert records(folder)[-1] == (True, "streaming", 200, 700, None)  # nothing in flight
    assert third.stat().st_size == 0
    await writer.flush()
    assert journal.files == [third]
    await writer.close()
    assert list(folder.iterdir()) == []  # a clean shutdown leaves nothing to replay
    assert [r[0] for r in await stored(database_url)] == ["done", "streaming"]


async def test_rows_nothing_took_at_shutdown_stay_in_the_journal_for_the_next_start(
    store: AuditStore, database_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "journal"
    spool = tmp_path / "spool-is-a-folder"
    spool.mkdir()  # every spool append fails
    writer = AuditWriter(store, AuditConfig(100, 10, 3600.0, spool, folder))
    writer.start()
    await rename_table(database_url, "audit_logs", "audit_logs_away")
    try:
        audit = row("kept", writer.journal.new_id())
        writer.submit(audit)
        writer.journal.record(audit, None)
        await writer.close()  # neither the database nor the spool takes it
        assert len(journal_files(folder)) == 1
    finally:
        await rename_table(database_url, "audit_logs_away", "audit_logs")
    after = writer_of(store, tmp_path, folder)
    await after.recover()
    assert [r[0] for r in await stored(database_url)] == ["kept"]
    assert journal_files(folder) == []
