"""Errors aiohttp answers before any middleware runs (malformed HTTP) as problems too.

aiohttp's `RequestHandler.handle_error` renders parse failures as text/plain
(and, in debug mode, with a traceback). The gateway's contract is that every
error it makes is RFC 9457 with an `X-Request-Id`, so the server's protocol
factory hands out this subclass instead.
"""

from __future__ import annotations

import logging
import uuid

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from gateway.problems import PROBLEM_CONTENT_TYPE, GatewayError, render

log = logging.getLogger("gateway.http")


class ProblemRequestHandler(RequestHandler):
    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            # Part of a response is already sent: the connection is broken.
            raise ConnectionError("response already started; closing the connection")
        request_id = str(uuid.uuid4())
        if status >= 500:
            log.error("error before routing", exc_info=exc, extra={"request_id": request_id})
            error = GatewayError.internal()
        else:
            # The parser's message names what was wrong with the request, not our state.
            detail = (message or "malformed HTTP request").splitlines()[0][:200]
            error = GatewayError(status, "bad_http_request", detail)
        response = web.Response(
            status=status,
            body=render(error, request_id),
            content_type=PROBLEM_CONTENT_TYPE,
            headers={"X-Request-Id": request_id},
        )
        response.force_close()
        return response


class ProblemServer(web.Server):
    def __call__(self) -> RequestHandler:
        return ProblemRequestHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """An AppRunner whose connections answer even unparsable requests with problems."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = ProblemServer  # same state, one overridden factory method
        return server
