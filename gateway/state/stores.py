"""What the chain's stages read and write, handed to them when the chain is built: the
state the decisions read, and the audit writer and metrics the audit stage records to.

`build_app` (gateway/app.py) makes one `Stores` and gives it to the stages
that need it; at start-up, once the database and Redis are open
(gateway/services.py), `bind` puts the real stores in. Until then the
in-process ones stand in (nothing is served before start-up ends). The
proxy is handed only the token quota store from it (by dispatch); /metrics
authenticates through an Authenticator over it, as the chain does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.state.identity import LocalIdentity
from gateway.state.limiter import LocalLimiter

if TYPE_CHECKING:
    from gateway.audit.access import AccessLog
    from gateway.audit.writer import AuditWriter
    from gateway.metrics import Metrics
    from gateway.state.gate import RedisGate
    from gateway.state.interfaces import IdentityStore, Limiter, QuotaStore


@dataclass(slots=True)
class Stores:
    identity: IdentityStore = field(default_factory=LocalIdentity)
    limiter: Limiter = field(default_factory=LocalLimiter)
    quotas: QuotaStore = field(default_factory=LocalLimiter)
    # identity, role and rate limit in one Redis call (None without Redis)
    gate: RedisGate | None = None
    metrics: Metrics | None = None  # counts requests and refusals
    audit: AuditWriter | None = None  # the audit rows and their journal (None: no audit)
    access: AccessLog | None = None  # server.access_log's lines (None: off)

    def bind(
        self,
        identity: IdentityStore,
        limiter: Limiter,
        quotas: QuotaStore,
        gate: RedisGate | None,
        metrics: Metrics,
        audit: AuditWriter,
    ) -> None:
        """The open services' stores, for every request from now on."""
        self.identity, self.limiter, self.quotas = identity, limiter, quotas
        self.gate, self.metrics, self.audit = gate, metrics, audit
