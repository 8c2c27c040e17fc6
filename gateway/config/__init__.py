"""routes.yaml and policies/ → frozen, validated configuration objects."""

from gateway.config.loader import load_config
from gateway.config.schema.routes import Route
from gateway.config.schema.top import Config
from gateway.config.schema.upstreams import UpstreamConfig
from gateway.config.yamlsource import ConfigError, ConfigProblem

__all__ = ["Config", "ConfigError", "ConfigProblem", "Route", "UpstreamConfig", "load_config"]
