"""Which headers cross the gateway, in each direction (README "Proxy rules").

Hop-by-hop headers (RFC 9110 §7.6.1) and any header named in `Connection`
stop here; so do client-sent `X-User-*` (identity is the gateway's to state)
and, from untrusted peers, any forwarding header the client made up.

Names are compared with `_` read as `-`: WSGI and CGI servers behind the
gateway fold both into one environ key (`HTTP_X_USER_ID`), so `X_User_Id`
would otherwise arrive as the identity header the gateway dropped. nginx
refuses underscore headers by default for the same reason.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from multidict import CIMultiDict

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Set by the gateway itself, so whatever the client sent is dropped first.
_SET_BY_GATEWAY = frozenset(
    {
        "host",
        "x-request-id",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "forwarded",
        # 100-continue is answered by the gateway; the upstream gets the body.
        "expect",
    }
)
_REQUEST_DROP = HOP_BY_HOP | _SET_BY_GATEWAY
# Believed only from a peer in server.trusted_proxies (the client address it names).
_FROM_TRUSTED_ONLY = frozenset({"x-real-ip"})


_NONE_NAMED: frozenset[str] = frozenset()


def connection_named(connection: str | None) -> frozenset[str]:
    """Header names listed in a Connection header (they are hop-by-hop too)."""
    if not connection:
        return _NONE_NAMED
    return _named(connection)


@functools.lru_cache(maxsize=64)  # a few values ("keep-alive", "close") are nearly all there is
def _named(connection: str) -> frozenset[str]:
    return frozenset(
        token.strip().lower().replace("_", "-") for token in connection.split(",") if token.strip()
    )


def upstream_request_headers(
    incoming: Iterable[tuple[str, str]],
    connection: str | None,
    *,
    forward_authorization: bool,
    trusted_peer: bool = False,
) -> CIMultiDict[str]:
    """The client's end-to-end headers, minus what must not cross.

    `trusted_peer`: the connection comes from server.trusted_proxies, whose
    X-Real-IP is passed on; anyone else's is dropped."""
    named = connection_named(connection)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming:
        lower = name.lower().replace("_", "-")
        if lower in _REQUEST_DROP or lower in named or lower.startswith("x-user-"):
            continue
        if lower in _FROM_TRUSTED_ONLY and not trusted_peer:
            continue
        if lower == "authorization" and not forward_authorization:
            continue
        out.add(name, value)
    return out


def downstream_response_headers(
    incoming: Iterable[tuple[str, str]], connection: str | None
) -> CIMultiDict[str]:
    """The upstream's end-to-end response headers, minus hop-by-hop ones."""
    named = connection_named(connection)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in named or lower == "content-length":
            continue  # Content-Length is set from the upstream's on the response object
        out.add(name, value)
    return out
