"""TokenIssuer and TokenVerifier: round trips, the RFC 8725 attacks, rotation, and the cache.

Attack tokens are forged with PyJWT; where PyJWT itself refuses to forge
(an HMAC keyed with a PEM public key) the token is signed by hand with hmac.
Time is a FakeClock injected into both issuer and verifier.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.config.schema.auth import AuthConfig, KeyConfig
from gateway.security.keys import KeySet, hmac_kid
from gateway.security.tokens import Claims, TokenError, TokenIssuer, TokenVerifier

SECRET = b"an-hs256-secret-of-forty-bytes-or-more!!"
OTHER_SECRET = b"a-different-secret-just-as-long-as-the-first"
NOW = 1_700_000_000

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class FakeClock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@cache
def rsa_key(n: int = 0) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def new_key(algorithm: str, n: int = 0) -> PrivateKey:
    if algorithm == "RS256":
        return rsa_key(n)
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def pem(key: PrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def public_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def hs_auth(**changes: Any) -> AuthConfig:
    return replace(AuthConfig(keys=(KeyConfig(kid="k1", secret=SECRET),)), **changes)


class Setup:
    """An issuer and a verifier sharing one auth config, key set and clock."""

    def __init__(self, auth: AuthConfig, cache_size: int | None = None) -> None:
        self.auth = auth
        self.clock = FakeClock()
        self.keys = KeySet.from_config(auth, environ={})
        self.issuer = TokenIssuer(auth, self.keys, clock=self.clock)
        self.verifier = TokenVerifier(auth, self.keys, clock=self.clock, cache_size=cache_size)

    def code(self, token: str) -> str:
        with pytest.raises(TokenError) as caught:
            self.verifier.verify(token)
        return caught.value.code

    def error(self, token: str) -> TokenError:
        with pytest.raises(TokenError) as caught:
            self.verifier.verify(token)
        return caught.value


@pytest.fixture
def hs() -> Setup:
    return Setup(hs_auth())


def payload(**changes: Any) -> dict[str, Any]:
    """A valid access-token payload at NOW; a change to None removes the claim."""
    claims: dict[str, Any] = {
        "sub": "42",
        "role": "user",
        "jti": "0123456789abcdef",
        "iat": NOW,
        "exp": NOW + 900,
        "iss": "gateway",
        "typ": "access",
    }
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not None}


def hs_token(claims: dict[str, Any], key: bytes = SECRET, kid: str | None = "k1") -> str:
    return jwt.encode(claims, key, algorithm="HS256", headers={"kid": kid} if kid else None)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_signed_hs256(header: dict[str, Any], claims: dict[str, Any], key: bytes) -> str:
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


# --- issuing and the happy path ------------------------------------------------


def test_issue_and_verify_hs256(hs: Setup) -> None:
    token, claims = hs.issuer.issue_access("42", "analyst")

    assert claims == Claims(sub="42", role="analyst", jti=claims.jti, iat=NOW, exp=NOW + 900)
    assert len(claims.jti) == 32
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT", "kid": "k1"}
    body = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert body == {
        "sub": "42",
        "role": "analyst",
        "jti": claims.jti,
        "iat": NOW,
        "exp": NOW + 900,
        "iss": "gateway",
        "typ": "access",
    }
    assert hs.verifier.verify(token) == claims


def test_each_token_has_its_own_jti(hs: Setup) -> None:
    first, second = hs.issuer.issue_access("42", "user"), hs.issuer.issue_access("42", "user")
    assert first[1].jti != second[1].jti
    assert first[0] != second[0]


def test_env_secret_kid_is_in_the_header() -> None:
    auth = AuthConfig()
    keys = KeySet.from_config(auth, environ={"GATEWAY_JWT_SECRET": SECRET.decode()})
    token, _ = TokenIssuer(auth, keys).issue_access("1", "user")
    assert jwt.get_unverified_header(token)["kid"] == hmac_kid(SECRET)
    assert TokenVerifier(auth, keys).verify(token).sub == "1"


@pytest.mark.parametrize("algorithm", ["RS256", "ES256", "EdDSA"])
def test_issue_and_verify_asymmetric(tmp_path: Path, algorithm: str) -> None:
    path = pem(new_key(algorithm), tmp_path / "k.pem")
    s = Setup(
        AuthConfig(
            algorithm=algorithm,
            audience="api",
            keys=(KeyConfig(kid="a1", private_key=path),),
        )
    )
    token, claims = s.issuer.issue_access("7", "admin")
    assert jwt.get_unverified_header(token)["alg"] == algorithm
    assert jwt.decode(token, options={"verify_signature": False})["aud"] == "api"
    assert s.verifier.verify(token) == claims


def test_keys_for_another_algorithm_refused() -> None:
    keys = KeySet.from_config(hs_auth(), environ={})
    with pytest.raises(ValueError, match=r"keys are for HS256, auth\.algorithm is RS256"):
        TokenVerifier(hs_auth(algorithm="RS256"), keys)
    with pytest.raises(ValueError, match="keys are for HS256"):
        TokenIssuer(hs_auth(algorithm="ES256"), keys)


# --- RFC 8725 attacks -------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_refused(hs: Setup, alg: str) -> None:
    unsigned = jwt.encode(payload(), None, algorithm="none")  # type: ignore[arg-type]
    assert jwt.get_unverified_header(unsigned)["alg"] == "none"
    header = b64(json.dumps({"alg": alg, "typ": "JWT", "kid": "k1"}).encode())
    unsigned_with_kid = header + "." + unsigned.split(".")[1] + "."

    assert hs.code(unsigned) == "token_alg_not_allowed"
    assert hs.code(unsigned_with_kid) == "token_alg_not_allowed"


def test_key_confusion_hs256_with_the_rsa_public_key_refused(tmp_path: Path) -> None:
    private = new_key("RS256")
    s = Setup(
        AuthConfig(
            algorithm="RS256", keys=(KeyConfig(kid="r1", private_key=pem(private, tmp_path / "k")),)
        )
    )
    # The attacker knows the public key (it is in the JWKS) and uses its PEM
    # as an HMAC secret, hoping the verifier passes that PEM to HS256.
    forged = hand_signed_hs256(
        {"alg": "HS256", "typ": "JWT", "kid": "r1"}, payload(role="admin"), public_pem(private)
    )
    error = s.error(forged)
    assert error.code == "token_alg_not_allowed"
    assert error.detail == "alg 'HS256' is not accepted; this gateway signs with RS256"


def test_rs256_token_refused_when_hs256_is_configured(hs: Setup) -> None:
    forged = jwt.encode(payload(), rsa_key(), algorithm="RS256", headers={"kid": "k1"})
    assert hs.code(forged) == "token_alg_not_allowed"


def test_es256_token_refused_when_rs256_is_configured(tmp_path: Path) -> None:
    path = pem(new_key("RS256"), tmp_path / "k")
    s = Setup(AuthConfig(algorithm="RS256", keys=(KeyConfig(kid="r1", private_key=path),)))
    forged = jwt.encode(payload(), new_key("ES256"), algorithm="ES256", headers={"kid": "r1"})
    assert s.code(forged) == "token_alg_not_allowed"


def test_wrong_signature(hs: Setup) -> None:
    error = hs.error(hs_token(payload(), key=OTHER_SECRET))
    assert (error.code, error.detail) == (
        "token_bad_signature",
        "the token's signature does not verify",
    )


@pytest.mark.parametrize("algorithm", ["HS256", "ES256"])
def test_tampered_payload(tmp_path: Path, algorithm: str) -> None:
    if algorithm == "HS256":
        s = Setup(hs_auth())
    else:
        path = pem(new_key(algorithm), tmp_path / "k")
        s = Setup(AuthConfig(algorithm=algorithm, keys=(KeyConfig(kid="k1", private_key=path),)))
    token, _ = s.issuer.issue_access("42", "user")
    header, body, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["role"] = "admin"
    tampered = f"{header}.{b64(json.dumps(claims).encode())}.{signature}"

    assert s.code(tampered) == "token_bad_signature"
    assert s.verifier.verify(token).role == "user"


def test_signature_of_another_token(hs: Setup) -> None:
    first, _ = hs.issuer.issue_access("1", "user")
    second, _ = hs.issuer.issue_access("2", "admin")
    spliced = ".".join(second.split(".")[:2] + first.split(".")[2:])
    assert hs.code(spliced) == "token_bad_signature"


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "a.b", "....", "eyJ9.e30.e30"])
def test_malformed(hs: Setup, token: str) -> None:
    assert hs.code(token) == "token_malformed"


@pytest.mark.parametrize(
    "changes",
    [
        {"exp": "tomorrow"},
        {"iat": [NOW]},
        {"exp": True},
        {"sub": 42},
        {"jti": 7},
        {"role": ["admin"]},
    ],
)
def test_claims_of_the_wrong_type_are_malformed(hs: Setup, changes: dict[str, Any]) -> None:
    assert hs.code(hs_token(payload(**changes))) == "token_malformed"


# --- time ------------------------------------------------------------------------


def test_expired_and_leeway(hs: Setup) -> None:
    token = hs_token(payload())
    exp, leeway = NOW + 900, hs.auth.leeway

    hs.clock.now = exp + leeway - 1  # past exp, inside the tolerated skew
    assert hs.verifier.verify(token).sub == "42"

    hs.clock.now = exp + leeway
    error = hs.error(token)
    assert (error.code, error.detail) == ("token_expired", "the token has expired")


def test_expired_without_leeway() -> None:
    s = Setup(hs_auth(leeway=0.0))
    token = hs_token(payload())
    s.clock.now = NOW + 899
    assert s.verifier.verify(token).exp == NOW + 900
    s.clock.now = NOW + 900
    assert s.code(token) == "token_expired"


def test_iat_in_the_future(hs: Setup) -> None:
    leeway = int(hs.auth.leeway)
    assert hs.verifier.verify(hs_token(payload(iat=NOW + leeway))).iat == NOW + leeway
    error = hs.error(hs_token(payload(iat=NOW + leeway + 1)))
    assert (error.code, error.detail) == (
        "token_not_yet_valid",
        "the token's iat is in the future",
    )


def test_nbf_in_the_future(hs: Setup) -> None:
    assert hs.code(hs_token(payload(nbf=NOW + 3600))) == "token_not_yet_valid"
    assert hs.verifier.verify(hs_token(payload(nbf=NOW - 1))).sub == "42"


# --- issuer, audience, claims, type -------------------------------------------------


def test_wrong_issuer(hs: Setup) -> None:
    error = hs.error(hs_token(payload(iss="someone-else")))
    assert (error.code, error.detail) == (
        "token_wrong_issuer",
        "the token was not issued by 'gateway'",
    )


def test_audience_checked_when_configured() -> None:
    s = Setup(hs_auth(audience="api"))
    assert s.verifier.verify(hs_token(payload(aud="api"))).sub == "42"
    assert s.verifier.verify(hs_token(payload(aud=["other", "api"]))).sub == "42"
    assert s.code(hs_token(payload(aud="other"))) == "token_wrong_audience"
    error = s.error(hs_token(payload()))
    assert (error.code, error.detail) == ("token_missing_claim", "the token has no 'aud' claim")


def test_audience_ignored_when_not_configured(hs: Setup) -> None:
    assert hs.verifier.verify(hs_token(payload(aud="anything"))).sub == "42"


@pytest.mark.parametrize("claim", ["exp", "iat", "sub", "jti", "iss", "role", "typ"])
def test_missing_required_claim(hs: Setup, claim: str) -> None:
    error = hs.error(hs_token(payload(**{claim: None})))
    assert error.code == "token_missing_claim"
    assert error.detail == f"the token has no {claim!r} claim"


@pytest.mark.parametrize("typ", ["refresh", "Access", "", 1])
def test_typ_other_than_access(hs: Setup, typ: object) -> None:
    assert hs.code(hs_token(payload(typ=typ))) == "token_wrong_type"


# --- kid and rotation --------------------------------------------------------------


def test_unknown_kid(hs: Setup) -> None:
    error = hs.error(hs_token(payload(), kid="nope"))
    assert (error.code, error.detail) == ("token_unknown_kid", "no configured key has kid 'nope'")


def test_missing_kid_accepted_with_a_single_key(hs: Setup) -> None:
    assert hs.verifier.verify(hs_token(payload(), kid=None)).sub == "42"


def test_missing_kid_refused_with_several_keys() -> None:
    auth = hs_auth(
        keys=(KeyConfig(kid="k1", secret=SECRET), KeyConfig(kid="k0", secret=OTHER_SECRET))
    )
    s = Setup(auth)
    assert s.code(hs_token(payload(), kid=None)) == "token_unknown_kid"


def test_rotated_out_key_refused() -> None:
    # "old" signed this token, then was removed from the config entirely.
    old_token = hs_token(payload(), key=OTHER_SECRET, kid="old")
    s = Setup(hs_auth())
    assert s.code(old_token) == "token_unknown_kid"
    # Relabelling it with a kid still configured does not help: the key differs.
    assert s.code(hs_token(payload(), key=OTHER_SECRET, kid="k1")) == "token_bad_signature"


def test_hs256_rotation_old_tokens_still_verify() -> None:
    before = Setup(hs_auth(keys=(KeyConfig(kid="old", secret=OTHER_SECRET),)))
    old_token, old_claims = before.issuer.issue_access("42", "user")

    after = Setup(
        hs_auth(
            keys=(KeyConfig(kid="new", secret=SECRET), KeyConfig(kid="old", secret=OTHER_SECRET))
        )
    )
    new_token, new_claims = after.issuer.issue_access("42", "user")

    assert jwt.get_unverified_header(new_token)["kid"] == "new"
    assert after.verifier.verify(old_token) == old_claims
    assert after.verifier.verify(new_token) == new_claims
    assert before.code(new_token) == "token_unknown_kid"  # an instance not yet reloaded


@pytest.mark.parametrize("algorithm", ["RS256", "ES256", "EdDSA"])
def test_asymmetric_rotation_old_key_kept_as_public_only(tmp_path: Path, algorithm: str) -> None:
    old, new = new_key(algorithm, 0), new_key(algorithm, 1)
    old_path, new_path = pem(old, tmp_path / "old.pem"), pem(new, tmp_path / "new.pem")
    before = Setup(AuthConfig(algorithm=algorithm, keys=(KeyConfig("old", private_key=old_path),)))
    old_token, old_claims = before.issuer.issue_access("42", "user")

    old_public = tmp_path / "old.pub"
    old_public.write_bytes(public_pem(old))
    after = Setup(
        AuthConfig(
            algorithm=algorithm,
            keys=(KeyConfig("new", private_key=new_path), KeyConfig("old", public_key=old_public)),
        )
    )
    new_token, new_claims = after.issuer.issue_access("42", "user")

    assert jwt.get_unverified_header(new_token)["kid"] == "new"
    assert after.verifier.verify(old_token) == old_claims
    assert after.verifier.verify(new_token) == new_claims
    # A token signed by the new key but claiming the old kid fails on the signature.
    mislabelled = jwt.encode(payload(), new, algorithm=algorithm, headers={"kid": "old"})
    assert after.code(mislabelled) == "token_bad_signature"


# --- the cache -----------------------------------------------------------------------


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every token the verifier actually decodes (cache misses), in order."""
    seen: list[str] = []
    real: Callable[..., dict[str, Any]] = jwt.decode

    def counting(token: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        seen.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)  # the module tokens.py calls through
    return seen


