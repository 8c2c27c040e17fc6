"""routes.yaml's top level: the whole validated `Config`, swapped as one reference."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

from gateway.config.policies import Policy
from gateway.config.schema.auth import AuthConfig
from gateway.config.schema.database import (
    DEFAULT_AUDIT,
    DEFAULT_DATABASE,
    AuditConfig,
    DatabaseConfig,
)
from gateway.config.schema.fields import config_dataclass, doc
from gateway.config.schema.models import ModelConfig
from gateway.config.schema.routes import Route
from gateway.config.schema.server import ServerConfig
from gateway.config.schema.upstreams import UpstreamConfig


@config_dataclass
class Config:
    """The whole configuration: routes.yaml's sections, and policies/."""

    path: Path = doc("routes.yaml itself", key=None)
    base_dir: Path = doc("its folder: relative paths resolve here", key=None)
    file_hash: str = doc("sha256 of routes.yaml as read", key=None)
    server: ServerConfig = doc("how the gateway listens", default_text="{}")
    auth: AuthConfig = doc("the tokens the gateway issues and accepts", default_text="{}")
    policies_dir: Path = doc("folder of role definitions", key="policies", default_text="policies")
    upstreams: MappingProxyType[str, UpstreamConfig] = doc(
        "where proxied requests go, by NAME", kind="mapping", default_text="{}"
    )
    models: MappingProxyType[str, ModelConfig] = doc(
        "AI models by NAME: an upstream and a route each",
        kind="mapping",
        default_text="{}",
    )
    routes: tuple[Route, ...] = doc(
        "path patterns and where they go, first match wins",
        kind="list of routes",
        default_text="[]",
    )
    # every role a route or auth.default_role names is defined in it (empty when
    # the folder is missing and nothing names a role)
    policy: Policy = doc("the roles read from policies", default_factory=Policy, key=None)
    audit: AuditConfig = doc("how per-request rows reach the database", default=DEFAULT_AUDIT)
    database: DatabaseConfig = doc("how long database calls may take", default=DEFAULT_DATABASE)
