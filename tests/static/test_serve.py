"""Static routes through the real chain: real files in tmp_path, the real gateway app on
the gateway's own server, HTTP as a browser or a cache speaks it (README "Serving the
frontend")."""

from __future__ import annotations

import gzip
import os
from email.utils import formatdate
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from yarl import URL

from gateway.problems import PROBLEM_CONTENT_TYPE
from tests.conftest import MakeGateway

Client = TestClient[web.Request, web.Application]

INDEX = b"<!doctype html><title>app</title>"
SCRIPT = b"console.log('app');\n" * 20
HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}  # what a browser navigates with


def frontend(folder: Path) -> Path:
    """A small build: index.html, hashed and plain assets, a subfolder with its own index."""
    folder.mkdir()
    (folder / "index.html").write_bytes(INDEX)
    (folder / "app.js").write_bytes(SCRIPT)
    (folder / "app.3f9a2b1c.js").write_bytes(SCRIPT)
    (folder / "app-3f9a2b1c.css").write_bytes(b"body{}")
    (folder / "docs").mkdir()
    (folder / "docs" / "index.html").write_bytes(b"<p>docs</p>")
    (folder / "a").mkdir()
    (folder / "a" / "b.js").write_bytes(b"export const b = 1;\n")
    return folder


CONFIG = """
routes:
  - {path: /app/**, static: frontend, spa: true, auth: none}
  - {path: /plain/**, static: frontend, auth: none}
"""


@pytest.fixture
async def client(gateway: MakeGateway, tmp_path: Path) -> Client:
    frontend(tmp_path / "frontend")
    return await gateway(CONFIG)


async def assert_no_file(resp: object) -> None:
    from aiohttp import ClientResponse

    assert isinstance(resp, ClientResponse)
    assert resp.status == 404, await resp.text()
    assert resp.content_type == PROBLEM_CONTENT_TYPE
    body = await resp.json()
    assert body["status"] == 404


# --- which file ---------------------------------------------------------------------


async def test_the_path_after_the_prefix_names_the_file(client: Client) -> None:
    resp = await client.get("/app/a/b.js")
    assert resp.status == 200
    assert await resp.read() == b"export const b = 1;\n"
    assert resp.headers["Content-Type"] == "text/javascript; charset=utf-8"


@pytest.mark.parametrize("path", ["/app", "/app/", "/plain", "/plain/"])
async def test_the_bare_prefix_answers_with_index_html(client: Client, path: str) -> None:
    resp = await client.get(path)
    assert resp.status == 200
    assert await resp.read() == INDEX
    assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
    assert resp.headers["Cache-Control"] == "no-cache"


@pytest.mark.parametrize("path", ["/plain/docs", "/plain/docs/"])
async def test_a_folder_answers_with_its_index_html(client: Client, path: str) -> None:
    resp = await client.get(path)
    assert resp.status == 200
    assert await resp.read() == b"<p>docs</p>"


async def test_head_is_get_without_a_body(client: Client) -> None:
    got = await client.get("/app/app.js")
    head = await client.head("/app/app.js")
    assert head.status == 200
    assert await head.read() == b""
    assert head.headers["Content-Length"] == str(len(SCRIPT))
    for name in ("Content-Type", "ETag", "Last-Modified", "Cache-Control"):
        assert head.headers[name] == got.headers[name]


async def test_other_methods_are_405_with_allow(client: Client) -> None:
    for method in ("POST", "PUT", "DELETE"):
        resp = await client.request(method, "/app/app.js")
        assert resp.status == 405
        assert resp.content_type == PROBLEM_CONTENT_TYPE
        assert resp.headers["Allow"] == "GET, HEAD"


async def test_any_accept_is_served_no_json_406(client: Client) -> None:
    resp = await client.get("/app/app.js", headers={"Accept": "text/javascript"})
    assert resp.status == 200


# --- spa: true ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/app/settings/profile", "/app/no-such.html", "/app/x/"])
async def test_spa_answers_a_browser_with_index_html_for_a_missing_file(
    client: Client, path: str
) -> None:
    resp = await client.get(path, headers=HTML)
    assert resp.status == 200
    assert await resp.read() == INDEX
    assert resp.headers["Cache-Control"] == "no-cache"
    head = await client.head(path, headers=HTML)
    assert head.status == 200


@pytest.mark.parametrize(
    "accept", [None, "*/*", "application/json", "text/html;q=0", "image/avif,image/*"]
)
async def test_spa_answers_404_to_what_does_not_accept_html(
    client: Client, accept: str | None
) -> None:
    headers = {"Accept": accept} if accept else {"Accept": ""}
    await assert_no_file(await client.get("/app/missing.js", headers=headers))


async def test_without_spa_a_missing_file_is_404_for_browsers_too(client: Client) -> None:
    await assert_no_file(await client.get("/plain/settings/profile", headers=HTML))


# --- conditional requests and ranges (RFC 9110 §13, §14) -------------------------------


