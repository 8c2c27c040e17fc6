"""Per request: is this token revoked, and what are its user's current role and status?

`LocalIdentity` answers from memory (one process). `RedisIdentity` answers
with one pipelined round trip to Redis, so a logout, a deactivation or a
role change on one instance holds on every other at their next request.
Entries of revoked tokens expire with the token, so memory stays bounded.

The database is the source of truth; Redis is a cache of it. User keys
expire (a missing one is read from the database and written back), and
after an outage or a Redis restart gateway/state/repair.py rebuilds every
key from the database. Each user value carries a stamp on the Redis clock
(`role\tactive\tusername\tstamp`), so a rebuild never overwrites a change
written after its database read began.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.state.redis_health import RedisHealth

if TYPE_CHECKING:
    from gateway.store.users import UserRecord

UserLoader = Callable[[str], Awaitable["UserState | None"]]
PURGE_EVERY = 1024  # revocations between sweeps of expired entries
USER_TTL = 86_400  # seconds a user key lives unless written again; then read from the database
WRITE_BATCH = 1000  # keys per pipeline when many are written (a rebuild)

# KEYS[1] a user's key. ARGV: the state (role\tactive\tusername), the TTL in
# seconds, and `since`. '' writes always, stamped with the Redis clock now: a
# change just committed to the database. A number writes only over a value
# stamped before it (or none), stamped with it: a rebuild whose database read
# began at `since` (Redis clock, microseconds); 0 fills in a missing key only.
# A value without a stamp (written before stamps existed) counts as 0.
SET_USER_LUA = """
local stamp = ARGV[3]
if stamp == '' then
  local clock = redis.call('TIME')
  stamp = clock[1] .. string.format('%06d', tonumber(clock[2]))
else
  local old = redis.call('GET', KEYS[1])
  if old then
    local held = string.match(old, '^[^\t]*\t[^\t]*\t[^\t]*\t(%d+)$')
    if tonumber(held or '0') >= tonumber(stamp) then return 0 end
  end
