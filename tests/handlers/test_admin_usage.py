"""/admin/usage: figures per model, per user and per both for known report rows; the
time window; the CSV export read back with the csv module; bad parameters; who may ask.
On SQLite and PostgreSQL.

Report rows are written straight into report_logs (the admin's own requests
make audit rows only), so every figure below is worked out by hand from CALLS.
"""

from __future__ import annotations

import csv
import io
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

from gateway.services import SERVICES
from models import ReportLog
from tests.conftest import MakeGateway
from tests.identity import Client, bearer, identity_config, login, make_user

TEN = datetime(2025, 1, 1, 10, tzinfo=UTC)  # the window: [10:00, 12:00) UTC
WINDOW = "since=2025-01-01T10:00:00Z&until=2025-01-01T12:00:00Z"
FIGURES = [
    "calls",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "unknown_usage_calls",
    "p50_ms",
    "p95_ms",
    "ttfb_p50_ms",
    "failed_attempts",
    "fell_back",
]

Usage = tuple[int | None, int | None, int | None]  # prompt, completion, total
UNKNOWN: Usage = (None, None, None)


def call(
    model: str,
    username: str | None,
    status: int,
    latency_ms: float,
    ttfb_ms: float | None = None,
    usage: Usage = UNKNOWN,
    at: timedelta = timedelta(0),
    base: datetime = TEN,
    failed: str | None = None,
) -> dict[str, Any]:
    prompt, completion, total = usage
    return {
        "ts": base + at,
        "request_id": f"rq-{model}-{latency_ms}",
        "model": model,
        "user_id": f"id-{username}" if username else None,
        "username": username,
        "route": f"/models/{model}/**",
        "status": status,
        "latency_ms": latency_ms,
        "ttfb_ms": ttfb_ms,
        "bytes_in": 10,
        "bytes_out": 20,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total,
        "attempts": 1 + (failed.count(",") + 1 if failed else 0),
        "failed_models": failed,
    }


def second(n: int) -> timedelta:
    return timedelta(seconds=n)


CALLS = [
    # alpha / alice
    call("alpha", "alice", 200, 10.0, 4.0, (10, 5, 15), at=second(0)),  # since is inclusive
    call("alpha", "alice", 200, 20.0, 6.0, (20, 10, 30), at=second(1)),
    call("alpha", "alice", 500, 30.0, at=second(2)),
    call("alpha", "alice", 200, 40.0, 8.0, at=second(3)),  # answered, usage unknown
    # alpha / bob
    call("alpha", "bob", 0, 50.0, at=second(4)),  # nothing answered: an error
    call("alpha", "bob", 200, 60.0, 2.0, (1, 2, 3), at=second(5)),
    call("alpha", "bob", 404, 70.0, usage=(7, 0, 7), at=second(6)),  # 4xx: not an error
    # beta
    call("beta", "alice", 503, 100.0, at=second(7)),
    call("beta", "alice", 200, 200.0, 50.0, (100, 50, 150), at=second(8)),
    call("beta", "bob", 200, 300.0, usage=(5, None, 5), at=second(9)),  # total only
    call("beta", None, 200, 400.0, 30.0, at=second(10)),  # no signed-in user
    # outside [10:00, 12:00)
    call("alpha", "alice", 500, 999.0, 1.0, (1000, 1000, 2000), at=-second(1)),
    call("alpha", "alice", 500, 998.0, 1.0, (1000, 1000, 2000), at=timedelta(hours=2)),
]


def figures(*values: Any, failed_attempts: int = 0, fell_back: int = 0) -> dict[str, Any]:
    """The nine figures of every item in order, then the fallback counts."""
    extra = {"failed_attempts": failed_attempts, "fell_back": fell_back}
    return dict(zip(FIGURES[:-2], values, strict=True)) | extra


