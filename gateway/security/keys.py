"""Load the configured JWT keys, pick the signing one, and publish the public ones.

`KeySet.from_config` does every check once, at build time, with messages for
the operator (never containing a secret): HS256 secrets of at least 32 bytes,
PEM files that parse, key types that match the algorithm. The first key with
signing material (a secret or a private key) signs; every key verifies, so a
rotated-out signing key can stay listed until its tokens expire.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from gateway.config.schema.auth import AuthConfig, KeyConfig

SECRET_ENV = "GATEWAY_JWT_SECRET"  # noqa: S105 -- the variable's name, not a secret
MIN_SECRET_BYTES = 32  # RFC 7518 §3.2: an HS256 key as long as the hash output
MIN_RSA_BITS = 2048

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
SigningKey = bytes | PrivateKey  # what jwt.encode is given
VerificationKey = bytes | PublicKey  # what jwt.decode is given

_GENERATE_HINT = "python -c 'import secrets; print(secrets.token_urlsafe(48))'"


class KeyConfigError(ValueError):
    """The configured keys cannot be used; the message is for the operator.

    `line`: the line in routes.yaml of the `auth.keys` entry at fault (0: no one entry).
    """

    def __init__(self, message: str, line: int = 0) -> None:
        super().__init__(message)
        self.line = line


@dataclass(frozen=True, slots=True)
class _Key:
    kid: str
    verify: VerificationKey = field(repr=False)
    sign: SigningKey | None = field(default=None, repr=False)


class KeySet:
    """The keys of one algorithm: one signs, all verify, the public ones form the JWKS."""

    __slots__ = ("_by_kid", "_jwks", "_only", "_signing_key", "_signing_kid", "algorithm")

    def __init__(self, algorithm: str, keys: list[_Key]) -> None:
        signer = next((key for key in keys if key.sign is not None), None)
        if signer is None or signer.sign is None:
            raise KeyConfigError(
                "auth.keys: no key can sign tokens; give at least one key a "
                + ("secret" if algorithm == "HS256" else "private_key")
            )
        self.algorithm = algorithm
        self._signing_kid = signer.kid
        self._signing_key: SigningKey = signer.sign
        self._by_kid = {key.kid: key.verify for key in keys}
        self._only = keys[0].verify if len(keys) == 1 else None
        self._jwks = [] if algorithm == "HS256" else [_jwk(key, algorithm) for key in keys]

    @classmethod
    def from_config(cls, auth: AuthConfig, environ: Mapping[str, str] = os.environ) -> KeySet:
        """Load and check `auth.keys` (or GATEWAY_JWT_SECRET); raise KeyConfigError if unusable."""
        algorithm = auth.algorithm
        if algorithm == "HS256":
            keys = [_at(k, _hmac_key) for k in auth.keys] if auth.keys else [_env_key(environ)]
        elif algorithm in _KEY_RULES:
            if not auth.keys:
                raise KeyConfigError(f"auth: {algorithm} needs auth.keys with PEM key files")
            keys = [_at(k, lambda k: _pem_key(k, algorithm)) for k in auth.keys]
        else:
            raise KeyConfigError(
                f"auth.algorithm: {algorithm!r} is not supported; use HS256, RS256, ES256 or EdDSA"
            )
        kids = [key.kid for key in keys]
        for i, kid in enumerate(kids):
            if kid in kids[:i]:
                line = auth.keys[i].line if auth.keys else 0
                raise KeyConfigError(f"auth.keys: kid {kid!r} is used twice", line)
        return cls(algorithm, keys)

    @property
    def signing_kid(self) -> str:
        """The kid written into the header of every token issued."""
        return self._signing_kid

    @property
    def signing_key(self) -> SigningKey:
        """The secret or private key tokens are signed with."""
        return self._signing_key

    @property
    def kids(self) -> tuple[str, ...]:
        """Every configured kid, in config order."""
        return tuple(self._by_kid)

    def verification_key(self, kid: str | None) -> VerificationKey | None:
        """The key for `kid`, or None when no key has it.

        A token without a kid is accepted only while exactly one key is
        configured: with several, guessing would be trying keys in turn.
        """
        if kid is None:
            return self._only
        return self._by_kid.get(kid)

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        """The public keys as a JWK Set (RFC 7517); empty for HS256, whose keys are secret."""
        return {"keys": [dict(jwk) for jwk in self._jwks]}


def hmac_kid(secret: bytes) -> str:
    """A kid derived from an HS256 secret, the same on every instance sharing it."""
    return "hs-" + hashlib.sha256(secret).hexdigest()[:8]


def _at(key: KeyConfig, load: Callable[[KeyConfig], _Key]) -> _Key:
    """`load(key)`, its KeyConfigError told at the line of `key`'s entry."""
    try:
        return load(key)
    except KeyConfigError as exc:
        exc.line = exc.line or key.line
        raise


