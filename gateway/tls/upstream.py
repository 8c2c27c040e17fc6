"""The client TLS context of an upstream's connections: upstreams.NAME.tls's CA bundle,
client certificate and `verify` (README, "TLS to upstreams")."""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING

from gateway.tls.files import load_pair
from gateway.tls.server import ALPN

if TYPE_CHECKING:  # the config loader imports gateway.tls.files: no runtime import back
    from gateway.config.schema.upstreams import UpstreamConfig

log = logging.getLogger("gateway.tls")


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
        load_pair(context, tls.cert, tls.key)  # mutual TLS: presented when asked
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        log.warning(
            "upstream certificates are not verified (tls.verify: false): "
            "anyone on the path can read and change this traffic",
            extra={"upstream": config.name},
        )
    return context
