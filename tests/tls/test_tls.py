"""TLS: the listener (versions, ciphers, ALPN, HSTS), the redirect listener, certificate
rotation without a restart, the checks at load, and TLS to upstreams (CA, mutual TLS)."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.app import build_app
from gateway.cli import main
from gateway.config import ConfigError, load_config
from gateway.config.schema.upstreams import UpstreamTLSConfig
from gateway.security import certs
from gateway.services import ServiceSettings
from gateway.tls.redirect import https_location
from gateway.tls.server import server_context
from tests.conftest import GatewayTestServer, MakeGateway, WriteConfig
from tests.processes import free_port, start_gateway, stop

AiohttpServer = Callable[..., Awaitable[TestServer]]


@dataclass(frozen=True)
class Pki:
    """A dev CA and a server pair for 127.0.0.1/localhost, in tmp_path/certs."""

    made: certs.DevCerts
    ca_cert: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey

    def client(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.made.ca_cert))


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    made = certs.dev_certs(tmp_path / "certs")
    ca_cert, ca_key = certs.load_ca(made.ca_cert, made.ca_key)
    return Pki(made, ca_cert, ca_key)


def problems_of(path: Path) -> list[tuple[int, str]]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [(p.line, p.message) for p in info.value.problems]


def json_lines(path: Path) -> list[dict[str, object]]:
    """The complete log lines so far (the process may be writing the last one)."""
    complete = path.read_text().rpartition("\n")[0] if path.exists() else ""
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def wait_for_log(path: Path, message: str, seconds: float = 10.0) -> dict[str, object]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for entry in json_lines(path):
            if entry["msg"] == message:
                return entry
        time.sleep(0.1)
    raise AssertionError(f"no log line {message!r} within {seconds}s")


def serial_of(sock: ssl.SSLSocket) -> int:
    cert = sock.getpeercert()
    assert cert is not None
    return int(str(cert["serialNumber"]), 16)


def handshake(port: int, context: ssl.SSLContext) -> tuple[str | None, str | None, int]:
    """(TLS version, ALPN protocol, certificate serial) of a new connection."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as sock,
    ):
        return sock.version(), sock.selected_alpn_protocol(), serial_of(sock)


# --- routes.yaml: server.tls ------------------------------------------------------


def test_server_tls_resolves_paths_and_defaults(write_config: WriteConfig, pki: Pki) -> None:
    config = load_config(
        write_config("server:\n  tls: {cert: certs/server.crt, key: certs/server.key}\n")
    )
    tls = config.server.tls
    assert tls is not None
    assert (tls.cert, tls.key) == (pki.made.server_cert, pki.made.server_key)
    assert tls.hsts == 0  # no Strict-Transport-Security unless asked for
    assert tls.redirect_http is None


@pytest.mark.parametrize(
    ("hsts", "max_age"), [("0", 0), ("30d", 2_592_000), ("365d", 31_536_000), ("90", 90)]
)
def test_hsts_is_a_duration(write_config: WriteConfig, pki: Pki, hsts: str, max_age: int) -> None:
    path = write_config(
        f"server:\n  tls: {{cert: certs/server.crt, key: certs/server.key, hsts: {hsts}}}\n"
    )
    tls = load_config(path).server.tls
    assert tls is not None
    assert tls.hsts == max_age


def test_tls_problems_name_the_line_of_the_key(write_config: WriteConfig, pki: Pki) -> None:
    path = write_config(
        """\
        server:
          listen: 127.0.0.1:8443
          tls:
            cert: certs/server.crt
            key: certs/ca.key
            hsts: forever
            redirect_http: 127.0.0.1:8443
            ciphers: ALL
        """
    )
    folder = pki.made.server_cert.parent
    key, cert = folder / "ca.key", folder / "server.crt"
    assert problems_of(path) == [
        (5, f"server.tls.key: {key} is not the private key of {cert}"),
        (
            6,
            "server.tls.hsts: `forever` is not a duration; write e.g. 30s, 5m, 1h30m",
        ),
        (7, "server.tls.redirect_http: port 8443 is the TLS listener's own; pick another"),
        (8, "server.tls.ciphers: unknown key (known keys: cert, key, hsts, redirect_http)"),
    ]


