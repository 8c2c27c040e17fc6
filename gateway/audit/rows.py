"""The audit and report rows: what one request leaves behind, built from plain values.

No aiohttp here: the audit stage gathers the values, these functions make the
row. A row holds no header, query string or body, so no secret (Authorization,
cookies, passwords, tokens) can reach the database through it. Strings are cut
to their column's width, so no value can make the database refuse a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson
from sqlalchemy import Table

from gateway.usage import UNKNOWN, Usage
from models import AuditLog, ReportLog


def _width(table: Table, column: str) -> int:
    length = getattr(table.c[column].type, "length", None)
    assert isinstance(length, int), f"{table.name}.{column} has no width"
    return length


# Taken from the models, so a migration that widens a column widens these too.
_AUDIT: Table = AuditLog.__table__  # type: ignore[assignment]
_REPORT: Table = ReportLog.__table__  # type: ignore[assignment]
_ID = _width(_AUDIT, "request_id")
_USER_ID = _width(_AUDIT, "user_id")
_USER = _width(_AUDIT, "username")
_ROLE = _width(_AUDIT, "role")
_METHOD = _width(_AUDIT, "method")
_PATH = _width(_AUDIT, "path")
_ROUTE = _width(_AUDIT, "route")
_UPSTREAM = _width(_AUDIT, "upstream")
_IP = _width(_AUDIT, "client_ip")
_REASON = _width(_AUDIT, "reason")
_MODEL = _width(_REPORT, "model")
_FAILED = _width(_REPORT, "failed_models")


class AuditRow(NamedTuple):
    """One request, allowed or denied: a row of audit_logs (field names are its columns)."""

    ts: float  # epoch seconds when the response was finished (it arrived latency_ms earlier)
    request_id: str
    user_id: str | None
    username: str | None
    role: str | None
    method: str
    path: str  # the normalised path; never the query string
    route: str | None  # the matched route's pattern
    upstream: str | None
    status: int
    latency_ms: float
    client_ip: str | None
    bytes_in: int
    bytes_out: int
    reason: str | None  # the deny reason code, or why a response ended early
    # unique per request across processes (gateway/audit/journal.py): a replayed
    # journal never inserts a row twice; None for rows no request made (reloads)
    journal_id: str | None = None


class ReportRow(NamedTuple):
    """One call to a model route: a row of report_logs (token counts NULL: unknown)."""

    ts: float
    request_id: str
    model: str
    user_id: str | None
    username: str | None
    route: str | None
    status: int
    latency_ms: float
    bytes_in: int
    bytes_out: int
    ttfb_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    attempts: int = 1  # models called (more than one after a fallback)
    journal_id: str | None = None  # its request's (see AuditRow)
    # the models that failed and fell back before `model`, comma-separated (None: none);
    # last, so that journal and spool lines written before it still read
    failed_models: str | None = None


Row = AuditRow | ReportRow


def _clip(value: str | None, width: int) -> str | None:
    # Slicing a short str returns the same object: no copy on the common path.
    return value[:width] if value is not None else None


def audit_row(
    ts: float,
    request_id: str,
    user_id: str | None,
    username: str | None,
    role: str | None,
    method: str,
    path: str,
    route: str | None,
    upstream: str | None,
    status: int,
    latency: float,
    client_ip: str,
    bytes_in: int,
    bytes_out: int,
    reason: str | None,
    journal_id: str | None = None,
) -> AuditRow:
    """The audit row of one request; `latency` in seconds.

    The audit stage passes the values by position, once or twice per request:
    sixteen keywords cost about 1 us more a call (measured)."""
    return AuditRow(
        ts,
        request_id[:_ID],
        _clip(user_id, _USER_ID),
        _clip(username, _USER),
        _clip(role, _ROLE),
        method[:_METHOD],
        path[:_PATH],
        _clip(route, _ROUTE),
        _clip(upstream, _UPSTREAM),
        status,
        round(latency * 1000.0, 3),
        client_ip[:_IP] or None,
        bytes_in,
        bytes_out,
        _clip(reason, _REASON),
        journal_id,
    )


def _names(models: Sequence[str] | None) -> str | None:
    """Model names comma-separated, each cut to the model column's width; whole names
    only, as many as fit the column (None: none)."""
    if not models:
        return None
    text = ""
    for name in models:
        more = f"{text},{name[:_MODEL]}" if text else name[:_MODEL]
        if len(more) > _FAILED:
            break
        text = more
    return text


def report_row(
    row: AuditRow,
    model: str,
    ttfb: float | None = None,
    usage: Usage | None = None,
    attempts: int = 1,
    failed: Sequence[str] | None = None,
) -> ReportRow:
    """The report row of a model call, from the call's audit row, its time to first
    byte (seconds), the token usage its response reported (None: unknown), the
    number of models called and the ones among them that failed and fell back."""
    known = usage if usage is not None else UNKNOWN
    return ReportRow(
        row.ts,
        row.request_id,
        model[:_MODEL],
        row.user_id,
        row.username,
        row.route,
        row.status,
        row.latency_ms,
        row.bytes_in,
        row.bytes_out,
        round(ttfb * 1000.0, 3) if ttfb is not None else None,
        known.prompt_tokens,
        known.completion_tokens,
        known.total_tokens,
        attempts,
        row.journal_id,
        _names(failed),
    )


def to_params(row: Row) -> dict[str, Any]:
    """The row as INSERT parameters: its columns, `ts` as an aware UTC datetime."""
    params = row._asdict()
    params["ts"] = datetime.fromtimestamp(row.ts, UTC)
    return params


# The spool names each row's table, so one file keeps both kinds in order.
TABLES: dict[type[Row], str] = {AuditRow: "audit_logs", ReportRow: "report_logs"}
_KINDS: dict[str, type[Row]] = {name: kind for kind, name in TABLES.items()}


def to_spool(row: Row) -> dict[str, Any]:
    return {"table": TABLES[type(row)], "row": row._asdict()}


def from_spool(entry: Any) -> Row:
    """A spooled row back; ValueError for a line that is not one this module wrote."""
    if not isinstance(entry, dict):
        raise ValueError("a spool line must be a JSON object")
    kind = _KINDS.get(entry.get("table"))  # type: ignore[arg-type]
    fields = entry.get("row")
    if kind is None or not isinstance(fields, dict):
        raise ValueError("a spool line needs a known table and a row")
    try:
        return kind(**fields)
    except TypeError as exc:
        raise ValueError(f"a spooled row does not fit {kind.__name__}: {exc}") from None


# A journal line is arrays, not objects: it is written once per response, on the
# request path, and an array of the fields encodes in a third of the time.
def journal_line(final: bool, audit: AuditRow, report: ReportRow | None = None) -> bytes:
    """One journal record, newline included: `[final, audit fields, report fields or null]`."""
    return orjson.dumps(
        (final, audit[:], report[:] if report is not None else None),
        option=orjson.OPT_APPEND_NEWLINE,
    )


def from_journal(line: bytes) -> tuple[bool, AuditRow, ReportRow | None]:
    """A journal line back; ValueError for one that is not whole or not this module's."""
    entry = orjson.loads(line)  # orjson.JSONDecodeError is a ValueError
    if not isinstance(entry, list) or len(entry) != 3:
        raise ValueError("a journal line must be [final, audit row, report row]")
    final, audit, report = entry
    if not isinstance(audit, list) or not (report is None or isinstance(report, list)):
        raise ValueError("a journal line's rows must be arrays")
    try:
        row = AuditRow(*audit)
        extra = ReportRow(*report) if report is not None else None
    except TypeError as exc:
        raise ValueError(f"a journal row does not fit its table: {exc}") from None
    if not isinstance(row.journal_id, str):
        raise ValueError("a journal row has no journal id")
    return bool(final), row, extra
