"""Per request: is this token revoked, and what are its user's current role and status?

`LocalIdentity` answers from memory (one process). `RedisIdentity` answers
with one pipelined round trip to Redis, so a logout, a deactivation or a
role change on one instance holds on every other at their next request.
Entries of revoked tokens expire with the token, so memory stays bounded.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.state.redis_health import RedisHealth
from gateway.store.users import UserRecord

UserLoader = Callable[[str], Awaitable["UserState | None"]]
PURGE_EVERY = 1024  # revocations between sweeps of expired entries


@dataclass(frozen=True, slots=True)
class UserState:
    role: str
    active: bool
    username: str = ""  # for audit rows and logs; never used to authorise

    def encode(self) -> str:
        return f"{self.role}\t{int(self.active)}\t{self.username}"

    @classmethod
    def decode(cls, text: str) -> UserState:
        role, _, rest = text.partition("\t")
        active, _, username = rest.partition("\t")
        return cls(role, active == "1", username)

    @classmethod
    def of(cls, user: UserRecord) -> UserState:
        return cls(user.role, user.active, user.username)


class LocalIdentity:
    """Revocations and user states held in this process."""

    def __init__(self, load_user: UserLoader | None = None) -> None:
        self.revoked: dict[str, float] = {}  # jti → token expiry (epoch seconds)
        self.users: dict[str, UserState] = {}
        self._load_user = load_user
        self._since_purge = 0

    async def start(self, users: dict[str, UserState]) -> None:
        self.users.update(users)

    async def close(self) -> None:
        return None

    async def check(self, jti: str, user_id: str) -> tuple[bool, UserState | None]:
        """(revoked, current user state or None if the user is unknown)."""
        expiry = self.revoked.get(jti)
        revoked = expiry is not None and expiry > time.time()
        return revoked, await self._user(user_id)

    async def _user(self, user_id: str) -> UserState | None:
        state = self.users.get(user_id)
        if state is None and self._load_user is not None:
            # A user made elsewhere since start-up: read once, then remember.
            state = await self._load_user(user_id)
            if state is not None:
                self.users[user_id] = state
        return state

    async def revoke(self, jti: str, expires_at: float) -> None:
        self.revoked[jti] = expires_at
        self._since_purge += 1
        if self._since_purge >= PURGE_EVERY:
            self.purge()

    def purge(self) -> None:
        moment = time.time()
        self.revoked = {j: e for j, e in self.revoked.items() if e > moment}
        self._since_purge = 0

    async def set_user(self, user_id: str, state: UserState) -> None:
        self.users[user_id] = state


class RedisIdentity(LocalIdentity):
    """The same answers, shared by every instance through Redis."""

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        load_user: UserLoader | None = None,
        health: RedisHealth | None = None,
    ) -> None:
        super().__init__(load_user)
        self._redis = redis
        self._prefix = prefix
        self.health = health or RedisHealth("revocations and user changes")

    def _rev(self, jti: str) -> str:
        return f"{self._prefix}rev:{jti}"

    def _user_key(self, user_id: str) -> str:
        return f"{self._prefix}user:{user_id}"

    def keys(self, jti: str, user_id: str) -> tuple[str, str]:
        """The Redis keys of a token's revocation and of its user's state."""
        return self._rev(jti), self._user_key(user_id)

    def revoked_here(self, jti: str) -> bool:
        """Revoked by this instance (known without asking Redis)."""
        local = self.revoked.get(jti)
        return local is not None and local > time.time()

    async def state_from(self, user_id: str, encoded: object) -> UserState | None:
        """The user's state from its Redis value (None: not in Redis, read the database)."""
        if encoded is None:
            return await self._user(user_id)
        text = encoded.decode() if isinstance(encoded, bytes) else str(encoded)
        state = UserState.decode(text)
        self.users[user_id] = state
        return state

    async def start(self, users: dict[str, UserState]) -> None:
        await super().start(users)
        # Fill in users Redis does not know; never overwrite: another instance
        # may have written a newer change than the database read above.
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for user_id, state in users.items():
                    pipe.set(self._user_key(user_id), state.encode(), nx=True)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self.health.failed(exc)  # serve on local state; shared again once Redis answers

    async def check(self, jti: str, user_id: str) -> tuple[bool, UserState | None]:
        if self.revoked_here(jti):
            return True, self.users.get(user_id)
        if not self.health.available():
            return await super().check(jti, user_id)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.exists(self._rev(jti))
                pipe.get(self._user_key(user_id))
                revoked, encoded = await pipe.execute()
        except (RedisError, OSError) as exc:
            self.health.failed(exc)
            return await super().check(jti, user_id)
        self.health.succeeded()
        return bool(revoked), await self.state_from(user_id, encoded)

    async def revoke(self, jti: str, expires_at: float) -> None:
        await super().revoke(jti, expires_at)
        ttl = max(1, int(expires_at - time.time()) + 1)
        try:
            await self._redis.set(self._rev(jti), b"1", ex=ttl)
        except (RedisError, OSError) as exc:
            self.health.failed(exc)

    async def set_user(self, user_id: str, state: UserState) -> None:
        await super().set_user(user_id, state)
        try:
            await self._redis.set(self._user_key(user_id), state.encode())
        except (RedisError, OSError) as exc:
            self.health.failed(exc)
