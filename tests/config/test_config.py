"""routes.yaml → frozen, typed Config; every problem named as FILE:LINE: key: message.

YAML texts start with a backslash-newline so that the first line of the
literal is line 1 of the file: the line numbers asserted are the ones a
reader counts in the test.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import shutil
from pathlib import Path
from textwrap import dedent

import pytest

from gateway.config import ConfigError, ConfigProblem, load_config
from gateway.config.models_section import MODEL_TIMEOUT
from gateway.config.schema.routes import RateLimitConfig
from gateway.config.schema.server import DEFAULT_MAX_BODY, TLSConfig
from gateway.config.schema.top import Config
from gateway.config.schema.upstreams import UPSTREAM_TIMEOUT
from gateway.config.units import Rate
from gateway.security import certs
from tests.conftest import WriteConfig

REPO = Path(__file__).resolve().parents[2]
HANDLERS = ("auth.login", "auth.register", "admin", "users")

UPSTREAM = """\
upstreams:
  up: {targets: ["http://127.0.0.1:9000"]}
"""


def with_upstream(text: str) -> str:
    """`text` (dedented) after an `upstreams:` section defining `up` on lines 1-2."""
    return UPSTREAM + dedent(text)


def with_shipped_policies(path: Path) -> Path:
    """Copy the shipped policies/ (user, analyst, admin) beside `path`: routes name roles."""
    shutil.copytree(REPO / "policies", path.parent / "policies")
    return path


def load(path: Path) -> Config:
    return load_config(path, extra_handlers=HANDLERS)


def problems(path: Path) -> list[tuple[int, str]]:
    """(line, message) of every problem, in the order reported; all in `path`."""
    with pytest.raises(ConfigError) as info:
        load(path)
    found = info.value.problems
    assert {p.file for p in found} == {str(path.resolve())}
    return [(p.line, p.message) for p in found]


def only_problem(path: Path) -> tuple[int, str]:
    found = problems(path)
    assert len(found) == 1, found
    return found[0]


# --- the whole file -----------------------------------------------------------------


def test_shipped_routes_yaml_loads_cleanly() -> None:
    config = load_config(REPO / "routes.yaml")
    assert config.path == REPO / "routes.yaml"
    assert "demo" in config.models
    assert config.routes[-2].path == "/models/demo/**"
    assert config.routes[-1].static == REPO / "frontend"  # static routes come last


def test_empty_file_gives_the_defaults(write_config: WriteConfig) -> None:
    path = write_config("")
    config = load(path)
    assert config.routes == ()
    assert dict(config.upstreams) == {}
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8080)
    assert config.server.max_body == DEFAULT_MAX_BODY
    assert config.server.tls is None
    assert config.auth.algorithm == "HS256"
    assert config.policies_dir == path.parent / "policies"
    assert config.base_dir == path.parent


def test_full_example_is_typed(write_config: WriteConfig) -> None:
    config = load(
        with_shipped_policies(
            write_config(
                """\
            server:
              listen: 0.0.0.0:8443
              trusted_proxies: [10.0.0.0/8, "::1"]
              max_body: 1MiB
              shutdown_grace: 250ms
            auth:
              issuer: example
              algorithm: RS256
              keys:
                - {kid: k2, private_key: keys/k2.pem}
                - {kid: k1, public_key: keys/k1.pub.pem}
              access_ttl: 15m
              refresh_ttl: 14d
              allow_registration: true
            upstreams:
              analytics:
                targets: [http://127.0.0.1:9010, "https://a.example/base/"]
                timeout: 2h
                connect_timeout: 2s
                first_byte_timeout: 5
                max_connections: 7
            routes:
              - path: /analytics/**
                upstream: analytics
                strip_prefix: /analytics
                roles: [analyst]
                rate_limit: 60/min
            """
            )
        )
    )
    server = config.server
    assert (server.host, server.port) == ("0.0.0.0", 8443)
    assert server.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert server.max_body == 1024 * 1024
    assert type(server.max_body) is int
    assert server.shutdown_grace == 0.25
    assert config.auth.issuer == "example"
    assert config.auth.algorithm == "RS256"
    assert config.auth.access_ttl == 900.0
    assert config.auth.refresh_ttl == 14 * 86400.0
    assert config.auth.allow_registration is True
    assert [k.kid for k in config.auth.keys] == ["k2", "k1"]
    assert config.auth.keys[0].private_key == config.base_dir / "keys/k2.pem"

    up = config.upstreams["analytics"]
    assert up.timeout == 7200.0
    assert isinstance(up.timeout, float)
    assert up.connect_timeout == 2.0
    assert up.first_byte_timeout == 5.0
    assert isinstance(up.first_byte_timeout, float)
    assert up.max_connections == 7
    assert [(t.scheme, t.host, t.port, t.base_path) for t in up.targets] == [
        ("http", "127.0.0.1", 9010, ""),
        ("https", "a.example", 443, "/base"),
    ]
    assert up.targets[0].origin == "http://127.0.0.1:9010"

    (route,) = config.routes
    assert route.path == "/analytics/**"
    assert route.upstream == "analytics"
    assert route.handler is None
    assert route.strip_prefix == "/analytics"
    assert route.roles == ("analyst",)
    assert route.auth == "required"
    assert route.methods is None
    assert route.rate_limit == RateLimitConfig(Rate(60, 60.0), "user")
    assert route.source == f"{config.path}:23"


def test_config_objects_are_frozen(write_config: WriteConfig) -> None:
    config = load(
        write_config(
            with_upstream(
                """\
                routes:
                  - {path: /a, upstream: up, methods: [GET]}
                """
            )
        )
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.routes = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server.max_body = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.routes[0].path = "/b"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.upstreams["up"].timeout = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.upstreams["other"] = config.upstreams["up"]  # type: ignore[index]
    with pytest.raises(TypeError):
        config.models["m"] = None  # type: ignore[index]
    assert isinstance(config.routes, tuple)
    assert isinstance(config.routes[0].methods, frozenset)
    assert isinstance(config.routes[0].roles, tuple)


def test_client_connection_limits_are_typed_and_bounded(write_config: WriteConfig) -> None:
    default = load(write_config("server: {listen: 127.0.0.1:9999}\n")).server
    assert (default.header_timeout, default.keepalive_timeout) == (10.0, 75.0)
    assert (default.max_connections, default.body_timeout) == (10_000, 30.0)
    server = load(
        write_config(
            "server: {header_timeout: 2s, keepalive_timeout: 1m, max_connections: 50, "
            "body_timeout: 500ms}\n"
        )
    ).server
    assert (server.header_timeout, server.keepalive_timeout) == (2.0, 60.0)
    assert (server.max_connections, server.body_timeout) == (50, 0.5)
    assert problems(
        write_config("server:\n  header_timeout: 0s\n  max_connections: 0\n  body_timeout: 0\n")
    ) == [
        (2, "server.header_timeout: must be longer than zero"),
        (3, "server.max_connections: must be at least 1"),
        (4, "server.body_timeout: must be longer than zero"),
    ]


def test_status_listen_is_a_listen_address_on_a_port_of_its_own(
    write_config: WriteConfig,
) -> None:
    assert load(write_config("server: {listen: 127.0.0.1:9999}\n")).server.status_listen is None
    server = load(
        write_config("server: {listen: 127.0.0.1:9999, status_listen: 127.0.0.1:9100}\n")
    ).server
    assert server.status_listen == ("127.0.0.1", 9100)
    assert problems(
        write_config("server:\n  listen: :8080\n  status_listen: 127.0.0.1:8080\n")
    ) == [(3, "server.status_listen: port 8080 is server.listen's; pick another")]
    assert problems(write_config("server:\n  status_listen: 9100\n")) == [
        (2, "server.status_listen: expected HOST:PORT, e.g. 127.0.0.1:8443, got '9100'")
    ]


def test_file_hash_is_sha256_of_the_bytes_read(write_config: WriteConfig) -> None:
    import hashlib

    path = write_config("server: {listen: 127.0.0.1:9999}\n")
    assert load(path).file_hash == hashlib.sha256(path.read_bytes()).hexdigest()


def test_missing_file_is_a_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    (problem,) = info.value.problems
    assert problem.file == str(tmp_path / "nope.yaml")
    assert problem.message == "cannot read: No such file or directory"


def test_problem_and_error_text_are_file_line_message(write_config: WriteConfig) -> None:
    path = write_config("bogus: 1\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    expected = ConfigProblem(
        str(path),
        1,
        "bogus: unknown key (known keys: server, auth, policies, upstreams, models, routes, "
        "audit, database)",
    )
    assert info.value.problems == [expected]
    assert str(expected) == f"{path}:1: {expected.message}"
    assert str(info.value) == str(expected)


def test_top_level_must_be_a_mapping(write_config: WriteConfig) -> None:
    assert only_problem(write_config("- a\n- b\n")) == (
        1,
        "routes.yaml must be a mapping of sections",
    )


# --- YAML itself ----------------------------------------------------------------------


def test_yaml_syntax_error_gives_its_line(write_config: WriteConfig) -> None:
    path = write_config(
        """\
        server:
          listen: 127.0.0.1:8080
        routes:
          - path: /a
            upstream: [up
        upstreams: {}
        """
    )
    assert only_problem(path) == (
        5,
        "YAML syntax: unclosed bracket: the [ here has no closing ] (found `:` at 6:10)",
    )


def test_yaml_bad_indentation_gives_its_line(write_config: WriteConfig) -> None:
    path = write_config(
        """\
        server:
          listen: 127.0.0.1:8080
         max_body: 1MiB
        """
    )
    assert only_problem(path) == (
        3,
        "YAML syntax: bad indentation: this line does not line up with the lines above it "
        "(keys of one mapping, and the `-` of one list, start in the same column)",
    )


def test_yaml_forbidden_character_gives_its_line(write_config: WriteConfig) -> None:
    path = write_config('server:\n  listen: 127.0.0.1:8080\nauth: {issuer: "a\x07b"}\n')
    assert only_problem(path) == (3, "YAML syntax: special characters are not allowed (#x0007)")


def test_file_not_utf8(write_config: WriteConfig) -> None:
    path = write_config("")
    path.write_bytes(b"auth: {issuer: \xff}\n")
    assert only_problem(path) == (0, "is not UTF-8 text")


def test_duplicate_yaml_keys(write_config: WriteConfig) -> None:
    path = write_config(
        """\
        server:
          listen: 127.0.0.1:8080
          max_body: 1MiB
          listen: 127.0.0.1:9090
        upstreams:
          up: {targets: [http://127.0.0.1:1], timeout: 1s, timeout: 2s}
        server: {}
        """
    )
    assert problems(path) == [
        (4, "server.listen: duplicate key"),
        (6, "upstreams.up.timeout: duplicate key"),
        (7, "server: duplicate key"),
    ]


def test_keys_must_be_names(write_config: WriteConfig) -> None:
    path = write_config("server:\n  listen: 127.0.0.1:1\n  ? [a, b]\n  : 1\n")
    assert only_problem(path) == (3, "server: keys must be names")


# --- unknown keys -----------------------------------------------------------------


def test_unknown_top_level_key(write_config: WriteConfig) -> None:
    path = write_config(
        """\
        server:
          listen: 127.0.0.1:8080
        listeners:
          - 127.0.0.1:8080
        """
    )
    assert only_problem(path) == (
        3,
        "listeners: unknown key (known keys: server, auth, policies, upstreams, models, routes, "
        "audit, database)",
    )


def test_unknown_key_in_server(write_config: WriteConfig) -> None:
    path = write_config(
        """\
        server:
          listen: 127.0.0.1:8080
          max_bdy: 1MiB
        """
    )
    assert only_problem(path) == (
        3,
        "server.max_bdy: unknown key `max_bdy`; did you mean `max_body`?",
    )


def test_unknown_key_in_auth(write_config: WriteConfig) -> None:
    line, message = only_problem(write_config("auth:\n  issuer: x\n  secret: hunter2\n"))
    assert line == 3
    assert message.startswith("auth.secret: unknown key (known keys: issuer, algorithm, ")


def test_unknown_key_in_upstream(write_config: WriteConfig) -> None:
    path = write_config(
        """\
        upstreams:
          up:
            targets: [http://127.0.0.1:9000]
            max_fails: 3
        """
    )
    assert only_problem(path) == (
        4,
        "upstreams.up.max_fails: unknown key (known keys: targets, timeout, connect_timeout, "
        "first_byte_timeout, max_connections, max_pending, forward_authorization, pass_host, "
        "balance, health_check, passive, retries, retry_budget, tls)",
    )


def test_unknown_key_in_route(write_config: WriteConfig) -> None:
    path = write_config(
        with_upstream(
            """\
            routes:
              - path: /a
                upstream: up
                strip: /a
            """
        )
    )
    assert only_problem(path) == (
        6,
        "routes[0].strip: unknown key (known keys: path, methods, handler, upstream, static, "
        "spa, strip_prefix, auth, roles, rate_limit, retry_after_send, websocket, "
        "websocket_idle_timeout, websocket_max_duration)",
    )


def test_websocket_keys_apply_to_upstream_routes_only(write_config: WriteConfig) -> None:
    route = load(
        write_config(
            with_upstream(
                """\
                routes:
                  - {path: /live/**, upstream: up, websocket: true, websocket_idle_timeout: 1m}
                """
            )
        )
    ).routes[0]
    assert (route.websocket, route.websocket_idle_timeout) == (True, 60.0)
    assert route.websocket_max_duration == 86400.0
    assert problems(
        write_config(
            with_upstream(
                """\
                routes:
                  - {path: /a, handler: users, websocket: true}
                  - {path: /b, upstream: up, websocket_idle_timeout: 1m}
                """
            )
        )
    ) == [
        (4, "routes[0].websocket: only applies to upstreams"),
        (5, "routes[1].websocket_idle_timeout: only applies with websocket: true"),
    ]


def test_a_model_entry_takes_the_websocket_keys(write_config: WriteConfig) -> None:
    """models: entries take every route key: `websocket` and its limits included."""
    config = load(
        write_config(
            """\
            models:
              live: {url: "http://127.0.0.1:9002", websocket: true, websocket_max_duration: 1h}
              plain: {url: "http://127.0.0.1:9003"}
            """
        )
    )
    live, plain = config.routes
    assert (live.path, live.websocket, live.websocket_max_duration) == (
        "/models/live/**",
        True,
        3600.0,
    )
    assert plain.websocket is False
    assert problems(
        write_config(
            """\
            models:
              plain: {url: "http://127.0.0.1:9003", websocket_idle_timeout: 1m}
            """
        )
    ) == [(2, "models.plain.websocket_idle_timeout: only applies with websocket: true")]


def test_unknown_key_in_model(write_config: WriteConfig) -> None:
    path = write_config(
        """\
        models:
          chat:
            url: http://127.0.0.1:9002
            temperature: 0.2
        """
    )
    line, message = only_problem(path)
    assert line == 4
    assert message.startswith("models.chat.temperature: unknown key (known keys: url, targets, ")
    assert "usage, token_limit, fallback, max_attempts, fallback_budget, health_path" in message


def test_unknown_key_in_rate_limit(write_config: WriteConfig) -> None:
    path = write_config(
        with_upstream(
            """\
            routes:
              - path: /a
                upstream: up
                rate_limit: {limit: 5, per: 1m, burst: 10}
            """
        )
    )
    assert only_problem(path) == (
        6,
        "routes[0].rate_limit.burst: unknown key (known keys: limit, per, key)",
    )


def test_unknown_key_with_block_value_points_at_the_key(write_config: WriteConfig) -> None:
    path = write_config(
        """\
        server:
          listen: 127.0.0.1:8080
        extras:
          a: 1
          b: 2
        """
    )
    assert only_problem(path)[0] == 3


# --- server -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("127.0.0.1:8443", "127.0.0.1", 8443),
        ("'[::1]:8443'", "::1", 8443),
        ("':8080'", "0.0.0.0", 8080),
        ("localhost:0", "localhost", 0),
    ],
)
def test_listen(write_config: WriteConfig, listen: str, host: str, port: int) -> None:
    server = load(write_config(f"server:\n  listen: {listen}\n")).server
    assert (server.host, server.port) == (host, port)


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("8080", "server.listen: expected HOST:PORT, e.g. 127.0.0.1:8443, got '8080'"),
        ("localhost", "server.listen: expected HOST:PORT, e.g. 127.0.0.1:8443, got 'localhost'"),
        (
            "'127.0.0.1:http'",
            "server.listen: expected HOST:PORT, e.g. 127.0.0.1:8443, got '127.0.0.1:http'",
        ),
        ("127.0.0.1:70000", "server.listen: port 70000 is out of range 0-65535"),
        ("[a, b]", "server.listen: expected a single value"),
    ],
)
def test_bad_listen(write_config: WriteConfig, listen: str, message: str) -> None:
    path = write_config(f"auth: {{issuer: x}}\nserver:\n  listen: {listen}\n")
    assert only_problem(path) == (3, message)


def test_bad_cidr_in_trusted_proxies_names_the_item_and_its_line(
    write_config: WriteConfig,
) -> None:
    path = write_config(
        """\
        server:
          trusted_proxies:
            - 10.0.0.0/8
            - 10.0.0.0/33
            - not-an-ip
        """
    )
    # the first bad item stops the list: one problem, on that item's line
    assert only_problem(path) == (
        4,
        "server.trusted_proxies[1]: '10.0.0.0/33' is not an IP address or CIDR",
    )


def test_trusted_proxies_must_be_a_list(write_config: WriteConfig) -> None:
    path = write_config("server:\n  trusted_proxies: 10.0.0.0/8\n")
    assert only_problem(path) == (2, "server.trusted_proxies: expected a list")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10 megs", "server.max_body: '10 megs' is not a size"),
        ("1.5", "server.max_body: 1.5 is not a whole number of bytes"),
        ("true", "server.max_body: expected a value"),
    ],
)
def test_bad_max_body(write_config: WriteConfig, value: str, message: str) -> None:
    line, text = only_problem(write_config(f"server:\n  max_body: {value}\n"))
    assert line == 2
    assert text.startswith(message)


def test_bad_duration_names_the_key(write_config: WriteConfig) -> None:
    path = write_config(
        """\
        server:
          shutdown_grace: 30 seconds
        auth:
          access_ttl: soon
        """
    )
    assert problems(path) == [
        (
            2,
            "server.shutdown_grace: `30 seconds` is not a duration; write e.g. 30s, 5m, 1h30m",
        ),
        (
            4,
            "auth.access_ttl: `soon` is not a duration; write e.g. 30s, 5m, 1h30m",
        ),
    ]


def test_password_hashing_pool_size(write_config: WriteConfig) -> None:
    assert (load(write_config("auth: {issuer: x}\n")).auth.hashing.workers) is None  # auto
    path = write_config("auth:\n  password_hashing: {workers: 3, queue: 0}\n")
    hashing = load(path).auth.hashing
    assert (hashing.workers, hashing.queue, hashing.time_cost) == (3, 0, 3)


def test_bad_password_hashing_pool_size(write_config: WriteConfig) -> None:
    path = write_config(
        """\
        auth:
          password_hashing:
            workers: 0
            queue: -1
            threads: 4
        """
    )
    assert problems(path) == [
        (3, "auth.password_hashing.workers: must be at least 1"),
        (4, "auth.password_hashing.queue: must be at least 0"),
        (
            5,
            "auth.password_hashing.threads: unknown key (known keys: time_cost, memory_cost, "
            "parallelism, workers, queue)",
        ),
    ]


def test_bad_algorithm_and_boolean(write_config: WriteConfig) -> None:
    path = write_config("auth:\n  algorithm: none\n  allow_registration: maybe\n")
    assert problems(path) == [
        (2, "auth.algorithm: 'none' is not one of HS256, RS256, ES256, EdDSA"),
        (3, "auth.allow_registration: expected true or false"),
    ]


# --- relative paths -----------------------------------------------------------------


def test_relative_paths_resolve_beside_the_config_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc" / "gateway"
    folder.mkdir(parents=True)
    write_pair(folder / "certs" / "server.crt", tmp_path / "etc" / "keys" / "server.key")
    (folder / "routes.yaml").write_text(
        "server:\n"
        "  tls: {cert: certs/server.crt, key: ../keys/server.key}\n"
        "policies: my-policies/\n",
        encoding="utf-8",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(Path("..") / "etc" / "gateway" / "routes.yaml")
    assert config.path == folder / "routes.yaml"
    assert config.base_dir == folder
    assert config.server.tls == TLSConfig(
        cert=folder / "certs" / "server.crt", key=folder / "../keys/server.key"
    )
    assert config.policies_dir == folder / "my-policies"


def test_absolute_paths_are_kept(write_config: WriteConfig, tmp_path: Path) -> None:
    cert = tmp_path / "abs" / "c.crt"
    write_pair(cert, tmp_path / "k.key")
    path = write_config(f"server:\n  tls: {{cert: {cert}, key: k.key}}\npolicies: /srv/p\n")
    config = load(path)
    assert config.server.tls == TLSConfig(cert=cert, key=tmp_path / "k.key")
    assert config.policies_dir == Path("/srv/p")


def write_pair(cert: Path, key: Path) -> None:
    """A certificate and its key at these paths: server.tls files must load at load time."""
    cert.parent.mkdir(parents=True, exist_ok=True)
    key.parent.mkdir(parents=True, exist_ok=True)
    ca_key = certs.new_key()
    certs.write_server_pair(certs.make_ca(ca_key), ca_key, cert, key)


def test_tls_needs_cert_and_key(write_config: WriteConfig) -> None:
    path = write_config("server:\n  tls:\n    cert: server.crt\n")
    assert only_problem(path) == (2, "server.tls: needs both cert and key")


# --- ${ENV} ---------------------------------------------------------------------------


def test_env_references_expand(write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_PORT", "9123")
    monkeypatch.setenv("GW_TEST_BODY", "2MiB")
    monkeypatch.setenv("GW_TEST_TIMEOUT", "45")
    monkeypatch.setenv("GW_TEST_REGISTER", "true")
    monkeypatch.setenv("GW_TEST_CONNS", "12")
    monkeypatch.delenv("GW_TEST_UNSET", raising=False)
    config = load(
        write_config(
            """\
            server:
              listen: 127.0.0.1:${GW_TEST_PORT}
              max_body: ${GW_TEST_BODY}
            auth:
              issuer: ${GW_TEST_UNSET:-default-issuer}
              allow_registration: ${GW_TEST_REGISTER}
            upstreams:
              up:
                targets: ["http://${GW_TEST_UNSET:-127.0.0.1}:${GW_TEST_PORT}"]
                timeout: ${GW_TEST_TIMEOUT}
                max_connections: ${GW_TEST_CONNS}
            """
        )
    )
    assert config.server.port == 9123
    assert config.server.max_body == 2 * 1024 * 1024
    assert config.auth.issuer == "default-issuer"
    assert config.auth.allow_registration is True
    up = config.upstreams["up"]
    assert up.targets[0].url == "http://127.0.0.1:9123"
    assert up.timeout == 45.0
    assert up.max_connections == 12


def test_missing_env_var_names_file_line_key_and_variable(
    write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GW_TEST_MISSING", raising=False)
    path = write_config(
        """\
        upstreams:
          up:
            targets:
              - http://127.0.0.1:9000
              - http://${GW_TEST_MISSING}:9000
        """
    )
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == (
        f"{path}:5: upstreams.up.targets[1]: environment variable GW_TEST_MISSING is not set"
    )


# --- upstreams ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://files.example", "'ftp://files.example' must be an http:// or https:// URL"),
        ("127.0.0.1:9000", "'127.0.0.1:9000' must be an http:// or https:// URL"),
        ("http://", "'http://' has no host"),
        ("http:///path", "'http:///path' has no host"),
        (
            "http://h.example/?a=1",
            "'http://h.example/?a=1' may not carry a query, fragment or credentials",
        ),
        (
            "http://h.example/#top",
            "'http://h.example/#top' may not carry a query, fragment or credentials",
        ),
        (
            "http://u:p@h.example",
            "'http://u:p@h.example' may not carry a query, fragment or credentials",
        ),
        ("http://h.example:99999", "'http://h.example:99999' has an invalid port"),
        ("http://h.example:0", "'http://h.example:0' has an invalid port"),
    ],
)
def test_bad_upstream_url(write_config: WriteConfig, url: str, message: str) -> None:
    path = write_config(
        f"""\
        upstreams:
          up:
            targets:
              - http://127.0.0.1:9000
              - "{url}"
        """
    )
    assert only_problem(path) == (5, f"upstreams.up.targets[1]: {message}")


def test_upstream_needs_targets(write_config: WriteConfig) -> None:
    path = write_config(
        """\
        upstreams:
          up:
            timeout: 5s
          empty: {targets: []}
        """
    )
    assert problems(path) == [
        (2, "upstreams.up: needs targets: [URL, ...]"),
        (4, "upstreams.empty.targets: needs at least one target URL"),
    ]


def test_upstream_name_must_be_simple(write_config: WriteConfig) -> None:
    path = write_config('upstreams:\n  "my upstream": {targets: [http://127.0.0.1:1]}\n')
    assert only_problem(path) == (
        2,
        "upstreams.my upstream: upstream names use letters, digits, _ . -",
    )


def test_upstream_defaults(write_config: WriteConfig) -> None:
    up = load(write_config(UPSTREAM)).upstreams["up"]
    assert up.timeout == UPSTREAM_TIMEOUT == 30.0
    assert up.connect_timeout == 2.0
    assert up.first_byte_timeout is None
    assert up.max_connections == 100
    assert up.forward_authorization is False
    assert up.pass_host is False
    assert up.line == 2


def test_bad_upstream_numbers(write_config: WriteConfig) -> None:
    path = write_config(
        """\
        upstreams:
          up:
            targets: [http://127.0.0.1:9000]
            max_connections: 0
            pass_host: yes please
        """
    )
    assert problems(path) == [
        (4, "upstreams.up.max_connections: must be at least 1"),
        (5, "upstreams.up.pass_host: expected true or false"),
    ]


# --- routes -------------------------------------------------------------------------


def test_route_to_handler(write_config: WriteConfig) -> None:
    config = load(
        write_config(
            """\
            routes:
              - path: /auth/login
                methods: [POST]
                handler: auth.login
                auth: none
                rate_limit: {limit: 5, per: 1m, key: ip}
            """
        )
    )
    (route,) = config.routes
    assert route.handler == "auth.login"
    assert route.upstream is None
    assert route.target == "handler auth.login"
    assert route.methods == frozenset({"POST"})
    assert route.auth == "none"
    assert route.rate_limit == RateLimitConfig(Rate(5, 60.0), "ip")


def test_route_with_both_handler_and_upstream(write_config: WriteConfig) -> None:
    path = write_config(
        with_upstream(
            """\
            routes:
              - path: /a
                handler: admin
                upstream: up
            """
        )
    )
    assert only_problem(path) == (4, "routes[0]: give exactly one of handler, upstream or static")


def test_route_with_neither_handler_nor_upstream(write_config: WriteConfig) -> None:
    path = write_config(
        with_upstream(
            """\
            routes:
              - path: /ok
                upstream: up
              - path: /a
                roles: [admin]
            """
        )
    )
    assert only_problem(with_shipped_policies(path)) == (
        6,
        "routes[1]: give exactly one of handler, upstream or static",
    )


@pytest.mark.parametrize("path_line", ["", "path:"])
def test_route_needs_a_path(write_config: WriteConfig, path_line: str) -> None:
    path = write_config(
        with_upstream(
            f"""\
            routes:
              - upstream: up
                {path_line}
            """
        )
    )
    assert only_problem(path) == (4, "routes[0]: needs a path")


def test_route_path_empty_string(write_config: WriteConfig) -> None:
    path = write_config(UPSTREAM + "routes:\n  - upstream: up\n    path: ''\n")
    assert only_problem(path) == (5, "routes[0].path: expected a non-empty string")


def test_route_path_not_text(write_config: WriteConfig) -> None:
    path = write_config(UPSTREAM + "routes:\n  - {path: 5, upstream: up}\n")
    assert only_problem(path) == (4, "routes[0].path: expected a non-empty string")


def test_undefined_upstream(write_config: WriteConfig) -> None:
    path = write_config(
        with_upstream(
            """\
            routes:
              - path: /a
                upstream: nope
            """
        )
    )
    assert only_problem(path) == (
        5,
        "routes[0].upstream: undefined upstream 'nope' (upstreams: up)",
    )


def test_route_to_an_invalid_upstream_reports_only_the_upstream(
    write_config: WriteConfig,
) -> None:
    path = write_config(
        """\
        upstreams:
          up: {targets: ["ftp://x"]}
        routes:
          - {path: /a, upstream: up}
        """
    )
    assert only_problem(path) == (
        2,
        "upstreams.up.targets[0]: 'ftp://x' must be an http:// or https:// URL",
    )


def test_route_may_name_a_model_upstream(write_config: WriteConfig) -> None:
    config = load(
        write_config(
            """\
            routes:
              - {path: /chat/**, upstream: chat, strip_prefix: /chat}
            models:
              chat: {url: http://127.0.0.1:9002}
            """
        )
    )
    assert [r.path for r in config.routes] == ["/chat/**", "/models/chat/**"]


def test_unknown_handler(write_config: WriteConfig) -> None:
    path = write_config(
        """\
        routes:
          - path: /a
            handler: auth.logon
        """
    )
    assert only_problem(path) == (
        3,
        "routes[0].handler: unknown handler 'auth.logon' "
        "(admin, auth.login, auth.logout, auth.refresh, auth.register, users)",
    )


def test_handler_names_come_from_known_and_extra(write_config: WriteConfig) -> None:
    path = write_config("routes:\n  - {path: /x, handler: custom}\n")
    with pytest.raises(ConfigError):
        load_config(path)
    assert load_config(path, extra_handlers=["custom"]).routes[0].handler == "custom"


def test_duplicate_route_paths_name_both(write_config: WriteConfig) -> None:
    path = write_config(
        with_upstream(
            """\
            routes:
              - path: /api/**
                upstream: up
              - path: /other
                upstream: up
              - path: /api/**
                methods: [POST]
                upstream: up
            """
        )
    )
    assert only_problem(path) == (
        8,
        f"route path /api/** is already used by the route at {path}:4",
    )


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("/a/**/b", "routes[0].path: ** may only be the last segment of a route path"),
        ("a/b", "routes[0].path: a route path must start with /"),
        ("/a/*", "routes[0].path: segment '*' mixes a wildcard with text"),
        ("/a/x**", "routes[0].path: segment 'x**' mixes a wildcard with text"),
        ("/a//b", "routes[0].path: a route path may not contain empty, . or .. segments"),
        ("/a/../b", "routes[0].path: a route path may not contain empty, . or .. segments"),
        ("/a/{id", "routes[0].path: '{id' is not a parameter; use {name} as a whole segment"),
    ],
)
def test_bad_route_path(write_config: WriteConfig, pattern: str, message: str) -> None:
    path = write_config(UPSTREAM + f"routes:\n  - path: '{pattern}'\n    upstream: up\n")
    assert only_problem(path) == (4, message)


