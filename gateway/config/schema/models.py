"""routes.yaml's models entries: the AI team's shorthand for an upstream plus its route."""

from __future__ import annotations

from gateway.config.schema.fields import config_dataclass, doc
from gateway.config.schema.routes import RateLimitConfig


@config_dataclass
class ModelConfig:
    """models.NAME: an upstream and a /models/NAME/** route in one entry.

    Besides the keys below it takes `url` (or `targets`), every upstreams.NAME
    key and the routes[] keys methods, auth, roles, rate_limit and
    retry_after_send, with slower defaults: timeout 5m, connect_timeout 5s,
    rate_limit 60/min per user.
    """

    name: str = doc("NAME: letters, digits, _ . -; not an upstream's name", key=None)
    usage: str | None = doc(
        "how token usage is read from answers", default=None, choices=("openai",)
    )
    token_limit: RateLimitConfig | None = doc("tokens allowed per key and period", default=None)
    fallback: tuple[str, ...] = doc(
        "models tried in turn when this one fails before a byte", default=(), kind="list of models"
    )
    max_attempts: int = doc(
        "calls made in all, this model's included; absent: one per model in the chain",
        default=0,  # stands for absent
        default_text="",
        minimum=1,
        maximum=10,
    )
    fallback_budget: float | None = doc(
        "time from arrival for a response head, across attempts; absent: the sum of the "
        "timeouts of the models in the chain",
        default=None,
        above=0,
    )
    health_path: str = doc(
        "path `gateway models list` GETs on each target (after its base path); "
        "an answer below 500 is up",
        default="/",
    )
    line: int = doc("line of the entry in routes.yaml, for messages", default=0, key=None)

    @property
    def chain(self) -> tuple[str, ...]:
        """The models to try, in order: this one, then its fallbacks."""
        return (self.name, *self.fallback)

    @property
    def attempts(self) -> int:
        """How many calls one request may make, in all."""
        return self.max_attempts or len(self.fallback) + 1
