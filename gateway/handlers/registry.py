"""The local handlers by the name routes.yaml uses (ROUTABLE) and the built-ins (BUILTIN)."""

from __future__ import annotations

from gateway.handlers.admin import admin
from gateway.handlers.auth import login, logout, refresh, register
from gateway.handlers.health import healthz, jwks, readyz
from gateway.handlers.metrics import metrics
from gateway.handlers.openapi import openapi_endpoint
from gateway.handlers.problems import problems
from gateway.handlers.ui import ui
from gateway.handlers.users import users
from gateway.middleware import Handler

# Names a route's `handler:` may use; tests pin this to config.KNOWN_HANDLERS.
ROUTABLE: dict[str, Handler] = {
    "auth.register": register,
    "auth.login": login,
    "auth.refresh": refresh,
    "auth.logout": logout,
    "users": users,
    "admin": admin,
}

BUILTIN: dict[str, Handler] = {
    "builtin.healthz": healthz,
    "builtin.readyz": readyz,
    "builtin.jwks": jwks,
    "builtin.metrics": metrics,
    # The tables are passed in (read when the document is made), not imported by openapi.py.
    "builtin.openapi": openapi_endpoint(lambda: {**ROUTABLE, **BUILTIN}),
    "builtin.ui": ui,
    "builtin.problems": problems,
}
