"""Answers a request of a `static:` route with a file of its folder (README "Serving the frontend").

aiohttp's `web.FileResponse` does the HTTP of it: ETag and Last-Modified,
304 for If-None-Match and If-Modified-Since, 206 for Range (RFC 9110 §13,
§14), sendfile(2) where the platform has it, and a precompressed `NAME.br` or
`NAME.gz` sibling with Content-Encoding and Vary. This module adds what it
lacks: which file (never one outside the folder, never a dotfile), the
`spa: true` fallback, an explicit Content-Type, Cache-Control (RFC 9111), and
Accept-Encoding weights (FileResponse looks for `br` or `gzip` anywhere in the
header, so `br;q=0` would still get brotli).
"""

from __future__ import annotations

import asyncio
import enum
import os
import stat
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
    while they stay inside it. Blocking: called in a thread."""
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
    loop = asyncio.get_running_loop()
    found = await loop.run_in_executor(None, locate, folder, parts)
    if found is Miss.MISSING and route.spa and accepts_html(request.headers.get(hdrs.ACCEPT)):
        # A client-side route (/settings/profile): the page, which reads the path itself.
        found = await loop.run_in_executor(None, locate, folder, ("",))
    if not isinstance(found, Found):
        raise GatewayError.no_file()
    response = StaticFileResponse(
        found.path,
        headers={
            hdrs.CONTENT_TYPE: media_type(found.name),
            hdrs.CACHE_CONTROL: cache_control(found.name),
            # on every answer, not only the compressed ones: a cache must key on it
            # whenever a sibling may exist (RFC 9110 §12.5.5)
            hdrs.VARY: hdrs.ACCEPT_ENCODING,
            "X-Content-Type-Options": "nosniff",
        },
    )
    await response.prepare(_negotiated(request))
    return response