def test_cache_hit_skips_decoding(hs: Setup, decodes: list[str]) -> None:
    token, claims = hs.issuer.issue_access("42", "user")
    assert hs.verifier.verify(token) == claims
    assert hs.verifier.verify(token) == claims
    assert decodes == [token]


def test_cached_token_refused_once_the_clock_passes_exp(decodes: list[str]) -> None:
    s = Setup(hs_auth(leeway=0.0))
    token, claims = s.issuer.issue_access("42", "user")
    assert s.verifier.verify(token) == claims

    s.clock.now = claims.exp - 1
    assert s.verifier.verify(token) == claims
    assert decodes == [token]  # still served from the cache

    s.clock.now = claims.exp
    assert s.code(token) == "token_expired"
    assert decodes == [token, token]  # the stale entry was dropped and re-checked
    assert s.code(token) == "token_expired"


def test_token_inside_leeway_is_verified_each_time(hs: Setup, decodes: list[str]) -> None:
    token, claims = hs.issuer.issue_access("42", "user")
    hs.verifier.verify(token)
    hs.clock.now = claims.exp + 1  # expired, but within the 30 s leeway
    assert hs.verifier.verify(token) == claims
    assert hs.verifier.verify(token) == claims
    assert decodes == [token, token, token]
    hs.clock.now = claims.exp + hs.auth.leeway
    assert hs.code(token) == "token_expired"


