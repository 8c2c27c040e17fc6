"""Converters of numbers and durations that check the bounds their schema field's `doc()` states.

A bound is written once, beside its field (gateway/config/schema/); the section
parsers convert through these so the check and its message follow from it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.config.schema.fields import KeyDoc, key_doc
from gateway.config.units import format_duration, parse_duration, parse_positive_duration
from gateway.config.yamlsource import Invalid, Section, Value


def whole_number(cls: type[Any], name: str) -> Callable[[Value], int]:
    """Reads a whole number within field `name`'s minimum and maximum (0 when it states none)."""
    bounds = key_doc(cls, name)
    return lambda value: integer_within(value, bounds)


def integer_within(value: Value, bounds: KeyDoc) -> int:
    """`value` as a whole number within `bounds`' minimum (0 when none) and maximum."""
    minimum = 0 if bounds.minimum is None else int(bounds.minimum)
    maximum = None if bounds.maximum is None else int(bounds.maximum)
    return value.integer(minimum=minimum, maximum=maximum)


def number_range(cls: type[Any], name: str) -> tuple[float, float]:
    """Field `name`'s minimum and maximum, both of which it must state."""
    bounds = key_doc(cls, name)
    if bounds.minimum is None or bounds.maximum is None:
        raise TypeError(f"{cls.__name__}.{name}: its doc() states no range")
    return bounds.minimum, bounds.maximum


def whole_range(cls: type[Any], name: str) -> tuple[int, int]:
    """Field `name`'s minimum and maximum as whole numbers."""
    low, high = number_range(cls, name)
    return int(low), int(high)


def duration(cls: type[Any], name: str) -> Callable[[Value], float]:
    """Reads a duration that is above 0 when field `name` says so, within its bounds if any."""
    bounds = key_doc(cls, name)
    low, high = bounds.minimum, bounds.maximum
    if bounds.above not in (None, 0) or (low is None) != (high is None):
        raise TypeError(f"{cls.__name__}.{name}: a duration's doc() says above=0, or both bounds")

    def convert(value: Value) -> float:
        if bounds.above is not None:
            return value.convert(parse_positive_duration)
        seconds = value.convert(parse_duration)
        if low is None or high is None:
            return seconds
        if not low <= seconds <= high:
            raise Invalid(
                f"{value.key}: must be between {format_duration(low)} and {format_duration(high)}"
            )
        return seconds

    return convert


def read_duration(sec: Section, defaults: Any, name: str) -> float:
    """Key `name` of `sec` as a duration within the bounds its field in `defaults`' class
    states; `defaults`' own value when the key is absent or wrong (and reported)."""
    value: float = sec.field(name, duration(type(defaults), name), getattr(defaults, name))
    return value


def read_whole(sec: Section, defaults: Any, name: str) -> int:
    """Key `name` of `sec` as a whole number within its field's bounds (as read_duration)."""
    value: int = sec.field(name, whole_number(type(defaults), name), getattr(defaults, name))
    return value