@pytest.mark.parametrize(
    ("cert", "key", "which", "message"),
    [
        ("missing.crt", "server.key", "cert", "{dir}/missing.crt: no such file"),
        ("server.crt", "missing.key", "key", "{dir}/missing.key: no such file"),
        ("junk", "server.key", "cert", "{dir}/junk: no PEM certificate in it"),
        ("server.crt", "junk", "key", "{dir}/junk: not a PEM private key"),
        (
            "server.crt",
            "encrypted.key",
            "key",
            "{dir}/encrypted.key is encrypted; the gateway needs it unencrypted",
        ),
        (".", "server.key", "cert", "{dir}: is a folder, not a file"),
    ],
)
def test_unusable_tls_files_are_reported_at_load(
    write_config: WriteConfig,
    pki: Pki,
    capsys: pytest.CaptureFixture[str],
    cert: str,
    key: str,
    which: str,
    message: str,
) -> None:
    folder = pki.made.server_cert.parent
    (folder / "junk").write_text("not pem\n")
    encrypted = certs.new_key().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    (folder / "encrypted.key").write_bytes(encrypted)
    path = write_config(f"server:\n  tls:\n    cert: certs/{cert}\n    key: certs/{key}\n")
    line = 3 if which == "cert" else 4
    expected = message.format(dir=folder)
    assert main(["check", "--config", str(path)]) == 1  # `gateway check` prints FILE:LINE
    printed = capsys.readouterr().err.strip()
    assert printed.startswith(f"{path}:{line}: server.tls.{which}: {expected}")
    assert len(printed.splitlines()) == 1


# --- the listener: a real `gateway serve` process ----------------------------------


@pytest.fixture
def tls_process(
    write_config: WriteConfig, pki: Pki, tmp_path: Path
) -> Iterator[tuple[int, int, Path]]:
    """A gateway serving TLS, with a plain-HTTP redirect listener: (tls port, http port, log)."""
    port, redirect_port = free_port(), free_port()
    config = write_config(
        f"""\
        server:
          tls:
            cert: certs/server.crt
            key: certs/server.key
            redirect_http: 127.0.0.1:{redirect_port}
        routes:
          - {{path: /auth/login, methods: [POST], handler: auth.login, auth: none}}
        """
    )
    log = tmp_path / "gateway.log"
    process = start_gateway(config, port, log)
    try:
        yield port, redirect_port, log
    finally:
        stop(process)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_the_listener_speaks_tls_1_2_and_up_with_aead_and_forward_secrecy(
    tls_process: tuple[int, int, Path], pki: Pki
) -> None:
    port = tls_process[0]
    modern = pki.client()
    modern.set_alpn_protocols(["h2", "http/1.1"])
    version, alpn, _ = handshake(port, modern)
    assert version == "TLSv1.3"
    assert alpn == "http/1.1"  # offered h2 too: the gateway picks what it speaks

    tls12 = pki.client()
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    tls12.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
    assert handshake(port, tls12)[0] == "TLSv1.2"

    old = pki.client()
    old.minimum_version = ssl.TLSVersion.TLSv1  # the client would; the server must not
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        handshake(port, old)

    cbc = pki.client()  # forward secret, but CBC: not AEAD
    cbc.maximum_version = ssl.TLSVersion.TLSv1_2
    cbc.set_ciphers("ECDHE-ECDSA-AES128-SHA256")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        handshake(port, cbc)


def test_https_responses_carry_no_hsts_by_default_and_http_redirects_everything(
    tls_process: tuple[int, int, Path], pki: Pki
) -> None:
    port, redirect_port, _ = tls_process
    secure = http.client.HTTPSConnection("127.0.0.1", port, context=pki.client(), timeout=5)
    for path, status in (("/healthz", 200), ("/nowhere", 404)):
        secure.request("GET", path)
        response = secure.getresponse()
        response.read()
        assert response.status == status
        # server.tls.hsts unset (a development certificate, say): no header
        assert response.getheader("Strict-Transport-Security") is None
    secure.close()

    plain = http.client.HTTPConnection("127.0.0.1", redirect_port, timeout=5)
    cases = [
        ("GET", "/a/b?c=1&d=%2F", f"localhost:{redirect_port}", "localhost"),
        ("POST", "/auth/login", "gateway.example", "gateway.example"),
        ("GET", "/healthz", "[::1]:80", "[::1]"),
        ("GET", "/x", "bad host!", "127.0.0.1"),  # not a host name: the listener's address
    ]
    for method, target, host, location_host in cases:
        plain.request(
            method, target, body=b"{}" if method == "POST" else None, headers={"Host": host}
        )
        response = plain.getresponse()
        assert response.read() == b""
        assert response.status == 308
        assert response.getheader("Location") == f"https://{location_host}:{port}{target}"
        assert response.getheader("Strict-Transport-Security") is None  # never over plain HTTP
        assert response.getheader("X-Request-Id")
        assert response.getheader("Server") == "gateway"  # server.server_header, no versions
    plain.close()


