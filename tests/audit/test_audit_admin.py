"""/admin/audit-logs and /admin/reports: filters, cursor pages while rows arrive, bad
parameters, report figures for known data. On SQLite and PostgreSQL.

Known rows are written through the audit store itself (the writer's own
insert); the admin's own requests add rows too, so every check narrows by
user, status, path or time to the rows it planted.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.audit.rows import AuditRow, ReportRow
from gateway.services import SERVICES
from gateway.store.users import encode_cursor
from tests.conftest import MakeGateway
from tests.identity import Client, bearer, identity_config, login, make_user

BASE = datetime(2025, 1, 1, tzinfo=UTC).timestamp()
HOUR = 3600.0


@pytest.fixture
async def client(gateway: MakeGateway, policies: Path, database_url: str) -> Client:
    return await gateway(identity_config(), database_url=database_url)


def audit(
    request_id: str,
    *,
    username: str | None = "alice",
    status: int = 200,
    path: str = "/x",
    ts: float = BASE,
) -> AuditRow:
    return AuditRow(
        ts,
        request_id,
        "id-" + username if username else None,
        username,
        "user" if username else None,
        "GET",
        path,
        "/x/**",
        None,
        status,
        12.5,
        "10.0.0.1",
        3,
        40,
        "no_route" if status == 404 else None,
    )


async def plant(client: Client, *rows: AuditRow | ReportRow) -> None:
    await client.app[SERVICES].audit.store.insert(rows)


async def page(client: Client, headers: dict[str, str], query: str) -> dict[str, Any]:
    resp = await client.get(f"/admin/audit-logs?{query}", headers=headers)
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def ids(client: Client, headers: dict[str, str], query: str) -> list[str]:
    return [item["request_id"] for item in (await page(client, headers, query))["items"]]


# --- /admin/audit-logs --------------------------------------------------------------


async def test_only_admins_read_the_audit_log(client: Client, root: dict[str, str]) -> None:
    await make_user(client, "ulla")
    headers = bearer(await login(client, "ulla"))
    resp = await client.get("/admin/audit-logs", headers=headers)
    assert resp.status == 403
    resp = await client.get("/admin/reports", headers=headers)
    assert resp.status == 403


async def test_an_item_has_every_field(client: Client, root: dict[str, str]) -> None:
    await plant(client, audit("one", status=404, path="/users/me", ts=BASE + 1.5))
    (item,) = (await page(client, root, "user=alice"))["items"]
    assert isinstance(item.pop("id"), int)
    assert item == {
        "ts": "2025-01-01T00:00:01.500000Z",
        "request_id": "one",
        "user_id": "id-alice",
        "username": "alice",
        "role": "user",
        "method": "GET",
        "path": "/users/me",
        "route": "/x/**",
        "upstream": None,
        "status": 404,
        "latency_ms": 12.5,
        "client_ip": "10.0.0.1",
        "bytes_in": 3,
        "bytes_out": 40,
        "reason": "no_route",
    }


async def test_filters(client: Client, root: dict[str, str]) -> None:
    await plant(
        client,
        audit("a-model", username="alice", path="/models/a/x", ts=BASE),
        audit("a-404", username="alice", status=404, path="/users/me", ts=BASE + HOUR),
        audit("b-403", username="bob", status=403, path="/admin/users", ts=BASE + 2 * HOUR),
        audit("b-500", username="bob", status=500, path="/models/b/y", ts=BASE + 3 * HOUR),
        audit("c-open", username="carol", status=201, path="/open_thing", ts=BASE + 4 * HOUR),
        audit("c-openx", username="carol", path="/openxthing", ts=BASE + 5 * HOUR),
        audit("anon", username=None, status=401, path="/users/me", ts=BASE + 6 * HOUR),
    )
    assert await ids(client, root, "user=alice") == ["a-404", "a-model"]  # newest first
    assert await ids(client, root, "user=nobody") == []
    assert await ids(client, root, "status=404") == ["a-404"]
    assert await ids(client, root, "status=4xx") == ["anon", "b-403", "a-404"]
    assert await ids(client, root, "status=4XX") == ["anon", "b-403", "a-404"]
    assert await ids(client, root, "status=5xx") == ["b-500"]
    assert await ids(client, root, "path=/models/") == ["b-500", "a-model"]
    assert await ids(client, root, "path=/models/a") == ["a-model"]
    assert await ids(client, root, "path=/open_") == ["c-open"]  # _ is no wildcard
    assert await ids(client, root, "path=/users/me&status=4xx") == ["anon", "a-404"]
    since = "2025-01-01T02:00:00Z"  # inclusive
    assert await ids(client, root, f"since={since}&user=bob") == ["b-500", "b-403"]
    assert await ids(client, root, "since=2025-01-01T03:00:00%2B01:00&user=bob") == [
        "b-500",
        "b-403",
    ]  # 02:00 UTC
    assert await ids(client, root, "since=2025-01-01T03:00:00 01:00&user=bob") == [
        "b-500",
        "b-403",
    ]  # an unencoded + arrives as a space
    await client.app[SERVICES].audit.flush()  # the admin's own requests so far
    recent = (await page(client, root, "since=2025-01-01T05:30:00Z"))["items"]
    assert "anon" in [i["request_id"] for i in recent]
    assert "c-openx" not in [i["request_id"] for i in recent]
    assert {i["username"] for i in recent} == {None, "root"}  # anon, the login, the admin


async def test_pages_stay_whole_while_new_rows_arrive(client: Client, root: dict[str, str]) -> None:
    await plant(client, *(audit(f"old-{i}", username="pager", ts=BASE + i) for i in range(25)))
    first = await page(client, root, "user=pager&limit=10")
    assert first["next_cursor"] is not None
    await plant(client, *(audit(f"new-{i}", username="pager", ts=BASE + 100 + i) for i in range(5)))
    second = await page(client, root, f"user=pager&limit=10&cursor={first['next_cursor']}")
    third = await page(client, root, f"user=pager&limit=10&cursor={second['next_cursor']}")
    assert third["next_cursor"] is None
    seen = [i["request_id"] for p in (first, second, third) for i in p["items"]]
    assert seen == [f"old-{i}" for i in reversed(range(25))]  # no duplicate, no gap
    ids_seen = [i["id"] for p in (first, second, third) for i in p["items"]]
    assert ids_seen == sorted(ids_seen, reverse=True)
    fresh = await ids(client, root, "user=pager&limit=5")
    assert fresh == [f"new-{i}" for i in reversed(range(5))]


async def test_default_and_largest_page(client: Client, root: dict[str, str]) -> None:
    await plant(client, *(audit(f"r-{i}", username="many") for i in range(60)))
    default = await page(client, root, "user=many")
    assert len(default["items"]) == 50
    assert default["next_cursor"] is not None
    everything = await page(client, root, "user=many&limit=500")
    assert len(everything["items"]) == 60
    assert everything["next_cursor"] is None


@pytest.mark.parametrize(
    ("query", "name", "code"),
    [
        ("limit=0", "limit", "invalid_query"),
        ("limit=501", "limit", "invalid_query"),
        ("limit=ten", "limit", "invalid_query"),
        ("status=4x", "status", "invalid_query"),
        ("status=600", "status", "invalid_query"),
        ("status=44", "status", "invalid_query"),
        ("status=abc", "status", "invalid_query"),
        ("since=yesterday", "since", "invalid_query"),
        ("since=2025-01-01", "since", "invalid_query"),
        ("since=2025-01-01T00:00:00", "since", "invalid_query"),  # no offset
        ("since=2025-02-30T00:00:00Z", "since", "invalid_query"),
        ("path=models", "path", "invalid_query"),
        ("path=/x%00y", "path", "invalid_query"),
        ("user=" + "u" * 65, "user", "invalid_query"),
        ("cursor=garbage!", "cursor", "bad_cursor"),
        (f"cursor={encode_cursor(['x'])}", "cursor", "bad_cursor"),
        (f"cursor={encode_cursor([-1])}", "cursor", "bad_cursor"),
        (f"cursor={encode_cursor([2**63])}", "cursor", "bad_cursor"),
        (f"cursor={encode_cursor([1, 2])}", "cursor", "bad_cursor"),
    ],
)
async def test_bad_parameters_are_400_naming_them(
    client: Client, root: dict[str, str], query: str, name: str, code: str
) -> None:
    resp = await client.get(f"/admin/audit-logs?{query}", headers=root)
    assert resp.status == 400, await resp.text()
    assert resp.headers["Content-Type"] == "application/problem+json"
    body = await resp.json()
    assert body["code"] == code
    assert name in body["detail"]


# --- /admin/reports -----------------------------------------------------------------


def report(
    model: str, username: str | None, status: int, latency_ms: float, ts: float
) -> ReportRow:
    return ReportRow(
        ts, f"rq-{model}-{latency_ms}", model, None, username, None, status, latency_ms, 1, 2
    )


async def test_report_figures_for_known_data(client: Client, root: dict[str, str]) -> None:
    start = BASE + 10 * HOUR
    rows = [
        # alpha: latencies 10..100, alice 6 calls, bob 4; errors: two 5xx and one 0
        report("alpha", "alice" if i < 6 else "bob", status, 10.0 * (i + 1), start + i)
        for i, status in enumerate([200, 200, 500, 200, 404, 0, 200, 503, 200, 200])
    ]
    rows.append(report("beta", None, 200, 7.0, start))
    rows.append(report("alpha", "old", 500, 999.0, start - HOUR))  # before the window
    await plant(client, *rows)
    resp = await client.get("/admin/reports?since=2025-01-01T10:00:00Z", headers=root)
    assert resp.status == 200
    assert await resp.json() == {
        "items": [
            {
                "model": "alpha",
                "calls": 10,
                "errors": 3,
                "p50_ms": 50.0,
                "p95_ms": 100.0,
                "users": {"alice": 6, "bob": 4},
            },
            {
                "model": "beta",
                "calls": 1,
                "errors": 0,
                "p50_ms": 7.0,
                "p95_ms": 7.0,
                "users": {"(anonymous)": 1},
            },
        ],
        "next_cursor": None,
    }
    later = await client.get("/admin/reports?since=2025-01-02T00:00:00Z", headers=root)
    assert (await later.json())["items"] == []


async def test_reports_default_to_the_last_day(client: Client, root: dict[str, str]) -> None:
    now = time.time()
    await plant(
        client,
        report("gamma", "alice", 200, 5.0, now - 60),
        report("gamma", "alice", 200, 6.0, now - (timedelta(days=2).total_seconds())),
    )
    resp = await client.get("/admin/reports", headers=root)
    (item,) = (await resp.json())["items"]
    assert (item["model"], item["calls"]) == ("gamma", 1)


async def test_reports_reject_a_bad_since(client: Client, root: dict[str, str]) -> None:
    resp = await client.get("/admin/reports?since=last-week", headers=root)
    assert resp.status == 400
    assert "since" in (await resp.json())["detail"]