def test_route_path_is_normalised(write_config: WriteConfig) -> None:
    config = load(
        write_config(UPSTREAM + "routes:\n  - {path: '/%7Euser/{id}/**', upstream: up}\n")
    )
    assert config.routes[0].path == "/~user/{id}/**"


@pytest.mark.parametrize(
    ("pattern", "strip"),
    [
        ("/analytics/**", "/analytics"),
        ("/analytics/**", "/analytics/"),
        ("/api/v1/{id}", "/api/v1"),
        ("/api/v1/**", "/api"),
        ("/x/**", "/"),
    ],
)
def test_strip_prefix_accepted(write_config: WriteConfig, pattern: str, strip: str) -> None:
    config = load(
        write_config(
            UPSTREAM + f"routes:\n  - {{path: '{pattern}', upstream: up, "
            f"strip_prefix: '{strip}'}}\n"
        )
    )
    assert config.routes[0].strip_prefix == (strip.rstrip("/") or "/")


def test_strip_prefix_must_be_a_prefix_of_the_path(write_config: WriteConfig) -> None:
    path = write_config(
        with_upstream(
            """\
            routes:
              - path: /analytics/**
                upstream: up
                strip_prefix: /analyt
              - path: /api/**
                upstream: up
                strip_prefix: /api/v1
              - path: /b/**
                upstream: up
                strip_prefix: b
            """
        )
    )
    assert problems(path) == [
        (6, "routes[0].strip_prefix: '/analyt' is not a prefix of the path '/analytics/**'"),
        (9, "routes[1].strip_prefix: '/api/v1' is not a prefix of the path '/api/**'"),
        (12, "routes[2].strip_prefix: must start with /"),
    ]


