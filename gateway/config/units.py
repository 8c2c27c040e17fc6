"""Parsers for the value syntaxes of routes.yaml: durations, sizes, rates, ${ENV}.

Pure functions; each raises `ValueError` with a message meant for the operator
(the loader adds FILE:LINE and the key). Every other module that needs one of
these syntaxes calls these, never a parser of its own.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

_DURATION_UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
# A bare number (seconds), or parts like `1d12h`, `1h30m`, `2m30s`, `1.5s`, `500ms`:
# each unit at most once, largest first (`ms` tried before `m`).
_NUMBER = r"\d+(?:\.\d+)?"
_BARE_DURATION = re.compile(rf"^\s*({_NUMBER})\s*$")
_COMPOUND_DURATION = re.compile(
    "".join(rf"(?:({_NUMBER})\s*{unit}\s*)?" for unit in ("d", "h", "m(?!s)", "s", "ms"))
)
_DURATION_PARTS = ("d", "h", "m", "s", "ms")
DURATION_HINT = "write e.g. 30s, 5m, 1h30m"

_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*$", re.IGNORECASE)

_RATE_PERIODS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\S.*?)\s*$")
_RATE_WORD = re.compile(r"^(\d*)\s*([a-z]+)$")

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True, slots=True)
class Rate:
    """`limit` events per `period` seconds."""

    limit: int
    period: float

    def __str__(self) -> str:
        return f"{self.limit}/{format_duration(self.period)}"


def parse_duration(text: str | int | float) -> float:
    """`250ms`, `30s`, `15m`, `2h`, `14d`, or parts of them largest first (`1h30m`,
    `2m30s`, `1d12h`) → seconds. A bare number is seconds."""
    if isinstance(text, bool):
        raise ValueError(f"expected a duration like 30s, got a boolean; {DURATION_HINT}")
    seconds = float(text) if isinstance(text, int | float) else _duration_text(text)
    if not math.isfinite(seconds):
        raise ValueError("a duration must be a finite number")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def _duration_text(text: str) -> float:
    bare = _BARE_DURATION.match(text)
    if bare is not None:
        return float(bare.group(1))
    stripped = text.strip()
    match = _COMPOUND_DURATION.fullmatch(stripped)
    if not stripped or match is None or not any(match.groups()):
        raise ValueError(f"`{text}` is not a duration; {DURATION_HINT}")
    return sum(
        float(amount) * _DURATION_UNITS[unit]
        for amount, unit in zip(match.groups(), _DURATION_PARTS, strict=True)
        if amount is not None
    )


def parse_positive_duration(text: str | int | float) -> float:
    """A duration longer than zero: a timeout, an interval, a backoff."""
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ValueError("must be longer than zero")
    return seconds


def format_duration(seconds: float) -> str:
    for unit in ("d", "h", "m", "s"):
        size = _DURATION_UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{round(seconds * 1000)}ms"


def parse_size(text: str | int | float) -> int:
    """`10MiB`, `512KB`, `1GiB`, `800` (bytes) → bytes."""
    if isinstance(text, bool):
        raise ValueError("expected a size like 10MiB, got a boolean")
    if isinstance(text, float):
        if not text.is_integer():
            raise ValueError(f"{text!r} is not a whole number of bytes; use a unit, e.g. 10MiB")
        text = int(text)
    if isinstance(text, int):
        value = text
    else:
        match = _SIZE.match(text)
        if match is None:
            raise ValueError(
                f"{text!r} is not a size; use bytes or B, KB, MB, GB, KiB, MiB, GiB (e.g. 10MiB)"
            )
        unit = (match.group(2) or "b").lower()
        value = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if value < 0:
        raise ValueError("a size cannot be negative")
    return value


def parse_rate(text: str | int | float) -> Rate:
    """`60/min`, `5/sec`, `100000/day`, `10/30s`, `10/1m30s` → Rate."""
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a rate; give a period too, e.g. {text}/min")
    match = _RATE.match(text)
    if match is None or _BARE_DURATION.match(match.group(2)):  # `5/30`: 30 of what?
        raise ValueError(
            f"{text!r} is not a rate; use N/sec, N/min, N/hour, N/day or N/<duration> (e.g. 60/min)"
        )
    limit = int(match.group(1))
    per = match.group(2)
    word = _RATE_WORD.match(per)
    if word is not None and word.group(2) in _RATE_PERIODS:
        count = word.group(1)
        period = _RATE_PERIODS[word.group(2)] * (int(count) if count else 1)
    else:
        try:
            period = parse_duration(per)
        except ValueError:
            raise ValueError(
                f"`{text}` is not a rate; the period `{per}` is neither sec, min, hour, day "
                f"nor a duration ({DURATION_HINT})"
            ) from None
    if limit <= 0:
        raise ValueError("a rate limit must allow at least 1 request")
    if period <= 0:
        raise ValueError("a rate period must be longer than zero")
    return Rate(limit, period)


def expand_env(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Replace `${NAME}` with the environment's value; `${NAME:-default}`, as in the
    shell, gives `default` when NAME is unset or empty."""
    env = os.environ if environ is None else environ

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = env.get(name)
        if default is not None and not value:
            return default
        if value is None:
            raise ValueError(f"environment variable {name} is not set")
        return value

    return _ENV_REF.sub(substitute, text)
