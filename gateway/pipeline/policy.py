"""The policy decision: the caller's role must pass the route's `roles` (403, default deny).

A role passes if it is listed or inherits a listed role (policies/, see
gateway/config/policies.py); the set of roles that pass each route is
computed once per config (`Runtime.allowed`, from `allowed_roles` here), so
the decision is one set membership test. The Redis gate is handed the same
set, encoded by `encode`, so it never counts a refused caller's rate limit.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from gateway.config.policies import ADMIN_ROLE
from gateway.pipeline.verdict import PASS, Deny, Pass

if TYPE_CHECKING:
    from gateway.config.policies import Policy


def allowed_roles(policy: Policy, route_roles: tuple[str, ...]) -> frozenset[str]:
    """Every defined role that passes a route listing `route_roles` (they and their heirs)."""
    return policy.allowed_roles(route_roles)


def admin_roles(policy: Policy) -> frozenset[str]:
    """Who may read admin-only built-ins (/metrics off loopback): admin and its heirs."""
    return policy.allowed_roles((ADMIN_ROLE,)) | {ADMIN_ROLE}


def encode(roles: Iterable[str]) -> str:
    """The roles as ",a,b," for the Redis gate's membership test."""
    return f",{','.join(sorted(roles))},"


def decide(
    role: str, allowed: frozenset[str] | None, path: str, needs: Iterable[str]
) -> Pass | Deny:
    """Whether `role` may use the route `path` whose roles are `needs` (None: any role)."""
    if allowed is None or role in allowed:
        return PASS
    return Deny(
        "role_forbidden", 403, f"role {role!r} may not use {path} (needs {', '.join(needs)})"
    )


def describe(role: str, allowed: frozenset[str] | None, needs: Iterable[str]) -> str:
    """What `explain` says about a role that passed."""
    if allowed is None:
        return "the route admits any valid token"
    return f"role {role!r} passes (needs {', '.join(needs)})"
