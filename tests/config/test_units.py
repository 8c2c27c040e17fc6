"""The value syntaxes of routes.yaml: durations, sizes, rates and ${ENV} references."""

from __future__ import annotations

import re

import pytest

from gateway.config.units import (
    Rate,
    expand_env,
    format_duration,
    parse_duration,
    parse_rate,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("30s", 30.0),
        ("15m", 900.0),
        ("2h", 7200.0),
        ("14d", 14 * 86400.0),
        ("1.5s", 1.5),
        ("1h30m", 5400.0),
        ("2m30s", 150.0),
        ("1d12h", 129600.0),
        ("1m500ms", 60.5),
        ("1h 30m", 5400.0),
        ("5 s", 5.0),
        ("500ms", 0.5),
        (" 5s ", 5.0),
        ("0s", 0.0),
        ("30", 30.0),  # a bare number in text (e.g. from ${ENV}) is seconds
        (30, 30.0),
        (2.5, 2.5),
        (0, 0.0),
    ],
)
def test_parse_duration(text: str | int | float, seconds: float) -> None:
    result = parse_duration(text)
    assert result == seconds
    assert isinstance(result, float)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("30 seconds", "`30 seconds` is not a duration; write e.g. 30s, 5m, 1h30m"),
        ("5 minutes", "`5 minutes` is not a duration; write e.g. 30s, 5m, 1h30m"),
        ("abc", "`abc` is not a duration"),
        ("1w", "`1w` is not a duration"),
        ("", "`` is not a duration"),
        ("-5s", "`-5s` is not a duration"),
        ("5S", "`5S` is not a duration"),
        ("30m1h", "`30m1h` is not a duration"),  # largest unit first
        ("1s1s", "`1s1s` is not a duration"),
        ("ms", "`ms` is not a duration"),
        ("1.5.s", "`1.5.s` is not a duration"),
        (-1, "a duration cannot be negative"),
        (float("inf"), "a duration must be a finite number"),
        (float("nan"), "a duration must be a finite number"),
        (True, "expected a duration like 30s, got a boolean"),
    ],
)
def test_parse_duration_rejects(text: str | int | float, message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("10MiB", 10 * 1024 * 1024),
        ("512KB", 512_000),
        ("512KiB", 512 * 1024),
        ("1GiB", 1024**3),
        ("2GB", 2_000_000_000),
        ("3MB", 3_000_000),
        ("800B", 800),
        ("800", 800),
        ("10mib", 10 * 1024 * 1024),  # units are case-insensitive
        ("1.5KB", 1500),
        (" 1 KiB ", 1024),
        (4096, 4096),
        (4096.0, 4096),
        (0, 0),
    ],
)
def test_parse_size(text: str | int | float, size: int) -> None:
    result = parse_size(text)
    assert result == size
    assert type(result) is int


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10 megs", "'10 megs' is not a size; use bytes or B, KB, MB, GB, KiB, MiB, GiB"),
        ("10TB", "'10TB' is not a size"),
        ("MiB", "'MiB' is not a size"),
        ("-1KB", "'-1KB' is not a size"),
        (-1, "a size cannot be negative"),
        (1.5, "1.5 is not a whole number of bytes; use a unit, e.g. 10MiB"),
        (True, "expected a size like 10MiB, got a boolean"),
    ],
)
def test_parse_size_rejects(text: str | int | float, message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "limit", "period"),
    [
        ("60/min", 60, 60.0),
        ("5/sec", 5, 1.0),
        ("5/s", 5, 1.0),
        ("100000/day", 100_000, 86400.0),
        ("10/hour", 10, 3600.0),
        ("10/30s", 10, 30.0),
        ("10/5m", 10, 300.0),
        ("3/2h", 3, 7200.0),
        ("1/250ms", 1, 0.25),
        ("10/1m30s", 10, 90.0),
        ("7 / minute", 7, 60.0),
    ],
)
def test_parse_rate(text: str, limit: int, period: float) -> None:
    assert parse_rate(text) == Rate(limit, period)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("60", "'60' is not a rate; use N/sec, N/min, N/hour, N/day or N/<duration>"),
        ("60/", "'60/' is not a rate"),
        ("/min", "'/min' is not a rate"),
        ("1.5/min", "'1.5/min' is not a rate"),
        ("60 per minute", "'60 per minute' is not a rate"),
        ("0/min", "a rate limit must allow at least 1 request"),
        ("5/0s", "a rate period must be longer than zero"),
        ("5/fortnight", "`5/fortnight` is not a rate; the period `fortnight` is neither"),
        ("5/30", "'5/30' is not a rate"),
        (60, "60 is not a rate; give a period too, e.g. 60/min"),
    ],
)
def test_parse_rate_rejects(text: str | int, message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        parse_rate(text)


def test_rate_prints_in_the_syntax_it_was_written_in() -> None:
    assert str(parse_rate("60/min")) == "60/1m"
    assert str(parse_rate("10/30s")) == "10/30s"
    assert str(parse_rate("100000/day")) == "100000/1d"
    assert str(parse_rate("1/250ms")) == "1/250ms"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.25, "250ms"), (30.0, "30s"), (90.0, "90s"), (900.0, "15m"), (7200.0, "2h"), (86400, "1d")],
)
def test_format_duration_round_trips(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


def test_expand_env_replaces_references() -> None:
    env = {"HOST": "10.0.0.5", "PORT": "9000"}
    assert expand_env("http://${HOST}:${PORT}/v1", env) == "http://10.0.0.5:9000/v1"


def test_expand_env_default_used_only_when_unset() -> None:
    assert expand_env("${MISSING:-fallback}", {}) == "fallback"
    assert expand_env("${SET:-fallback}", {"SET": "value"}) == "value"
    assert expand_env("${EMPTY_DEFAULT:-}", {}) == ""
    assert expand_env("${EMPTY:-fallback}", {"EMPTY": ""}) == "fallback"  # as in the shell
    assert expand_env("${EMPTY}", {"EMPTY": ""}) == ""


def test_expand_env_missing_variable_is_an_error_naming_it() -> None:
    with pytest.raises(ValueError, match=r"^environment variable NOT_THERE is not set$"):
        expand_env("x-${NOT_THERE}-y", {})


def test_expand_env_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_TEST_UNITS", "from-env")
    assert expand_env("${GATEWAY_TEST_UNITS}") == "from-env"


def test_expand_env_leaves_other_text_alone() -> None:
    assert expand_env("no references $HOME {x} $", {}) == "no references $HOME {x} $"