def test_cache_is_bounded_and_evicts_the_oldest(decodes: list[str]) -> None:
    s = Setup(hs_auth(), cache_size=3)
    issued = [s.issuer.issue_access(str(n), "user")[0] for n in range(5)]
    for token in issued:
        s.verifier.verify(token)
    assert decodes == issued

    decodes.clear()
    for token in issued[2:]:  # the three newest are cached
        s.verifier.verify(token)
    assert decodes == []
    s.verifier.verify(issued[0])  # evicted: decoded again
    assert decodes == [issued[0]]
    assert len(s.verifier._cache) == 3


def test_cache_size_from_auth_config(decodes: list[str]) -> None:
    s = Setup(hs_auth(token_cache=1))
    first, _ = s.issuer.issue_access("1", "user")
    second, _ = s.issuer.issue_access("2", "user")
    for token in (first, second, second, first):
        s.verifier.verify(token)
    assert decodes == [first, second, first]


def test_cache_off(decodes: list[str]) -> None:
    s = Setup(hs_auth(), cache_size=0)
    token, _ = s.issuer.issue_access("42", "user")
    s.verifier.verify(token)
    s.verifier.verify(token)
    assert decodes == [token, token]


def test_failures_are_not_cached(hs: Setup, decodes: list[str]) -> None:
    bad = hs_token(payload(), key=OTHER_SECRET)
    assert hs.code(bad) == "token_bad_signature"
    assert hs.code(bad) == "token_bad_signature"
    assert decodes == [bad, bad]
