"""Asymmetric keys end to end: RS256 tokens, JWKS, rotation without logging anyone out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import MakeGateway, WriteConfig
from tests.identity import CHEAP_HASHING, bearer, login, make_user


def write_rsa(folder: Path, name: str) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (folder / f"{name}.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (folder / f"{name}.pub.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def rs256_config(keys: str) -> str:
    return f"""
auth:
  algorithm: RS256
  keys: {keys}
  {CHEAP_HASHING}
policies: policies/
routes:
  - {{path: /auth/login, methods: [POST], handler: auth.login, auth: none}}
  - {{path: /users/me/**, handler: users}}
"""


async def test_rs256_tokens_jwks_and_rotation(
    gateway: MakeGateway, policies: Path, tmp_path: Path, sqlite_url: str
) -> None:
    write_rsa(tmp_path, "k1")
    write_rsa(tmp_path, "k2")
    before = await gateway(
        rs256_config("[{kid: k1, private_key: k1.pem}]"), database_url=sqlite_url
    )
    await make_user(before, "quinn")
    old = (await login(before, "quinn"))["access_token"]
    header = jwt.get_unverified_header(old)
    assert header["alg"] == "RS256"
    assert header["kid"] == "k1"
    jwks = await (await before.get("/.well-known/jwks.json")).json()
    assert [k["kid"] for k in jwks["keys"]] == ["k1"]
    assert all("d" not in k for k in jwks["keys"])  # public parts only

    # Rotate: k2 signs from now on, k1 still verifies what it signed.
    after = await gateway(
        rs256_config("[{kid: k2, private_key: k2.pem}, {kid: k1, public_key: k1.pub.pem}]"),
        database_url=sqlite_url,
    )
    assert (await after.get("/users/me", headers=bearer(old))).status == 200
    new = (await login(after, "quinn"))["access_token"]
    assert jwt.get_unverified_header(new)["kid"] == "k2"
    jwks = await (await after.get("/.well-known/jwks.json")).json()
    assert sorted(k["kid"] for k in jwks["keys"]) == ["k1", "k2"]

    # Retire k1 entirely: its tokens stop working, k2's keep working.
    retired = await gateway(
        rs256_config("[{kid: k2, private_key: k2.pem}]"), database_url=sqlite_url
    )
    resp = await retired.get("/users/me", headers=bearer(old))
    assert resp.status == 401
    assert (await resp.json())["code"] == "token_unknown_kid"
    assert (await retired.get("/users/me", headers=bearer(new))).status == 200


def test_serve_refuses_a_short_secret_and_says_so(write_config: WriteConfig) -> None:
    path = write_config("routes: []\n")
    env = {**os.environ, "GATEWAY_JWT_SECRET": "too-short-secret"}
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert result.returncode == 1
    assert "32 bytes" in result.stderr
    assert "too-short-secret" not in result.stderr
