"""Shared fixtures: a routes.yaml written to a temp folder, the real gateway app
built from it, and real aiohttp upstream servers on loopback."""

from __future__ import annotations

import textwrap
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import build_app
from gateway.config import load_config
from gateway.middleware import Handler

WriteConfig = Callable[[str], Path]
MakeGateway = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
MakeUpstream = Callable[[web.Application], Awaitable[TestServer]]


@pytest.fixture
def write_config(tmp_path: Path) -> WriteConfig:
    """Write routes.yaml (dedented) into tmp_path and return its path."""

    def write(text: str, name: str = "routes.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


@pytest.fixture
async def upstream(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> MakeUpstream:
    """Start a real aiohttp server on loopback from an Application."""

    async def start(app: web.Application) -> TestServer:
        return await aiohttp_server(app)

    return start


@pytest.fixture
async def gateway(
    write_config: WriteConfig,
    aiohttp_client: Callable[..., Awaitable[TestClient[web.Request, web.Application]]],
) -> MakeGateway:
    """Build the real gateway app from routes.yaml text and return a client for it."""

    async def make(
        text: str, handlers: Mapping[str, Handler] | None = None
    ) -> TestClient[web.Request, web.Application]:
        path = write_config(text)
        config = load_config(path, extra_handlers=set(handlers or ()))
        return await aiohttp_client(build_app(config, handlers=handlers))

    return make
