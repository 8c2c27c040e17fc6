"""Helpers for model-route tests: demo model upstreams that count their calls, report rows."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import select

from gateway.demo.model import build_demo_app
from gateway.middleware import Handler
from gateway.services import SERVICES
from models import ReportLog
from tests.conftest import MakeUpstream
from tests.identity import Client


class CountedModel:
    """The demo model with a count of the requests that reached it; `fail` and
    `delay_first` make every call of this instance fail or start slowly."""

    def __init__(
        self, name: str = "chat", *, fail: str | None = None, delay_first: float | None = None
    ) -> None:
        self.calls = 0
        self.bodies: list[bytes] = []
        self.app = build_demo_app(name, fail=fail, delay_first=delay_first)

        @web.middleware
        async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
            self.calls += 1
            self.bodies.append(await request.read())
            return await handler(request)

        self.app.middlewares.append(count)
        self.server: TestServer | None = None

    async def start(self, upstream: MakeUpstream) -> CountedModel:
        self.server = await upstream(self.app)
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        assert self.server.port is not None
        return self.server.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def reports(client: Client) -> list[dict[str, Any]]:
    """Every report row, oldest first, after the audit queue was written out."""
    services = client.app[SERVICES]
    await services.audit.flush()
    async with services.engine.connect() as connection:
        rows = await connection.execute(select(ReportLog).order_by(ReportLog.id))
        return [dict(r) for r in rows.mappings()]
