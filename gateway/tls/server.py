"""The TLS listener's context (TLS 1.2+, AEAD with forward secrecy, ALPN) and the
CertificateWatcher that loads a rotated cert/key pair without a restart (README, "TLS and
certificates").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509

from gateway.tls.files import EncryptedKey, load_pair

log = logging.getLogger("gateway.tls")

# TLS 1.2 suites: ECDHE key exchange (forward secrecy) and AEAD ciphers only.
# Every TLS 1.3 suite qualifies; OpenSSL's defaults for those are kept.
SERVER_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
ALPN = ["http/1.1"]  # the gateway speaks HTTP/1.1; say so instead of letting clients guess
POLL_INTERVAL = 1.0  # seconds between looks at server.tls's files


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The listener's context: TLS 1.2 or newer, AEAD with forward secrecy, ALPN http/1.1."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(SERVER_CIPHERS)
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(ALPN)
    load_pair(context, cert, key)
    return context


# --- rotation -------------------------------------------------------------------


class CertificateWatcher:
    """Polls server.tls's files and loads a changed pair into the listener's own context.

    `SSLContext.load_cert_chain` on the live context applies to every handshake
    after it; established connections keep their session. A change is loaded
    once it has held still for one poll (a pair is often written in two steps);
    a pair that does not load is logged and the previous one stays in use.
    """

    def __init__(
        self, context: ssl.SSLContext, cert: Path, key: Path, interval: float = POLL_INTERVAL
    ) -> None:
        self.context = context
        self.cert = cert
        self.key = key
        self.interval = interval
        self._loaded = self._signature()
        self._pending: tuple[int, ...] | None = None
        self._key_type = _key_type(cert)

    def _signature(self) -> tuple[int, ...] | None:
        """mtime, size, inode and device of both files: a rename over either changes it."""
        try:
            stats = (os.stat(self.cert), os.stat(self.key))
        except OSError:
            return None  # mid-rotation, or removed: keep serving the loaded pair
        return tuple(v for s in stats for v in (s.st_mtime_ns, s.st_size, s.st_ino, s.st_dev))

    def poll(self) -> bool:
        """One look at the files; True when a new pair went live."""
        signature = self._signature()
        if signature is None or signature == self._loaded:
            self._pending = None
            return False
        if signature != self._pending:
            self._pending = signature  # changed: load it when the next look finds it unchanged
            return False
        self._pending = None
        self._loaded = signature  # a failure is logged once, not at every poll
        return self.reload()

    def reload(self) -> bool:
        try:
            leaf = _swap_pair(self.context, self.cert, self.key)
        except EncryptedKey:
            error = "the key is encrypted"
        except ssl.SSLError as exc:
            error = str(exc.reason or exc)
        except (OSError, ValueError) as exc:
            error = str(getattr(exc, "strerror", None) or exc)
        else:
            key_type = type(leaf.public_key()).__name__
            if key_type != self._key_type:
                # A context holds one pair per key type: the old type's pair stays in it.
                log.warning(
                    "the new certificate has another key type: clients may still be shown "
                    "the old certificate until a restart",
                    extra={"old": self._key_type, "new": key_type},
                )
            log.info(
                "certificate reloaded",
                extra={
                    "cert": str(self.cert),
                    "serial": format(leaf.serial_number, "x"),
                    "not_after": leaf.not_valid_after_utc.isoformat(),
                },
            )
            return True
        log.error(
            "new certificate not loaded; the previous one stays in use",
            extra={"cert": str(self.cert), "key": str(self.key), "error": error},
        )
        return False

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.poll()


def _swap_pair(context: ssl.SSLContext, cert: Path, key: Path) -> x509.Certificate:
    """Load the pair as read once into `context`, after it loaded into a scratch one."""
    cert_pem, key_pem = cert.read_bytes(), key.read_bytes()
    leaf = x509.load_pem_x509_certificate(cert_pem)
    # The same bytes for the check and the live load: a file replaced between
    # the two cannot leave the live context with a certificate and a foreign key.
    with _private_copies(cert_pem, key_pem) as (cert_copy, key_copy):
        load_pair(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert_copy, key_copy)
        load_pair(context, cert_copy, key_copy)
    return leaf


@contextlib.contextmanager
def _private_copies(*blobs: bytes) -> Iterator[list[str]]:
    """Paths OpenSSL can load `blobs` from: anonymous memory files on Linux, else a 0700 dir."""
    if hasattr(os, "memfd_create"):
        fds = [os.memfd_create("gateway-tls", os.MFD_CLOEXEC) for _ in blobs]
        try:
            for fd, blob in zip(fds, blobs, strict=True):
                with os.fdopen(fd, "wb", closefd=False) as file:
                    file.write(blob)
            yield [f"/proc/self/fd/{fd}" for fd in fds]
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="gateway-tls-") as folder:
        paths = []
        for i, blob in enumerate(blobs):
            path = os.path.join(folder, str(i))
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(blob)
            paths.append(path)
        yield paths


def _key_type(cert: Path) -> str:
    try:
        return type(x509.load_pem_x509_certificate(cert.read_bytes()).public_key()).__name__
    except (OSError, ValueError):
        return ""
