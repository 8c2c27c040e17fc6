"""The dashboard at /admin/ui, end to end in a real browser: Debian's Chromium, headless,
driven by Playwright. Sign in, see the routes, see a proxied model call appear in the
live audit tail and in the model charts; a screenshot is kept
(tests/artifacts/dashboard.png, also shown in the README).

Skips with the reason when Chromium or Playwright is missing (.ci/run installs
Chromium with apt-get, so in CI it runs).
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import (
    create_user,
    free_port,
    shipped_config,
    start_gateway,
    stop,
    wait_for_port,
)

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
PASSWORD = "dashboard admin password 0123"


def test_the_page_and_its_assets_come_from_the_gateway_only() -> None:
    ui = REPO / "gateway" / "ui"
    page = (ui / "index.html").read_text()
    assert "http://" not in page
    assert "https://" not in page  # no CDN: every asset is served from /admin/ui
    assert 'src="/admin/ui/app.js"' in page
    assert "https://" not in (ui / "app.js").read_text()


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The shipped routes.yaml on free ports, its DEMO model running, an admin's token."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; .ci/run does)")
    port, model_port = free_port(), free_port()
    config = shipped_config(tmp_path, port, model_port)
    create_user(config, "root", "admin", PASSWORD)
    model = subprocess.Popen(
        [sys.executable, "-m", "gateway.demo.model", "--port", str(model_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    process = start_gateway(config, port, tmp_path / "gateway.log")
    try:
        wait_for_port(model_port, model)
        base = f"http://127.0.0.1:{port}"
        token = json.loads(post(f"{base}/auth/login", {"username": "root", "password": PASSWORD}))[
            "access_token"
        ]
        yield base, token
    finally:
        stop(process)
        stop(model)


def post(url: str, body: dict[str, object], token: str | None = None) -> bytes:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers)  # noqa: S310 (loopback)
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return bytes(response.read())


async def test_sign_in_see_routes_and_the_audit_tail(live: tuple[str, str]) -> None:
    playwright_api = pytest.importorskip("playwright.async_api", reason="pip install playwright")
    base, token = live
    call = "/models/demo/v1/chat/completions"
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        page = await browser.new_page(viewport={"width": 1280, "height": 1300})
        await page.goto(f"{base}/admin/ui")
        await page.fill("#username", "root")
        await page.fill("#password", PASSWORD)
        await page.click("button[type=submit]")
        await page.wait_for_selector("#dashboard:not([hidden])")
        await page.wait_for_selector("#routes tbody tr")
        routes = await page.inner_text("#routes")
        assert "/auth/login" in routes
        assert "/models/demo/**" in routes
        assert "healthy" in await page.inner_text("#upstreams")
        # A model call through the gateway, proxied to the DEMO model: it shows up in the
        # audit tail and in the model charts without a reload.
        for word in ("hello", "again"):
            reply = post(base + call, {"messages": [{"role": "user", "content": word}]}, token)
            assert b"demo" in reply
        await page.wait_for_function(
            "path => document.querySelector('#audit').innerText.includes(path)",
            arg=call,
            timeout=15_000,
        )
        await page.wait_for_selector("#charts svg circle", timeout=15_000)
        charts = await page.inner_text("#charts")
        assert "demo calls" in charts
        assert "demo latency ms" in charts
        # The usage table: per model, with its failed attempts and fallbacks; the shipped
        # demo model's usage is read (usage: openai), so its tokens are counted.
        await page.wait_for_selector("#usage tbody tr", timeout=15_000)
        headings = await page.locator("#usage th").all_inner_texts()
        assert headings[:5] == ["Model", "Calls", "Errors", "Failed attempts", "Fell back"]
        cells = await page.locator("#usage tbody tr:first-child td").all_inner_texts()
        model, calls, errors, failed, fell_back, tokens, unknown = cells[:7]
        assert (model, calls, errors, failed, fell_back, unknown) == (
            "demo",
            "2",
            "0",
            "0",
            "0",
            "0",
        )
        assert int(tokens) > 0
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        await browser.close()
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