def test_strip_prefix_only_for_upstreams(write_config: WriteConfig) -> None:
    path = write_config(
        """\
        routes:
          - path: /admin/**
            handler: admin
            strip_prefix: /admin
        """
    )
    assert only_problem(path) == (4, "routes[0].strip_prefix: only applies to upstreams")


@pytest.mark.parametrize("value", ["none", "required"])
def test_route_auth_modes(write_config: WriteConfig, value: str) -> None:
    config = load(
        write_config(UPSTREAM + f"routes:\n  - {{path: /a, upstream: up, auth: {value}}}\n")
    )
    assert config.routes[0].auth == value


def test_route_bad_auth_and_roles(write_config: WriteConfig) -> None:
    path = write_config(
        with_upstream(
            """\
            routes:
              - path: /a
                upstream: up
                auth: optional
                roles:
                  - admin
                  - "bad role"
            """
        )
    )
    assert problems(path) == [
        (6, "routes[0].auth: must be none or required, not 'optional'"),
        (9, "routes[0].roles[1]: 'bad role' is not a role name"),
    ]


# --- methods ------------------------------------------------------------------------


def test_get_implies_head(write_config: WriteConfig) -> None:
    config = load(
        write_config(UPSTREAM + "routes:\n  - {path: /a, upstream: up, methods: [GET]}\n")
    )
    assert config.routes[0].methods == frozenset({"GET", "HEAD"})