def test_a_new_pair_is_served_without_a_restart_or_a_dropped_connection(
    tls_process: tuple[int, int, Path], pki: Pki
) -> None:
    port, _, log = tls_process
    made = pki.made
    kept = http.client.HTTPSConnection("127.0.0.1", port, context=pki.client(), timeout=5)
    kept.request("GET", "/healthz")
    assert kept.getresponse().read() == b'{"status":"ok"}'
    kept_socket = kept.sock
    assert isinstance(kept_socket, ssl.SSLSocket)
    first = serial_of(kept_socket)
    assert handshake(port, pki.client())[2] == first

    # A key that does not match the certificate: logged, and the old pair stays.
    certs.write_key(made.server_key, certs.new_key())
    failure = wait_for_log(log, "new certificate not loaded; the previous one stays in use")
    assert failure["level"] == "error"
    assert failure["error"] == "KEY_VALUES_MISMATCH"
    assert handshake(port, pki.client())[2] == first

    # A good pair from the same CA, each file replaced atomically (temp + rename).
    new = certs.write_server_pair(pki.ca_cert, pki.ca_key, made.server_cert, made.server_key)
    deadline = time.monotonic() + 10
    while handshake(port, pki.client())[2] != new.serial_number:
        assert time.monotonic() < deadline, "the new certificate was not served within 10s"
        time.sleep(0.2)
    reloaded = wait_for_log(log, "certificate reloaded")
    assert reloaded["serial"] == format(new.serial_number, "x")

    # The connection opened before the rotation still works, and it is the same one.
    kept.request("GET", "/healthz")
    assert kept.getresponse().read() == b'{"status":"ok"}'
    assert kept.sock is kept_socket
    assert serial_of(kept_socket) == first
    kept.close()


# --- HSTS on the app itself ----------------------------------------------------------


@pytest.fixture
async def serve_app(
    write_config: WriteConfig, sqlite_url: str
) -> AsyncIterator[Callable[[str], Awaitable[str]]]:
    """Serve routes.yaml text in-process (with its TLS, if any); return the base URL."""
    started: list[GatewayTestServer] = []

    async def serve(text: str) -> str:
        config = load_config(write_config(text))
        app = build_app(config, settings=ServiceSettings(database_url=sqlite_url))
        tls = config.server.tls
        context = server_context(tls.cert, tls.key) if tls else None
        server = GatewayTestServer(app)  # the gateway's own server: the lean path too
        await server.start_server(ssl=context)
        started.append(server)
        return f"{'https' if tls else 'http'}://127.0.0.1:{server.port}"

    yield serve
    for server in started:
        await server.close()


@pytest.mark.parametrize(
    ("hsts", "header"),
    [
        (None, None),  # not set: never by default
        ("0", None),
        ("30d", "max-age=2592000"),
        ("365d", "max-age=31536000"),
    ],
)
async def test_hsts_follows_the_config(
    serve_app: Callable[[str], Awaitable[str]],
    pki: Pki,
    echo: TestServer,
    hsts: str | None,
    header: str | None,
) -> None:
    setting = "" if hsts is None else f", hsts: {hsts}"
    base = await serve_app(
        f"server:\n  tls: {{cert: certs/server.crt, key: certs/server.key{setting}}}\n"
        f"upstreams:\n  echo: {{targets: ['http://127.0.0.1:{echo.port}']}}\n"
        "routes:\n  - {path: /up/**, upstream: echo, auth: none}\n"
    )
    async with aiohttp.ClientSession() as session:
        for path in ("/healthz", "/up/x"):  # a local answer, and a proxied one
            async with session.get(f"{base}{path}", ssl=pki.client()) as response:
                assert response.status == 200
                assert response.headers.get("Strict-Transport-Security") == header
                if path == "/up/x":
                    seen = (await response.json())["headers"]
                    assert seen["X-Forwarded-Proto"] == "https"


