"""The Markdown reference of every routes.yaml key, rendered from the schema's `doc()` metadata.

The README's "routes.yaml reference" section is this text, between the
`<!-- reference:start -->` and `<!-- reference:end -->` markers;
tests/config/test_config_reference.py fails when they differ. Regenerate it with
`python -m gateway.config.reference --write README.md`.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from gateway import generated
from gateway.config.schema.auth import AuthConfig, HashingConfig, IssuerConfig, KeyConfig
from gateway.config.schema.database import AuditConfig, DatabaseConfig
from gateway.config.schema.fields import KeyDoc, field_doc
from gateway.config.schema.models import ModelConfig
from gateway.config.schema.routes import RateLimitConfig, Route
from gateway.config.schema.server import CorsConfig, ServerConfig, TLSConfig
from gateway.config.schema.top import Config
from gateway.config.schema.upstreams import (
    HealthCheckConfig,
    PassiveConfig,
    RetryBudgetConfig,
    UpstreamConfig,
    UpstreamTarget,
    UpstreamTLSConfig,
)
from gateway.config.units import Rate, format_duration

START = "<!-- reference:start -->"
END = "<!-- reference:end -->"
REGENERATE = "python -m gateway.config.reference --write README.md"

# Where each user-facing config dataclass sits in routes.yaml, in reading order.
SECTIONS: tuple[tuple[str, type[Any]], ...] = (
    ("top level", Config),
    ("server", ServerConfig),
    ("server.tls", TLSConfig),
    ("server.cors", CorsConfig),
    ("auth", AuthConfig),
    ("auth.keys[]", KeyConfig),
    ("auth.issuers[]", IssuerConfig),
    ("auth.password_hashing", HashingConfig),
    ("database", DatabaseConfig),
    ("audit", AuditConfig),
    ("upstreams.NAME", UpstreamConfig),
    ("upstreams.NAME.targets[]", UpstreamTarget),
    ("upstreams.NAME.health_check", HealthCheckConfig),
    ("upstreams.NAME.passive", PassiveConfig),
    ("upstreams.NAME.retry_budget", RetryBudgetConfig),
    ("upstreams.NAME.tls", UpstreamTLSConfig),
    ("routes[]", Route),
    ("rate_limit", RateLimitConfig),
    ("models.NAME", ModelConfig),
)
_SECTION_OF = {cls.__name__: name for name, cls in SECTIONS}

# How a value of each annotated type is written in routes.yaml
_KINDS = {
    "bool": "boolean",
    "int": "whole number",
    "float": "duration",
    "str": "text",
    "Path": "path",
    "Rate": "rate",
}
_SIZE_UNITS = (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))


def render() -> str:
    """The reference: a short note, then one table per section."""
    parts = [
        "Generated from the schema (gateway/config/schema/) by "
        f"`{REGENERATE}`; edit the descriptions there, not here. "
        "Durations, sizes and rates are written as in "
        "[routes.yaml, walked through](#routesyaml-walked-through).",
    ]
    for name, cls in SECTIONS:
        parts.append(_section(name, cls))
    return "\n\n".join(parts) + "\n"


def _section(name: str, cls: type[Any]) -> str:
    lines = [f"**`{name}`**: {_about(cls)}", ""]
    lines.append("| Key | Type | Default | Bounds | Description |")
    lines.append("|---|---|---|---|---|")
    for each, meaning in documented_keys(cls):
        cells = (
            f"`{meaning.key}`",
            _kind(each, meaning),
            _default(each, meaning),
            _bounds(each, meaning),
            meaning.description,
        )
        lines.append("| " + " | ".join(_cell(text) for text in cells) + " |")
    return "\n".join(lines)


def documented_keys(cls: type[Any]) -> Iterator[tuple[dataclasses.Field[Any], KeyDoc]]:
    """Each field of `cls` written in routes.yaml, with its KeyDoc (fields with none skipped)."""
    for each in dataclasses.fields(cls):
        meaning = field_doc(each)
        if meaning.key is not None:
            yield each, meaning


def _about(cls: type[Any]) -> str:
    """The class docstring without its `section:` lead, as one paragraph."""
    text = " ".join(inspect.cleandoc(cls.__doc__ or "").split())
    return re.sub(r"^[\w.\[\]]+: ", "", text)


def _annotation(each: dataclasses.Field[Any]) -> str:
    return str(each.type).removesuffix(" | None")


def _kind(each: dataclasses.Field[Any], meaning: KeyDoc) -> str:
    if meaning.kind is not None:
        return meaning.kind
    if meaning.choices:
        return "one of"
    annotation = _annotation(each)
    if annotation in _SECTION_OF:
        return f"mapping: `{_SECTION_OF[annotation]}`"
    return _KINDS.get(annotation, annotation)


def _default(each: dataclasses.Field[Any], meaning: KeyDoc) -> str:
    if meaning.default_text is not None:
        return f"`{meaning.default_text}`" if meaning.default_text else "—"
    if each.default is dataclasses.MISSING:
        return "required"
    value = each.default
    if value is None:
        return "—"
    return f"`{_written(value, _kind(each, meaning))}`"


def as_written(each: dataclasses.Field[Any], meaning: KeyDoc, value: Any) -> str:
    """The value of field `each` as routes.yaml would write it (`1m30s`, `10MiB`, `60/1m`)."""
    return _written(value, _kind(each, meaning))


def _written(value: Any, kind: str) -> str:
    """`value` as routes.yaml would write it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if kind == "duration" and isinstance(value, int | float):
        return format_duration(value)
    if kind == "size" and isinstance(value, int):
        return _format_size(value)
    if isinstance(value, tuple | frozenset):
        return "[" + ", ".join(str(item) for item in value) + "]"
    if isinstance(value, Rate):
        return str(value)  # 5/15m
    if dataclasses.is_dataclass(value):
        return "{}"  # every key at its default
    return str(value)  # text or a path


def _format_size(size: int) -> str:
    for unit, factor in _SIZE_UNITS:
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def _bounds(each: dataclasses.Field[Any], meaning: KeyDoc) -> str:
    if meaning.choices:
        return ", ".join(f"`{choice}`" for choice in meaning.choices)
    kind = _kind(each, meaning)

    def shown(number: float) -> str:
        if kind == "percentage":
            return f"{number:.0%}"
        if number == 0:
            return "0"
        if kind == "duration":
            return format_duration(number)
        return str(number)

    if meaning.above is not None:
        return f"> {shown(meaning.above)}"
    low, high = meaning.minimum, meaning.maximum
    if low is not None and high is not None:
        return f"{shown(low)} to {shown(high)}"
    if low is not None:
        return f">= {shown(low)}"
    if high is not None:
        return f"<= {shown(high)}"
    return ""


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def spliced(document: str, reference: str) -> str:
    """`document` with the text between its markers replaced by `reference`."""
    return generated.spliced(document, reference, START, END)


def between_markers(document: str) -> str:
    """The text between `document`'s markers, without the line break after the start one."""
    return generated.between(document, START, END)


def main(argv: Sequence[str] | None = None) -> int:
    return generated.write_main(
        argv,
        "python -m gateway.config.reference",
        "Print the routes.yaml reference, or write it between a file's markers.",
        render,
        (START, END),
    )


if __name__ == "__main__":
    sys.exit(main())
