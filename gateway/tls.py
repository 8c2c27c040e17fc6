"""TLS: the listener's context and its rotation, upstream client contexts, the HTTP→HTTPS
redirect listener, and the certificate checks the config loader runs.

The config loader imports this module (to check files at load), so aiohttp is
imported only where the redirect listener is built: `gateway check` stays quick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

if TYPE_CHECKING:  # the config loader imports this module: no runtime import back
    from aiohttp import web

    from gateway.config.schema import UpstreamConfig

log = logging.getLogger("gateway.tls")

# TLS 1.2 suites: ECDHE key exchange (forward secrecy) and AEAD ciphers only.
# Every TLS 1.3 suite qualifies; OpenSSL's defaults for those are kept.
SERVER_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
ALPN = ["http/1.1"]  # the gateway speaks HTTP/1.1; say so instead of letting clients guess
POLL_INTERVAL = 1.0  # seconds between looks at server.tls's files
_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})")
_IPV6 = re.compile(r"\[[0-9A-Fa-f:.]{2,45}\]")


class _EncryptedKey(ValueError):
    """Raised by the password callback: the gateway never prompts for a key's password."""


def _no_password() -> bytes:
    raise _EncryptedKey("the key is encrypted; the gateway needs it unencrypted")


def _load_pair(context: ssl.SSLContext, cert: Path | str, key: Path | str) -> None:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key.
    context.load_cert_chain(cert, key, password=_no_password)


# --- checks (the config loader reports these with FILE:LINE) --------------------


def pair_problem(cert: Path, key: Path) -> tuple[str, str] | None:
    """Why `cert` and `key` cannot serve TLS together, as (`"cert"` or `"key"`, message).

    None when they load together, exactly as the listener will load them.
    """
    for which, path in (("cert", cert), ("key", key)):
        problem = _file_problem(path)
        if problem is not None:
            return which, problem
    try:
        x509.load_pem_x509_certificate(cert.read_bytes())
    except (OSError, ValueError):
        return "cert", f"{cert}: no PEM certificate in it"
    try:
        _load_pair(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert, key)
    except _EncryptedKey:
        return "key", f"{key} is encrypted; the gateway needs it unencrypted (keep it mode 0600)"
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            return "key", f"{key} is not the private key of {cert}"
        return "key", f"{key}: not a PEM private key ({exc.reason or exc.strerror})"
    except OSError as exc:
        return "key", f"{key}: cannot load ({exc.strerror or exc})"
    return None


def ca_problem(ca: Path) -> str | None:
    """Why `ca` cannot serve as a CA bundle, or None."""
    problem = _file_problem(ca)
    if problem is not None:
        return problem
    try:
        ssl.create_default_context(cafile=str(ca))
    except ssl.SSLError:
        return f"{ca}: no PEM CA certificate in it"
    except OSError as exc:
        return f"{ca}: cannot load ({exc.strerror or exc})"
    return None


def _file_problem(path: Path) -> str | None:
    try:
        with path.open("rb"):
            return None
    except FileNotFoundError:
        return f"{path}: no such file"
    except IsADirectoryError:
        return f"{path}: is a folder, not a file"
    except OSError as exc:
        return f"{path}: cannot read ({exc.strerror or exc})"


# --- contexts -------------------------------------------------------------------


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The listener's context: TLS 1.2 or newer, AEAD with forward secrecy, ALPN http/1.1."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(SERVER_CIPHERS)
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(ALPN)
    _load_pair(context, cert, key)
    return context


def upstream_ssl(config: UpstreamConfig) -> ssl.SSLContext | bool:
    """The `ssl=` of an upstream's connector: True (the system CAs, full checks) unless
    upstreams.NAME.tls names a CA bundle, a client certificate, or `verify: false`."""
    tls = config.tls
    if tls is None:
        return True
    # A CA bundle replaces the system CAs for this upstream (only it is trusted).
    context = ssl.create_default_context(cafile=str(tls.ca) if tls.ca else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(ALPN)
    if tls.cert is not None and tls.key is not None:
        _load_pair(context, tls.cert, tls.key)  # mutual TLS: presented when asked
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        log.warning(
            "upstream certificates are not verified (tls.verify: false): "
            "anyone on the path can read and change this traffic",
            extra={"upstream": config.name},
        )
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
        except _EncryptedKey:
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
        _load_pair(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert_copy, key_copy)
        _load_pair(context, cert_copy, key_copy)
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


# --- the plain-HTTP redirect listener -------------------------------------------


def https_location(host_header: str, fallback_host: str, https_port: int, target: str) -> str:
    """Where the redirect listener sends a request: the same host and target on https.

    The Host header's host is used when it is a plain host name or address
    (its port is dropped); anything else falls back to `fallback_host`.
    """
    host = _header_host(host_header) or fallback_host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    port = "" if https_port == 443 else f":{https_port}"
    if not target.startswith("/"):
        target = "/"  # `OPTIONS *` or an absolute-form target: the root
    return f"https://{host}{port}{target}"


def _header_host(header: str) -> str | None:
    if header.startswith("["):
        end = header.find("]")
        host = header[: end + 1]
        return host if end > 0 and _IPV6.fullmatch(host) else None
    host = header.rsplit(":", 1)[0] if header.count(":") == 1 else header
    return host if _HOST_NAME.fullmatch(host) else None


def redirect_app(https_port: int) -> web.Application:
    """server.tls.redirect_http: every request, whatever its path, gets a 308 to https."""
    from aiohttp import web

    from gateway.middleware.request_id import RequestIdConfig, request_id, stamp_headers

    async def to_https(request: web.Request) -> web.StreamResponse:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        fallback = str(sockname[0]) if sockname else "localhost"
        target = request.rel_url.raw_path_qs
        location = https_location(request.headers.get("Host", ""), fallback, https_port, target)
        # 308, not 301: the method and body are kept when the client follows it.
        return web.Response(status=308, headers={"Location": location})

    # Not the gateway's chain: no route, no auth, nothing proxied; only the request id.
    app = web.Application(middlewares=[request_id(RequestIdConfig())])
    app.router.add_route("*", "/{tail:.*}", to_https)
    app.on_response_prepare.append(stamp_headers)
    return app


async def start_redirect_listener(
    address: tuple[str, int], https_port: int, reuse_port: bool = False
) -> web.AppRunner:
    """Listen on `address` with `redirect_app`; the caller cleans the runner up."""
    from aiohttp import web

    from gateway.lowlevel import GatewayRunner

    runner = GatewayRunner(redirect_app(https_port), handle_signals=False, access_log=None)
    await runner.setup()
    host, port = address
    await web.TCPSite(runner, host, port, reuse_port=reuse_port).start()
    log.info("redirecting to https", extra={"address": f"http://{host}:{port}"})
    return runner