async def test_plain_http_never_carries_hsts(gateway: MakeGateway) -> None:
    client = await gateway("routes: []\n")
    response = await client.get("/healthz", headers={"X-Forwarded-Proto": "https"})
    assert response.status == 200
    assert "Strict-Transport-Security" not in response.headers


@pytest.mark.parametrize(
    ("host", "port", "target", "location"),
    [
        ("example.com:8080", 8443, "/a?b=1", "https://example.com:8443/a?b=1"),
        ("example.com", 443, "/", "https://example.com/"),
        ("[2001:db8::1]:80", 443, "/x", "https://[2001:db8::1]/x"),
        ("", 8443, "/x", "https://10.0.0.1:8443/x"),
        ("evil.com/path", 8443, "/x", "https://10.0.0.1:8443/x"),
        ("a@b", 8443, "/x", "https://10.0.0.1:8443/x"),
        ("example.com", 8443, "*", "https://example.com:8443/"),
    ],
)
def test_https_location(host: str, port: int, target: str, location: str) -> None:
    assert https_location(host, "10.0.0.1", port, target) == location


def test_https_location_brackets_an_ipv6_fallback() -> None:
    assert https_location("", "::1", 8443, "/x") == "https://[::1]:8443/x"


# --- TLS to upstreams ------------------------------------------------------------------


def identity_app() -> web.Application:
    """Answers with the common name of the client certificate it was shown, if any."""

    async def whoami(request: web.Request) -> web.Response:
        assert request.transport is not None
        peer = request.transport.get_extra_info("peercert") or {}
        names = [
            value for rdn in peer.get("subject", ()) for key, value in rdn if key == "commonName"
        ]
        return web.json_response({"client": names[0] if names else None})

    app = web.Application()
    app.router.add_get("/whoami", whoami)
    return app


def upstream_context(pki: Pki, client_ca: Path | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.made.server_cert, pki.made.server_key)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: no client certificate, no service
        context.load_verify_locations(client_ca)
    return context


def upstream_config(port: int, tls: str | None) -> str:
    tls_line = f"\n    tls: {tls}" if tls else ""
    return f"""\
upstreams:
  secure:
    targets: ["https://127.0.0.1:{port}"]{tls_line}
routes:
  - {{path: /s/**, upstream: secure, strip_prefix: /s, auth: none}}
"""


