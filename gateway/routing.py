"""Normalised request path → compiled route table → the first matching route.

Pure logic (no aiohttp). The table is compiled once per config into a segment
trie, so a lookup walks the path's segments, not the list of routes, and a
bounded cache makes a repeated path one dict lookup.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING

from gateway.problems import GatewayError

if TYPE_CHECKING:
    # Annotations only: a runtime import would run gateway.config's __init__,
    # whose loader imports this module back (a cycle when routing loads first).
    from gateway.config.schema.routes import Route

# RFC 3986: unreserved characters are the only ones whose percent-encoding is
# decoded; everything else stays encoded (so %2F never becomes a separator).
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PCHAR = _UNRESERVED | frozenset("!$&'()*+,;=:@")
_SAFE_PATH = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/]*")
_HEX = frozenset("0123456789abcdefABCDEF")
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")  # use fullmatch: `$` admits a final \n

CACHE_SIZE = 4096


def normalise_path(raw: str) -> str:
    """The path routing and policy see, and the upstream receives.

    Percent-encodings of unreserved characters are decoded and the others are
    upper-cased; characters that may not appear in a path are encoded; `//`
    is merged; `.` and `..` segments are resolved (never above `/`).
    Raises ValueError for a path that is not origin-form or has a malformed
    percent-encoding.
    """
    if not raw.startswith("/"):
        raise ValueError("the request target must be an absolute path")
    if (
        "%" not in raw
        and "//" not in raw
        and "/." not in raw
        and _SAFE_PATH.fullmatch(raw) is not None
    ):
        return raw  # already normal: the common case costs one scan
    text = _canonical_encoding(raw) if "%" in raw or not _SAFE_PATH.fullmatch(raw) else raw
    return _resolve_segments(text)


# After normalisation these can only be a trick: an encoded separator that a
# server behind the gateway may decode into a path the policy never saw
# (%2F, and %5C for servers that read `\` as `/`), or a dot segment with a
# path parameter (`..;`, `.;`), which servlet containers resolve as `..`/`.`.
_AMBIGUOUS = ("%2F", "%5C")
_DOT_PARAM = re.compile(r"(?:^|/)\.\.?;")


def request_path(raw: str) -> str:
    """The normalised path of a request, or ValueError when it cannot be routed safely.

    What routing, policy and the upstream see (`normalise_path`), refused
    when it still holds an encoded `/` or `\\`, or a `..;`-style segment.
    """
    path = normalise_path(raw)
    if "%" in path and any(code in path for code in _AMBIGUOUS):
        raise ValueError("the path holds an encoded / or \\, which servers read differently")
    if ";" in path and _DOT_PARAM.search(path):
        raise ValueError("the path holds a dot segment with a parameter (..; or .;)")
    return path


def _canonical_encoding(raw: str) -> str:
    out: list[str] = []
    i, n = 0, len(raw)
    while i < n:
        ch = raw[i]
        if ch == "%":
            pair = raw[i + 1 : i + 3]
            if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
                raise ValueError("malformed percent-encoding in the path")
            decoded = chr(int(pair, 16))
            out.append(decoded if decoded in _UNRESERVED else "%" + pair.upper())
            i += 3
            continue
        if ch in _PCHAR or ch == "/":
            out.append(ch)
        else:
            out.extend(f"%{byte:02X}" for byte in ch.encode("utf-8", "surrogatepass"))
        i += 1
    return "".join(out)


def _resolve_segments(path: str) -> str:
    parts = path.split("/")
    out: list[str] = []
    trailing = False
    for part in parts[1:]:
        trailing = False
        if part == "" or part == ".":
            trailing = True
            continue
        if part == "..":
            if out:
                out.pop()
            trailing = True
            continue
        out.append(part)
    if not out:
        return "/"
    return "/" + "/".join(out) + ("/" if trailing else "")


def split_segments(path: str) -> list[str]:
    """`/a/b` → ['a', 'b']; `/a/` → ['a', '']; `/` → []."""
    return path[1:].split("/") if path != "/" else []


def compile_pattern(pattern: str) -> str:
    """Check a route path pattern and return its normalised form (ValueError if bad)."""
    if not pattern.startswith("/"):
        raise ValueError("a route path must start with /")
    segments = split_segments(pattern)
    names: set[str] = set()
    literal: list[str] = []
    for position, segment in enumerate(segments):
        last = position == len(segments) - 1
        if segment == "**":
            if not last:
                raise ValueError("** may only be the last segment of a route path")
            literal.append(segment)
            continue
        if segment.startswith("{") or segment.endswith("}"):
            found = _PARAM.fullmatch(segment)
            if found is None:
                raise ValueError(f"{segment!r} is not a parameter; use {{name}} as a whole segment")
            if found.group(1) in names:
                raise ValueError(f"parameter {segment} appears twice in the route path")
            names.add(found.group(1))
            literal.append(segment)
            continue
        if "*" in segment or "{" in segment or "}" in segment:
            raise ValueError(f"segment {segment!r} mixes a wildcard with text")
        # Judge the decoded segment: %2e%2e is `..`, which no normalised path keeps.
        text = _canonical_encoding(segment)
        if text in ("", ".", ".."):
            if text == "" and last:
                literal.append(text)
                continue  # a trailing slash is part of the path
            raise ValueError("a route path may not contain empty, . or .. segments")
        literal.append(text)
    return "/" + "/".join(literal)


def literal_prefix(pattern: str) -> str:
    """The part of a pattern before its first {param} or **, without a trailing slash."""
    out: list[str] = []
    for segment in split_segments(pattern):
        if segment in ("**", "") or _PARAM.fullmatch(segment):
            break  # "" is a pattern's trailing slash, which the prefix leaves out
        out.append(segment)
    return "/" + "/".join(out) if out else "/"


class RouteMatch:
    """A route and the {name} values taken from the path (read-only)."""

    __slots__ = ("params", "route")

    def __init__(self, route: Route, params: Mapping[str, str]) -> None:
        self.route = route
        self.params = params

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RouteMatch):
            return NotImplemented
        return self.route == other.route and dict(self.params) == dict(other.params)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RouteMatch({self.route.path!r}, {dict(self.params)!r})"


NO_PARAMS: Mapping[str, str] = MappingProxyType({})
CACHEABLE_PATH = 512  # longer paths are matched every time rather than held in memory


class _Node:
    __slots__ = ("exact", "param", "rest", "static")

    def __init__(self) -> None:
        self.static: dict[str, _Node] = {}
        self.param: _Node | None = None
        self.exact: list[Route] = []  # routes whose pattern ends at this node
        self.rest: list[Route] = []  # routes whose pattern ends with ** here


class RouteTable:
    """Routes compiled for first-match lookup; built once per config."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes: tuple[Route, ...] = tuple(sorted(routes, key=lambda r: r.index))
        self._root = _Node()
        self._params: dict[int, tuple[tuple[int, str], ...]] = {}
        self._cache: dict[str, tuple[Route, ...]] = {}
        for route in self.routes:
            self._insert(route)
        # One shared, read-only match per parameter-free route: no allocation per request.
        self._plain = {
            r.index: RouteMatch(r, NO_PARAMS) for r in self.routes if not self._params[r.index]
        }

    def _insert(self, route: Route) -> None:
        node = self._root
        params: list[tuple[int, str]] = []
        segments = split_segments(route.path)
        for position, segment in enumerate(segments):
            if segment == "**":
                node.rest.append(route)
                self._params[route.index] = tuple(params)
                return
            found = _PARAM.fullmatch(segment)
            if found is not None:
                params.append((position, found.group(1)))
                if node.param is None:
                    node.param = _Node()
                node = node.param
            else:
                node = node.static.setdefault(segment, _Node())
        node.exact.append(route)
        self._params[route.index] = tuple(params)

    def candidates(self, path: str) -> tuple[Route, ...]:
        """Every route whose pattern matches `path`, in first-match order."""
        cached = self._cache.get(path)
        if cached is not None:
            return cached
        found = self._walk(split_segments(path))
        if len(path) <= CACHEABLE_PATH:
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()  # bounded: a flood of distinct paths cannot grow it
            self._cache[path] = found
        return found

    def _walk(self, segments: Sequence[str]) -> tuple[Route, ...]:
        hits: list[Route] = []
        stack: list[tuple[_Node, int]] = [(self._root, 0)]
        count = len(segments)
        while stack:
            node, depth = stack.pop()
            if node.rest:
                hits.extend(node.rest)  # ** matches the rest, also when nothing is left
            if depth == count:
                hits.extend(node.exact)
                continue
            segment = segments[depth]
            child = node.static.get(segment)
            if child is not None:
                stack.append((child, depth + 1))
            if node.param is not None and segment != "":
                stack.append((node.param, depth + 1))
        hits.sort(key=_by_index)
        return tuple(hits)

    def match(self, method: str, path: str) -> RouteMatch:
        """The first route for `method` and normalised `path`, or a 404/405 GatewayError."""
        candidates = self.candidates(path)
        for route in candidates:
            if route.methods is None or method in route.methods:
                plain = self._plain.get(route.index)
                if plain is not None:
                    return plain
                positions = self._params[route.index]
                segments = split_segments(path)
                return RouteMatch(route, {name: segments[i] for i, name in positions})
        if not candidates:
            raise GatewayError.not_found()
        allow: set[str] = set()
        for route in candidates:
            if route.methods is not None:
                allow |= route.methods
        raise GatewayError.method_not_allowed(method, sorted(allow))


def _by_index(route: Route) -> int:
    return route.index