BY_MODEL = [
    {"model": "alpha", **figures(7, 2, 38, 17, 55, 3, 40.0, 70.0, 4.0)},
    {"model": "beta", **figures(4, 1, 105, 50, 155, 2, 200.0, 400.0, 30.0)},
]
BY_USER = [
    {"user": "alice", **figures(6, 2, 130, 65, 195, 3, 30.0, 200.0, 6.0)},
    {"user": "bob", **figures(4, 1, 13, 2, 15, 1, 60.0, 300.0, 2.0)},
    {"user": None, **figures(1, 0, 0, 0, 0, 1, 400.0, 400.0, 30.0)},  # anonymous last
]
BY_BOTH = [
    {"model": "alpha", "user": "alice", **figures(4, 1, 30, 15, 45, 2, 20.0, 40.0, 6.0)},
    {"model": "alpha", "user": "bob", **figures(3, 1, 8, 2, 10, 1, 60.0, 70.0, 2.0)},
    {"model": "beta", "user": "alice", **figures(2, 1, 100, 50, 150, 1, 100.0, 200.0, 50.0)},
    {"model": "beta", "user": "bob", **figures(1, 0, 5, 0, 5, 0, 300.0, 300.0, None)},
    {"model": "beta", "user": None, **figures(1, 0, 0, 0, 0, 1, 400.0, 400.0, 30.0)},
]


@pytest.fixture
async def client(gateway: MakeGateway, policies: Path, database_url: str) -> Client:
    return await gateway(identity_config(), database_url=database_url)


async def plant(client: Client, *rows: dict[str, Any]) -> None:
    async with client.app[SERVICES].engine.begin() as connection:
        await connection.execute(insert(ReportLog), list(rows))


