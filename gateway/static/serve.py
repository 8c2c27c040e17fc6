"""Answers a request of a `static:` route with a file of its folder (README "Serving the frontend").

aiohttp's `web.FileResponse` does the HTTP of it: ETag and Last-Modified,
304 for If-None-Match and If-Modified-Since, 206 for Range (RFC 9110 §13,
§14), sendfile(2) where the platform has it, and a precompressed `NAME.br` or
`NAME.gz` sibling with Content-Encoding and Vary. This module adds what it
lacks: which file (never one outside the folder, never a dotfile), the
`spa: true` fallback, an explicit Content-Type, Cache-Control (RFC 9111), and
Accept-Encoding weights (FileResponse looks for `br` or `gzip` anywhere in the
header, so `br;q=0` would still get brotli).

The common case, a whole small file with no condition and no range, is answered
from memory by `_whole_small_file` with the headers FileResponse would send: no
thread hop (under uvloop FileResponse reads through the thread pool, three hops a
request). Where to find the file is decided on the event loop too: a few
`stat`/`readlink` calls of a local folder, as nginx makes them.
"""

from __future__ import annotations

import enum
import os
import stat
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from multidict import CIMultiDict

from gateway.config.schema.routes import Route
from gateway.problems import GatewayError
from gateway.static.rules import (
    ENCODINGS,
    INDEX,
    accepted_encodings,
    accepts_html,
    cache_control,
    file_parts,
    hidden,
    media_type,
)


class Miss(enum.Enum):
    MISSING = "missing"  # nothing there (or not readable): `spa: true` may answer index.html
    REFUSED = "refused"  # outside the folder, or a dotfile: 404, whatever spa says


@dataclass(frozen=True, slots=True)
class Found:
    path: Path  # the real file, its symlinks resolved: what was checked is what is opened
    name: str  # the name the request used (index.html for a folder): type and caching follow it


def locate(folder: Path, parts: tuple[str, ...]) -> Found | Miss:
    """The file `parts` (from `file_parts`) names under `folder`, following symlinks only
    while they stay inside it."""
    try:
        root = folder.resolve(strict=True)  # each time: the folder may be a switched symlink
        asked_folder = parts[-1:] == ("",)
        candidate = root.joinpath(*(parts[:-1] if asked_folder else parts))
        real = candidate.resolve(strict=True)
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Python before 3.13)
        return Miss.MISSING
    if not real.is_relative_to(root) or hidden(real.relative_to(root).parts):
        return Miss.REFUSED
    if real.is_dir():
        index = locate(folder, (*parts[: len(parts) - asked_folder], INDEX))
        return Found(index.path, INDEX) if isinstance(index, Found) else index
    if asked_folder:
        return Miss.MISSING  # `a.js/` names a folder, and a.js is a file
    return Found(real, candidate.name) if _readable_file(real) else Miss.MISSING


def _readable_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.stat().st_mode) and os.access(path, os.R_OK)
    except OSError:
        return False


class StaticFileResponse(web.FileResponse):
    """FileResponse, prepared by `serve_static` itself; aiohttp prepares what a handler
    returns once more, which FileResponse would take as a new request for the file."""

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:
            return await web.StreamResponse.prepare(self, request)  # returns the writer
        return await super().prepare(request)


def _negotiated(request: web.Request) -> web.Request:
    """`request`, or a copy whose Accept-Encoding lists only the codings the client
    takes: FileResponse picks a sibling by substring, blind to q=0."""
    given = request.headers.get(hdrs.ACCEPT_ENCODING, "")
    accepted = accepted_encodings(given)
    if {coding for coding, _ in ENCODINGS if coding in given.lower()} == set(accepted):
        return request  # what FileResponse would read there is already right
    headers = CIMultiDict(request.headers)
    headers.popall(hdrs.ACCEPT_ENCODING, None)
    if accepted:
        headers[hdrs.ACCEPT_ENCODING] = ", ".join(accepted)
    return request.clone(headers=headers)


