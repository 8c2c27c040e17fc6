"""Queries on users: lookups, creation, guarded updates, cursor pages.

Rows leave this module as frozen `UserRecord`s, never as ORM objects, and
the last active admin cannot be demoted, deactivated or deleted: the guard
runs inside the UPDATE's own transaction, so two concurrent demotions of
two admins cannot both pass.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.config.policies import ADMIN_ROLE
from gateway.problems import GatewayError
from gateway.store.guard import DEFAULT_TIMEOUT, guarded
from models import User

DELETED_PREFIX = "deleted-"  # deleted users are renamed so; new names may not start so
NO_PASSWORD = "!"  # not an argon2 hash: no password verifies against it  # noqa: S105


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: str
    username: str
    role: str
    active: bool
    display_name: str | None
    email: str | None
    created_at: datetime
    updated_at: datetime
    password_hash: str  # never leaves the gateway: `public()` leaves it out

    def public(self) -> dict[str, Any]:
        """The user as the API shows it (README "Identity"): no hash, ever."""
        return {
            "id": self.id,
            "username": self.username,
            "role": self.role,
            "active": self.active,
            "display_name": self.display_name,
            "email": self.email,
            "created_at": iso_utc(self.created_at),
            "updated_at": iso_utc(self.updated_at),
        }


def iso_utc(moment: datetime) -> str:
    """RFC 3339 in UTC with a Z, e.g. 2025-01-31T08:00:00.123456Z."""
    if moment.tzinfo is None:  # SQLite hands back naive datetimes; they are UTC
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _record(row: User) -> UserRecord:
    return UserRecord(
        id=row.id,
        username=row.username,
        role=row.role,
        active=row.active,
        display_name=row.display_name,
        email=row.email,
        created_at=row.created_at,
        updated_at=row.updated_at,
        password_hash=row.password_hash,
    )


def now() -> datetime:
    return datetime.now(UTC)


def last_admin() -> GatewayError:
    return GatewayError(
        409, "last_admin", "this would leave no active admin; promote another admin first"
    )


def encode_cursor(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(values)).decode().rstrip("=")


def bad_cursor() -> GatewayError:
    return GatewayError.bad_request("cursor is not one this API gave out", "bad_cursor")


def decode_cursor(cursor: str, size: int) -> list[Any]:
    try:
        values = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        raise bad_cursor() from None
    if not isinstance(values, list) or len(values) != size:
        raise bad_cursor()
    return values


def decode_user_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, id) a users page ended at; a 400, never a 500, for a forged one."""
    created, last_id = decode_cursor(cursor, 2)
    if not isinstance(created, str) or not isinstance(last_id, str):
        raise bad_cursor()
    try:
        moment = datetime.fromisoformat(created)
    except ValueError:
        raise bad_cursor() from None
    # SQLite stores UTC wall time and ignores an offset; PostgreSQL wants one.
    moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment, last_id


