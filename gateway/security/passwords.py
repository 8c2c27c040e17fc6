"""Hash and check passwords with argon2id, and enforce the password policy.

`PasswordService.verify` never raises for a wrong password or a corrupt hash,
and costs the same whether or not the user exists, so login timing does not
reveal which usernames are real. Hashing is CPU-bound (tens of milliseconds
with the library defaults): callers on the event loop use `hash_in_pool` and
`verify_in_pool`, which run it in a bounded `HashPool` (503 `busy` when full).
"""

from __future__ import annotations

import secrets

from argon2 import PasswordHasher
from argon2.exceptions import Argon2Error

from gateway.problems import GatewayError
from gateway.security.hashpool import HashPool

# Above this a password is refused by policy: no one types it, and it bounds
# the work an attacker can make one hash cost.
MAX_LENGTH = 1024


class PasswordService:
    """argon2id hashing, constant-shape verification, and the password policy."""

    __slots__ = ("_dummy_hash", "_hasher", "min_length", "pool")

    def __init__(
        self, min_length: int, hasher: PasswordHasher | None = None, pool: HashPool | None = None
    ) -> None:
        if not 1 <= min_length <= MAX_LENGTH:
            raise ValueError(f"min_length must be between 1 and {MAX_LENGTH}, not {min_length}")
        self.min_length = min_length
        # Where the event loop's hashes run; its threads start on first use.
        self.pool = pool if pool is not None else HashPool()
        # PasswordHasher() is argon2id with the library's current defaults;
        # tests pass their own to make hashes cheap or to change parameters.
        self._hasher = hasher if hasher is not None else PasswordHasher()
        # Verified against when the user is unknown, so that path does the
        # same argon2 work as a real one. Its password is never known.
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(32))

    def hash(self, password: str) -> str:
        """A new argon2id hash (PHC string, salt included) of `password`."""
        return self._hasher.hash(password)

    def verify(self, stored_hash: str | None, password: str) -> tuple[bool, str | None]:
        """Whether `password` matches `stored_hash`, and a fresh hash if it should be replaced.

        Returns `(ok, new_hash)`: `new_hash` is set only when `ok` and the
        stored hash was made with other parameters than the current ones.
        `stored_hash=None` (no such user) checks against a dummy hash and
        returns `(False, None)`. A corrupt hash is a mismatch, not an error.
        """
        if stored_hash is None:
            self._matches(self._dummy_hash, password)
            return False, None
        if not self._matches(stored_hash, password):
            return False, None
        if self._hasher.check_needs_rehash(stored_hash):
            return True, self._hasher.hash(password)
        return True, None

    async def hash_in_pool(self, password: str) -> str:
        """`hash` on the pool's threads; 503 `busy` at once when the pool is full."""
        return await self.pool.run(self.hash, password)

    async def verify_in_pool(
        self, stored_hash: str | None, password: str
    ) -> tuple[bool, str | None]:
        """`verify` on the pool's threads; 503 `busy` at once when the pool is full."""
        return await self.pool.run(self.verify, stored_hash, password)

    def _matches(self, stored_hash: str, password: object) -> bool:
        # A non-string (say a JSON null) still costs one verification, and fails.
        candidate = password if isinstance(password, str) else ""
        try:
            matched = self._hasher.verify(stored_hash, candidate)
        # Argon2Error: mismatch or failed verification; ValueError: the hash
        # is not a PHC string argon2 understands (InvalidHashError and
        # unsupported parameters both derive from it).
        except (Argon2Error, ValueError):
            return False
        return matched and candidate is password

    def check_policy(self, password: object, username: str | None = None) -> None:
        """Refuse a password that breaks the policy with 400 `weak_password`.

        The detail says exactly which rule failed, so a user can fix it.
        """
        if not isinstance(password, str):
            raise _weak("password must be a string")
        if len(password) < self.min_length:
            raise _weak(f"password must be at least {self.min_length} characters long")
        if len(password) > MAX_LENGTH:
            raise _weak(f"password must be at most {MAX_LENGTH} characters long")
        if username is not None and password.casefold() == username.casefold():
            raise _weak("password must not be the same as the username")
        if len(set(password)) == 1:
            raise _weak("password must not be a single character repeated")


def _weak(detail: str) -> GatewayError:
    return GatewayError.bad_request(detail, code="weak_password")