def test_methods_are_uppercased(write_config: WriteConfig) -> None:
    config = load(
        write_config(UPSTREAM + "routes:\n  - {path: /a, upstream: up, methods: [post, Put]}\n")
    )
    assert config.routes[0].methods == frozenset({"POST", "PUT"})


def test_no_methods_means_every_method(write_config: WriteConfig) -> None:
    config = load(write_config(UPSTREAM + "routes:\n  - {path: /a, upstream: up}\n"))
    assert config.routes[0].methods is None


def test_invalid_method_names_the_item_line(write_config: WriteConfig) -> None:
    path = write_config(
        with_upstream(
            """\
            routes:
              - path: /a
                upstream: up
                methods:
                  - GET
                  - "GE T"
            """
        )
    )
    assert only_problem(path) == (8, "routes[0].methods[1]: 'GE T' is not an HTTP method")


@pytest.mark.parametrize(
    ("methods", "message"),
    [
        ("[]", "routes[0].methods: list at least one method, or leave methods out for all"),
        ("GET", "routes[0].methods: expected a list"),
        ("[GET, 5]", "routes[0].methods[1]: expected a non-empty string"),
        ("['G3T']", "routes[0].methods[0]: 'G3T' is not an HTTP method"),
    ],
)
def test_bad_methods(write_config: WriteConfig, methods: str, message: str) -> None:
    path = write_config(
        UPSTREAM + f"routes:\n  - path: /a\n    upstream: up\n    methods: {methods}\n"
    )
    assert only_problem(path) == (6, message)


