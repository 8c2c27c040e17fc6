"""Request shapes declared as dataclasses, and the one validator that reads them.

A local endpoint declares its body as a frozen dataclass whose fields carry
their type and bounds; `parse` turns JSON into it or raises a 400 naming the
field. `json_schema` turns the same declarations into the schemas of
/openapi.json, so the documentation and the validation cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from datetime import UTC, datetime
from typing import Any, TypeVar

from gateway.problems import GatewayError

T = TypeVar("T")


def spec(
    *,
    min_length: int | None = None,
    max_length: int | None = None,
    pattern: str | None = None,
    description: str = "",
    format: str | None = None,
    nullable: bool = True,
    enum: str | None = None,
) -> dict[str, Any]:
    """Field metadata: bounds the validator checks, and a line of documentation.

    `format`: JSON Schema's (documentation only). `nullable=False`: an optional
    field that may be left out but not sent as null. `enum`: the name of a set
    of values only the live config knows (e.g. "roles"); the handler checks
    it, the document lists it."""
    return {
        "min_length": min_length,
        "max_length": max_length,
        "pattern": re.compile(pattern) if pattern else None,
        "description": description,
        "format": format,
        "nullable": nullable,
        "enum": enum,
    }


def invalid(field: str, detail: str) -> GatewayError:
    return GatewayError.bad_request(f"{field}: {detail}", code="invalid_field")


def parse(data: Any, shape: type[T]) -> T:
    """`data` (parsed JSON) as an instance of the dataclass `shape`, or a 400."""
    if not isinstance(data, dict):
        raise GatewayError.bad_request("the body must be a JSON object", code="invalid_body")
    hints = typing.get_type_hints(shape)
    fields = {f.name: f for f in dataclasses.fields(shape)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise invalid(unknown[0], f"unknown field (fields: {', '.join(fields)})")
    values: dict[str, Any] = {}
    for name, field in fields.items():
        if name not in data:
            required = (
                field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING
            )
            if required:
                raise invalid(name, "is required")
            continue
        values[name] = _check(name, data[name], hints[name], field.metadata)
    return shape(**values)


def _check(name: str, value: Any, hint: Any, meta: typing.Mapping[str, Any]) -> Any:
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in allowed and meta.get("nullable", True):
            return None
        raise invalid(name, "may not be null")
    kinds = [k for k in allowed if k is not type(None)]
    kind = kinds[0]
    if kind is bool:
        if not isinstance(value, bool):
            raise invalid(name, "must be true or false")
        return value
    if kind is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise invalid(name, "must be a whole number")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise invalid(name, "must be a string")
        low, high = meta.get("min_length"), meta.get("max_length")
        if low is not None and len(value) < low:
            raise invalid(name, f"must be at least {low} characters")
        if high is not None and len(value) > high:
            raise invalid(name, f"must be at most {high} characters")
        pattern = meta.get("pattern")
        if pattern is not None and not pattern.fullmatch(value):
            raise invalid(name, f"must match {pattern.pattern}")
        return value
    raise TypeError(f"unsupported field type {hint!r} for {name}")  # a declaration bug


def query_int(raw: str | None, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high], or a 400 naming it."""
    if raw is None or raw == "":
        return default
    # Plain ASCII digits only: int() would also take " 3", "3_0" and "٣".
    if re.fullmatch(r"-?[0-9]+", raw) is None:
        raise GatewayError.bad_request(f"{name}: must be a whole number", code="invalid_query")
    value = int(raw) if len(raw) <= 20 else high + 1  # longer is out of range anyway
    if not low <= value <= high:
        raise GatewayError.bad_request(f"{name}: must be {low}-{high}", code="invalid_query")
    return value


_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(\.\d+)?([Zz]|[+\- ]\d{2}:\d{2})", re.ASCII
)


def query_time(raw: str | None, name: str) -> datetime | None:
    """An RFC 3339 date-time query parameter (offset required) in UTC, or a 400 naming it.

    A `+` left unencoded in a URL arrives as a space; before the offset it is read as `+`.
    """
    if raw is None or raw == "":
        return None
    match = _RFC3339.fullmatch(raw)
    if match is not None:
        date, clock, fraction, offset = match.groups()
        fraction = (fraction or "")[:7]  # microseconds: Python keeps 6 digits
        if offset in ("Z", "z"):
            offset = "+00:00"
        elif offset[0] == " ":  # a + the URL did not encode
            offset = "+" + offset[1:]
        try:
            return datetime.fromisoformat(f"{date}T{clock}{fraction}{offset}").astimezone(UTC)
        except (ValueError, OverflowError):
            pass  # 2025-02-30, 25:00:00, or past year 9999 in UTC
    raise GatewayError.bad_request(
        f"{name}: must be an RFC 3339 time, e.g. 2025-01-31T08:00:00Z", code="invalid_query"
    )


def query_bool(raw: str | None, name: str) -> bool | None:
    if raw is None or raw == "":
        return None
    if raw.lower() in ("true", "1"):
        return True
    if raw.lower() in ("false", "0"):
        return False
    raise GatewayError.bad_request(f"{name}: must be true or false", code="invalid_query")


# --- the same declarations as JSON Schema (for /openapi.json) -------------------------


def json_schema(
    shape: type[Any], enums: typing.Mapping[str, list[str]] | None = None
) -> dict[str, Any]:
    """The JSON Schema (2020-12, as OpenAPI 3.1 uses) of a dataclass `shape`:
    the fields `parse` accepts, with the same bounds, and which are required.
    `enums`: the values of each named set (`spec(enum=...)`) in the live config."""
    hints = typing.get_type_hints(shape)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for field in dataclasses.fields(shape):
        properties[field.name] = _field_schema(hints[field.name], field.metadata, enums or {})
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            required.append(field.name)
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = required
    if shape.__doc__ and not shape.__doc__.startswith(f"{shape.__name__}("):
        schema["description"] = " ".join(shape.__doc__.split())
    return schema


_JSON_TYPES: dict[Any, str] = {str: "string", int: "integer", bool: "boolean", float: "number"}


def _field_schema(
    hint: Any, meta: typing.Mapping[str, Any], enums: typing.Mapping[str, list[str]]
) -> dict[str, Any]:
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    kinds = [k for k in allowed if k is not type(None)]
    nullable = len(kinds) < len(allowed) and meta.get("nullable", True)
    schema = _kind_schema(kinds[0], meta)
    named = meta.get("enum")
    if named is not None and named in enums:
        schema["enum"] = list(enums[named])
    if nullable:
        schema = {"anyOf": [schema, {"type": "null"}]}
    description = meta.get("description") or ""
    if description:
        schema["description"] = description
    return schema


def _kind_schema(kind: Any, meta: typing.Mapping[str, Any]) -> dict[str, Any]:
    origin = typing.get_origin(kind)
    if origin is list:
        (item,) = typing.get_args(kind)
        return {"type": "array", "items": _kind_schema(item, {})}
    if origin is dict:
        return {"type": "object"}
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        return {"$ref": f"#/components/schemas/{kind.__name__}"}
    if kind is typing.Any:
        return {}
    schema: dict[str, Any] = {"type": _JSON_TYPES[kind]}
    if kind is str:
        if meta.get("min_length") is not None:
            schema["minLength"] = meta["min_length"]
        if meta.get("max_length") is not None:
            schema["maxLength"] = meta["max_length"]
        pattern = meta.get("pattern")
        if pattern is not None:
            schema["pattern"] = f"^(?:{pattern.pattern})$"  # parse() matches the whole value
        if meta.get("format"):
            schema["format"] = meta["format"]
    return schema
