"""The router: path normalisation, pattern compilation, first-match lookup,
404/405, the bounded cache, and a seeded comparison against a naive matcher."""

from __future__ import annotations

import random
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence

import pytest

from gateway.config.schema.routes import Route
from gateway.problems import GatewayError
from gateway.routing import (
    CACHE_SIZE,
    RouteMatch,
    RouteTable,
    compile_pattern,
    literal_prefix,
    normalise_path,
    request_path,
)

METHODS = ("GET", "POST", "PUT", "DELETE")


def route(index: int, path: str, methods: Iterable[str] | None = None) -> Route:
    return Route(
        index=index,
        path=compile_pattern(path),
        methods=frozenset(methods) if methods is not None else None,
        upstream="up",
    )


def table(*paths: str | tuple[str, Iterable[str] | None]) -> RouteTable:
    """Routes in first-match order; a bare string allows every method."""
    routes = []
    for index, entry in enumerate(paths):
        path, methods = (entry, None) if isinstance(entry, str) else entry
        routes.append(route(index, path, methods))
    return RouteTable(routes)


def lookup(rt: RouteTable, method: str, raw: str) -> RouteMatch:
    return rt.match(method, normalise_path(raw))


def refusal(rt: RouteTable, method: str, raw: str) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        lookup(rt, method, raw)
    return info.value


# --- normalisation -----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/", "/"),
        ("/users/me", "/users/me"),
        ("/%41", "/A"),  # unreserved: decoded
        ("/%7e", "/~"),
        ("/%7E%2D%5f%2E", "/~-_."),
        ("/a%2fb", "/a%2Fb"),  # reserved: kept, upper-cased
        ("/a%2Fb/c", "/a%2Fb/c"),
        ("/a/%2e%2e/b", "/b"),  # decoded dots are dot segments
        ("/a/%2E/b", "/a/b"),
        ("/a/.%2e/b", "/b"),
        ("/a/./b", "/a/b"),
        ("/a/../../b", "/b"),  # never above /
        ("/../../..", "/"),
        ("/a/..", "/"),
        ("/a/b/..", "/a/"),
        ("/a/.", "/a/"),
        ("//a///b", "/a/b"),
        ("//", "/"),
        ("/a/b/", "/a/b/"),  # trailing slash kept
        ("/a//", "/a/"),
        ("/a b", "/a%20b"),  # characters not allowed in a path are encoded
        ("/café", "/caf%C3%A9"),
        ("/日本", "/%E6%97%A5%E6%9C%AC"),
        ("/a\\b", "/a%5Cb"),
        ('/a"<>', "/a%22%3C%3E"),
        ("/a#b", "/a%23b"),
        ("/%00", "/%00"),  # NUL stays encoded, never decoded
        ("/%25", "/%25"),
        ("/%2541", "/%2541"),  # decoded once only: %25 is not unreserved
        ("/%c3%a9", "/%C3%A9"),
        ("/a;b=c,d:e@f!$&'()*+", "/a;b=c,d:e@f!$&'()*+"),  # pchar sub-delims stay as sent
        ("/.well-known/jwks.json", "/.well-known/jwks.json"),
        ("/a/..b/c.", "/a/..b/c."),  # dots inside a segment are text
    ],
)
def test_normalise_path(raw: str, expected: str) -> None:
    assert normalise_path(raw) == expected
    assert normalise_path(expected) == expected  # the normal form is a fixed point


@pytest.mark.parametrize("raw", ["/%zz", "/%4", "/%", "/a%4g/b", "/%%41", "/%g1", "/a/%2"])
def test_malformed_percent_encoding_raises(raw: str) -> None:
    with pytest.raises(ValueError, match="malformed percent-encoding"):
        normalise_path(raw)


@pytest.mark.parametrize("raw", ["", "a/b", "*", "http://host/a", "%2Fa"])
def test_non_absolute_target_raises(raw: str) -> None:
    with pytest.raises(ValueError, match="absolute path"):
        normalise_path(raw)