# --- rate limits ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("60/min", RateLimitConfig(Rate(60, 60.0), "user")),
        ("5/sec", RateLimitConfig(Rate(5, 1.0), "user")),
        ("10/30s", RateLimitConfig(Rate(10, 30.0), "user")),
        ("{limit: 5, per: 1m}", RateLimitConfig(Rate(5, 60.0), "user")),
        ("{limit: 5, per: 1m, key: ip}", RateLimitConfig(Rate(5, 60.0), "ip")),
        ("{limit: 100, per: 1h, key: route}", RateLimitConfig(Rate(100, 3600.0), "route")),
        ("{limit: 2, per: 250ms, key: user}", RateLimitConfig(Rate(2, 0.25), "user")),
        (
            "{limit: 9, per: 30, key: 'header:X-Api-Key'}",
            RateLimitConfig(Rate(9, 30.0), "header:x-api-key"),
        ),
    ],
)
def test_rate_limit_forms(write_config: WriteConfig, value: str, expected: RateLimitConfig) -> None:
    config = load(
        write_config(
            UPSTREAM + f"routes:\n  - path: /a\n    upstream: up\n    rate_limit: {value}\n"
        )
    )
    assert config.routes[0].rate_limit == expected


@pytest.mark.parametrize(
    ("value", "line", "message"),
    [
        ("60", 6, "routes[0].rate_limit: 60 is not a rate; give a period too, e.g. 60/min"),
        (
            "lots",
            6,
            "routes[0].rate_limit: 'lots' is not a rate; use N/sec, N/min, N/hour, "
            "N/day or N/<duration> (e.g. 60/min)",
        ),
        ("0/min", 6, "routes[0].rate_limit: a rate limit must allow at least 1 request"),
        (
            "{limit: 5, per: 1m, key: cookie}",
            6,
            "routes[0].rate_limit.key: must be user, ip, route or header:NAME, not 'cookie'",
        ),
        (
            "{limit: 5, per: 1m, key: 'header:'}",
            6,
            "routes[0].rate_limit.key: must be user, ip, route or header:NAME, not 'header:'",
        ),
        (
            "{limit: 5, per: 1m, key: 'header:X Y'}",
            6,
            "routes[0].rate_limit.key: must be user, ip, route or header:NAME, not 'header:X Y'",
        ),
        ("{limit: 5}", 6, "routes[0].rate_limit: needs limit (a number) and per (a duration)"),
        ("{per: 1m}", 6, "routes[0].rate_limit: needs limit (a number) and per (a duration)"),
        ("{limit: 0, per: 1m}", 6, "routes[0].rate_limit.limit: must be at least 1"),
        ("{limit: many, per: 1m}", 6, "routes[0].rate_limit.limit: expected a whole number"),
        ("{limit: 5, per: 0s}", 6, "routes[0].rate_limit.per: must be longer than zero"),
        (
            "{limit: 5, per: often}",
            6,
            "routes[0].rate_limit.per: `often` is not a duration; write e.g. 30s, 5m, 1h30m",
        ),
    ],
)
def test_bad_rate_limit(write_config: WriteConfig, value: str, line: int, message: str) -> None:
    path = write_config(
        UPSTREAM + f"routes:\n  - path: /a\n    upstream: up\n    rate_limit: {value}\n"
    )
    assert only_problem(path) == (line, message)


