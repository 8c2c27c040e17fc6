"""What a decision reads (`RequestView`) and what it answers (`Pass` or `Deny`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from gateway.problems import GatewayError


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller, as the verified token and the user's current state say; for a token of
    an outside issuer (auth.issuers), as that token says (README "Signing in through an
    outside identity provider")."""

    id: str  # the token's sub: the user's id (an outside issuer's sub)
    username: str  # an outside issuer's caller: sub@host of the issuer
    role: str  # the user's role now (a change applies at the next request), or the mapped one
    jti: str  # "" for an outside token without one
    exp: float  # the access token's expiry, epoch seconds
    issuer: str | None = None  # the outside issuer that verified the token; None: ours


class RequestView(Protocol):
    """The little of a request the decisions read; no server types.

    The request context (gateway/context.py) is one; `explain` builds a
    `PlainView`. `path` is the normalised path; `headers` are looked up
    case-insensitively; `user` is set once authentication has passed."""

    @property
    def method(self) -> str: ...

    @property
    def path(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def client_ip(self) -> str: ...

    @property
    def user(self) -> Principal | None: ...


@dataclass(frozen=True, slots=True)
class PlainView:
    """A RequestView from plain values (`gateway explain`, tests)."""

    method: str
    path: str
    headers: Mapping[str, str]
    client_ip: str
    user: Principal | None = None


@dataclass(frozen=True, slots=True)
class Pass:
    """The request may go on; `headers` go on whatever response it gets (RateLimit-*)."""

    headers: tuple[tuple[str, str], ...] = ()


PASS = Pass()


@dataclass(frozen=True, slots=True)
class Deny:
    """The request is refused: the problem's status, reason code, detail and headers."""

    code: str
    status: int
    detail: str
    headers: tuple[tuple[str, str], ...] = ()

    def error(self) -> GatewayError:
        """The refusal as the error the errors stage renders (RFC 9457)."""
        return GatewayError(self.status, self.code, self.detail, dict(self.headers))

    @classmethod
    def of(cls, error: GatewayError) -> Deny:
        return cls(error.code, error.status, error.detail, tuple(error.headers.items()))