@pytest.fixture
def client_pair(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A CA of its own for clients, and a client certificate it signed: (ca, cert, key)."""
    folder = tmp_path / "clients"
    folder.mkdir()
    ca_key = certs.new_key()
    ca = certs.make_ca(ca_key, name="test clients CA")
    certs.write_cert(folder / "ca.crt", ca)
    certs.write_server_pair(ca, ca_key, folder / "client.crt", folder / "client.key")
    return folder / "ca.crt", folder / "client.crt", folder / "client.key"


async def test_mutual_tls_to_an_upstream(
    gateway: MakeGateway,
    aiohttp_server: AiohttpServer,
    pki: Pki,
    client_pair: tuple[Path, Path, Path],
) -> None:
    server = await aiohttp_server(identity_app(), ssl=upstream_context(pki, client_pair[0]))
    assert server.port is not None
    with_cert = await gateway(
        upstream_config(
            server.port, "{ca: certs/ca.crt, cert: clients/client.crt, key: clients/client.key}"
        )
    )
    response = await with_cert.get("/s/whoami")
    assert response.status == 200
    assert await response.json() == {"client": "localhost"}  # the upstream saw our certificate

    without = await gateway(upstream_config(server.port, "{ca: certs/ca.crt}"))
    response = await without.get("/s/whoami")
    assert response.status == 502
    problem = await response.json()
    # TLS 1.3 refuses a missing client certificate after the handshake: the
    # connection breaks before any response (upstream_reset); TLS 1.2 during it.
    assert problem["code"] in ("upstream_reset", "upstream_unreachable")


async def test_an_upstream_signed_by_an_unknown_ca_needs_its_ca(
    gateway: MakeGateway,
    aiohttp_server: AiohttpServer,
    pki: Pki,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = await aiohttp_server(identity_app(), ssl=upstream_context(pki))
    assert server.port is not None

    untrusted = await gateway(upstream_config(server.port, None))  # the system CAs only
    with caplog.at_level(logging.WARNING, logger="gateway.proxy"):
        response = await untrusted.get("/s/whoami")
    assert response.status == 502
    problem = await response.json()
    assert problem["code"] == "upstream_unreachable"
    # the TLS library's words are for the log, not the client
    assert "CERTIFICATE_VERIFY_FAILED" not in problem["detail"]
    assert any(
        r.getMessage() == "upstream failed" and "CERTIFICATE_VERIFY_FAILED" in str(r.error)
        for r in caplog.records
    )

    trusted = await gateway(upstream_config(server.port, "{ca: certs/ca.crt}"))
    response = await trusted.get("/s/whoami")
    assert response.status == 200
    assert await response.json() == {"client": None}

    with caplog.at_level(logging.WARNING, logger="gateway.tls"):
        unchecked = await gateway(upstream_config(server.port, "{verify: false}"))
    assert any(
        r.levelno == logging.WARNING and getattr(r, "upstream", None) == "secure"
        for r in caplog.records
    ), "verify: false must be logged as a warning"
    response = await unchecked.get("/s/whoami")
    assert response.status == 200


def test_upstream_tls_config(write_config: WriteConfig, pki: Pki) -> None:
    config = load_config(
        write_config(
            upstream_config(
                8443, "{ca: certs/ca.crt, cert: certs/server.crt, key: certs/server.key}"
            )
        )
    )
    folder = pki.made.ca_cert.parent
    assert config.upstreams["secure"].tls == UpstreamTLSConfig(
        ca=folder / "ca.crt", cert=folder / "server.crt", key=folder / "server.key", verify=True
    )
    model = load_config(
        write_config(
            "models:\n  m: {url: 'https://127.0.0.1:9000', tls: {verify: false}}\n", "models.yaml"
        )
    )
    assert model.upstreams["m"].tls == UpstreamTLSConfig(verify=False)


def test_upstream_tls_problems(write_config: WriteConfig, pki: Pki) -> None:
    folder = pki.made.ca_cert.parent
    key, cert = folder / "ca.key", folder / "server.crt"
    path = write_config(
        """\
        upstreams:
          a:
            targets: ["https://127.0.0.1:9000"]
            tls:
              ca: certs/nope.crt
              cert: certs/server.crt
          b:
            targets: ["http://127.0.0.1:9001"]
            tls: {ca: certs/ca.crt}
          c:
            targets: ["https://127.0.0.1:9002"]
            tls:
              cert: certs/server.crt
              key: certs/ca.key
              verify: maybe
        """
    )
    assert problems_of(path) == [
        (4, "upstreams.a.tls: a client certificate needs both cert and key"),
        (5, f"upstreams.a.tls.ca: {folder / 'nope.crt'}: no such file"),
        (9, "upstreams.b.tls: only applies to https:// targets"),
        (14, f"upstreams.c.tls.key: {key} is not the private key of {cert}"),
        (15, "upstreams.c.tls.verify: expected true or false"),
    ]


def test_a_stalled_tls_handshake_is_closed_after_header_timeout(
    write_config: WriteConfig, pki: Pki, tmp_path: Path
) -> None:
    """The event loop's default would hold a silent TLS connection 60 s; the gateway gives
    a handshake server.header_timeout, as it gives a request head."""
    port = free_port()
    config = write_config(
        """\
        server:
          header_timeout: 1s
          tls: {cert: certs/server.crt, key: certs/server.key}
        routes:
          - {path: /auth/login, methods: [POST], handler: auth.login, auth: none}
        """
    )
    process = start_gateway(config, port, tmp_path / "gateway.log")
    try:
        outcomes = []
        for opening in (b"", b"\x16\x03\x01\x00"):  # nothing, then half a ClientHello record
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(opening)
                sock.settimeout(5.0)  # 5x the timeout, far below the default 60 s: no hang
                try:
                    outcomes.append(sock.recv(1024))  # b"": the gateway closed it
                except ConnectionResetError:
                    outcomes.append(b"")
                except TimeoutError:
                    outcomes.append(b"still open")
        assert outcomes == [b"", b""]
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,  # still serving
            pki.client().wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            assert tls.version() is not None
    finally:
        stop(process)