def test_bad_rate_limit_key_in_block_form_points_at_the_key(write_config: WriteConfig) -> None:
    path = write_config(
        with_upstream(
            """\
            routes:
              - path: /a
                upstream: up
                rate_limit:
                  limit: 5
                  per: 1m
                  key: everyone
            """
        )
    )
    assert only_problem(path) == (
        9,
        "routes[0].rate_limit.key: must be user, ip, route or header:NAME, not 'everyone'",
    )


# --- models -------------------------------------------------------------------------


def test_model_shorthand_expands_to_upstream_and_route(write_config: WriteConfig) -> None:
    config = load(
        with_shipped_policies(
            write_config(
                """\
            models:
              sentiment: {url: http://127.0.0.1:9001, roles: [user], rate_limit: 60/min}
              chat:
                url: http://127.0.0.1:9002
                usage: openai
                token_limit: 100000/day
                fallback: [chat-small]
                methods: [post]
              chat-small: {url: http://127.0.0.1:9003, usage: openai}
            """
            )
        )
    )
    assert list(config.models) == ["sentiment", "chat", "chat-small"]
    assert list(config.upstreams) == ["sentiment", "chat", "chat-small"]
    sentiment = config.upstreams["sentiment"]
    assert sentiment.targets[0].origin == "http://127.0.0.1:9001"

    routes = {r.model: r for r in config.routes}
    route = routes["sentiment"]
    assert route.path == "/models/sentiment/**"
    assert route.upstream == "sentiment"
    assert route.strip_prefix == "/models/sentiment"
    assert route.roles == ("user",)
    assert route.rate_limit == RateLimitConfig(Rate(60, 60.0), "user")
    assert route.source == f"{config.path}:2"
    assert routes["chat"].methods == frozenset({"POST"})
    assert routes["chat"].source == f"{config.path}:3"

    chat = config.models["chat"]
    assert chat.usage == "openai"
    assert chat.token_limit == RateLimitConfig(Rate(100_000, 86400.0), "user")
    assert chat.fallback == ("chat-small",)
    assert chat.chain == ("chat", "chat-small")
    assert chat.attempts == 2  # one per model in the chain unless max_attempts says
    assert chat.fallback_budget is None  # the model's timeout
    assert config.models["sentiment"].usage is None
    assert config.models["sentiment"].token_limit is None