async def test_etag_and_if_none_match_give_304(client: Client) -> None:
    first = await client.get("/app/app.js")
    etag = first.headers["ETag"]
    assert first.headers["Last-Modified"]
    again = await client.get("/app/app.js", headers={"If-None-Match": etag})
    assert again.status == 304
    assert await again.read() == b""
    assert again.headers["ETag"] == etag
    changed = await client.get("/app/app.js", headers={"If-None-Match": '"other"'})
    assert changed.status == 200


async def test_if_modified_since_gives_304_until_the_file_changes(
    client: Client, tmp_path: Path
) -> None:
    first = await client.get("/app/app.js")
    since = first.headers["Last-Modified"]
    resp = await client.get("/app/app.js", headers={"If-Modified-Since": since})
    assert resp.status == 304
    script = tmp_path / "frontend" / "app.js"
    later = int(script.stat().st_mtime) + 10
    os.utime(script, (later, later))
    resp = await client.get("/app/app.js", headers={"If-Modified-Since": since})
    assert resp.status == 200
    assert resp.headers["Last-Modified"] == formatdate(later, usegmt=True)


async def test_range_gives_206_with_the_bytes_asked_for(client: Client) -> None:
    resp = await client.get("/app/app.js", headers={"Range": "bytes=0-9"})
    assert resp.status == 206
    assert await resp.read() == SCRIPT[:10]
    assert resp.headers["Content-Range"] == f"bytes 0-9/{len(SCRIPT)}"
    tail = await client.get("/app/app.js", headers={"Range": "bytes=-5"})
    assert tail.status == 206
    assert await tail.read() == SCRIPT[-5:]


# --- types and caching ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "media"),
    [
        ("page.html", "text/html; charset=utf-8"),
        ("mod.mjs", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("data.json", "application/json"),
        ("app.js.map", "application/json"),
        ("logo.svg", "image/svg+xml"),
        ("logo.png", "image/png"),
        ("photo.jpg", "image/jpeg"),
        ("anim.gif", "image/gif"),
        ("pic.webp", "image/webp"),
        ("pic.avif", "image/avif"),
        ("favicon.ico", "image/vnd.microsoft.icon"),
        ("font.woff", "font/woff"),
        ("font.woff2", "font/woff2"),
        ("font.ttf", "font/ttf"),
        ("font.otf", "font/otf"),
        ("robots.txt", "text/plain; charset=utf-8"),
        ("feed.xml", "application/xml"),
        ("lib.wasm", "application/wasm"),
        ("site.webmanifest", "application/manifest+json"),
        ("clip.mp4", "video/mp4"),
        ("clip.webm", "video/webm"),
        ("paper.pdf", "application/pdf"),
        ("LICENSE", "application/octet-stream"),
    ],
)
async def test_content_type_follows_the_extension(
    client: Client, tmp_path: Path, name: str, media: str
) -> None:
    (tmp_path / "frontend" / name).write_bytes(b"x")
    resp = await client.get(f"/app/{name}")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == media
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("name", ["app.3f9a2b1c.js", "app-3f9a2b1c.css"])
async def test_hashed_names_are_immutable_for_a_year(client: Client, name: str) -> None:
    resp = await client.get(f"/app/{name}")
    assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"


@pytest.mark.parametrize("path", ["/app/", "/app/index.html", "/app/app.js", "/plain/docs/"])
async def test_index_html_and_unhashed_names_are_revalidated(client: Client, path: str) -> None:
    resp = await client.get(path)
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-cache"


# --- precompressed siblings ------------------------------------------------------------


@pytest.fixture
def compressed(tmp_path: Path) -> Path:
    folder = tmp_path / "frontend"
    (folder / "app.js.gz").write_bytes(gzip.compress(SCRIPT))
    (folder / "app.js.br").write_bytes(b"pretend brotli")  # served as is, never decoded
    (folder / "only-gz.js").write_bytes(SCRIPT)
    (folder / "only-gz.js.gz").write_bytes(gzip.compress(SCRIPT))
    return folder


@pytest.mark.parametrize(
    ("accept_encoding", "encoding"),
    [
        ("gzip, deflate, br", "br"),  # brotli preferred when both are taken
        ("gzip", "gzip"),
        ("br;q=0, gzip", "gzip"),  # q=0 refuses
        ("br;q=0, gzip;q=0", None),
        ("*", "br"),
        ("*, br;q=0", "gzip"),
        ("identity", None),
    ],
)
async def test_a_precompressed_sibling_is_sent_to_who_accepts_it(
    client: Client, compressed: Path, accept_encoding: str, encoding: str | None
) -> None:
    resp = await client.get(
        "/app/app.js", headers={"Accept-Encoding": accept_encoding}, auto_decompress=False
    )
    assert resp.status == 200
    assert resp.headers.get("Content-Encoding") == encoding
    assert resp.headers["Vary"] == "Accept-Encoding"
    assert resp.headers["Content-Type"] == "text/javascript; charset=utf-8"  # the file's, not .gz's
    body = await resp.read()
    if encoding == "gzip":
        assert gzip.decompress(body) == SCRIPT
    else:
        assert body == {"br": b"pretend brotli", None: SCRIPT}[encoding]


