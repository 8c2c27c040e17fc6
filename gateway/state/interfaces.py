"""The three kinds of shared state the decisions read, one interface each.

Each has an in-process implementation (one gateway process) and a Redis one
(every instance shares it): `LocalLimiter`/`RedisLimiter` in
gateway/state/limiter.py, `LocalIdentity`/`RedisIdentity` in
gateway/state/identity.py. The decisions (gateway/pipeline/) and the handlers
are typed against these Protocols only, so neither knows which one it has.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gateway.state.gcra import Decision
    from gateway.state.identity import UserState


class Limiter(Protocol):
    """Request rate limits: one GCRA bucket per key (gateway/state/gcra.py)."""

    async def hit(self, key: str, limit: int, period: float, cost: int = 1) -> Decision:
        """Count `cost` units against the key's bucket; the decision says whether they fit."""
        ...

    async def peek(self, key: str, limit: int, period: float) -> Decision:
        """The decision a request would get now, without counting it."""
        ...


class QuotaStore(Protocol):
    """Token quotas: a reservation up front (`hit` with a cost), settled after the call."""

    async def hit(self, key: str, limit: int, period: float, cost: int = 1) -> Decision: ...

    async def settle(self, key: str, limit: int, period: float, delta: int) -> None:
        """Move the bucket by `delta` units (actual use minus the reservation)."""
        ...


class Revocations(Protocol):
    """Revoked access tokens (by `jti`), until they would have expired anyway."""

    async def revoke(self, jti: str, expires_at: float) -> None: ...


class IdentityStore(Revocations, Protocol):
    """Whether a token is revoked and what its user's current role and status are."""

    async def start(self, users: Mapping[str, UserState]) -> None: ...

    async def close(self) -> None: ...

    async def check(self, jti: str, user_id: str) -> tuple[bool, UserState | None]:
        """(revoked, the user's current state or None when the user is unknown)."""
        ...

    async def set_user(self, user_id: str, state: UserState) -> None:
        """A change just committed to the database, for every later request."""
        ...
