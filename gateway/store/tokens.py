"""Refresh tokens: issue, spend exactly once, revoke a family.

Only a SHA-256 of each refresh token is stored. Spending is one conditional
UPDATE (`… WHERE spent_at IS NULL`), so of two concurrent refreshes of one
token exactly one wins, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.store.guard import DEFAULT_TIMEOUT, guarded
from models import RefreshToken


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class SpendOutcome(Enum):
    SPENT = "spent"  # this call spent it: issue the next pair
    REUSED = "reused"  # it was spent before: the family is now revoked
    INVALID = "invalid"  # unknown, expired or revoked


@dataclass(frozen=True, slots=True)
class Spend:
    outcome: SpendOutcome
    user_id: str | None = None
    family_id: str | None = None
    # access tokens of the family to revoke (jti, expiry as epoch seconds)
    revoked_access: tuple[tuple[str, float], ...] = ()


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@guarded  # each public call: bounded by `timeout`, an unreachable database is a 503
class RefreshTokenStore:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self._sessions = sessions
        self.timeout = timeout

    async def issue(
        self,
        token: str,
        user_id: str,
        family_id: str,
        ttl: float,
        access_jti: str,
        access_exp: float,
    ) -> None:
        issued = datetime.now(UTC)
        async with self._sessions() as session, session.begin():
            session.add(
                RefreshToken(
                    id=uuid.uuid4().hex,
                    token_hash=token_hash(token),
                    family_id=family_id,
                    user_id=user_id,
                    issued_at=issued,
                    expires_at=issued + timedelta(seconds=ttl),
                    access_jti=access_jti,
                    access_expires_at=datetime.fromtimestamp(access_exp, UTC),
                )
            )

    async def spend(self, token: str) -> Spend:
        digest = token_hash(token)
        moment = datetime.now(UTC)
        async with self._sessions() as session, session.begin():
            won = await session.execute(
                update(RefreshToken)
                .where(
                    RefreshToken.token_hash == digest,
                    RefreshToken.spent_at.is_(None),
                    RefreshToken.revoked_at.is_(None),
                    RefreshToken.expires_at > moment,
                )
                .values(spent_at=moment)
                .returning(RefreshToken.user_id, RefreshToken.family_id)
            )
            row = won.first()
            if row is not None:
                return Spend(SpendOutcome.SPENT, row.user_id, row.family_id)
            known = (
                await session.execute(
                    select(
                        RefreshToken.family_id, RefreshToken.user_id, RefreshToken.spent_at
                    ).where(RefreshToken.token_hash == digest)
                )
            ).first()
        if known is None or known.spent_at is None:
            return Spend(SpendOutcome.INVALID)
        # A spent token came back: it was stolen or replayed. Revoke the family.
        revoked = await self.revoke_family(known.family_id)
        return Spend(SpendOutcome.REUSED, known.user_id, known.family_id, revoked)

    async def revoke_family(self, family_id: str) -> tuple[tuple[str, float], ...]:
        return await self._revoke(RefreshToken.family_id == family_id)

    async def revoke_user(self, user_id: str) -> tuple[tuple[str, float], ...]:
        return await self._revoke(RefreshToken.user_id == user_id)

    async def family_of_access(self, access_jti: str) -> str | None:
        async with self._sessions() as session:
            return await session.scalar(
                select(RefreshToken.family_id).where(RefreshToken.access_jti == access_jti)
            )

    async def revoked_access(self) -> tuple[tuple[str, float], ...]:
        """Every revoked access token still unexpired (jti, expiry as epoch seconds).

        What Redis must hold as revocations; it is rebuilt from this after an outage."""
        async with self._sessions() as session:
            return await _live_access(session, RefreshToken.revoked_at.is_not(None))

    async def _revoke(self, condition: object) -> tuple[tuple[str, float], ...]:
        moment = datetime.now(UTC)
        async with self._sessions() as session, session.begin():
            await session.execute(
                update(RefreshToken)
                .where(condition, RefreshToken.revoked_at.is_(None))  # type: ignore[arg-type]
                .values(revoked_at=moment)
            )
            return await _live_access(session, condition)


async def _live_access(session: AsyncSession, condition: object) -> tuple[tuple[str, float], ...]:
    """(jti, expiry in epoch seconds) of the live access tokens of the rows `condition` picks."""
    rows = await session.execute(
        select(RefreshToken.access_jti, RefreshToken.access_expires_at).where(
            condition,  # type: ignore[arg-type]
            RefreshToken.access_jti.is_not(None),
            RefreshToken.access_expires_at > datetime.now(UTC),
        )
    )
    return tuple(
        (row.access_jti, _utc(row.access_expires_at).timestamp())
        for row in rows
        if row.access_jti is not None and row.access_expires_at is not None
    )
