"""Local endpoints, by the handler name routes.yaml uses (plus the built-ins)."""

from __future__ import annotations

from gateway.handlers.health import healthz, readyz
from gateway.middleware import Handler

# Names a route's `handler:` may use; tests pin this to config.KNOWN_HANDLERS.
ROUTABLE: dict[str, Handler] = {}

BUILTIN: dict[str, Handler] = {
    "builtin.healthz": healthz,
    "builtin.readyz": readyz,
}
