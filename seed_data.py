"""Fill an empty gateway database with development data: one user per role (sample rows on ask).

Run from the project root: `python seed_data.py [--config routes.yaml] [--samples]`.
The database is GATEWAY_DATABASE_URL, or gateway.db beside routes.yaml; it is
migrated first. Each user gets a random password, printed by the run that made
it and saved in `.dev-credentials.json` beside routes.yaml (mode 0600,
gitignored) under that database's URL, beside other databases' users. A
database that already has users is left alone: running this twice creates
nothing. `--samples` adds an hour of made-up audit and report rows, each
marked as such: request id `sample-…`, client address 192.0.2.1 (RFC 5737's
documentation range), so they never pass for real traffic.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.cli.config_file import config_argument, load_or_report
from gateway.config import Config
from gateway.demo.credentials import CREDENTIALS_FILE, accounts_for, save
from gateway.services import StartupError, ensure_schema, password_service
from gateway.store.connection_errors import database_errors, describe_connection_error, masked_url
from gateway.store.engine import database_url, make_engine, make_sessions
from models import AuditLog, ReportLog, User

PASSWORD_BYTES = 18  # token_urlsafe: 24 characters
SAMPLE_ID = "sample-"  # the request_id prefix of every made-up row
SAMPLE_CLIENT = "192.0.2.1"  # TEST-NET-1 (RFC 5737): no real client has it


@dataclass(frozen=True, slots=True)
class DevUser:
    username: str
    password: str
    role: str


@dataclass(frozen=True, slots=True)
class SeedResult:
    """What a run did: `users` is empty when the database already had users."""

    users: tuple[DevUser, ...]
    audit_rows: int
    report_rows: int
    existing_users: int
    credentials: Path


def credentials_path(config: Config) -> Path:
    return config.path.parent / CREDENTIALS_FILE


def dev_users(config: Config) -> list[DevUser]:
    """One user per role of the policies, `dev-ROLE`, each with a fresh random password."""
    return [
        DevUser(f"dev-{role}", secrets.token_urlsafe(PASSWORD_BYTES), role)
        for role in sorted(config.policy.roles)
    ]


# (minutes ago, method, path, status, latency ms, deny reason, role of the caller or None).
# Statuses cover what an operator looks for: denials, limits and upstream failures.
AUDIT = [
    (55.0, "POST", "/auth/login", 200, 41.2, None, "user"),
    (52.5, "POST", "/models/demo/v1/chat/completions", 200, 812.4, None, "user"),
    (48.0, "GET", "/analytics/reports/daily", 401, 0.9, "missing_token", None),
    (44.3, "GET", "/analytics/reports/daily", 403, 1.3, "role_forbidden", "user"),
    (40.1, "GET", "/analytics/reports/daily", 200, 37.8, None, "analyst"),
    (33.7, "POST", "/models/demo/v1/chat/completions", 200, 1240.6, None, "analyst"),
    (30.2, "POST", "/models/demo/v1/chat/completions", 429, 0.7, "rate_limited", "analyst"),
    (21.9, "GET", "/analytics/usage", 200, 52.1, None, "admin"),
    (15.4, "POST", "/models/demo/v1/completions", 502, 3.4, "upstream_unreachable", "admin"),
    (12.0, "POST", "/models/demo/v1/chat/completions", 200, 488.9, None, "admin"),
    (9.8, "GET", "/admin/audit-logs", 200, 12.6, None, "admin"),
    (4.2, "POST", "/models/demo/v1/chat/completions", 200, 655.0, None, "user"),
    (1.1, "GET", "/models/demo/v1/models", 401, 0.8, "invalid_token", None),
]

# The model calls among AUDIT (same minute): (minutes ago, ttfb ms, prompt, completion
# tokens); None tokens: usage unknown.
REPORTS = {
    52.5: (120.3, 42, 118),
    33.7: (98.1, 310, 402),
    15.4: (None, None, None),  # refused: no answer, no usage
    12.0: (61.7, None, None),  # a streamed answer that never reported its usage
    4.2: (88.4, 57, 96),
}


def _caller(users: Sequence[User], role: str | None) -> User | None:
    """The seeded user of `role`, else the first one (policies may name other roles)."""
    if role is None or not users:
        return None
    return next((u for u in users if u.role == role), users[0])


def activity(users: Sequence[User], moment: datetime) -> list[AuditLog | ReportLog]:
    """Sample audit rows of the last hour by `users`, and a report row for each model call;
    each marked as a sample (request_id `sample-…`, client 192.0.2.1)."""
    rows: list[AuditLog | ReportLog] = []
    for ago, method, path, status, latency, reason, role in AUDIT:
        user = _caller(users, role)
        common: dict[str, Any] = {
            "ts": moment - timedelta(minutes=ago),
            "request_id": SAMPLE_ID + uuid.uuid4().hex,
            "user_id": user.id if user else None,
            "username": user.username if user else None,
            "route": _route_of(path),
            "status": status,
            "latency_ms": latency,
            "bytes_in": 180 if method == "POST" else 0,
            "bytes_out": 1450 if status == 200 else 190,
        }
        rows.append(
            AuditLog(
                **common,
                role=user.role if user else None,
                method=method,
                path=path,
                upstream=_upstream_of(path),
                client_ip=SAMPLE_CLIENT,
                reason=reason,
            )
        )
        if ago in REPORTS:
            ttfb, prompt, completion = REPORTS[ago]
            total = prompt + completion if prompt is not None and completion is not None else None
            rows.append(
                ReportLog(
                    **common,
                    model="demo",
                    ttfb_ms=ttfb,
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                    total_tokens=total,
                    attempts=1,
                )
            )
    return rows


def _route_of(path: str) -> str | None:
    for prefix in ("/models/demo/", "/analytics/", "/admin/"):
        if path.startswith(prefix):
            return prefix + "**"
    return path if path == "/auth/login" else None


def _upstream_of(path: str) -> str | None:
    if path.startswith("/models/demo/"):
        return "demo"
    return "analytics" if path.startswith("/analytics/") else None


async def seed(config: Config, url: str, samples: bool = False) -> SeedResult:
    """Migrate, then seed the database at `url` unless it already has users; with
    `samples`, the made-up audit and report rows of `activity` too."""
    path = credentials_path(config)
    engine = make_engine(url)
    try:
        await ensure_schema(engine, url)
        sessions = make_sessions(engine)
        existing = await _count_users(sessions)
        if existing:
            return SeedResult((), 0, 0, existing, path)
        people = dev_users(config)
        passwords = password_service(config.auth)
        hashes = await asyncio.to_thread(lambda: [passwords.hash(u.password) for u in people])
        moment = datetime.now(UTC)
        rows = [
            User(
                id=uuid.uuid4().hex,
                username=person.username,
                password_hash=password_hash,
                role=person.role,
                active=True,
                created_at=moment,
                updated_at=moment,
            )
            for person, password_hash in zip(people, hashes, strict=True)
        ]
        extra = activity(rows, moment) if samples else []
        async with sessions() as session, session.begin():
            session.add_all([*rows, *extra])
    except IntegrityError:
        # Another seeder won the race between the count and the insert.
        return SeedResult((), 0, 0, await _count_users(sessions), path)
    finally:
        await engine.dispose()
    # Written after the commit: the file never holds passwords the database lacks.
    write_credentials(path, masked_url(url), people)
    audit = sum(isinstance(row, AuditLog) for row in extra)
    return SeedResult(tuple(people), audit, len(extra) - audit, 0, path)


async def _count_users(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(User)) or 0)


def write_credentials(path: Path, database: str, users: Sequence[DevUser]) -> None:
    """Save username → {password, role} under `database` (a masked URL), keeping the other
    databases' users; readable by the owner only (0600)."""
    save(path, database, {u.username: {"password": u.password, "role": u.role} for u in users})