def _env_key(environ: Mapping[str, str]) -> _Key:
    value = environ.get(SECRET_ENV)
    if not value:
        raise KeyConfigError(
            f"{SECRET_ENV} is not set: HS256 needs a secret of at least {MIN_SECRET_BYTES} "
            f"bytes there (or auth.keys with secrets); generate one with {_GENERATE_HINT}"
        )
    secret = value.encode("utf-8")  # README "Identity": the raw UTF-8 bytes
    if len(secret) < MIN_SECRET_BYTES:
        raise KeyConfigError(
            f"{SECRET_ENV} must be at least {MIN_SECRET_BYTES} bytes (it has {len(secret)}); "
            f"generate one with {_GENERATE_HINT}"
        )
    return _Key(kid=hmac_kid(secret), verify=secret, sign=secret)


def _hmac_key(key: KeyConfig) -> _Key:
    if key.secret is None:
        raise KeyConfigError(
            f"auth.keys: {key.kid}: HS256 keys need a secret (e.g. secret: ${{{SECRET_ENV}}})"
        )
    if len(key.secret) < MIN_SECRET_BYTES:
        raise KeyConfigError(
            f"auth.keys: {key.kid}: the HS256 secret must be at least {MIN_SECRET_BYTES} bytes "
            f"(it has {len(key.secret)}); generate one with {_GENERATE_HINT}"
        )
    return _Key(kid=key.kid, verify=key.secret, sign=key.secret)


def _pem_key(key: KeyConfig, algorithm: str) -> _Key:
    if key.secret is not None:
        raise KeyConfigError(
            f"auth.keys: {key.kid}: {algorithm} keys are PEM files (private_key, public_key), "
            "not secrets"
        )
    private = _load_private(key.kid, key.private_key) if key.private_key else None
    public = _load_public(key.kid, key.public_key) if key.public_key else None
    if private is None and public is None:
        raise KeyConfigError(f"auth.keys: {key.kid}: give a private_key or public_key PEM file")
    derived = private.public_key() if private is not None else None
    if derived is not None and public is not None and _spki(derived) != _spki(public):
        raise KeyConfigError(
            f"auth.keys: {key.kid}: public_key {key.public_key} is not the public half of "
            f"private_key {key.private_key}"
        )
    verify = public if public is not None else derived
    if verify is None:  # unreachable: one of the two files was given
        raise KeyConfigError(f"auth.keys: {key.kid}: no public key")
    check, wanted = _KEY_RULES[algorithm]
    if not check(verify):
        source = key.private_key if private is not None else key.public_key
        raise KeyConfigError(
            f"auth.keys: {key.kid}: {algorithm} needs {wanted}, but {source} holds "
            f"{_describe(verify)}"
        )
    return _Key(kid=key.kid, verify=verify, sign=private)


def _read(kid: str, what: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyConfigError(
            f"auth.keys: {kid}: cannot read {what} {path}: {exc.strerror or exc}"
        ) from None


def _load_private(kid: str, path: Path) -> PrivateKey:
    data = _read(kid, "private_key", path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    # ValueError: not PEM or not a key; TypeError: encrypted, and no password.
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyConfigError(
            f"auth.keys: {kid}: private_key {path} is not an unencrypted PEM private key"
        ) from None
    if not isinstance(
        key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise KeyConfigError(
            f"auth.keys: {kid}: private_key {path} holds {_describe(key.public_key())}, "
            "which no supported algorithm uses"
        )
    return key


def _load_public(kid: str, path: Path) -> PublicKey:
    data = _read(kid, "public_key", path)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise KeyConfigError(
            f"auth.keys: {kid}: public_key {path} is not a PEM public key"
        ) from None
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise KeyConfigError(
            f"auth.keys: {kid}: public_key {path} holds {_describe(key)}, "
            "which no supported algorithm uses"
        )
    return key


def _is_rs256(key: object) -> bool:
    return isinstance(key, rsa.RSAPublicKey) and key.key_size >= MIN_RSA_BITS


def _is_es256(key: object) -> bool:
    return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)


def _is_eddsa(key: object) -> bool:
    return isinstance(key, ed25519.Ed25519PublicKey)


# algorithm -> (does this public key suit it, what it needs in words)
_KEY_RULES = {
    "RS256": (_is_rs256, f"an RSA key of at least {MIN_RSA_BITS} bits"),
    "ES256": (_is_es256, "an EC key on curve P-256"),
    "EdDSA": (_is_eddsa, "an Ed25519 key"),
}


def _describe(key: object) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return f"a {key.key_size}-bit RSA key"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"an EC key on curve {key.curve.name}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "an Ed25519 key"
    return f"a {type(key).__name__.removeprefix('_')}"


def _spki(key: PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _jwk(key: _Key, algorithm: str) -> dict[str, Any]:
    public = key.verify
    if isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ed25519.Ed25519PublicKey):
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    else:  # HS256 secrets never reach here: the JWKS is public
        raise TypeError(f"{key.kid}: not a public key")
    # Only public members: to_jwk of a public key has no "d", but be certain.
    # PyJWT adds key_ops for RSA; RFC 7517 §4.3 says not to send it with `use`.
    jwk = {name: value for name, value in jwk.items() if name not in _DROPPED_MEMBERS}
    jwk.update(kid=key.kid, alg=algorithm, use="sig")
    return jwk


_DROPPED_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k", "key_ops"})
