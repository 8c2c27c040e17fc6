"""gateway/static/rules.py: the decisions on plain values, no server."""

from __future__ import annotations

import pytest

from gateway.static.rules import (
    IMMUTABLE,
    REVALIDATE,
    accepted_encodings,
    accepts_html,
    cache_control,
    file_parts,
)


@pytest.mark.parametrize(
    ("pattern", "path", "parts"),
    [
        ("/app/**", "/app", ()),
        ("/app/**", "/app/", ("",)),
        ("/app/**", "/app/a/b.js", ("a", "b.js")),
        ("/app/**", "/app/a/", ("a", "")),
        ("/**", "/", ()),
        ("/**", "/x%20y.txt", ("x y.txt",)),
        ("/**", "/.well-known/security.txt", (".well-known", "security.txt")),
        ("/u/{name}/**", "/u/ann/page.html", ("page.html",)),
    ],
)
def test_file_parts_are_what_the_trailing_stars_matched(
    pattern: str, path: str, parts: tuple[str, ...]
) -> None:
    assert file_parts(pattern, path) == parts


@pytest.mark.parametrize(
    "path",
    [
        "/app/.env",
        "/app/a/.git/config",
        "/app/a/.well-known/x",
        "/app/%2Ex",
        "/app/a%00b",
        "/app/%FF",
    ],
)
def test_file_parts_refuse_dot_segments_nul_and_bad_utf8(path: str) -> None:
    assert file_parts("/app/**", path) is None


@pytest.mark.parametrize(
    ("header", "codings"),
    [
        (None, ()),
        ("", ()),
        ("gzip, deflate, br, zstd", ("br", "gzip")),
        ("br;q=0", ()),
        ("BR;Q=0.5, x-gzip", ("br", "gzip")),
        ("gzip;q=0, *", ("br",)),
        ("*;q=0", ()),
        ("br;q=nonsense, gzip", ("gzip",)),
    ],
)
def test_accepted_encodings_honour_weights(header: str | None, codings: tuple[str, ...]) -> None:
    assert accepted_encodings(header) == codings


@pytest.mark.parametrize(
    ("header", "html"),
    [
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", True),
        ("text/*", True),
        ("TEXT/HTML; q=0.1", True),
        ("text/html;q=0", False),
        ("*/*", False),
        ("application/json", False),
        (None, False),
    ],
)
def test_accepts_html_wants_it_named(header: str | None, html: bool) -> None:
    assert accepts_html(header) is html


@pytest.mark.parametrize(
    ("name", "policy"),
    [
        ("app.3f9a2b1c.js", IMMUTABLE),
        ("app-3f9a2b1c.js", IMMUTABLE),
        ("chunk.0123456789abcdef.min.js", IMMUTABLE),
        ("app.3f9a2b1.js", REVALIDATE),  # 7 hex digits: not a hash
        ("app.js", REVALIDATE),
        ("deadbeefcafe", REVALIDATE),  # no extension after it
        ("index.html", REVALIDATE),
    ],
)
def test_cache_control_by_name(name: str, policy: str) -> None:
    assert cache_control(name) == policy