def report(result: SeedResult, url: str) -> list[str]:
    """The lines to print: passwords once, on the run that made them; never a hash."""
    if not result.users:
        saved = (
            f"dev credentials: {result.credentials}"
            if accounts_for(result.credentials, masked_url(url))
            else f"no dev credentials for this database in {result.credentials} (removed, or "
            "the users were not made by seed_data.py)"
        )
        return [
            f"already seeded: {masked_url(url)} has {result.existing_users} users; nothing created",
            saved,
        ]
    samples = (
        f", {result.audit_rows} sample audit rows and {result.report_rows} sample report rows "
        f"(request_id {SAMPLE_ID}…)"
        if result.audit_rows or result.report_rows
        else " (no audit or report rows; --samples adds made-up ones)"
    )
    return [
        f"seeded {masked_url(url)}: {len(result.users)} users{samples}",
        "username / password / role:",
        *(f"{u.username} / {u.password} / {u.role}" for u in result.users),
        f"saved to {result.credentials} (mode 0600, under this database's URL): "
        "look them up there later",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    config_argument(parser)
    parser.add_argument(
        "--samples",
        action="store_true",
        help="add an hour of made-up audit and report rows (request_id sample-…, "
        f"client {SAMPLE_CLIENT})",
    )
    args = parser.parse_args(argv)
    config = load_or_report(args.config)
    if config is None:
        return 1
    if not config.policy.roles:
        print(
            f"{config.policies_dir}: the policies define no roles: nothing to seed", file=sys.stderr
        )
        return 1
    url = database_url(config.base_dir)
    try:
        result = asyncio.run(seed(config, url, samples=args.samples))
    except StartupError as exc:
        print(exc, file=sys.stderr)
        return 1
    except database_errors() as exc:
        print(f"database {masked_url(url)}: {describe_connection_error(exc)}", file=sys.stderr)
        return 1
    print("\n".join(report(result, url)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
