"""`gateway check` builds what `gateway serve` builds: a config whose keys or URLs cannot
be used fails the check at its FILE:LINE, not the start or a later reload."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.cli import main

SECRET = "GATEWAY_JWT_SECRET"


def gateway(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def write_rsa(path: Path) -> rsa.RSAPrivateKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return key


def write_public(path: Path, key: rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def assert_check_and_serve_refuse(path: Path, expected: str) -> None:
    """Today's loader passes `path`; the build refuses it, in check as in serve."""
    checked = gateway("check", "--config", str(path), cwd=path.parent)
    assert checked.returncode == 1, checked.stdout
    assert checked.stderr.splitlines() == [expected]
    assert "Traceback" not in checked.stderr
    served = gateway("serve", "--config", str(path), "--port", "0", cwd=path.parent)
    assert served.returncode == 1  # fails before it binds anything
    assert "Traceback" not in served.stderr


def test_an_hs256_secret_too_short(tmp_path: Path) -> None:
    path = write(
        tmp_path / "routes.yaml",
        """\
        auth:
          keys:
            - {kid: a, secret: too-short}
        routes: []
        """,
    )
    assert_check_and_serve_refuse(
        path,
        f"{path}:3: auth.keys: a: the HS256 secret must be at least 32 bytes (it has 9); "
        "generate one with python -c 'import secrets; print(secrets.token_urlsafe(48))'",
    )


def test_a_private_key_file_that_is_not_pem(tmp_path: Path) -> None:
    write_rsa(tmp_path / "signing.pem")
    (tmp_path / "old.pem").write_text("not a key\n", encoding="utf-8")
    path = write(
        tmp_path / "routes.yaml",
        """\
        auth:
          algorithm: RS256
          keys:
            - kid: new
              private_key: signing.pem
            - kid: old
              private_key: old.pem
        routes: []
        """,
    )
    assert_check_and_serve_refuse(
        path,
        f"{path}:6: auth.keys: old: private_key {tmp_path / 'old.pem'} is not an unencrypted "
        "PEM private key",
    )


def test_a_public_key_that_does_not_match_its_private_key(tmp_path: Path) -> None:
    write_rsa(tmp_path / "signing.pem")
    write_public(tmp_path / "public.pem", write_rsa(tmp_path / "other.pem"))
    path = write(
        tmp_path / "routes.yaml",
        """\
        auth:
          algorithm: RS256
          keys:
            - kid: k1
              private_key: signing.pem
              public_key: public.pem
        routes: []
        """,
    )
    assert_check_and_serve_refuse(
        path,
        f"{path}:4: auth.keys: k1: public_key {tmp_path / 'public.pem'} is not the public half "
        f"of private_key {tmp_path / 'signing.pem'}",
    )


def test_a_database_url_whose_driver_is_missing(tmp_path: Path) -> None:
    path = write(tmp_path / "routes.yaml", "routes: []\n")
    env = {"GATEWAY_DATABASE_URL": "mysql+aiomysql://gateway:hunter2@127.0.0.1/gateway"}
    checked = gateway("check", "--config", str(path), cwd=tmp_path, env=env)
    assert checked.returncode == 1
    assert checked.stderr.splitlines() == [
        f"{path}:0: GATEWAY_DATABASE_URL: cannot be used (its driver aiomysql is not "
        "installed; e.g. postgresql+asyncpg://…)"
    ]
    assert "hunter2" not in checked.stderr


def test_a_redis_url_that_is_not_one(tmp_path: Path) -> None:
    path = write(tmp_path / "routes.yaml", "routes: []\n")
    checked = gateway(
        "check", "--config", str(path), cwd=tmp_path, env={"GATEWAY_REDIS_URL": "localhost:6379"}
    )
    assert checked.returncode == 1
    [line] = checked.stderr.splitlines()
    assert line.startswith(f"{path}:0: GATEWAY_REDIS_URL: cannot be used (")


def test_the_secret_from_the_environment_is_a_note_not_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The deployment gives GATEWAY_JWT_SECRET; the config is checked without it."""
    monkeypatch.delenv(SECRET, raising=False)
    path = write(tmp_path / "routes.yaml", "routes: []\n")
    assert main(["check", "--config", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.err == (
        f"{path}: note: GATEWAY_JWT_SECRET is not set here; serve needs it "
        "(auth.algorithm is HS256 and auth.keys is empty)\n"
    )
    assert captured.out == f"{path}: ok (0 routes, 0 upstreams, 0 models)\n"
    assert SECRET not in os.environ  # the stand-in used for the build is gone


def test_the_shipped_config_builds(capsys: pytest.CaptureFixture[str]) -> None:
    shipped = Path(__file__).resolve().parents[2] / "routes.yaml"
    assert main(["check", "--config", str(shipped)]) == 0, capsys.readouterr().err