async def items(client: Client, headers: dict[str, str], query: str) -> list[dict[str, Any]]:
    resp = await client.get(f"/admin/usage?{query}", headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert body["next_cursor"] is None
    found: list[dict[str, Any]] = body["items"]
    return found


async def problem(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.headers["Content-Type"] == "application/problem+json"
    body: dict[str, Any] = await resp.json()
    return body


def read_csv(text: str) -> tuple[list[str], list[dict[str, Any]]]:
    """The header and the rows, each cell typed back as the JSON has it ("" is null)."""
    header, *rows = list(csv.reader(io.StringIO(text, newline="")))

    def typed(name: str, cell: str) -> Any:
        if cell == "":
            return None
        if name.endswith("_ms"):
            return float(cell)
        if name in FIGURES:
            return int(cell)
        return cell

    return header, [
        {name: typed(name, cell) for name, cell in zip(header, row, strict=True)} for row in rows
    ]


# --- figures ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("group_by", "expected"),
    [
        ("", BY_MODEL),  # model is the default
        ("&group_by=model", BY_MODEL),
        ("&group_by=user", BY_USER),
        ("&group_by=model,user", BY_BOTH),
        ("&group_by=user,model", BY_BOTH),  # the order asked for changes nothing
        ("&group_by=model,model", BY_MODEL),
    ],
)
async def test_figures_per_group(
    client: Client, root: dict[str, str], group_by: str, expected: list[dict[str, Any]]
) -> None:
    await plant(client, *CALLS)
    found = await items(client, root, WINDOW + group_by)
    assert found == expected
    for item in found:  # the group keys not asked for are absent, not null
        assert list(item) == [k for k in ("model", "user") if k in expected[0]] + FIGURES


async def test_unknown_usage_is_never_counted_as_zero(client: Client, root: dict[str, str]) -> None:
    await plant(client, call("gamma", "carol", 200, 5.0), call("gamma", "carol", 200, 6.0))
    (item,) = await items(client, root, WINDOW)
    assert item == {"model": "gamma", **figures(2, 0, 0, 0, 0, 2, 5.0, 6.0, None)}


async def test_the_models_that_failed_before_an_answer_count_per_model(
    client: Client, root: dict[str, str]
) -> None:
    await plant(
        client,
        # main failed, backup answered; main failed, backup failed, spare answered
        call("backup", "alice", 200, 5.0, failed="main", at=second(0)),
        call("spare", "alice", 200, 6.0, failed="main,backup", at=second(1)),
        # backup asked for and answering
        call("backup", "bob", 200, 7.0, at=second(2)),
    )
    assert await items(client, root, WINDOW) == [
        {"model": "backup", **figures(2, 0, 0, 0, 0, 2, 5.0, 7.0, None, failed_attempts=1)},
        # main never answered: no calls, its two failures each fell back
        {
            "model": "main",
            **figures(0, 0, 0, 0, 0, 0, None, None, None, failed_attempts=2, fell_back=2),
        },
        {"model": "spare", **figures(1, 0, 0, 0, 0, 1, 6.0, 6.0, None)},
    ]
    by_both = await items(client, root, WINDOW + "&group_by=model,user")
    assert [(i["model"], i["user"], i["calls"], i["failed_attempts"]) for i in by_both] == [
        ("backup", "alice", 1, 1),
        ("backup", "bob", 1, 0),
        ("main", "alice", 0, 2),
        ("spare", "alice", 1, 0),
    ]
    _, rows = read_csv(
        await (await client.get(f"/admin/usage?{WINDOW}&format=csv", headers=root)).text()
    )
    assert [(r["model"], r["failed_attempts"], r["fell_back"]) for r in rows] == [
        ("backup", 1, 0),
        ("main", 2, 2),
        ("spare", 0, 0),
    ]


async def test_an_empty_window_has_no_items(client: Client, root: dict[str, str]) -> None:
    assert await items(client, root, WINDOW) == []
    assert await items(client, root, "group_by=model,user") == []


# --- the window ---------------------------------------------------------------------


async def test_since_is_inclusive_and_until_exclusive(client: Client, root: dict[str, str]) -> None:
    await plant(client, *CALLS)
    (item,) = await items(client, root, "since=2025-01-01T10:00:00Z&until=2025-01-01T10:00:03Z")
    assert item == {"model": "alpha", **figures(3, 1, 30, 15, 45, 1, 20.0, 30.0, 4.0)}
    # offsets are honoured: 11:00+01:00 is 10:00Z, 12:00+01:00 is 11:00Z
    offset = await items(
        client, root, "since=2025-01-01T11:00:00%2B01:00&until=2025-01-01T12:00:00%2B01:00"
    )
    assert offset == BY_MODEL
    assert await items(client, root, "since=2025-01-01T10:00:00Z&until=2025-01-01T10:00:00Z") == []


async def test_until_alone_looks_back_one_day(client: Client, root: dict[str, str]) -> None:
    await plant(client, *CALLS)
    found = await items(client, root, "until=2025-01-01T12:00:00Z")  # since: 2024-12-31T12:00Z
    assert [(i["model"], i["calls"]) for i in found] == [("alpha", 8), ("beta", 4)]
    found = await items(client, root, "until=2025-01-01T10:00:00Z")
    assert [(i["model"], i["calls"], i["p50_ms"]) for i in found] == [("alpha", 1, 999.0)]


async def test_since_alone_runs_until_now(client: Client, root: dict[str, str]) -> None:
    await plant(client, *CALLS)
    found = await items(client, root, "since=2025-01-01T10:00:00Z")
    assert [(i["model"], i["calls"]) for i in found] == [("alpha", 8), ("beta", 4)]


async def test_the_default_window_is_the_last_day(client: Client, root: dict[str, str]) -> None:
    now = datetime.fromtimestamp(time.time(), UTC)
    await plant(
        client,
        call("delta", "alice", 200, 5.0, base=now, at=-timedelta(minutes=1)),
        call("delta", "alice", 200, 6.0, base=now, at=-timedelta(days=2)),
        call("delta", "alice", 200, 7.0, base=now, at=timedelta(hours=1)),  # a skewed clock
    )
    (item,) = await items(client, root, "")
    assert (item["model"], item["calls"], item["p50_ms"]) == ("delta", 1, 5.0)


# --- CSV ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("group_by", "expected"),
    [("model", BY_MODEL), ("user", BY_USER), ("model,user", BY_BOTH)],
)
async def test_csv_has_the_same_columns_and_values(
    client: Client, root: dict[str, str], group_by: str, expected: list[dict[str, Any]]
) -> None:
    await plant(client, *CALLS)
    query = f"/admin/usage?{WINDOW}&group_by={group_by}&format=csv"
    resp = await client.get(query, headers={**root, "Accept": "text/csv"})
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == "text/csv; charset=utf-8"
    text = await resp.text()
    assert text.endswith("\r\n")
    header, rows = read_csv(text)
    assert header == list(expected[0])  # the JSON keys, in their order
    assert rows == expected
    json_items = await items(client, root, f"{WINDOW}&group_by={group_by}")
    assert rows == json_items


