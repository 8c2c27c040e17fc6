"""What a static route may serve and how: file names, media types, caching, encodings.

Pure logic (no aiohttp, no file system): gateway/static/serve.py asks these
for every request of a route with `static:` (README "Serving the frontend").
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from gateway.routing import split_segments

INDEX = "index.html"  # what answers for a folder, and for a `spa: true` miss
# The one dot segment served: RFC 8615's well-known locations, as the first segment only.
WELL_KNOWN = ".well-known"

# RFC 9111 §5.2.2: a name that carries a content hash never changes content, so a
# browser may keep it a year without asking (`immutable`, RFC 8246); index.html and
# every other file are revalidated each time (a cheap 304 while unchanged).
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
# app.3f9a2b1c.js, app-3f9a2b1c.js, chunk.0123abcd.min.js: 8 or more hex digits
# between a `.` or `-` and a later `.`
_HASHED = re.compile(r"[.-][0-9a-fA-F]{8,}\.")

_UTF8 = "; charset=utf-8"
# Extension → media type. Written out rather than read from the platform's
# mimetypes, which differ between systems and miss newer web types (avif,
# webmanifest, woff2). Text types carry charset=utf-8 (RFC 9110 §8.3.1).
MEDIA_TYPES: dict[str, str] = {
    ".html": "text/html" + _UTF8,
    ".htm": "text/html" + _UTF8,
    ".js": "text/javascript" + _UTF8,  # RFC 9239
    ".mjs": "text/javascript" + _UTF8,
    ".cjs": "text/javascript" + _UTF8,
    ".css": "text/css" + _UTF8,
    ".json": "application/json",  # always UTF-8 (RFC 8259 §8.1): no charset parameter
    ".map": "application/json",
    ".webmanifest": "application/manifest+json",
    ".txt": "text/plain" + _UTF8,
    ".md": "text/markdown" + _UTF8,
    ".csv": "text/csv" + _UTF8,
    ".xml": "application/xml",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".ico": "image/vnd.microsoft.icon",
    ".bmp": "image/bmp",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".wasm": "application/wasm",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".ogg": "audio/ogg",
    ".mp3": "audio/mpeg",
    ".wav": "audio/wav",
    ".pdf": "application/pdf",
    ".zip": "application/zip",
    ".gz": "application/gzip",
    ".br": "application/x-brotli",
}
UNKNOWN_TYPE = "application/octet-stream"

# Content codings a file may have a precompressed sibling for, in order of preference
# (brotli is smaller), with the sibling's suffix. x-gzip is gzip (RFC 9110 §8.4.1.3).
ENCODINGS = (("br", ".br"), ("gzip", ".gz"))
_ALIASES = {"x-gzip": "gzip"}


def file_parts(pattern: str, path: str) -> tuple[str, ...] | None:
    """The names, folder by folder, of the file a request asks for; None when it may
    never be served (404 whatever is on disk).

    `pattern` is the route's path (it ends with /**), `path` the normalised request
    path: what `**` matched names the file, each segment percent-decoded. A trailing
    slash gives a last part "" (the folder itself). Refused: a segment starting
    with `.` (`..`, dotfiles such as .env and .git, but for a leading .well-known),
    and one holding `/`, `\\` or NUL once decoded.
    """
    skip = len(split_segments(pattern)) - 1  # the segments before the **
    segments = split_segments(path)[skip:]
    parts: list[str] = []
    for position, segment in enumerate(segments):
        if segment == "":
            if position != len(segments) - 1:
                return None  # normalised paths hold no //; be strict all the same
            parts.append("")
            continue
        try:
            name = unquote(segment, errors="strict") if "%" in segment else segment
        except UnicodeDecodeError:
            return None  # not UTF-8: no file name on disk is asked for
        if name.startswith(".") and not (position == 0 and name == WELL_KNOWN):
            return None
        if "/" in name or "\\" in name or "\x00" in name:
            return None
        parts.append(name)
    return tuple(parts)


def hidden(parts: tuple[str, ...]) -> bool:
    """Whether a path inside the folder (its parts) passes through a dot segment: a
    symlink may lead there from a name that does not look like one."""
    return any(
        part.startswith(".") and not (i == 0 and part == WELL_KNOWN) for i, part in enumerate(parts)
    )


def media_type(name: str) -> str:
    """The Content-Type of a file called `name`, by its extension."""
    _, dot, extension = name.rpartition(".")
    return MEDIA_TYPES.get("." + extension.lower(), UNKNOWN_TYPE) if dot else UNKNOWN_TYPE


def cache_control(name: str) -> str:
    """The Cache-Control of a file called `name`: a year for content-hashed names,
    revalidation for everything else (index.html above all: it names the hashes)."""
    if name != INDEX and _HASHED.search(name) is not None:
        return IMMUTABLE
    return REVALIDATE


def _weighted(header: str) -> list[tuple[str, float]]:
    """`a;q=0.5, b` → [('a', 0.5), ('b', 1.0)], names lower-cased (RFC 9110 §12.4.2);
    a malformed weight counts as 0, refusing rather than guessing."""
    found: list[tuple[str, float]] = []
    for item in header.split(","):
        name, *params = (piece.strip() for piece in item.split(";"))
        if not name:
            continue
        weight = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    weight = float(value.strip())
                except ValueError:
                    weight = 0.0
        found.append((name.lower(), weight))
    return found


def accepted_encodings(header: str | None) -> tuple[str, ...]:
    """The codings of ENCODINGS the client takes (RFC 9110 §12.5.3), in ENCODINGS' order:
    named with a weight above 0, or covered by `*` above 0 and not named. q=0 refuses."""
    if not header:
        return ()
    weights: dict[str, float] = {}
    for name, weight in _weighted(header):
        weights[_ALIASES.get(name, name)] = weight
    wildcard = weights.get("*", 0.0)
    return tuple(coding for coding, _ in ENCODINGS if weights.get(coding, wildcard) > 0)


def accepts_html(header: str | None) -> bool:
    """Whether Accept names text/html (or text/*) with a weight above 0: what a browser
    sends when it navigates. `*/*` alone (fetch(), curl) does not count, so a script's
    request for a missing file gets 404, not the page."""
    if not header:
        return False
    return any(name in ("text/html", "text/*") and q > 0 for name, q in _weighted(header))
