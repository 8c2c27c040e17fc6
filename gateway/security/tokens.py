"""Issue access tokens and verify them, mapping every failure to a stable code.

Verification follows RFC 8725: the algorithm is pinned to the configured one
and checked in the header before any key is chosen (so `alg: none` and
HS256-with-the-RSA-public-key are refused up front), the key is chosen by
`kid` among the configured ones only, and every claim the gateway relies on
must be present. Verified tokens are cached until their `exp`; revocation is
the caller's check, made after `verify` on every request.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import jwt
from jwt.types import Options

from gateway.config.schema.auth import AuthConfig
from gateway.security.keys import KeySet

ACCESS = "access"  # the `typ` claim of access tokens; refresh tokens never pass as one

TokenErrorCode = Literal[
    "token_malformed",
    "token_bad_signature",
    "token_expired",
    "token_not_yet_valid",
    "token_alg_not_allowed",
    "token_unknown_kid",
    "token_wrong_issuer",
    "token_wrong_audience",
    "token_missing_claim",
    "token_wrong_type",
]

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified access token says: who, in which role, and for how long."""

    sub: str  # the user's id
    role: str
    jti: str  # unique per token: the handle revocation uses
    iat: int  # seconds since the epoch
    exp: int


# (code, detail) of a token past its exp, also for an open WebSocket's (README "WebSockets")
EXPIRED: tuple[TokenErrorCode, str] = ("token_expired", "the token has expired")