end
redis.call('SET', KEYS[1], ARGV[1] .. '\t' .. stamp, 'EX', tonumber(ARGV[2]))
return 1
"""


@dataclass(frozen=True, slots=True)
class UserState:
    role: str
    active: bool
    username: str = ""  # for audit rows and logs; never used to authorise

    def encode(self) -> str:
        """The value without its stamp (SET_USER_LUA appends it); usernames hold no tab."""
        return f"{self.role}\t{int(self.active)}\t{self.username}"

    @classmethod
    def decode(cls, text: str) -> UserState:
        role, _, rest = text.partition("\t")
        active, _, rest = rest.partition("\t")
        username, _, _stamp = rest.partition("\t")
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
        self._changed_at: dict[str, float] = {}  # user id → monotonic time of set_user

    async def start(self, users: Mapping[str, UserState]) -> None:
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
        self._changed_at[user_id] = time.monotonic()

    def absorb(
        self,
        users: Mapping[str, UserState],
        revoked: Iterable[tuple[str, float]],
        read_at: float,
    ) -> None:
        """Take a database snapshot begun at `read_at` (monotonic) as this process's state.

        What serves requests while Redis is down. A user changed here since
        the read began keeps its newer state."""
        changed = self._changed_at
        for user_id, state in users.items():
            if changed.get(user_id, float("-inf")) < read_at:
                self.users[user_id] = state
        for jti, expires_at in revoked:
            self.revoked[jti] = expires_at
        self.purge()


class RedisIdentity:
    """The same answers, shared by every instance through Redis.

    `local` is this process's copy: what it revoked itself, the users it has
    read, and what answers while Redis is down (`server.redis_failure` does
    not apply: identity falls back to the last known state, see the README)."""

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        load_user: UserLoader | None = None,
        health: RedisHealth | None = None,
    ) -> None:
        self.local = LocalIdentity(load_user)
        self._load_user = load_user
        self._redis = redis
        self._prefix = prefix
        self._set_user_script = redis.register_script(SET_USER_LUA)
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
        local = self.local.revoked.get(jti)
        return local is not None and local > time.time()

    async def state_from(self, user_id: str, encoded: object) -> UserState | None:
        """The user's state from its Redis value (None: not in Redis, read the database)."""
        if encoded is None:
            return await self._reload(user_id)
        text = encoded.decode() if isinstance(encoded, bytes) else str(encoded)
        state = UserState.decode(text)
        self.local.users[user_id] = state
        return state

    async def _reload(self, user_id: str) -> UserState | None:
        """A user Redis does not hold (expired, or lost): read from the database, written back."""
        users = self.local.users
        if self._load_user is None:
            return users.get(user_id)
        try:
            state = await self._load_user(user_id)
        except Exception:
            # The database is down too: this process's last known state, if any.
            if user_id in users:
                return users[user_id]
            raise
        if state is None:
            users.pop(user_id, None)
            return None
        users[user_id] = state
        try:
            # since=0: fill in only if still missing, so a change written
            # meanwhile is not replaced by this (older) read.
            await self._set_user_script(
                keys=[self._user_key(user_id)], args=[state.encode(), USER_TTL, 0]
            )
        except (RedisError, OSError) as exc:
            self.health.failed(exc)
        return state

    async def start(self, users: Mapping[str, UserState]) -> None:
        # Local state only: Redis is rebuilt from the database by StateRepair
        # (gateway/state/repair.py), which overwrites stale keys; a SET NX here
        # would keep whatever a restarted Redis came back with.
        await self.local.start(users)

    async def close(self) -> None:
        return None

    async def check(self, jti: str, user_id: str) -> tuple[bool, UserState | None]:
        if self.revoked_here(jti):
            return True, self.local.users.get(user_id)
        if not self.health.available():
            return await self.local.check(jti, user_id)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.exists(self._rev(jti))
                pipe.get(self._user_key(user_id))
                revoked, encoded = await pipe.execute()
        except (RedisError, OSError) as exc:
            self.health.failed(exc)
            return await self.local.check(jti, user_id)
        self.health.succeeded()
        return bool(revoked), await self.state_from(user_id, encoded)

    async def revoke(self, jti: str, expires_at: float) -> None:
        await self.local.revoke(jti, expires_at)
        ttl = max(1, int(expires_at - time.time()) + 1)
        try:
            await self._redis.set(self._rev(jti), b"1", ex=ttl)
        except (RedisError, OSError) as exc:
            self.health.failed(exc)

    async def set_user(self, user_id: str, state: UserState) -> None:
        await self.local.set_user(user_id, state)
        try:
            await self._set_user_script(
                keys=[self._user_key(user_id)], args=[state.encode(), USER_TTL, ""]
            )
        except (RedisError, OSError) as exc:
            self.health.failed(exc)

    async def write_all(
        self, users: Mapping[str, UserState], revoked: Iterable[tuple[str, float]], since: int
    ) -> int:
        """Write a database snapshot whose read began at `since` (Redis clock, µs) into Redis.

        Users are written only over values stamped before `since`; revoked
        tokens with the rest of their lifetime as TTL. Raises RedisError;
        returns how many user keys were written."""
        written = 0
        user_items = list(users.items())
        for start in range(0, len(user_items), WRITE_BATCH):
            async with self._redis.pipeline(transaction=False) as pipe:
                for user_id, state in user_items[start : start + WRITE_BATCH]:
                    await self._set_user_script(
                        keys=[self._user_key(user_id)],
                        args=[state.encode(), USER_TTL, since],
                        client=pipe,
                    )
                written += sum(1 for reply in await pipe.execute() if reply == 1)
        moment = time.time()
        tokens = list(revoked)
        for start in range(0, len(tokens), WRITE_BATCH):
            async with self._redis.pipeline(transaction=False) as pipe:
                for jti, expires_at in tokens[start : start + WRITE_BATCH]:
                    pipe.set(self._rev(jti), b"1", ex=max(1, int(expires_at - moment) + 1))
                await pipe.execute()
        return written