def test_model_routes_come_after_explicit_routes(write_config: WriteConfig) -> None:
    config = load(
        write_config(
            with_upstream(
                """\
                models:
                  demo: {url: http://127.0.0.1:9001}
                routes:
                  - {path: /a, upstream: up}
                  - {path: /models/**, upstream: up}
                """
            )
        )
    )
    assert [(r.index, r.path, r.model) for r in config.routes] == [
        (0, "/a", None),
        (1, "/models/**", None),
        (2, "/models/demo/**", "demo"),
    ]


def test_model_takes_upstream_keys_and_long_default_timeout(write_config: WriteConfig) -> None:
    config = load(
        write_config(
            with_upstream(
                """\
                models:
                  slow: {url: http://127.0.0.1:9001}
                  quick:
                    targets: [http://127.0.0.1:9002, http://127.0.0.1:9003]
                    timeout: 10s
                    connect_timeout: 1s
                    first_byte_timeout: 3s
                    max_connections: 4
                """
            )
        )
    )
    assert config.upstreams["up"].timeout == 30.0
    assert config.upstreams["slow"].timeout == MODEL_TIMEOUT == 300.0
    assert config.upstreams["slow"].connect_timeout == 5.0
    quick = config.upstreams["quick"]
    assert (quick.timeout, quick.connect_timeout, quick.first_byte_timeout) == (10.0, 1.0, 3.0)
    assert quick.max_connections == 4
    assert len(quick.targets) == 2


def test_model_name_equal_to_upstream_name(write_config: WriteConfig) -> None:
    path = write_config(
        """\
        upstreams:
          chat: {targets: [http://127.0.0.1:9000]}
        models:
          chat:
            url: http://127.0.0.1:9002
        """
    )
    assert only_problem(path) == (4, "models.chat: 'chat' is already an upstream name")


def test_model_name_used_twice(write_config: WriteConfig) -> None:
    path = write_config(
        """\
        models:
          chat: {url: http://127.0.0.1:9002}
          chat: {url: http://127.0.0.1:9003}
        """
    )
    assert only_problem(path) == (3, "models.chat: duplicate key")


def test_model_route_path_clashing_with_an_explicit_route(write_config: WriteConfig) -> None:
    path = write_config(
        with_upstream(
            """\
            routes:
              - {path: /models/chat/**, upstream: up}
            models:
              chat: {url: http://127.0.0.1:9002}
            """
        )
    )
    assert only_problem(path) == (
        6,
        f"route path /models/chat/** is already used by the route at {path}:4",
    )


def test_model_fallback_naming_an_unknown_model(write_config: WriteConfig) -> None:
    path = write_config(
        """\
        models:
          chat:
            url: http://127.0.0.1:9002
            fallback:
              - chat-small
              - chat-tiny
          chat-small: {url: http://127.0.0.1:9003}
        """
    )
    assert only_problem(path) == (6, "models.chat.fallback[1]: 'chat-tiny' is not a model")


def test_model_fallback_to_an_upstream_is_not_a_model(write_config: WriteConfig) -> None:
    path = write_config(
        UPSTREAM + "models:\n  chat: {url: http://127.0.0.1:9002, fallback: [up]}\n"
    )
    assert only_problem(path) == (4, "models.chat.fallback[0]: 'up' is not a model")


def test_model_fallback_to_itself(write_config: WriteConfig) -> None:
    path = write_config("models:\n  chat: {url: http://127.0.0.1:9002, fallback: [chat]}\n")
    assert only_problem(path) == (2, "models.chat.fallback[0]: a model cannot fall back to itself")


def test_model_fallback_bounds(write_config: WriteConfig) -> None:
    path = write_config(
        """\
        models:
          chat: {url: http://127.0.0.1:9002, fallback: [small], max_attempts: 3,
                 fallback_budget: 20s}
          small: {url: http://127.0.0.1:9003}
        """
    )
    chat = load(path).models["chat"]
    assert (chat.attempts, chat.fallback_budget) == (3, 20.0)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("max_attempts: 0", "models.chat.max_attempts: must be at least 1"),
        ("max_attempts: 11", "models.chat.max_attempts: must be at most 10"),
        ("fallback_budget: 0s", "models.chat.fallback_budget: must be longer than zero"),
        ("fallback_budget: soon", "models.chat.fallback_budget: "),
    ],
)
def test_model_fallback_bounds_are_checked(
    write_config: WriteConfig, setting: str, message: str
) -> None:
    path = write_config(f"models:\n  chat: {{url: http://127.0.0.1:9002, {setting}}}\n")
    line, text = only_problem(path)
    assert line == 2
    assert text.startswith(message)