async def serve_static(request: web.Request, route: Route, path: str) -> web.StreamResponse:
    """The file of static route `route` that the normalised `path` names, prepared here so
    the audit stage sees its real status (304, 206) and size; or 404 `no_file`."""
    folder = route.static
    assert folder is not None  # dispatch sends only static routes here
    parts = file_parts(route.path, path)
    if parts is None:
        raise GatewayError.no_file()
    found = locate(folder, parts)
    if found is Miss.MISSING and route.spa and accepts_html(request.headers.get(hdrs.ACCEPT)):
        # A client-side route (/settings/profile): the page, which reads the path itself.
        found = locate(folder, ("",))
    if not isinstance(found, Found):
        raise GatewayError.no_file()
    headers = {
        hdrs.CONTENT_TYPE: media_type(found.name),
        hdrs.CACHE_CONTROL: cache_control(found.name),
        # on every answer, not only the compressed ones: a cache must key on it
        # whenever a sibling may exist (RFC 9110 §12.5.5)
        hdrs.VARY: hdrs.ACCEPT_ENCODING,
        "X-Content-Type-Options": "nosniff",
    }
    negotiated = _negotiated(request)
    if not any(name in request.headers for name in _CONDITIONAL):
        whole = _whole_small_file(found.path, negotiated.headers.get(hdrs.ACCEPT_ENCODING, ""))
        if whole is not None:
            body, st, coding = whole
            small = web.Response(body=body, headers=headers)
            _describe(small, st, coding)
            return small
    response = StaticFileResponse(found.path, headers=headers)
    await response.prepare(negotiated)
    return response


# Any of these and FileResponse answers: it knows 304, 206, 416 and If-Range.
_CONDITIONAL = (
    hdrs.RANGE,
    hdrs.IF_RANGE,
    hdrs.IF_MATCH,
    hdrs.IF_NONE_MATCH,
    hdrs.IF_MODIFIED_SINCE,
    hdrs.IF_UNMODIFIED_SINCE,
)
SMALL_FILE = 256 * 1024  # bytes: files up to this size are answered from memory
CACHE_BYTES = 32 * 1024 * 1024  # what the small files kept in memory may add up to
# real path → (mtime_ns, size, inode, content); checked against a fresh stat each time
_cache: OrderedDict[str, tuple[int, int, int, bytes]] = OrderedDict()
_cached_bytes = 0


def _whole_small_file(
    path: Path, accept_encoding: str
) -> tuple[bytes, os.stat_result, str | None] | None:
    """The file FileResponse would pick (a regular `.br`/`.gz` sibling the client takes,
    else the file itself), its stat and coding, when it is small; else None."""
    coding: str | None = None
    chosen = path
    for ext, name in ((".br", "br"), (".gz", "gzip")):
        if name not in accept_encoding:
            continue
        sibling = path.with_name(path.name + ext)
        try:
            st = sibling.lstat()  # a symlinked sibling is never sent (as in FileResponse)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            chosen, coding = sibling, name
            break
    else:
        try:
            st = path.stat()
        except OSError:
            return None
    if st.st_size > SMALL_FILE:
        return None
    body = _read(str(chosen), st)
    return None if body is None else (body, st, coding)


def _read(path: str, st: os.stat_result) -> bytes | None:
    """The file's bytes, from memory while its mtime, size and inode are unchanged."""
    global _cached_bytes
    key = (st.st_mtime_ns, st.st_size, st.st_ino)
    held = _cache.get(path)
    if held is not None and held[:3] == key:
        _cache.move_to_end(path)
        return held[3]
    try:
        with open(path, "rb") as file:
            body = file.read(SMALL_FILE + 1)
    except OSError:
        return None
    if len(body) != st.st_size:
        return None  # changing while read: FileResponse sends what is there
    if held is not None:
        _cached_bytes -= len(held[3])
    _cache[path] = (*key, body)
    _cache.move_to_end(path)
    _cached_bytes += len(body)
    while _cached_bytes > CACHE_BYTES:
        _, (_, _, _, dropped) = _cache.popitem(last=False)
        _cached_bytes -= len(dropped)
    return body


def _describe(response: web.Response, st: os.stat_result, coding: str | None) -> None:
    """The validators and encoding FileResponse would set for the same file."""
    response.etag = f"{st.st_mtime_ns:x}-{st.st_size:x}"
    response.last_modified = st.st_mtime
    response.headers[hdrs.ACCEPT_RANGES] = "bytes"
    if coding is not None:
        response.headers[hdrs.CONTENT_ENCODING] = coding