class TokenError(Exception):
    """A token that must not be accepted; `code` is stable, `detail` is for people."""

    __slots__ = ("code", "detail")

    def __init__(self, code: TokenErrorCode, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code: TokenErrorCode = code
        self.detail = detail


def _check_keys(auth: AuthConfig, keys: KeySet) -> None:
    if keys.algorithm != auth.algorithm:
        raise ValueError(f"keys are for {keys.algorithm}, auth.algorithm is {auth.algorithm}")


class TokenIssuer:
    """Signs access tokens with the key set's signing key."""

    __slots__ = ("_audience", "_clock", "_headers", "_issuer", "_keys", "_ttl")

    def __init__(self, auth: AuthConfig, keys: KeySet, clock: Clock = time.time) -> None:
        _check_keys(auth, keys)
        self._keys = keys
        self._clock = clock
        self._issuer = auth.issuer
        self._audience = auth.audience
        self._ttl = max(1, round(auth.access_ttl))
        self._headers = {"kid": keys.signing_kid}

    def issue_access(self, sub: str, role: str) -> tuple[str, Claims]:
        """A signed access token for `sub` in `role`, and the claims it carries."""
        iat = int(self._clock())
        claims = Claims(sub=sub, role=role, jti=uuid.uuid4().hex, iat=iat, exp=iat + self._ttl)
        payload: dict[str, Any] = {
            "sub": claims.sub,
            "role": claims.role,
            "jti": claims.jti,
            "iat": claims.iat,
            "exp": claims.exp,
            "iss": self._issuer,
            "typ": ACCESS,
        }
        if self._audience is not None:
            payload["aud"] = self._audience
        token = jwt.encode(
            payload, self._keys.signing_key, algorithm=self._keys.algorithm, headers=self._headers
        )
        return token, claims


class TokenVerifier:
    """Checks access tokens against the configured algorithm, keys, issuer and audience."""

    __slots__ = (
        "_algorithm",
        "_audience",
        "_cache",
        "_cache_size",
        "_clock",
        "_issuer",
        "_keys",
        "_leeway",
        "_options",
    )

    def __init__(
        self,
        auth: AuthConfig,
        keys: KeySet,
        clock: Clock = time.time,
        cache_size: int | None = None,  # None: auth.token_cache; 0 turns the cache off
    ) -> None:
        _check_keys(auth, keys)
        self._keys = keys
        self._clock = clock
        self._algorithm = auth.algorithm
        self._issuer = auth.issuer
        self._audience = auth.audience
        self._leeway = auth.leeway
        self._cache_size = auth.token_cache if cache_size is None else cache_size
        # Only verified tokens enter, so garbage cannot fill it; insertion
        # order makes the first key the oldest.
        self._cache: dict[str, Claims] = {}
        required = ["exp", "iat", "sub", "jti", "iss", "role", "typ"]
        if auth.audience is not None:
            required.append("aud")
        self._options: Options = {
            "require": required,
            # Times are checked below against the injected clock, not PyJWT's.
            "verify_exp": False,
            "verify_iat": False,
            "verify_nbf": False,
            "verify_iss": True,
            # Without a configured audience an `aud` claim is not looked at.
            "verify_aud": auth.audience is not None,
            "verify_sub": True,
            "verify_jti": True,
        }

    def verify(self, token: str) -> Claims:
        """The claims of a valid access token; raise TokenError with the reason otherwise."""
        now = self._clock()
        claims = self._cache.get(token)
        if claims is not None:
            if now < claims.exp:
                return claims
            del self._cache[token]  # past exp: verify again, which says token_expired
        claims = self._decode(token, now)
        # Within the leeway after exp a token passes but is not kept.
        if self._cache_size > 0 and now < claims.exp:
            if len(self._cache) >= self._cache_size:
                del self._cache[next(iter(self._cache))]
            self._cache[token] = claims
        return claims

    def _decode(self, token: str, now: float) -> Claims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("token_malformed", "the token is not a well-formed JWT") from None
        alg = header.get("alg")
        if alg != self._algorithm:
            raise TokenError(
                "token_alg_not_allowed",
                f"alg {shown(alg)} is not accepted; this gateway signs with {self._algorithm}",
            )
        kid = header.get("kid")
        key = self._keys.verification_key(kid)
        if key is None:
            raise TokenError(
                "token_unknown_kid",
                f"no configured key has kid {shown(kid)}"
                if kid is not None
                else "the token names no kid, and several keys are configured",
            )
        try:
            payload = jwt.decode(
                token,
                key,
                algorithms=[self._algorithm],
                options=self._options,
                issuer=self._issuer,
                audience=self._audience,
            )
        except jwt.PyJWTError as exc:
            raise mapped_error(exc, self._issuer, self._audience) from None
        exp = numeric_date(payload, "exp")
        iat = numeric_date(payload, "iat")
        if exp <= now - self._leeway:
            raise TokenError(*EXPIRED)
        if iat > now + self._leeway:
            raise TokenError("token_not_yet_valid", "the token's iat is in the future")
        if "nbf" in payload and numeric_date(payload, "nbf") > now + self._leeway:
            raise TokenError("token_not_yet_valid", "the token's nbf is in the future")
        typ = payload["typ"]
        if typ != ACCESS:
            raise TokenError("token_wrong_type", f"the token's typ is {shown(typ)}, not {ACCESS!r}")
        role = payload["role"]
        if not isinstance(role, str):
            raise TokenError("token_malformed", "the token's role claim is not a string")
        return Claims(sub=payload["sub"], role=role, jti=payload["jti"], iat=iat, exp=exp)


def mapped_error(exc: jwt.PyJWTError, issuer: str, audience: str | None) -> TokenError:
    """The TokenError for a PyJWT failure; subclasses before their bases."""
    if isinstance(exc, jwt.InvalidSignatureError):
        return TokenError("token_bad_signature", "the token's signature does not verify")
    if isinstance(exc, jwt.ExpiredSignatureError):
        return TokenError("token_expired", "the token has expired")
    if isinstance(exc, jwt.ImmatureSignatureError):
        return TokenError("token_not_yet_valid", "the token is not valid yet")
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return TokenError("token_alg_not_allowed", "the token's alg is not accepted")
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return TokenError("token_missing_claim", f"the token has no {exc.claim!r} claim")
    if isinstance(exc, jwt.InvalidIssuerError):
        return TokenError("token_wrong_issuer", f"the token was not issued by {issuer!r}")
    if isinstance(exc, jwt.InvalidAudienceError):
        return TokenError("token_wrong_audience", f"the token is not meant for {audience!r}")
    # DecodeError (bad base64 or JSON), a sub or jti that is not a string, or
    # anything newer PyJWT adds: a token we cannot read is malformed.
    return TokenError("token_malformed", "the token is not a well-formed JWT")


def numeric_date(payload: dict[str, Any], claim: str) -> int:
    value = payload[claim]
    # bool is an int; JSON lets NaN and Infinity through Python's parser.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TokenError("token_malformed", f"the token's {claim} claim is not a NumericDate")
    return int(value)


def shown(value: object) -> str:
    """An attacker-chosen header value, short enough to put in a detail."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