async def test_gzip_only_sibling_and_its_etag_differs(client: Client, compressed: Path) -> None:
    plain = await client.get("/app/only-gz.js", headers={"Accept-Encoding": "identity"})
    zipped = await client.get(
        "/app/only-gz.js", headers={"Accept-Encoding": "br, gzip"}, auto_decompress=False
    )
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert zipped.headers["ETag"] != plain.headers["ETag"]  # another representation


# --- what is never served --------------------------------------------------------------


@pytest.fixture
def secrets(tmp_path: Path) -> Path:
    """A secret beside the folder, dotfiles in it, and symlinks that lead out of it."""
    folder = tmp_path / "frontend"
    (tmp_path / "secret.txt").write_text("outside")
    (folder / ".env").write_text("TOKEN=1")
    (folder / ".git").mkdir()
    (folder / ".git" / "config").write_text("[core]")
    (folder / "leak.txt").symlink_to(tmp_path / "secret.txt")
    (folder / "up").symlink_to(tmp_path)
    (folder / "env.js").symlink_to(folder / ".env")
    (folder / "inside.js").symlink_to(folder / "app.js")
    return folder


@pytest.mark.parametrize(
    "raw",
    [
        "/app/../secret.txt",
        "/app/a/../../secret.txt",
        "/app/%2e%2e/secret.txt",
        "/app/%2E%2E/%2e%2e/secret.txt",
        "/app/.%2e/secret.txt",
        "/app/leak.txt",  # a symlink to a file outside
        "/app/up/secret.txt",  # a symlink to a folder outside
        "/app/.env",
        "/app/%2eenv",
        "/app/.git/config",
        "/app/env.js",  # a symlink to a dotfile
    ],
)
async def test_nothing_outside_the_folder_and_no_dotfile_is_served(
    client: Client, secrets: Path, raw: str
) -> None:
    for headers in ({}, HTML):  # spa: true never turns a refusal into the page
        resp = await client.get(URL(raw, encoded=True), headers=headers)
        if resp.status == 200:
            assert await resp.read() == INDEX, raw  # normalised to a path inside, spa
            continue
        await assert_no_file(resp)


async def test_a_symlink_inside_the_folder_is_followed(client: Client, secrets: Path) -> None:
    resp = await client.get("/app/inside.js")
    assert resp.status == 200
    assert await resp.read() == SCRIPT
    assert resp.headers["Cache-Control"] == "no-cache"  # by the name asked for


async def test_an_encoded_slash_is_400_bad_path(client: Client, secrets: Path) -> None:
    resp = await client.get(URL("/app/..%2fsecret.txt", encoded=True))
    assert resp.status == 400
    assert (await resp.json())["code"] == "bad_path"


# --- small files from memory, large ones streamed: the same answer ------------------


async def test_a_small_and_a_large_file_carry_the_same_headers(
    client: Client, tmp_path: Path
) -> None:
    """Files up to SMALL_FILE are answered from memory, larger ones by FileResponse
    (README "Serving the frontend"); a client cannot tell which."""
    from gateway.static.serve import SMALL_FILE

    large = b"x" * (SMALL_FILE + 1)
    (tmp_path / "frontend" / "large.js").write_bytes(large)
    small = await client.get("/app/app.js")
    streamed = await client.get("/app/large.js")
    assert await small.read() == SCRIPT
    assert await streamed.read() == large
    for resp, body in ((small, SCRIPT), (streamed, large)):
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(len(body))
        assert resp.headers["Accept-Ranges"] == "bytes"
        assert resp.headers["Vary"] == "Accept-Encoding"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["ETag"].startswith('"')
        assert "Last-Modified" in resp.headers
    # the validator the small path sent is the one the conditional path checks
    again = await client.get("/app/app.js", headers={"If-None-Match": small.headers["ETag"]})
    assert again.status == 304
    head = await client.head("/app/app.js")
    assert head.headers["Content-Length"] == str(len(SCRIPT))
    assert head.headers["ETag"] == small.headers["ETag"]
    assert await head.read() == b""


async def test_a_changed_file_is_served_fresh_from_the_next_request(
    client: Client, tmp_path: Path
) -> None:
    script = tmp_path / "frontend" / "app.js"
    first = await client.get("/app/app.js")
    assert await first.read() == SCRIPT
    script.write_bytes(b"changed")  # another size
    os.utime(script, ns=(1, 2_000_000_000))  # and another mtime
    second = await client.get("/app/app.js")
    assert await second.read() == b"changed"
    assert second.headers["ETag"] != first.headers["ETag"]
    script.write_bytes(b"CHANGED")  # the same size: the mtime tells
    os.utime(script, ns=(1, 3_000_000_000))
    third = await client.get("/app/app.js")
    assert await third.read() == b"CHANGED"
