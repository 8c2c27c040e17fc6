"""Who is the client: X-Forwarded-For believed only from trusted proxies.

Pure logic shared by the proxy (the header it sends on), rate limiting and
audit (the client IP they key on), so all three agree.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from functools import lru_cache

from gateway.config.schema.server import IPNetwork


@lru_cache(maxsize=4096)
def _parse(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        parsed = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped
    return parsed


def is_trusted(address: str, trusted: Sequence[IPNetwork]) -> bool:
    if not trusted:
        return False
    parsed = _parse(address)
    return parsed is not None and any(parsed in network for network in trusted)


def is_loopback(address: str) -> bool:
    """127.0.0.0/8 or ::1 (an IPv4-mapped ::ffff:127.x counts too)."""
    parsed = _parse(address)
    return parsed is not None and parsed.is_loopback


def forwarded_for(peer: str, sent: str | None, trusted: Sequence[IPNetwork]) -> str:
    """The X-Forwarded-For the upstream gets (README "Proxy rules").

    From a trusted peer, the peer's address is appended to what it sent; from
    anyone else, what it sent is dropped and replaced by the peer's address.
    """
    if sent and is_trusted(peer, trusted):
        return f"{sent}, {peer}"
    return peer


def client_ip(peer: str, sent: str | None, trusted: Sequence[IPNetwork]) -> str:
    """The right-most address of the chain that is not a trusted proxy."""
    if not sent or not is_trusted(peer, trusted):
        return peer
    hops = [hop.strip() for hop in sent.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not is_trusted(hop, trusted):
            return hop[:64]  # written by our trusted proxy; bounded all the same
    return hops[0] if hops else peer