async def test_csv_quotes_what_needs_quoting(client: Client, root: dict[str, str]) -> None:
    odd = 'odd, "quoted"\nname'  # not a name routes.yaml admits, but a row may hold it
    await plant(client, call(odd, "alice", 200, 5.0, usage=(1, 2, 3)))
    resp = await client.get(f"/admin/usage?{WINDOW}&format=csv", headers=root)
    assert resp.status == 200
    text = await resp.text()
    assert '"odd, ""quoted""\nname"' in text
    _, rows = read_csv(text)
    assert rows == [{"model": odd, **figures(1, 0, 1, 2, 3, 0, 5.0, 5.0, None)}]


async def test_an_empty_csv_still_has_its_header(client: Client, root: dict[str, str]) -> None:
    resp = await client.get(
        f"/admin/usage?{WINDOW}&group_by=user&format=csv", headers={**root, "Accept": "text/csv"}
    )
    assert resp.status == 200
    assert await resp.text() == ",".join(["user", *FIGURES]) + "\r\n"


async def test_accept_text_csv_passes_only_for_the_csv_export(
    client: Client, root: dict[str, str]
) -> None:
    csv_only = {**root, "Accept": "text/csv"}
    ok = await client.get(f"/admin/usage/?{WINDOW}&format=csv", headers=csv_only)
    assert ok.status == 200
    for path in (f"/admin/usage?{WINDOW}", "/admin/reports?format=csv", "/admin/users"):
        resp = await client.get(path, headers=csv_only)
        assert (await problem(resp, 406))["code"] == "not_acceptable"
    # a refused export is still a problem+json, whatever Accept said
    resp = await client.get("/admin/usage?format=csv&since=soon", headers=csv_only)
    assert "since" in (await problem(resp, 400))["detail"]


# --- refusals -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ("since=yesterday", ["since"]),
        ("since=2025-01-01T10:00:00", ["since"]),  # no offset
        ("until=2025-13-01T00:00:00Z", ["until"]),
        ("until=now", ["until"]),
        ("since=2025-01-02T00:00:00Z&until=2025-01-01T00:00:00Z", ["since", "until"]),
        ("since=2999-01-01T00:00:00Z", ["since", "until"]),  # after now
        ("group_by=team", ["group_by", "'team'"]),
        ("group_by=model,team", ["group_by", "'team'"]),
        ("group_by=Model", ["group_by", "'Model'"]),
        ("group_by=model,", ["group_by", "''"]),
        ("group_by=model, user", ["group_by", "' user'"]),
        ("format=xml", ["format"]),
        ("format=json", ["format"]),
        ("format=CSV", ["format"]),
    ],
)
async def test_bad_parameters_are_400_naming_them(
    client: Client, root: dict[str, str], query: str, names: list[str]
) -> None:
    body = await problem(await client.get(f"/admin/usage?{query}", headers=root), 400)
    assert body["code"] == "invalid_query"
    for name in names:
        assert name in body["detail"]


async def test_only_admins_read_usage(client: Client, root: dict[str, str]) -> None:
    await make_user(client, "ulla")
    user = bearer(await login(client, "ulla"))
    for query in ("", "?format=csv"):
        resp = await client.get(f"/admin/usage{query}", headers={**user, "Accept": "text/csv"})
        assert (await problem(resp, 403))["code"] == "role_forbidden"
        resp = await client.get(f"/admin/usage{query}")
        await problem(resp, 401)
