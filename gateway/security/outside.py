"""Verify the access tokens of outside OpenID Connect providers (`auth.issuers`), and map
their roles to ours.

The rules are those of the gateway's own tokens (gateway/security/tokens.py), per
RFC 8725: the header's `alg` must be one of the entry's `algorithms` (never `none`, never
HS*: config refuses them and so does `verify`), and must suit the JWK it is checked with
(RFC 7517 §4.1 `kty`, §4.4 `alg`, §4.2 `use`), so a public key is never used as an HMAC
secret; `iss`, `aud`, `exp` and `sub` are required, `nbf` is checked when present, and
times are read with the injected clock and `auth.leeway`. The keys come from a `KeySource`
(gateway/security/jwks.py fetches and caches them); this module does no I/O of its own.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import jwt
from jwt.types import Options

from gateway.config.schema.auth import IssuerConfig
from gateway.security.tokens import EXPIRED, Clock, TokenError, mapped_error, numeric_date, shown

# alg → (the JWK kty it needs, the curve when that matters), RFC 7518 §3.1, RFC 8037 §3.1
_KEY_TYPES: Mapping[str, tuple[str, str | None]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", "Ed25519"),
}


@dataclass(frozen=True, slots=True)
class Jwk:
    """One key of a JWK Set: its members as published (RFC 7517 §4), and the public key."""

    data: Mapping[str, Any]
    key: Any  # the cryptography public key PyJWK made of `data`

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Jwk:
        """The key of a JWK member; raise jwt.PyJWTError when PyJWT cannot use it."""
        return cls(data, jwt.PyJWK(dict(data)).key)


class KeySource(Protocol):
    """An issuer's verification keys by `kid` (gateway/security/jwks.py `JwksCache`)."""

    async def key(self, kid: str | None) -> Jwk | None:
        """The key named `kid` (None: the only key), fetching the set again when it is
        unknown and the refetch rule allows; None when there is no such key."""
        ...


@dataclass(frozen=True, slots=True)
class OutsideClaims:
    """What a verified outside token says that the gateway uses."""

    sub: str
    exp: int  # seconds since the epoch
    jti: str  # "" when the token has none: nothing here revokes it
    payload: Mapping[str, Any]  # every claim, for the role mapping


def claimed_issuer(token: str) -> str | None:
    """The `iss` a token claims, unverified: it only chooses which keys verify it."""
    try:
        payload = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    iss = payload.get("iss")
    return iss if isinstance(iss, str) else None


class OutsideIssuer:
    """One `auth.issuers` entry: its rules, and the source of its keys."""

    __slots__ = ("_clock", "_leeway", "_options", "config", "keys")

    def __init__(
        self, config: IssuerConfig, keys: KeySource, leeway: float, clock: Clock = time.time
    ) -> None:
        self.config = config
        self.keys = keys
        self._leeway = leeway
        self._clock = clock
        self._options: Options = {
            "require": ["exp", "iss", "sub", "aud"],
            # Times are checked in `verify` against the injected clock, not PyJWT's.
            "verify_exp": False,
            "verify_iat": False,
            "verify_nbf": False,
            "verify_iss": True,
            "verify_aud": True,
            "verify_sub": True,
            "verify_jti": True,
        }

    async def verify(self, token: str) -> OutsideClaims:
        """The claims of a valid token of this issuer; raise TokenError with the reason."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("token_malformed", "the token is not a well-formed JWT") from None
        alg = header.get("alg")
        allowed = self.config.algorithms
        # HS* and none are never in `allowed` (config refuses them); said here as well so
        # that no later change can make a public key an HMAC secret (RFC 8725 §2.1).
        if not isinstance(alg, str) or alg not in allowed or alg not in _KEY_TYPES:
            raise TokenError(
                "token_alg_not_allowed",
                f"alg {shown(alg)} is not accepted from {self.config.issuer}; "
                f"it signs with {', '.join(allowed)}",
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenError("token_malformed", "the token's kid is not a string")
        jwk = await self.keys.key(kid)
        if jwk is None:
            raise TokenError(
                "token_unknown_kid",
                f"{self.config.issuer} publishes no key with kid {shown(kid)}"
                if kid is not None
                else f"the token names no kid, and {self.config.issuer} has several keys",
            )
        unsuitable = _unsuitable(jwk, alg)
        if unsuitable:
            raise TokenError("token_alg_not_allowed", unsuitable)
        try:
            payload = jwt.decode(
                token,
                jwk.key,
                algorithms=[alg],
                options=self._options,
                issuer=self.config.issuer,
                audience=self.config.audience,
            )
        except jwt.PyJWTError as exc:
            raise mapped_error(exc, self.config.issuer, self.config.audience) from None
        now = self._clock()
        exp = numeric_date(payload, "exp")
        if exp <= now - self._leeway:
            raise TokenError(*EXPIRED)
        if "nbf" in payload and numeric_date(payload, "nbf") > now + self._leeway:
            raise TokenError("token_not_yet_valid", "the token's nbf is in the future")
        if "iat" in payload and numeric_date(payload, "iat") > now + self._leeway:
            raise TokenError("token_not_yet_valid", "the token's iat is in the future")
        jti = payload.get("jti")
        return OutsideClaims(
            sub=payload["sub"], exp=exp, jti=jti if isinstance(jti, str) else "", payload=payload
        )


def _unsuitable(jwk: Jwk, alg: str) -> str | None:
    """Why the JWK must not verify an `alg` token (RFC 7517 §4.1, §4.4); None: it may."""
    data = jwk.data
    kty, curve = _KEY_TYPES[alg]
    if data.get("kty") != kty or (curve is not None and data.get("crv") != curve):
        return f"alg {alg} does not suit the key's type {shown(data.get('kty'))}"
    declared = data.get("alg")
    if declared is not None and declared != alg:
        return f"the key is for {shown(declared)}, the token says {alg}"
    return None


def claim_values(payload: Mapping[str, Any], path: str) -> list[str]:
    """The role names at a dotted claim `path` (`realm_access.roles`): a list of strings,
    or one string. A claim whose own name holds dots (`https://example.com/roles`) is
    found too: at each level the longest name present is taken."""
    parts = path.split(".")
    node: Any = payload
    while parts:
        if not isinstance(node, Mapping):
            return []
        for end in range(len(parts), 0, -1):
            name = ".".join(parts[:end])
            if name in node:
                node, parts = node[name], parts[end:]
                break
        else:
            return []
    if isinstance(node, str):
        return [node]
    if isinstance(node, Sequence):
        return [item for item in node if isinstance(item, str)]
    return []


def mapped_role(config: IssuerConfig, payload: Mapping[str, Any]) -> str | None:
    """Our role for the token: the first entry of `roles`, in the order written, whose name
    the token has at any `role_claim`; else `default_role` (None: no role maps)."""
    theirs: set[str] = set()
    for path in config.role_claim:
        theirs.update(claim_values(payload, path))
    for name, ours in config.roles:
        if name in theirs:
            return ours
    return config.default_role