@guarded  # each public call: bounded by `timeout`, an unreachable database is a 503
class UserStore:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self._sessions = sessions
        self.timeout = timeout

    async def by_username(self, username: str) -> UserRecord | None:
        async with self._sessions() as session:
            # Usernames are unique regardless of case (README); lower() on both
            # sides is the expression the unique index holds, so it is used.
            row = await session.scalar(
                select(User).where(func.lower(User.username) == func.lower(username))
            )
            return _record(row) if row is not None else None

    async def by_id(self, user_id: str) -> UserRecord | None:
        async with self._sessions() as session:
            row = await session.get(User, user_id)
            return _record(row) if row is not None and row.deleted_at is None else None

    async def create(
        self,
        username: str,
        password_hash: str,
        role: str,
        *,
        display_name: str | None = None,
        email: str | None = None,
        active: bool = True,
    ) -> UserRecord:
        moment = now()
        row = User(
            id=uuid.uuid4().hex,
            username=username,
            password_hash=password_hash,
            role=role,
            active=active,
            display_name=display_name,
            email=email,
            created_at=moment,
            updated_at=moment,
        )
        async with self._sessions() as session:
            session.add(row)
            try:
                await session.commit()
            except IntegrityError:
                raise GatewayError(
                    409, "username_taken", f"the username {username!r} is taken"
                ) from None
            return _record(row)

    async def update(self, user_id: str, **values: Any) -> UserRecord:
        """Change fields of a live user; guards the last active admin."""
        async with self._sessions() as session, session.begin():
            if "role" in values or "active" in values:
                await self._lock_admins(session, user_id)
            row = await session.get(User, user_id, populate_existing=True)
            if row is None or row.deleted_at is not None:
                raise GatewayError(404, "user_not_found", f"no user with id {user_id!r}")
            leaves_admin = (
                row.role == ADMIN_ROLE
                and row.active
                and (values.get("role", ADMIN_ROLE) != ADMIN_ROLE or values.get("active") is False)
            )
            if leaves_admin and not await self._other_admin(session, user_id):
                raise last_admin()
            if "username" in values and values["username"] != row.username:
                taken = await session.scalar(
                    select(User.id).where(
                        func.lower(User.username) == func.lower(values["username"]),
                        User.id != user_id,  # a user may change the case of their own name
                    )
                )
                if taken is not None:
                    raise GatewayError(
                        409, "username_taken", f"the username {values['username']!r} is taken"
                    )
            for name, value in values.items():
                setattr(row, name, value)
            row.updated_at = now()
            try:
                await session.flush()
            except IntegrityError:
                raise GatewayError(409, "conflict", "a concurrent change conflicted") from None
            return _record(row)

    @staticmethod
    async def _lock_admins(session: AsyncSession, user_id: str) -> None:
        """Serialise changes that could remove an admin, before anything is read."""
        if session.get_bind().dialect.name == "postgresql":
            # Lock this row and every active admin: a concurrent demotion waits
            # here, then sees this one's result, so both cannot remove "the other".
            await session.execute(
                select(User.id)
                .where(or_(User.id == user_id, and_(User.role == ADMIN_ROLE, User.active)))
                .with_for_update()
            )
        else:
            # SQLite has one writer: take the write lock first (a no-op update),
            # so the reads below see the latest commit and nothing else can write.
            await session.execute(update(User).where(User.id == user_id).values(id=User.id))

    @staticmethod
    async def _other_admin(session: AsyncSession, user_id: str) -> bool:
        other = await session.scalar(
            select(User.id)
            .where(User.role == ADMIN_ROLE, User.active.is_(True), User.id != user_id)
            .limit(1)
        )
        return other is not None

    async def delete(self, user_id: str) -> UserRecord:
        """Deactivate and anonymise (README "Identity"); the row stays for the audit trail."""
        anonymous = f"{DELETED_PREFIX}{user_id[:12]}"
        return await self.update(
            user_id,
            active=False,
            username=anonymous,
            display_name=None,
            email=None,
            password_hash=NO_PASSWORD,
            deleted_at=now(),
        )

    async def page(
        self, limit: int, cursor: str | None, role: str | None = None, active: bool | None = None
    ) -> tuple[list[UserRecord], str | None]:
        query = select(User).where(User.deleted_at.is_(None))
        if role is not None:
            query = query.where(User.role == role)
        if active is not None:
            query = query.where(User.active.is_(active))
        if cursor:
            moment, last_id = decode_user_cursor(cursor)
            query = query.where(
                or_(User.created_at > moment, and_(User.created_at == moment, User.id > last_id))
            )
        query = query.order_by(User.created_at, User.id).limit(limit + 1)
        async with self._sessions() as session:
            rows = list((await session.scalars(query)).all())
        items = [_record(r) for r in rows[:limit]]
        more = len(rows) > limit
        next_cursor = (
            encode_cursor([items[-1].created_at.isoformat(), items[-1].id]) if more else None
        )
        return items, next_cursor

    async def states(self) -> dict[str, tuple[str, bool, str]]:
        """Every user's (role, active, username): what each request is checked against."""
        async with self._sessions() as session:
            rows = await session.execute(select(User.id, User.role, User.active, User.username))
            return {row.id: (row.role, bool(row.active), row.username) for row in rows}

    async def count(self) -> int:
        async with self._sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(User)) or 0)
