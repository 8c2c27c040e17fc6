"""Development certificates: a local CA and a server certificate it signs (`gateway certs dev`).

The CA is made once and reused, so a browser or OS that trusts it keeps
trusting every server certificate made later; the server certificate is
remade on every run (the gateway picks a changed pair up without a restart).
Keys are ECDSA P-256, written with mode 0600 from the moment the file
exists, and every file is replaced atomically (temporary file, then rename),
so a running gateway never reads half a key.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEV_HOSTS = ("localhost", "127.0.0.1", "::1")
CA_DAYS = 3650
SERVER_DAYS = 397  # the longest validity browsers accept for a server certificate
CA_NAME = "gateway development CA"
# where `update-ca-certificates` (Debian, Ubuntu) looks for extra CAs
DEBIAN_CA_PATH = "/usr/local/share/ca-certificates/gateway-dev.crt"


class CertificateError(Exception):
    """Existing files that cannot be used as asked; the message says what to do."""


@dataclass(frozen=True, slots=True)
class DevCerts:
    """What `dev_certs` left in its folder."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    ca_reused: bool  # False: a new CA was made (clients must trust it again)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_ca(
    key: ec.EllipticCurvePrivateKey, name: str = CA_NAME, days: int = CA_DAYS
) -> x509.Certificate:
    """A self-signed CA for localhost and loopback addresses only (and no further CAs)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate clock skew
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        # It may sign for loopback names only: trusting it cannot let anyone
        # holding its key impersonate a real site to this machine.
        .add_extension(
            x509.NameConstraints(
                permitted_subtrees=[
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_network("127.0.0.0/8")),
                    x509.IPAddress(ipaddress.ip_network("::1/128")),
                ],
                excluded_subtrees=None,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def make_server_cert(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    key: ec.EllipticCurvePrivateKey,
    hosts: Sequence[str] = DEV_HOSTS,
    days: int = SERVER_DAYS,
) -> x509.Certificate:
    """A server certificate for `hosts` (DNS names or IP addresses), signed by the CA."""
    if not hosts:
        raise ValueError("a server certificate needs at least one host name or address")
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    now = _now()
    public = key.public_key()
    ca_public = ca_key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            # serverAuth, and clientAuth so tests can use one for mutual TLS
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def write_cert(path: Path, cert: x509.Certificate) -> None:
    """Replace `path` with the PEM certificate (mode 0644), atomically."""
    _write_atomic(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Replace `path` with the unencrypted PKCS#8 PEM key, mode 0600 from creation on."""
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomic(path, data, 0o600)


def load_ca(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """An existing CA pair, checked to be a CA whose key matches; CertificateError otherwise."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except OSError as exc:
        raise CertificateError(f"{cert_path}: cannot read ({exc.strerror or exc})") from None
    except ValueError:
        raise CertificateError(f"{cert_path}: not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except OSError as exc:
        raise CertificateError(f"{key_path}: cannot read ({exc.strerror or exc})") from None
    except (ValueError, TypeError):  # TypeError: the key is encrypted
        raise CertificateError(f"{key_path}: not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise CertificateError(f"{key_path} is not the key of {cert_path}")
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise CertificateError(f"{cert_path} is not a CA certificate")
    if cert.not_valid_after_utc <= _now():
        raise CertificateError(f"{cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    return cert, key


def dev_certs(directory: Path, force: bool = False, hosts: Sequence[str] = DEV_HOSTS) -> DevCerts:
    """Make (or reuse) the CA in `directory` and a fresh server pair signed by it.

    An existing ca.crt/ca.key is reused unless `force`; a half-present or
    unusable CA raises CertificateError instead of being silently replaced.
    """
    directory.mkdir(parents=True, exist_ok=True)
    result = DevCerts(
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        ca_reused=False,
    )
    present = [p for p in (result.ca_cert, result.ca_key) if p.exists()]
    if present and not force:
        if len(present) == 1:
            missing = result.ca_key if present[0] == result.ca_cert else result.ca_cert
            raise CertificateError(
                f"{present[0]} exists but {missing} does not; "
                "restore it, or pass --force to make a new CA (clients must trust it again)"
            )
        try:
            ca_cert, ca_key = load_ca(result.ca_cert, result.ca_key)
        except CertificateError as exc:
            raise CertificateError(f"{exc}; pass --force to make a new CA") from None
        result = DevCerts(
            result.ca_cert, result.ca_key, result.server_cert, result.server_key, ca_reused=True
        )
    else:
        ca_key = new_key()
        ca_cert = make_ca(ca_key)
        write_key(result.ca_key, ca_key)
        write_cert(result.ca_cert, ca_cert)
    write_server_pair(ca_cert, ca_key, result.server_cert, result.server_key, hosts)
    return result


def write_server_pair(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    cert_path: Path,
    key_path: Path,
    hosts: Sequence[str] = DEV_HOSTS,
) -> x509.Certificate:
    """A new key and a certificate for `hosts` signed by the CA, each file replaced atomically."""
    key = new_key()
    cert = make_server_cert(ca_cert, ca_key, key, hosts)
    # Key first, then the certificate: a gateway that looks in between finds a
    # mismatched pair, keeps its current one and looks again.
    write_key(key_path, key)
    write_cert(cert_path, cert)
    return cert


def trust_instructions(certs: DevCerts, url: str = "https://localhost:PORT/healthz") -> str:
    """How to make clients trust the development CA, for the operator to read; `url`: what
    the curl line asks (the config's own address, and a note when it serves plain HTTP)."""
    ca = certs.ca_cert
    return (
        f"To trust the development CA ({ca}):\n"
        f"  Debian/Ubuntu: sudo cp {ca} {DEBIAN_CA_PATH} && sudo update-ca-certificates\n"
        f"  curl:          curl --cacert {ca} {url}\n"
        f"  Python:        SSL_CERT_FILE={ca} python ...  (instead of the system CAs)\n"
        f"  requests:      REQUESTS_CA_BUNDLE={ca} python ...\n"
        "It can sign only for localhost and loopback addresses; still, keep ca.key to yourself."
    )


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write beside `path` with `mode` set at creation, fsync, then rename over it."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.unlink(missing_ok=True)  # left by a crash of an earlier process with this pid
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
