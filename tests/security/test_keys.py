"""KeySet: HS256 secrets from the environment or auth.keys, PEM keys per algorithm, the JWKS.

PEM files are generated here with `cryptography` into tmp_path; every refusal
is asserted by its operator-facing message.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.config.schema.auth import AuthConfig, KeyConfig
from gateway.security.keys import KeyConfigError, KeySet, hmac_kid

SECRET = "an-hs256-secret-of-forty-bytes-or-more!!"
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "k"}

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@cache
def rsa_key(bits: int = 2048, n: int = 0) -> rsa.RSAPrivateKey:
    """An RSA key, generated once per (bits, n): RSA generation is the slow part."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def new_key(algorithm: str) -> PrivateKey:
    if algorithm == "RS256":
        return rsa_key()
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def write_private(path: Path, key: PrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def write_public(path: Path, key: PrivateKey) -> Path:
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def refused(build: Callable[[], KeySet]) -> str:
    with pytest.raises(KeyConfigError) as caught:
        build()
    return str(caught.value)


# --- HS256 -------------------------------------------------------------------


def test_hs256_from_env() -> None:
    keys = KeySet.from_config(AuthConfig(), environ={"GATEWAY_JWT_SECRET": SECRET})

    assert keys.algorithm == "HS256"
    assert keys.signing_key == SECRET.encode("utf-8")
    assert keys.signing_kid == "hs-" + hashlib.sha256(SECRET.encode()).hexdigest()[:8]
    assert keys.verification_key(keys.signing_kid) == SECRET.encode("utf-8")
    assert keys.verification_key(None) == SECRET.encode("utf-8")  # the only key
    assert keys.verification_key("other") is None
    assert keys.jwks() == {"keys": []}


def test_hs256_kid_is_deterministic_and_depends_on_the_secret() -> None:
    def kid(secret: str) -> str:
        return KeySet.from_config(AuthConfig(), environ={"GATEWAY_JWT_SECRET": secret}).signing_kid

    assert kid(SECRET) == kid(SECRET) == hmac_kid(SECRET.encode())
    assert kid(SECRET) != kid(SECRET + "x")
    assert SECRET not in kid(SECRET)


def test_hs256_env_secret_counts_utf8_bytes() -> None:
    secret = "é" * 16  # 16 characters, 32 bytes: long enough
    keys = KeySet.from_config(AuthConfig(), environ={"GATEWAY_JWT_SECRET": secret})
    assert keys.signing_key == secret.encode("utf-8")


@pytest.mark.parametrize("environ", [{}, {"GATEWAY_JWT_SECRET": ""}])
def test_hs256_env_missing(environ: dict[str, str]) -> None:
    message = refused(lambda: KeySet.from_config(AuthConfig(), environ=environ))
    assert message.startswith("GATEWAY_JWT_SECRET is not set: HS256 needs a secret of at least 32")


def test_hs256_short_env_secret_refused_without_echoing_it() -> None:
    secret = "short-but-sec" + "r" * 18  # 31 bytes
    message = refused(
        lambda: KeySet.from_config(AuthConfig(), environ={"GATEWAY_JWT_SECRET": secret})
    )
    assert message.startswith("GATEWAY_JWT_SECRET must be at least 32 bytes (it has 31)")
    assert secret not in message
    assert "short-but" not in message


def test_hs256_short_configured_secret_refused_naming_the_kid() -> None:
    secret = "tiny-secret-value"
    auth = AuthConfig(keys=(KeyConfig(kid="k1", secret=secret.encode()),))
    message = refused(lambda: KeySet.from_config(auth, environ={}))
    assert message.startswith("auth.keys: k1: the HS256 secret must be at least 32 bytes")
    assert secret not in message


def test_hs256_configured_keys_first_signs_all_verify() -> None:
    new, old = (SECRET + "-new").encode(), (SECRET + "-old").encode()
    auth = AuthConfig(keys=(KeyConfig(kid="new", secret=new), KeyConfig(kid="old", secret=old)))
    # auth.keys wins over the environment.
    keys = KeySet.from_config(auth, environ={"GATEWAY_JWT_SECRET": SECRET})

    assert (keys.signing_kid, keys.signing_key) == ("new", new)
    assert keys.verification_key("new") == new
    assert keys.verification_key("old") == old
    assert keys.verification_key(None) is None  # two keys: a kid is needed
    assert keys.kids == ("new", "old")
    assert keys.jwks() == {"keys": []}


def test_hs256_key_without_secret_refused(tmp_path: Path) -> None:
    auth = AuthConfig(keys=(KeyConfig(kid="k1", private_key=tmp_path / "k.pem"),))
    message = refused(lambda: KeySet.from_config(auth, environ={}))
    assert message == "auth.keys: k1: HS256 keys need a secret (e.g. secret: ${GATEWAY_JWT_SECRET})"


def test_duplicate_kid_refused() -> None:
    secret = SECRET.encode()
    auth = AuthConfig(keys=(KeyConfig(kid="k", secret=secret), KeyConfig(kid="k", secret=secret)))
    assert refused(lambda: KeySet.from_config(auth)) == "auth.keys: kid 'k' is used twice"


def test_unsupported_algorithm_refused() -> None:
    message = refused(lambda: KeySet.from_config(AuthConfig(algorithm="HS512"), environ={}))
    assert message == "auth.algorithm: 'HS512' is not supported; use HS256, RS256, ES256 or EdDSA"


# --- RS256 / ES256 / EdDSA ------------------------------------------------------

ASYMMETRIC = ["RS256", "ES256", "EdDSA"]
# algorithm -> (fixed members, members that carry the public key)
JWK_SHAPE: dict[str, tuple[dict[str, str], set[str]]] = {
    "RS256": ({"kty": "RSA"}, {"n", "e"}),
    "ES256": ({"kty": "EC", "crv": "P-256"}, {"x", "y"}),
    "EdDSA": ({"kty": "OKP", "crv": "Ed25519"}, {"x"}),
}


@pytest.mark.parametrize("algorithm", ASYMMETRIC)
def test_pem_private_key_signs_and_derives_public(tmp_path: Path, algorithm: str) -> None:
    private = new_key(algorithm)
    path = write_private(tmp_path / "signing.pem", private)
    auth = AuthConfig(algorithm=algorithm, keys=(KeyConfig(kid="k1", private_key=path),))

    keys = KeySet.from_config(auth, environ={})

    assert keys.signing_kid == "k1"
    assert type(keys.signing_key) is type(private)
    public = keys.verification_key("k1")
    assert public is not None
    assert not isinstance(public, bytes)
    assert public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert keys.verification_key(None) is public


@pytest.mark.parametrize("algorithm", ASYMMETRIC)
def test_jwks_lists_public_keys_only(tmp_path: Path, algorithm: str) -> None:
    signing, retired = new_key(algorithm), new_key(algorithm)
    if algorithm == "RS256":
        retired = rsa_key(2048, 1)
    auth = AuthConfig(
        algorithm=algorithm,
        keys=(
            KeyConfig(kid="new", private_key=write_private(tmp_path / "new.pem", signing)),
            KeyConfig(kid="old", public_key=write_public(tmp_path / "old.pub", retired)),
        ),
    )

    jwks = KeySet.from_config(auth, environ={}).jwks()

    assert [jwk["kid"] for jwk in jwks["keys"]] == ["new", "old"]
    fixed, public_members = JWK_SHAPE[algorithm]
    for jwk in jwks["keys"]:
        assert "d" not in jwk
        assert not PRIVATE_MEMBERS & jwk.keys(), jwk
        # Exactly these members: nothing private can hide under another name.
        assert jwk.keys() == fixed.keys() | public_members | {"kid", "alg", "use"}
        assert {name: jwk[name] for name in fixed} == fixed
        assert (jwk["alg"], jwk["use"]) == (algorithm, "sig")


def test_jwks_is_a_fresh_copy(tmp_path: Path) -> None:
    path = write_private(tmp_path / "k.pem", new_key("ES256"))
    keys = KeySet.from_config(
        AuthConfig(algorithm="ES256", keys=(KeyConfig("k", private_key=path),))
    )
    keys.jwks()["keys"][0]["kid"] = "changed"
    assert keys.jwks()["keys"][0]["kid"] == "k"


@pytest.mark.parametrize("algorithm", ASYMMETRIC)
def test_rotation_first_private_key_signs(tmp_path: Path, algorithm: str) -> None:
    old, new = new_key(algorithm), new_key(algorithm)
    if algorithm == "RS256":
        old = rsa_key(2048, 1)
    auth = AuthConfig(
        algorithm=algorithm,
        keys=(
            KeyConfig(kid="old-public", public_key=write_public(tmp_path / "old.pub", old)),
            KeyConfig(kid="new", private_key=write_private(tmp_path / "new.pem", new)),
        ),
    )
    keys = KeySet.from_config(auth, environ={})
    assert keys.signing_kid == "new"  # the first key *with a private key*
    assert keys.verification_key("old-public") is not None
    assert keys.verification_key(None) is None


def test_public_and_private_given_must_match(tmp_path: Path) -> None:
    private = write_private(tmp_path / "a.pem", new_key("ES256"))
    other = write_public(tmp_path / "b.pub", new_key("ES256"))
    auth = AuthConfig(
        algorithm="ES256", keys=(KeyConfig(kid="k1", private_key=private, public_key=other),)
    )
    assert refused(lambda: KeySet.from_config(auth)) == (
        f"auth.keys: k1: public_key {other} is not the public half of private_key {private}"
    )


def test_matching_public_and_private_accepted(tmp_path: Path) -> None:
    key = new_key("EdDSA")
    auth = AuthConfig(
        algorithm="EdDSA",
        keys=(
            KeyConfig(
                kid="k1",
                private_key=write_private(tmp_path / "k.pem", key),
                public_key=write_public(tmp_path / "k.pub", key),
            ),
        ),
    )
    assert KeySet.from_config(auth).signing_kid == "k1"


WRONG_KEYS: dict[str, Callable[[], PrivateKey]] = {
    "rsa-1024": lambda: rsa_key(1024),
    "rsa-2048": lambda: rsa_key(),
    "p-256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "p-384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "ed25519": ed25519.Ed25519PrivateKey.generate,
}
RSA_2048 = "an RSA key of at least 2048 bits"


@pytest.mark.parametrize(
    ("algorithm", "key", "needs", "holds"),
    [
        ("RS256", "p-256", RSA_2048, "an EC key on curve secp256r1"),
        ("RS256", "rsa-1024", RSA_2048, "a 1024-bit RSA key"),
        ("ES256", "p-384", "an EC key on curve P-256", "an EC key on curve secp384r1"),
        ("ES256", "ed25519", "an EC key on curve P-256", "an Ed25519 key"),
        ("EdDSA", "rsa-2048", "an Ed25519 key", "a 2048-bit RSA key"),
        ("EdDSA", "p-256", "an Ed25519 key", "an EC key on curve secp256r1"),
    ],
)
def test_wrong_key_type_for_algorithm_refused(
    tmp_path: Path, algorithm: str, key: str, needs: str, holds: str
) -> None:
    path = write_private(tmp_path / "wrong.pem", WRONG_KEYS[key]())
    auth = AuthConfig(algorithm=algorithm, keys=(KeyConfig(kid="mine", private_key=path),))
    assert refused(lambda: KeySet.from_config(auth)) == (
        f"auth.keys: mine: {algorithm} needs {needs}, but {path} holds {holds}"
    )


def test_wrong_public_key_type_refused(tmp_path: Path) -> None:
    path = write_public(tmp_path / "wrong.pub", ed25519.Ed25519PrivateKey.generate())
    signer = write_private(tmp_path / "ok.pem", rsa_key())
    auth = AuthConfig(
        algorithm="RS256",
        keys=(KeyConfig(kid="ok", private_key=signer), KeyConfig(kid="old", public_key=path)),
    )
    assert refused(lambda: KeySet.from_config(auth)) == (
        f"auth.keys: old: RS256 needs an RSA key of at least 2048 bits, "
        f"but {path} holds an Ed25519 key"
    )


def test_missing_key_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "absent.pem"
    auth = AuthConfig(algorithm="RS256", keys=(KeyConfig(kid="k1", private_key=path),))
    assert refused(lambda: KeySet.from_config(auth)) == (
        f"auth.keys: k1: cannot read private_key {path}: No such file or directory"
    )


def test_not_pem_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.pem"
    path.write_text("this is not a key\n")
    auth = AuthConfig(algorithm="RS256", keys=(KeyConfig(kid="k1", private_key=path),))
    assert refused(lambda: KeySet.from_config(auth)) == (
        f"auth.keys: k1: private_key {path} is not an unencrypted PEM private key"
    )
    auth = AuthConfig(algorithm="RS256", keys=(KeyConfig(kid="k1", public_key=path),))
    assert refused(lambda: KeySet.from_config(auth)) == (
        f"auth.keys: k1: public_key {path} is not a PEM public key"
    )


def test_encrypted_private_key_refused(tmp_path: Path) -> None:
    path = tmp_path / "locked.pem"
    path.write_bytes(
        new_key("ES256").private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    auth = AuthConfig(algorithm="ES256", keys=(KeyConfig(kid="k1", private_key=path),))
    assert refused(lambda: KeySet.from_config(auth)) == (
        f"auth.keys: k1: private_key {path} is not an unencrypted PEM private key"
    )


def test_only_public_keys_cannot_sign(tmp_path: Path) -> None:
    path = write_public(tmp_path / "k.pub", new_key("ES256"))
    auth = AuthConfig(algorithm="ES256", keys=(KeyConfig(kid="k1", public_key=path),))
    assert refused(lambda: KeySet.from_config(auth)) == (
        "auth.keys: no key can sign tokens; give at least one key a private_key"
    )


def test_asymmetric_needs_keys() -> None:
    assert refused(lambda: KeySet.from_config(AuthConfig(algorithm="EdDSA"))) == (
        "auth: EdDSA needs auth.keys with PEM key files"
    )


def test_asymmetric_refuses_a_secret() -> None:
    auth = AuthConfig(algorithm="RS256", keys=(KeyConfig(kid="k1", secret=SECRET.encode()),))
    message = refused(lambda: KeySet.from_config(auth))
    assert message == (
        "auth.keys: k1: RS256 keys are PEM files (private_key, public_key), not secrets"
    )
    assert SECRET not in message
