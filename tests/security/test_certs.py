"""`gateway certs dev`: a local CA and a localhost server certificate, keys 0600, CA reused."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import shutil
import socket
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from gateway.cli import main
from gateway.security import certs
from gateway.tls.server import server_context

REPO = Path(__file__).resolve().parents[2]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture
def no_chmod(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail on any chmod: key files must be created 0600, never tightened afterwards."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("chmod called: the mode must be set when the file is created")

    monkeypatch.setattr(os, "chmod", refuse)
    monkeypatch.setattr(os, "fchmod", refuse)
    monkeypatch.setattr(Path, "chmod", refuse)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that takes nothing away: the 0600 must come from the code, not the umask."""
    previous = os.umask(0)
    yield
    os.umask(previous)


@pytest.mark.usefixtures("no_chmod", "open_umask")
def test_certs_dev_makes_a_ca_and_a_localhost_certificate_with_private_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "out"
    assert main(["certs", "dev", "--dir", str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == [
        "ca.crt",
        "ca.key",
        "server.crt",
        "server.key",
    ]
    assert mode(folder / "ca.key") == 0o600
    assert mode(folder / "server.key") == 0o600
    assert mode(folder / "ca.crt") == 0o644
    assert mode(folder / "server.crt") == 0o644

    ca, server = load(folder / "ca.crt"), load(folder / "server.crt")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca

    out = capsys.readouterr().out
    for name in ("ca.crt", "ca.key", "server.crt", "server.key"):
        assert str(folder / name) in out
    assert "(new)" in out
    assert "/usr/local/share/ca-certificates/gateway-dev.crt" in out
    assert "update-ca-certificates" in out
    assert f"curl --cacert {folder / 'ca.crt'}" in out
    assert f"SSL_CERT_FILE={folder / 'ca.crt'}" in out


def test_a_second_run_keeps_the_ca_and_remakes_the_server_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "certs"
    assert main(["certs", "dev", "--dir", str(folder)]) == 0
    ca_before = (folder / "ca.crt").read_bytes()
    ca_key_before = (folder / "ca.key").read_bytes()
    server_before = load(folder / "server.crt")
    capsys.readouterr()

    assert main(["certs", "dev", "--dir", str(folder)]) == 0  # idempotent: `make run` calls it
    assert "(kept)" in capsys.readouterr().out
    assert (folder / "ca.crt").read_bytes() == ca_before
    assert (folder / "ca.key").read_bytes() == ca_key_before
    server_after = load(folder / "server.crt")
    assert server_after.serial_number != server_before.serial_number
    server_after.verify_directly_issued_by(load(folder / "ca.crt"))

    assert main(["certs", "dev", "--dir", str(folder), "--force"]) == 0
    assert "(new)" in capsys.readouterr().out
    assert (folder / "ca.crt").read_bytes() != ca_before
    load(folder / "server.crt").verify_directly_issued_by(load(folder / "ca.crt"))


def test_a_key_file_left_world_readable_is_replaced_by_a_private_one(tmp_path: Path) -> None:
    folder = tmp_path / "certs"
    folder.mkdir()
    (folder / "server.key").write_text("old")
    (folder / "server.key").chmod(0o644)
    certs.dev_certs(folder)
    assert mode(folder / "server.key") == 0o600
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no temp files


def test_dir_is_relative_to_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    monkeypatch.chdir(tmp_path)
    assert main(["certs", "dev", "--config", str(etc / "routes.yaml")]) == 0
    assert (etc / "certs" / "server.crt").is_file()
    assert "tls: {cert: certs/server.crt, key: certs/server.key}" in capsys.readouterr().out


def test_half_a_ca_is_not_silently_replaced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "certs"
    certs.dev_certs(folder)
    (folder / "ca.key").unlink()
    ca_before = (folder / "ca.crt").read_bytes()
    assert main(["certs", "dev", "--dir", str(folder)]) == 1
    err = capsys.readouterr().err
    assert f"{folder / 'ca.crt'} exists but {folder / 'ca.key'} does not" in err
    assert "--force" in err
    assert (folder / "ca.crt").read_bytes() == ca_before


def test_a_ca_whose_key_does_not_match_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "certs"
    certs.dev_certs(folder)
    certs.write_key(folder / "ca.key", certs.new_key())
    assert main(["certs", "dev", "--dir", str(folder)]) == 1
    err = capsys.readouterr().err
    assert f"{folder / 'ca.key'} is not the key of {folder / 'ca.crt'}" in err


def _handshake_names() -> list[str]:
    names = ["localhost", "127.0.0.1"]
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        names.append("::1")
    except OSError:
        pass  # no IPv6 loopback here
    return names


@pytest.mark.parametrize("name", _handshake_names())
async def test_clients_trusting_the_ca_accept_the_server_by_each_name(
    tmp_path: Path, name: str
) -> None:
    made = certs.dev_certs(tmp_path)
    address = "::1" if name == "::1" else "127.0.0.1"

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hi")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(
        answer, address, 0, ssl=server_context(made.server_cert, made.server_key)
    )
    port = server.sockets[0].getsockname()[1]
    client = ssl.create_default_context(cafile=str(made.ca_cert))  # hostname checked
    async with server:
        reader, writer = await asyncio.open_connection(
            address, port, ssl=client, server_hostname=name
        )
        assert await reader.read() == b"hi"
        writer.close()


def test_the_ca_cannot_vouch_for_names_beyond_loopback(tmp_path: Path) -> None:
    # Trusting the dev CA must not let its key impersonate real sites.
    made = certs.dev_certs(tmp_path)
    ca_cert, ca_key = certs.load_ca(made.ca_cert, made.ca_key)
    certs.write_server_pair(
        ca_cert, ca_key, tmp_path / "evil.crt", tmp_path / "evil.key", ["example.com"]
    )
    store = ssl.create_default_context(cafile=str(made.ca_cert))
    server = server_context(tmp_path / "evil.crt", tmp_path / "evil.key")
    client_in, server_in = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_out, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = store.wrap_bio(client_in, client_out, server_hostname="example.com")
    serving = server.wrap_bio(server_in, server_out, server_side=True)

    def drive() -> None:
        """Both ends of the handshake, in memory, until it ends."""
        for _ in range(10):
            for end in (client, serving):
                with contextlib.suppress(ssl.SSLWantReadError):
                    end.do_handshake()
            server_in.write(client_out.read())
            client_in.write(server_out.read())

    with pytest.raises(ssl.SSLCertVerificationError, match=r"permitted subtree violation"):
        drive()


def test_the_curl_line_names_what_the_config_serves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The shipped routes.yaml (plain HTTP on 8080): the https URL is for once TLS is on,
    # and the line says what it serves now; never a port the config does not name.
    shutil.copytree(REPO / "policies", tmp_path / "policies")
    shutil.copytree(REPO / "frontend", tmp_path / "frontend")
    shipped = tmp_path / "routes.yaml"
    shipped.write_text((REPO / "routes.yaml").read_text())
    assert main(["certs", "dev", "--config", str(shipped)]) == 0
    curl = next(line for line in capsys.readouterr().out.splitlines() if "curl --cacert" in line)
    assert curl.endswith(
        f"https://127.0.0.1:8080/healthz  (once server.tls is set in {shipped}; "
        "it serves plain http://127.0.0.1:8080 now)"
    )
    assert "8443" not in curl

    tls = tmp_path / "tls.yaml"
    tls.write_text(
        "policies: policies/\nserver:\n  listen: 0.0.0.0:9443\n"
        "  tls: {cert: certs/server.crt, key: certs/server.key}\n"
    )
    assert main(["certs", "dev", "--config", str(tls)]) == 0
    curl = next(line for line in capsys.readouterr().out.splitlines() if "curl --cacert" in line)
    assert curl.endswith(
        f"curl --cacert {tmp_path / 'certs' / 'ca.crt'} https://localhost:9443/healthz"
    )
