"""Each routes.yaml key's description and bounds, kept as metadata on its schema field.

`doc(...)` makes a dataclass field that carries a `KeyDoc`; the section parsers
read a key's bounds back with `key_doc(...)`, and `gateway/config/reference.py`
renders every key's row of the README's "routes.yaml reference" from the same
metadata, so a description or a bound is written once, beside its field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field
from typing import Any, TypeVar, dataclass_transform

T = TypeVar("T")

SAME_AS_FIELD = "="  # `key=` default: the routes.yaml key is the field's own name
_METADATA = "routes.yaml"  # the metadata entry a documented field keeps its KeyDoc under


@dataclass(frozen=True, slots=True)
class KeyDoc:
    """What a field means, how it is written in routes.yaml and the values it may take."""

    description: str  # one line, as the reference shows it
    key: str | None  # the routes.yaml key; None: derived or internal, never written
    kind: str | None = None  # how the value is written; None: from the field's type
    minimum: int | float | None = None  # smallest allowed, included
    maximum: int | float | None = None  # largest allowed, included
    above: int | float | None = None  # the value must be more than this (not equal)
    choices: tuple[str, ...] = ()  # the values allowed, in the order messages list them
    # the default as the reference shows it; None: rendered from the field's; "": none
    default_text: str | None = None


def doc(
    description: str,
    *,
    default: Any = MISSING,
    default_factory: Callable[[], Any] | Any = MISSING,
    key: str | None = SAME_AS_FIELD,
    kind: str | None = None,
    minimum: int | float | None = None,
    maximum: int | float | None = None,
    above: int | float | None = None,
    choices: tuple[str, ...] = (),
    default_text: str | None = None,
    repr: bool = True,
) -> Any:
    """A dataclass field (required unless `default` or `default_factory` is given) documented
    by a `KeyDoc`: `doc("seconds between rounds", default=5.0, above=0)`."""
    metadata = {
        _METADATA: KeyDoc(
            description, key, kind, minimum, maximum, above, tuple(choices), default_text
        )
    }
    return field(default=default, default_factory=default_factory, repr=repr, metadata=metadata)


@dataclass_transform(frozen_default=True, field_specifiers=(field, doc))
def config_dataclass(cls: type[T]) -> type[T]:
    """`@dataclass(frozen=True, slots=True)`, with `doc(...)` fields understood by type checkers."""
    return dataclass(frozen=True, slots=True)(cls)


def key_doc(cls: type[Any], name: str) -> KeyDoc:
    """The KeyDoc of field `name` of the config dataclass `cls`, its key resolved."""
    for each in dataclasses.fields(cls):
        if each.name == name:
            return field_doc(each)
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def field_doc(each: dataclasses.Field[Any]) -> KeyDoc:
    """The KeyDoc of one dataclass field; KeyError when it has none."""
    found: KeyDoc = each.metadata[_METADATA]
    if found.key == SAME_AS_FIELD:
        return dataclasses.replace(found, key=each.name)
    return found
