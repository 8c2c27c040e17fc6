"""routes.yaml's auth section: the tokens the gateway issues, their keys, password hashing,
and the outside identity providers whose tokens it accepts too."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from gateway.config.schema.fields import config_dataclass, doc
from gateway.config.units import Rate

LOGIN_FAILURES = Rate(5, 900.0)


@config_dataclass
class HashingConfig:
    """auth.password_hashing: argon2id cost (RFC 9106 low-memory profile by default).

    The sign-in hashing pool (workers, queue) is read at start-up, not on reload;
    beyond both, a sign-in answers 503 `busy`. Rule: memory_cost >= 8KiB per lane.
    """

    time_cost: int = doc("argon2id passes", default=3, minimum=1)
    memory_cost: int = doc("argon2id memory per hash", default=64 * 1024 * 1024, kind="size")
    parallelism: int = doc("argon2id lanes", default=4, minimum=1)
    workers: int | None = doc(
        "threads sign-ins hash in; absent: one fewer than the CPUs, at least 1",
        default=None,
        minimum=1,
    )
    queue: int | None = doc(
        "sign-ins that may wait for a thread; absent: 16 per thread", default=None, minimum=0
    )


DEFAULT_HASHING = HashingConfig()


@config_dataclass
class KeyConfig:
    """auth.keys[]: one signing/verification key; the first with private material signs."""

    kid: str = doc("key id, written in each token's header; unique")
    secret: bytes | None = doc(
        "HS256 secret (raw UTF-8), e.g. ${GATEWAY_JWT_SECRET}",
        default=None,
        repr=False,
        kind="text",
    )
    private_key: Path | None = doc("RS256/ES256/EdDSA: PEM private key file", default=None)
    public_key: Path | None = doc(
        "PEM public key file; absent: derived from private_key", default=None
    )
    line: int = doc("line of the entry in routes.yaml, for messages", default=0, key=None)


# The JWS algorithms an outside issuer may sign with (RFC 7518 §3.1, RFC 8037): public-key
# ones only. HS* would need a shared secret, and its "key" from a JWKS would be public
# (RFC 8725 §2.1, §3.1); `none` is never a signature.
OUTSIDE_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
DEFAULT_OUTSIDE_ALGORITHMS = ("RS256", "ES256")


@config_dataclass
class IssuerConfig:
    """auth.issuers[]: an outside OpenID Connect provider whose access tokens are accepted.

    A token whose `iss` is `issuer` is verified with the keys of `jwks_url` (RFC 7517),
    never against the users table or the revocation list (README "Signing in through an
    outside identity provider"). Rule: http:// only for a loopback host; the role is the
    first entry of `roles` the token has, else `default_role`, else 403 role_not_mapped.
    """

    issuer: str = doc("the exact `iss` of its tokens, e.g. https://HOST/realms/REALM")
    jwks_url: str = doc("its JWK Set (https://, or http:// on a loopback host)")
    audience: str = doc("the `aud` its tokens must carry for this gateway")
    algorithms: tuple[str, ...] = doc(
        "JWS algorithms accepted from it",
        default=DEFAULT_OUTSIDE_ALGORITHMS,
        kind="list of algorithms",
        choices=OUTSIDE_ALGORITHMS,
    )
    role_claim: tuple[str, ...] = doc(
        "dotted path(s) of the claim holding its role names, e.g. realm_access.roles",
        default=(),
        kind="text or list of texts",
        default_text="",
    )
    roles: tuple[tuple[str, str], ...] = doc(
        "its role name → a role of policies/; the first it has, in this order, applies",
        default=(),
        kind="mapping of roles",
        default_text="",
    )
    default_role: str | None = doc(
        "our role for a token with no mapped role; absent: 403 role_not_mapped",
        default=None,
        kind="role",
    )
    line: int = doc("line of the entry in routes.yaml, for messages", default=0, key=None)

    @property
    def host(self) -> str:
        """The issuer's host, the part after `@` in the audit row's user (sub@host)."""
        return urlsplit(self.issuer).hostname or self.issuer


@config_dataclass
class AuthConfig:
    """auth: the tokens the gateway issues and accepts."""

    issuer: str = doc("the tokens' iss claim", default="gateway")
    algorithm: str = doc(
        "JWT signing algorithm",
        default="HS256",
        choices=("HS256", "RS256", "ES256", "EdDSA"),
    )
    access_ttl: float = doc("lifetime of an access token", default=900.0)
    refresh_ttl: float = doc("lifetime of a refresh token", default=14 * 86400.0)
    allow_registration: bool = doc("let anyone create an account", default=False)
    default_role: str = doc("role given to self-registered users", default="user", kind="role")
    audience: str | None = doc("the aud claim, checked when set", default=None)
    leeway: float = doc("clock skew tolerated on exp and iat", default=30.0)
    keys: tuple[KeyConfig, ...] = doc(
        "signing keys; empty with HS256: GATEWAY_JWT_SECRET", default=(), kind="list of keys"
    )
    password_min_length: int = doc("shortest password accepted", default=12, minimum=8)
    login_failures: Rate = doc(
        "failed sign-ins allowed per username, and per IP", default=LOGIN_FAILURES
    )
    token_cache: int = doc(
        "verified tokens kept (never past exp or a revocation)", default=10_000, minimum=0
    )
    hashing: HashingConfig = doc(
        "argon2id cost and the sign-in hashing pool",
        default=DEFAULT_HASHING,
        key="password_hashing",
    )
    issuers: tuple[IssuerConfig, ...] = doc(
        "outside OpenID Connect providers whose tokens are accepted too",
        default=(),
        kind="list of issuers",
    )
    # for browser frontends: the refresh token never travels in a body JavaScript can
    # read; the CSRF check is a double submit (X-CSRF-Token)
    refresh_cookie: bool = doc(
        "browser mode: refresh token in an HttpOnly cookie, with a CSRF check", default=False
    )