def test_model_usage_must_be_known(write_config: WriteConfig) -> None:
    path = write_config(
        """\
        models:
          chat:
            url: http://127.0.0.1:9002
            usage: anthropic
        """
    )
    assert only_problem(path) == (4, "models.chat.usage: unknown usage format 'anthropic' (openai)")


def test_model_needs_exactly_one_of_url_or_targets(write_config: WriteConfig) -> None:
    path = write_config(
        """\
        models:
          none-given:
            usage: openai
          both: {url: http://127.0.0.1:1, targets: [http://127.0.0.1:2]}
          bad-url: {url: "ftp://x"}
        """
    )
    assert problems(path) == [
        (2, "models.none-given: give exactly one of url or targets"),
        (4, "models.both: give exactly one of url or targets"),
        (5, "models.bad-url.url: 'ftp://x' must be an http:// or https:// URL"),
    ]


def test_model_token_limit_forms(write_config: WriteConfig) -> None:
    config = load(
        write_config(
            "models:\n  chat: {url: http://127.0.0.1:9002, "
            "token_limit: {limit: 5000, per: 1h, key: 'header:X-Team'}}\n"
        )
    )
    assert config.models["chat"].token_limit == RateLimitConfig(Rate(5000, 3600.0), "header:x-team")


# --- many problems at once ------------------------------------------------------------


def test_several_problems_reported_together_sorted_by_line(write_config: WriteConfig) -> None:
    path = write_config(
        """\
        models:
          chat: {url: http://127.0.0.1:9002, usage: nope}
        server:
          listen: nowhere
          colour: blue
        upstreams:
          up: {targets: ["ftp://x"]}
        routes:
          - path: /a/**/b
            upstream: up
          - path: /c
            handler: nope
          - path: /d
            upstream: missing
        extra: 1
        """
    )
    assert problems(path) == [
        (2, "models.chat.usage: unknown usage format 'nope' (openai)"),
        (4, "server.listen: expected HOST:PORT, e.g. 127.0.0.1:8443, got 'nowhere'"),
        (
            5,
            "server.colour: unknown key (known keys: listen, tls, trusted_proxies, max_body, "
            "shutdown_grace, redis_failure, cors, header_timeout, keepalive_timeout, "
            "max_connections, body_timeout, status_listen, access_log, server_header)",
        ),
        (7, "upstreams.up.targets[0]: 'ftp://x' must be an http:// or https:// URL"),
        (9, "routes[0].path: ** may only be the last segment of a route path"),
        (
            12,
            "routes[1].handler: unknown handler 'nope' "
            "(admin, auth.login, auth.logout, auth.refresh, auth.register, users)",
        ),
        (14, "routes[2].upstream: undefined upstream 'missing' (upstreams: chat)"),
        (
            15,
            "extra: unknown key (known keys: server, auth, policies, upstreams, models, routes, "
            "audit, database)",
        ),
    ]


def test_routes_differing_only_in_parameter_names_are_duplicates(
    write_config: WriteConfig,
) -> None:
    path = write_config(
        """
        upstreams:
          up: {targets: ["http://127.0.0.1:9"]}
        routes:
          - {path: "/a/{x}", upstream: up}
          - {path: "/a/{y}", upstream: up}
        """
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [p.line for p in info.value.problems] == [6]
    assert "already used" in info.value.problems[0].message


def test_hmac_keys_need_secrets_and_asymmetric_ones_need_files(
    write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("K1", "s" * 40)
    ok = load_config(
        write_config(
            """
            auth:
              keys: [{kid: a, secret: "${K1}"}]
            """
        )
    )
    assert ok.auth.keys[0].secret == b"s" * 40
    assert "s" * 40 not in repr(ok)  # secrets never show in a repr or a log line

    with pytest.raises(ConfigError) as info:
        load_config(
            write_config(
                """
                auth:
                  algorithm: ES256
                """
            )
        )
    assert "needs auth.keys" in str(info.value)


# --- database -----------------------------------------------------------------------


def test_database_timeout_defaults_to_five_seconds_and_takes_a_duration(
    write_config: WriteConfig,
) -> None:
    assert load(write_config("routes: []\n")).database.timeout == 5.0
    assert load(write_config("database:\n  timeout: 1500ms\n")).database.timeout == 1.5
    assert load(write_config("database: {timeout: 60s}\n")).database.timeout == 60.0


def test_database_section_is_bounded_and_strict(write_config: WriteConfig) -> None:
    path = write_config(
        """\
        database:
          timeout: 50ms
          url: postgresql://x
        """
    )
    assert problems(path) == [
        (2, "database.timeout: must be between 100ms and 1m"),
        (3, "database.url: unknown key (known keys: timeout)"),
    ]
    assert only_problem(write_config("database:\n  timeout: 61s\n")) == (
        2,
        "database.timeout: must be between 100ms and 1m",
    )


# --- upstream bounds: max_pending, retry_after_send ---------------------------------


def test_max_pending_and_retry_after_send_defaults_and_values(write_config: WriteConfig) -> None:
    config = load(write_config(with_upstream("routes:\n  - {path: /a, upstream: up}\n")))
    assert config.upstreams["up"].max_pending == 100
    assert config.routes[0].retry_after_send is False
    path = write_config(
        """\
        upstreams:
          up: {targets: ["http://127.0.0.1:9000"], max_pending: 0}
        routes:
          - {path: /a, upstream: up, retry_after_send: true}
        models:
          chat: {url: "http://127.0.0.1:9001", max_pending: 7, retry_after_send: true}
        """
    )
    config = load(path)
    assert config.upstreams["up"].max_pending == 0
    assert config.routes[0].retry_after_send is True
    assert config.upstreams["chat"].max_pending == 7
    assert config.routes[1].model == "chat"
    assert config.routes[1].retry_after_send is True


def test_bad_max_pending_and_retry_after_send(write_config: WriteConfig) -> None:
    path = write_config(
        """\
        upstreams:
          up:
            targets: [http://127.0.0.1:9000]
            max_pending: -1
        routes:
          - {path: /a, upstream: up, retry_after_send: sometimes}
          - {path: /b, handler: users, retry_after_send: true}
        """
    )
    assert problems(path) == [
        (4, "upstreams.up.max_pending: must be at least 0"),
        (6, "routes[0].retry_after_send: expected true or false"),
        (7, "routes[1].retry_after_send: only applies to upstreams"),
    ]
