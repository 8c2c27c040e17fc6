"""auth.issuers in routes.yaml: parsed into IssuerConfig, every problem as FILE:LINE: message.

YAML texts start with a backslash-newline so that the first line of the literal is
line 1 of the file.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gateway.config.schema.auth import DEFAULT_OUTSIDE_ALGORITHMS, IssuerConfig
from tests.config.test_config import load, problems, with_shipped_policies
from tests.conftest import WriteConfig

REPO = Path(__file__).resolve().parents[2]


def test_a_keycloak_entry_and_a_generic_one_load(write_config: WriteConfig) -> None:
    path = with_shipped_policies(
        write_config("""\
policies: policies/
auth:
  issuers:
    - issuer: https://sso.example.com/realms/acme
      jwks_url: https://sso.example.com/realms/acme/protocol/openid-connect/certs
      audience: gateway-api
      role_claim: realm_access.roles
      roles: {gw-admin: admin, gw-analyst: analyst}
    - issuer: https://login.example.org/
      jwks_url: http://127.0.0.1:8081/.well-known/jwks.json
      audience: api://gateway
      algorithms: [ES256, PS256]
      role_claim: [roles, "https://example.org/roles"]
      default_role: user
""")
    )
    keycloak, generic = load(path).auth.issuers
    assert keycloak == IssuerConfig(
        issuer="https://sso.example.com/realms/acme",
        jwks_url="https://sso.example.com/realms/acme/protocol/openid-connect/certs",
        audience="gateway-api",
        algorithms=DEFAULT_OUTSIDE_ALGORITHMS,
        role_claim=("realm_access.roles",),
        roles=(("gw-admin", "admin"), ("gw-analyst", "analyst")),
        default_role=None,
        line=4,
    )
    assert keycloak.host == "sso.example.com"
    assert generic.algorithms == ("ES256", "PS256")
    assert generic.role_claim == ("roles", "https://example.org/roles")
    assert (generic.roles, generic.default_role) == ((), "user")


def test_each_fault_of_an_entry_is_named_with_its_line(write_config: WriteConfig) -> None:
    path = with_shipped_policies(
        write_config("""\
policies: policies/
auth:
  issuers:
    - issuer: https://sso.example.com/realms/acme
      jwks_url: http://sso.example.com/certs
      audience: gateway-api
      algorithms: [RS256, HS256]
      roles: {gw-admin: root}
      default_role: nobody
      colour: blue
    - jwks_url: https://idp.example/keys
      algorithms: [RS257]
    - issuer: gateway
      jwks_url: https://localhost/keys
      audience: a
""")
    )
    assert problems(path) == [
        (5, "auth.issuers[0].jwks_url: http:// is accepted for loopback hosts only; "
            "use https:// for sso.example.com"),
        (7, "auth.issuers[0].algorithms[1]: HS256 is refused: an outside issuer's tokens "
            "must be signed with a public key (RFC 8725 §3.1)"),
        (8, "auth.issuers[0].roles.gw-admin: unknown role 'root' (roles: admin, analyst, user)"),
        (9, "auth.issuers[0].default_role: unknown role 'nobody' (roles: admin, analyst, user)"),
        (10, "auth.issuers[0].colour: unknown key (known keys: issuer, jwks_url, audience, "
             "algorithms, role_claim, roles, default_role)"),
        (11, "auth.issuers[1]: needs issuer"),
        (11, "auth.issuers[1]: needs audience"),
        (12, "auth.issuers[1].algorithms[0]: 'RS257' is not one of RS256, RS384, RS512, "
             "PS256, PS384, PS512, ES256, ES384, ES512, EdDSA"),
        (13, "auth.issuers: 'gateway' is auth.issuer, the gateway's own tokens' iss"),
    ]  # fmt: skip


def test_alg_none_and_an_empty_list_are_refused(write_config: WriteConfig) -> None:
    path = write_config("""\
auth:
  issuers:
    - {issuer: https://a.example, jwks_url: https://a.example/k, audience: x, algorithms: [none]}
    - {issuer: https://b.example, jwks_url: https://b.example/k, audience: x, algorithms: []}
    - {issuer: https://b.example, jwks_url: ftp://b.example/k, audience: x}
""")
    assert problems(path) == [
        (3, "auth.issuers[0].algorithms[0]: none is refused: an outside issuer's tokens "
            "must be signed with a public key (RFC 8725 §3.1)"),
        (4, "auth.issuers[1].algorithms: name at least one algorithm"),
        (5, "auth.issuers[2].jwks_url: 'ftp://b.example/k' is not an https:// URL"),
    ]  # fmt: skip


def test_gateway_check_reports_them(write_config: WriteConfig) -> None:
    path = write_config("""\
auth:
  issuers:
    - {issuer: https://a.example, jwks_url: http://a.example/k, audience: x}
""")
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert done.returncode != 0
    assert f"{path}:3: auth.issuers[0].jwks_url: http:// is accepted for loopback hosts only" in (
        done.stdout + done.stderr
    )
