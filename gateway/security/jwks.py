"""Fetch and cache an outside issuer's JWK Set (RFC 7517 §5), without blocking the loop.

The set is fetched at start (`load`), kept, and fetched again when a token names a `kid`
it does not hold: that is how a provider's key rotation reaches the gateway. Such
refetches happen at most once every `REFETCH_INTERVAL` seconds per issuer, so tokens with
made-up kids cannot turn the gateway into a flood against the provider; the fetch at
start does not count. A fetch that fails (the URL down, an error status, a body that is
not a JWK Set with a usable key) is logged and changes nothing: the cached keys keep
working (README "Limits and failure behaviour", "JWKS URL down").

Only public signature keys are kept: members with `use` other than `sig` and symmetric
(`oct`) keys are dropped (RFC 7517 §4.2; RFC 8725 §3.1).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import jwt
import orjson

from gateway.security.outside import Jwk

log = logging.getLogger("gateway.jwks")

REFETCH_INTERVAL = 30.0  # seconds between fetches caused by unknown kids, per issuer
FETCH_TIMEOUT = 5.0  # seconds for one fetch, connect to last byte
MAX_JWKS_BYTES = 1024 * 1024  # a JWK Set is a few KiB; more is not one


class JwksError(Exception):
    """A fetch that brought no usable key set; the message is for the log."""


class JwksCache:
    """One JWK Set URL's keys by kid, fetched with aiohttp (never PyJWT's blocking client).

    `clock` (monotonic seconds) is injectable so the refetch rule can be tested without
    waiting. Concurrent requests for unknown kids share one fetch."""

    __slots__ = ("_clock", "_fetching", "_keys", "_last_refetch", "_timeout", "fetches", "url")

    def __init__(
        self,
        url: str,
        clock: Callable[[], float] = time.monotonic,
        timeout: float = FETCH_TIMEOUT,
    ) -> None:
        self.url = url
        self._clock = clock
        self._timeout = timeout
        self._keys: dict[str | None, Jwk] = {}
        self._last_refetch: float | None = None  # when the last kid-driven fetch began
        self._fetching: asyncio.Task[bool] | None = None
        self.fetches = 0  # fetches attempted, for /admin/config and logs

    @property
    def loaded(self) -> bool:
        """Whether a fetch has brought keys."""
        return bool(self._keys)

    @property
    def kids(self) -> tuple[str, ...]:
        """The kids of the cached keys."""
        return tuple(kid for kid in self._keys if kid is not None)

    async def load(self) -> bool:
        """The fetch at start (or for a new entry at reload): never raises; False, with a
        warning logged, when it failed. It does not count against the refetch interval."""
        return await self._shared_fetch()

    async def key(self, kid: str | None) -> Jwk | None:
        """The cached key named `kid` (None: the set's only key); for an unknown kid the set
        is fetched again, unless a refetch began less than REFETCH_INTERVAL ago."""
        found = self._cached(kid)
        if found is not None:
            return found
        if self._fetching is None:
            now = self._clock()
            if self._last_refetch is not None and now - self._last_refetch < REFETCH_INTERVAL:
                return None
            self._last_refetch = now
        await self._shared_fetch()
        return self._cached(kid)

    def _cached(self, kid: str | None) -> Jwk | None:
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    async def _shared_fetch(self) -> bool:
        task = self._fetching
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch())
            self._fetching = task
            task.add_done_callback(self._fetched)
        # shielded: a caller that goes away does not cancel the others' fetch
        return await asyncio.shield(task)

    def _fetched(self, task: asyncio.Task[bool]) -> None:
        if self._fetching is task:
            self._fetching = None

    async def _fetch(self) -> bool:
        self.fetches += 1
        try:
            keys = parse_jwks(await self._download())
        except (JwksError, aiohttp.ClientError, TimeoutError) as exc:
            kept = f"keeping {len(self._keys)} cached key(s)" if self._keys else "no keys yet"
            log.warning(
                "JWKS fetch from %s failed: %s; %s",
                self.url,
                str(exc) or type(exc).__name__,
                kept,
                extra={"jwks_url": self.url, "kept_keys": len(self._keys)},
            )
            return False
        self._keys = keys
        log.info(
            "JWKS fetched from %s: %d key(s)",
            self.url,
            len(keys),
            extra={"jwks_url": self.url, "kids": [k for k in keys if k is not None]},
        )
        return True

    async def _download(self) -> Any:
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(self.url, headers={"Accept": "application/json"}) as response,
        ):
            if response.status != 200:
                raise JwksError(f"HTTP {response.status}")
            body = await response.content.read(MAX_JWKS_BYTES + 1)
        if len(body) > MAX_JWKS_BYTES:
            raise JwksError(f"the body is over {MAX_JWKS_BYTES} bytes")
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise JwksError("the body is not JSON") from None


def parse_jwks(document: Any) -> dict[str | None, Jwk]:
    """The usable public signature keys of a JWK Set (RFC 7517 §5), by kid; a key without
    a kid is kept under None. Raise JwksError when none is usable."""
    members = document.get("keys") if isinstance(document, Mapping) else None
    if not isinstance(members, list):
        raise JwksError('not a JWK Set (no "keys" list)')
    keys: dict[str | None, Jwk] = {}
    for member in members:
        if not isinstance(member, Mapping) or member.get("kty") == "oct":
            continue
        if member.get("use", "sig") != "sig":
            continue
        kid = member.get("kid")
        if kid is not None and not isinstance(kid, str):
            continue
        try:
            keys[kid] = Jwk.parse(member)
        except (jwt.PyJWTError, ValueError, TypeError):
            continue  # a key type or curve PyJWT cannot use: the others still serve
    if not keys:
        raise JwksError("the JWK Set holds no usable signature key")
    return keys
