"""The example frontend (frontend/) the shipped routes.yaml serves at /, end to end in a
real browser: Debian's Chromium, headless, driven by Playwright. Sign in, ask the DEMO
model through the gateway, watch the streamed answer arrive; a screenshot is kept
(tests/artifacts/frontend.png).

Skips with the reason when Chromium or Playwright is missing (.ci/run installs
Chromium with apt-get, so in CI it runs).
"""

from __future__ import annotations

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
FRONTEND = REPO / "frontend"
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
PASSWORD = "frontend user password 0123"


def test_the_page_and_its_assets_come_from_the_gateway_only() -> None:
    page = (FRONTEND / "index.html").read_text()
    script = (FRONTEND / "app.js").read_text()
    assert "http://" not in page
    assert "https://" not in page  # no CDN: every asset is served by the static route
    assert 'src="/app.js"' in page
    assert "https://" not in script
    # the live panel reaches the gateway's own origin, the token as ?access_token=
    assert "${location.host}${LIVE_PATH}" in script
    assert 'id="live-form"' in page


@pytest.fixture
def live(tmp_path: Path) -> Iterator[str]:
    """The shipped routes.yaml on free ports, its DEMO model running, a user to sign in as."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; .ci/run does)")
    port, model_port = free_port(), free_port()
    config = shipped_config(tmp_path, port, model_port)
    create_user(config, "ada", "user", PASSWORD)
    model = subprocess.Popen(
        [sys.executable, "-m", "gateway.demo.model", "--port", str(model_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    process = start_gateway(config, port, tmp_path / "gateway.log")
    try:
        wait_for_port(model_port, model)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)
        stop(model)


def get(url: str, accept: str) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, headers={"Accept": accept})  # noqa: S310 (loopback)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, response.headers["Content-Type"], bytes(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], bytes(error.read())


async def test_sign_in_and_see_the_model_answer_stream_in(live: str) -> None:
    playwright_api = pytest.importorskip("playwright.async_api", reason="pip install playwright")
    base = live
    # the page at /, a deep link to it (spa: true), and the API paths it must not hide
    assert get(f"{base}/", "text/html")[:2] == (200, "text/html; charset=utf-8")
    assert get(f"{base}/chat/history", "text/html")[2] == (FRONTEND / "index.html").read_bytes()
    assert get(f"{base}/missing.js", "*/*")[:2] == (404, "application/problem+json")
    assert get(f"{base}/models/demo/v1/models", "application/json")[0] == 401
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        page = await browser.new_page(viewport={"width": 1000, "height": 700})
        await page.goto(f"{base}/")
        await page.fill("#username", "ada")
        await page.fill("#password", PASSWORD)
        await page.click("button[type=submit]")
        await page.wait_for_selector("#app:not([hidden])")
        assert "signed in as ada" in await page.inner_text("#who")
        await page.fill("#prompt", "streamed hello")
        await page.click("#send")
        await page.wait_for_selector("#answer[data-state=done]", timeout=15_000)
        answer = await page.inner_text("#answer")
        assert answer.startswith("This is the demo model behind the gateway.")
        assert answer.endswith("streamed hello")
        # one chunk per word: the answer was shown as it streamed, not in one piece
        assert int(await page.get_attribute("#answer", "data-chunks") or 0) > 5
        assert await page.inner_text("#chat-error") == ""
        # the live panel: a WebSocket to the demo model through the gateway
        await page.fill("#live-prompt", "live hello")
        await page.click("#live-send")
        await page.wait_for_selector("#live-answer[data-state=done]", timeout=15_000)
        live_answer = await page.inner_text("#live-answer")
        assert live_answer.startswith("This is the demo model behind the gateway.")
        assert live_answer.endswith("live hello")
        assert int(await page.get_attribute("#live-answer", "data-frames") or 0) > 5
        assert await page.get_attribute("#live-status", "data-state") == "open"
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "frontend.png"), full_page=True)
        # signing out elsewhere (another tab, the API) revokes the token: the gateway
        # closes the open WebSocket with 1008 and the page says so
        status = await page.evaluate(
            """async () => (await fetch("/auth/logout", {method: "POST", headers: {
                 Authorization: `Bearer ${sessionStorage.getItem("frontend.token")}`}})).status"""
        )
        assert status == 204
        await page.wait_for_selector("#live-status[data-code='1008']", timeout=15_000)
        assert "1008" in await page.inner_text("#live-status")
        await browser.close()
    assert (ARTIFACTS / "frontend.png").stat().st_size > 5_000


async def test_a_wrong_password_shows_the_problem_detail(live: str) -> None:
    playwright_api = pytest.importorskip("playwright.async_api", reason="pip install playwright")
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        page = await browser.new_page()
        await page.goto(f"{live}/")
        await page.fill("#username", "ada")
        await page.fill("#password", "not the password")
        await page.click("button[type=submit]")
        await page.wait_for_function("document.querySelector('#signin-error').innerText !== ''")
        assert await page.is_hidden("#app")
        await browser.close()