# --- patterns ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("/", "/"),
        ("/**", "/**"),
        ("/users/me/**", "/users/me/**"),
        ("/users/{id}", "/users/{id}"),
        ("/a/{x}/b/{y}/**", "/a/{x}/b/{y}/**"),
        ("/a/", "/a/"),
        ("/A%7e", "/A~"),  # literal segments take the normal form a request has
        ("/a%2fb", "/a%2Fb"),
        ("/café", "/caf%C3%A9"),
        ("/.well-known/jwks.json", "/.well-known/jwks.json"),
    ],
)
def test_compile_pattern(pattern: str, expected: str) -> None:
    assert compile_pattern(pattern) == expected


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("users", "must start with /"),
        ("/a/**/b", "only be the last segment"),
        ("/**/", "only be the last segment"),
        ("/a/x*", "mixes a wildcard"),
        ("/a/{x", "not a parameter"),
        ("/a/{1x}", "not a parameter"),
        ("/a/pre{x}", "not a parameter"),
        ("/a/x{y", "mixes a wildcard"),
        ("/a/{x}\n", "not a parameter"),  # `$` would have let the newline through
        ("/a/{x}/{x}", "appears twice"),
        ("//a", "empty, . or .."),
        ("/a/./b", "empty, . or .."),
        ("/a/../b", "empty, . or .."),
        ("/a/%2e%2e/b", "empty, . or .."),  # a pattern no normalised path could match
        ("/a/%2E", "empty, . or .."),
        ("/a/%zz", "malformed percent-encoding"),
    ],
)
def test_compile_pattern_rejects(pattern: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        compile_pattern(pattern)


@pytest.mark.parametrize(
    ("pattern", "prefix"),
    [
        ("/", "/"),
        ("/**", "/"),
        ("/{x}", "/"),
        ("/analytics/**", "/analytics"),
        ("/a/b/{x}/c", "/a/b"),
        ("/a/b/", "/a/b"),  # without the trailing slash, as documented
    ],
)
def test_literal_prefix(pattern: str, prefix: str) -> None:
    assert literal_prefix(compile_pattern(pattern)) == prefix


def test_routing_imports_on_its_own() -> None:
    # A fresh interpreter whose first gateway import is the router (as the bench
    # does) must not trip over the config package importing it back.
    done = subprocess.run(
        [sys.executable, "-c", "import gateway.routing"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


# --- security: the path policy sees is the path that was routed ---------------


SECURITY_TABLE = ("/admin/**", "/public/**")


@pytest.mark.parametrize(
    "raw",
    [
        "/public/..%2fadmin",
        "/public/..%2Fadmin/users",
        "/public/%2e%2e%2fadmin",
        "/public/..%5cadmin",
        "/public/..\\admin",
        "/public/%2e%2e;/admin",
    ],
)
def test_encoded_separators_never_reach_admin(raw: str) -> None:
    rt = table(*SECURITY_TABLE)
    path = normalise_path(raw)
    assert path.startswith("/public/")
    assert lookup(rt, "GET", raw).route.index == 1
    assert [r.index for r in rt.candidates(path)] == [1]


@pytest.mark.parametrize(
    "raw",
    [
        "/public/..%2fadmin",
        "/public/a%2Fb",
        "/public/..%5cadmin",
        "/public/..\\admin",
        "/public/%2e%2e;/admin",
        "/public/..;/admin",
        "/.;/admin",
    ],
)
def test_request_path_refuses_what_a_server_behind_could_read_as_another_path(raw: str) -> None:
    normalise_path(raw)  # a path the normaliser takes...
    with pytest.raises(ValueError, match=r"encoded / or|dot segment with a parameter"):
        request_path(raw)  # ...but the gateway will not route (400 bad_path)


@pytest.mark.parametrize(
    ("raw", "path"),
    [("/a;b", "/a;b"), ("/a/x;v=1/b..;", "/a/x;v=1/b..;"), ("/%7Eu/%3B", "/~u/%3B"), ("/", "/")],
)
def test_request_path_keeps_ordinary_paths(raw: str, path: str) -> None:
    assert request_path(raw) == path


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ("/public/%2e%2e/admin", "/admin"),
        ("/public/%2E%2E/admin/users", "/admin/users"),
        ("/public/.%2e/admin", "/admin"),
        ("/public/../admin", "/admin"),
        ("//public//..//admin", "/admin"),
        ("/%61dmin", "/admin"),
    ],
)
def test_dot_segments_resolve_to_the_real_path(raw: str, path: str) -> None:
    rt = table(*SECURITY_TABLE)
    assert normalise_path(raw) == path
    assert lookup(rt, "GET", raw).route.index == 0  # the admin route, so admin policy applies


def test_params_never_split_on_encoded_slash() -> None:
    rt = table("/files/{name}", "/files/{dir}/{name}")
    found = lookup(rt, "GET", "/files/a%2fb")
    assert (found.route.index, found.params) == (0, {"name": "a%2Fb"})


# --- first match, params, wildcards -------------------------------------------


def test_first_match_catch_all_before_literal() -> None:
    rt = table("/a/**", "/a/b")
    assert lookup(rt, "GET", "/a/b").route.index == 0  # /a/b is shadowed


def test_first_match_literal_before_catch_all() -> None:
    rt = table("/a/b", "/a/**")
    assert lookup(rt, "GET", "/a/b").route.index == 0
    assert lookup(rt, "GET", "/a/c").route.index == 1
    assert lookup(rt, "GET", "/a/b/c").route.index == 1


def test_first_match_param_versus_literal() -> None:
    param_first = table("/a/{x}", "/a/b")
    assert lookup(param_first, "GET", "/a/b") == RouteMatch(param_first.routes[0], {"x": "b"})
    literal_first = table("/a/b", "/a/{x}")
    assert lookup(literal_first, "GET", "/a/b") == RouteMatch(literal_first.routes[0], {})
    assert lookup(literal_first, "GET", "/a/c") == RouteMatch(literal_first.routes[1], {"x": "c"})


def test_order_is_the_index_not_the_list_order() -> None:
    late, early = route(5, "/a/**"), route(2, "/a/{x}")
    rt = RouteTable([late, early])
    assert lookup(rt, "GET", "/a/b").route is early
    assert rt.routes == (early, late)


def test_first_match_skips_routes_whose_methods_do_not_fit() -> None:
    rt = table(("/a/**", ["GET"]), ("/a/b", ["POST"]), "/a/{x}")
    assert lookup(rt, "GET", "/a/b").route.index == 0
    assert lookup(rt, "POST", "/a/b").route.index == 1
    assert lookup(rt, "PUT", "/a/b") == RouteMatch(rt.routes[2], {"x": "b"})


def test_params_extracted() -> None:
    rt = table("/users/{user}/posts/{post}", "/org/{org}/**")
    found = lookup(rt, "GET", "/users/42/posts/%41bc")
    assert found.params == {"user": "42", "post": "Abc"}  # values from the normalised path
    assert lookup(rt, "GET", "/org/acme").params == {"org": "acme"}
    assert lookup(rt, "GET", "/org/acme/x/y/").params == {"org": "acme"}


def test_param_never_matches_an_empty_segment() -> None:
    rt = table("/a/{x}", "/a/{x}/b")
    assert refusal(rt, "GET", "/a/").status == 404
    # Even a path handed over without normalising cannot bind an empty value.
    for path in ("/a//b", "/a/"):
        with pytest.raises(GatewayError):
            rt.match("GET", path)
    assert lookup(rt, "GET", "/a//b").params == {"x": "b"}  # `//` merged first


def test_trailing_catch_all_matches_nothing_left() -> None:
    rt = table("/users/me/**")
    for raw in ("/users/me", "/users/me/", "/users/me/password", "/users/me/a/b/c"):
        assert lookup(rt, "GET", raw).route.index == 0, raw
    for raw in ("/users", "/users/meow", "/users/mex/a", "/"):
        assert refusal(rt, "GET", raw).status == 404, raw


def test_root_catch_all_matches_root() -> None:
    rt = table("/**")
    assert lookup(rt, "GET", "/").route.index == 0
    assert lookup(rt, "GET", "/anything/at/all").route.index == 0


def test_trailing_slash_is_part_of_a_literal_pattern() -> None:
    rt = table("/a/b/", "/a/b")
    assert lookup(rt, "GET", "/a/b/").route.index == 0
    assert lookup(rt, "GET", "/a/b").route.index == 1
    assert refusal(rt, "GET", "/a/b/c").status == 404


def test_non_ascii_literal_matches_its_encoded_request() -> None:
    rt = table("/café/{x}")
    assert lookup(rt, "GET", "/café/1").params == {"x": "1"}
    assert lookup(rt, "GET", "/caf%c3%a9/1").params == {"x": "1"}


# --- 404 and 405 -------------------------------------------------------------


def test_no_route_is_404() -> None:
    rt = table(("/items", ["GET"]), "/users/**")
    error = refusal(rt, "GET", "/nothing")
    assert (error.status, error.code) == (404, "no_route")
    assert "Allow" not in error.headers
    assert refusal(table(), "GET", "/").status == 404


def test_wrong_method_is_405_with_the_union_of_allowed_methods() -> None:
    rt = table(
        ("/items", ["GET", "HEAD"]),
        ("/items", ["POST"]),
        ("/items/**", ["PUT", "DELETE"]),
        ("/{any}", ["OPTIONS"]),
        ("/other", ["PATCH"]),  # does not match /items: not in Allow
    )
    error = refusal(rt, "PATCH", "/items")
    assert (error.status, error.code) == (405, "method_not_allowed")
    assert error.headers["Allow"] == "DELETE, GET, HEAD, OPTIONS, POST, PUT"
    assert lookup(rt, "DELETE", "/items").route.index == 2


def test_routes_without_methods_allow_everything() -> None:
    rt = table(("/a", ["GET"]), "/a")
    for method in ("GET", "POST", "DELETE", "PROPFIND", "PATCH"):
        assert lookup(rt, method, "/a").route.index == (0 if method == "GET" else 1)


# --- cache --------------------------------------------------------------------


def test_cache_stays_bounded_and_agrees_with_uncached_lookups() -> None:
    routes = [
        route(0, "/static/app.js", ["GET"]),
        route(1, "/users/{id}", ["GET", "PATCH"]),
        route(2, "/users/{id}/**", ["GET"]),
        route(3, "/api/**"),
    ]
    cached, uncached = RouteTable(routes), RouteTable(routes)
    paths = [f"/users/{i}" if i % 3 else f"/miss/{i}" for i in range(CACHE_SIZE + 1000)]
    paths += [f"/users/{i}/x" for i in range(50)] + ["/static/app.js", "/api"]
    for round_ in range(2):  # the second round meets evicted and still-cached entries
        for path in paths:
            for method in ("GET", "POST"):
                uncached._cache.clear()
                assert outcome(cached, method, path) == outcome(uncached, method, path), (
                    round_,
                    method,
                    path,
                )
            assert len(cached._cache) <= CACHE_SIZE
    assert len(cached._cache) > 0


def test_cache_flood_of_misses_stays_bounded() -> None:
    rt = table("/a/{x}")
    for i in range(3 * CACHE_SIZE):
        with pytest.raises(GatewayError):
            rt.match("GET", f"/flood/{i}")
        assert len(rt._cache) <= CACHE_SIZE
    assert rt.match("GET", "/a/1").params == {"x": "1"}


# --- seeded comparison with a naive linear matcher ----------------------------

Outcome = tuple[int, int | str, dict[str, str] | None]


def outcome(rt: RouteTable, method: str, path: str) -> Outcome:
    """(200, route index, params) or (status, code + Allow, None)."""
    try:
        found = rt.match(method, path)
    except GatewayError as error:
        return (error.status, f"{error.code} {error.headers.get('Allow', '')}", None)
    return (200, found.route.index, found.params)


def reference_segment_match(pattern: Sequence[str], path: Sequence[str]) -> dict[str, str] | None:
    if pattern and pattern[-1] == "**":
        pattern = pattern[:-1]
        if len(path) < len(pattern):
            return None
    elif len(path) != len(pattern):
        return None
    params: dict[str, str] = {}
    for want, got in zip(pattern, path, strict=False):
        if want.startswith("{"):
            if got == "":
                return None
            params[want[1:-1]] = got
        elif want != got:
            return None
    return params


def reference_outcome(routes: Sequence[Route], method: str, path: str) -> Outcome:
    """The obvious, slow router: scan every route in index order."""
    segments = [] if path == "/" else path[1:].split("/")
    allow: set[str] = set()
    matched = False
    for candidate in sorted(routes, key=lambda r: r.index):
        pattern = [] if candidate.path == "/" else candidate.path[1:].split("/")
        params = reference_segment_match(pattern, segments)
        if params is None:
            continue
        matched = True
        if candidate.methods is None or method in candidate.methods:
            return (200, candidate.index, params)
        allow |= candidate.methods
    if not matched:
        return (404, "no_route ", None)
    return (405, f"method_not_allowed {', '.join(sorted(allow))}", None)


SEGMENTS = ("a", "b", "c", "users", "me")


def random_pattern(rng: random.Random) -> str:
    parts: list[str] = []
    for position in range(rng.randint(0, 4)):
        roll = rng.random()
        parts.append(f"{{p{position}}}" if roll < 0.3 else rng.choice(SEGMENTS))
    if rng.random() < 0.3:
        parts.append("**")
    elif parts and rng.random() < 0.1:
        parts.append("")  # trailing slash
    return "/" + "/".join(parts)


def random_methods(rng: random.Random) -> frozenset[str] | None:
    if rng.random() < 0.3:
        return None
    return frozenset(rng.sample(METHODS, rng.randint(1, 3)))


RAW_PIECES = (
    "a", "b", "c", "users", "me", "x", "/", "/", "/", "//", ".", "..", "%2e", "%2E%2e",
    "%2f", "%41", "%61", "%7e", "%20", " ", "é", "\\", "%25", ";", "~", "%00", "-",
)  # fmt: skip


def random_path(rng: random.Random) -> str:
    raw = "/" + "".join(rng.choice(RAW_PIECES) for _ in range(rng.randint(0, 10)))
    return normalise_path(raw)


def test_matches_a_naive_linear_reference() -> None:
    rng = random.Random(20240611)
    compared = 0
    for _ in range(400):
        routes = []
        for index in range(rng.randint(0, 12)):
            pattern = compile_pattern(random_pattern(rng))
            routes.append(Route(index, pattern, random_methods(rng), upstream="up"))
        rt = RouteTable(reversed(routes))
        for _ in range(15):
            path = random_path(rng)
            if rng.random() < 0.3 and routes:  # aim at a pattern too, so hits are common
                pattern = rng.choice(routes).path
                path = pattern.replace("/**", "/x/y").replace("{p0}", "v").replace("{p1}", "w")
                path = re.sub(r"\{p\d\}", "z", path)
            method = rng.choice((*METHODS, "PATCH"))
            assert outcome(rt, method, path) == reference_outcome(routes, method, path), (
                [(r.index, r.path, r.methods) for r in routes],
                method,
                path,
            )
            compared += 1
    assert compared == 6000


def reference_normalise(raw: str) -> str:
    """RFC 3986 6.2.2 encoding normalisation + 5.2.4 dot removal, `//` merged."""
    if not raw.startswith("/"):
        raise ValueError("absolute path")
    if re.search(r"%(?![0-9A-Fa-f]{2})", raw):
        raise ValueError("malformed percent-encoding")
    unreserved = re.compile(r"[A-Za-z0-9\-._~]")
    allowed = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/]")

    def canonical(token: str) -> str:
        if token.startswith("%"):
            char = chr(int(token[1:], 16))
            return char if unreserved.fullmatch(char) else token.upper()
        if allowed.fullmatch(token):
            return token
        return "".join(f"%{b:02X}" for b in token.encode("utf-8"))

    text = "".join(canonical(t) for t in re.findall(r"%[0-9A-Fa-f]{2}|.", raw, re.DOTALL))
    stack: list[str] = []
    pieces = text.split("/")[1:]
    for piece in pieces:
        if piece == "..":
            if stack:
                stack.pop()
        elif piece not in ("", "."):
            stack.append(piece)
    trailing = bool(stack) and pieces[-1] in ("", ".", "..")
    return "/" + "/".join(stack) + ("/" if trailing else "")


def test_normalise_path_matches_a_reference() -> None:
    rng = random.Random(7)
    pieces = (*RAW_PIECES, "%", "%zz", "%4", "?", "#", "%C3%a9", "日", "%2F", "A", "%7E")
    for _ in range(5000):
        raw = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        if rng.random() < 0.95:
            raw = "/" + raw
        try:
            expected = reference_normalise(raw)
        except ValueError as reason:
            with pytest.raises(ValueError, match=str(reason)):
                normalise_path(raw)
            continue
        assert normalise_path(raw) == expected, raw
        assert normalise_path(expected) == expected, raw
