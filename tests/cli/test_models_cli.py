"""The AI team's models: loader defaults, `gateway models add` (comments kept) and `list`.

`add` and `list` run as the real command in a subprocess, on copies of a
commented routes.yaml (the shipped one, and a small one whose line numbers
the messages are checked against).
"""

from __future__ import annotations

import asyncio
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.config import ConfigError, load_config
from gateway.config.model_entry import PlacementError, entry_fields, place_entry
from gateway.config.models_section import MODEL_RATE_LIMIT
from gateway.config.schema.routes import RateLimitConfig
from gateway.config.units import Rate
from tests.conftest import MakeGateway, MakeUpstream, WriteConfig
from tests.identity import bearer, identity_config, login, make_user
from tests.processes import free_port

REPO = Path(__file__).resolve().parents[2]

SMALL = """\
# the team's gateway
upstreams:
  analytics:
    targets: [http://127.0.0.1:9010]   # reports

models:
  chat: {url: http://127.0.0.1:9002, roles: [user]}

routes:                        # first match wins
  - path: /analytics/**
    upstream: analytics
    strip_prefix: /analytics
"""


def gateway(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def add(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return gateway("models", "add", *args, "--config", str(folder / "routes.yaml"), cwd=folder)


@pytest.fixture
def shipped(tmp_path: Path) -> Path:
    """The shipped routes.yaml, policies/ and frontend/, copied into tmp_path."""
    shutil.copy(REPO / "routes.yaml", tmp_path / "routes.yaml")
    shutil.copytree(REPO / "policies", tmp_path / "policies")
    shutil.copytree(REPO / "frontend", tmp_path / "frontend")
    return tmp_path / "routes.yaml"


@pytest.fixture
def small(write_config: WriteConfig, policies: Path) -> Path:
    return write_config(SMALL)


def comment_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "#" in line]


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


# --- loader: a model's defaults ------------------------------------------------------


def test_a_model_without_rate_limit_gets_60_per_minute_per_user(write_config: WriteConfig) -> None:
    config = load_config(write_config("models:\n  chat: {url: http://127.0.0.1:9002}\n"))
    route = config.routes[0]
    assert route.rate_limit == MODEL_RATE_LIMIT == RateLimitConfig(Rate(60, 60.0), "user")
    upstream = config.upstreams["chat"]
    assert (upstream.timeout, upstream.connect_timeout) == (300.0, 5.0)
    assert config.models["chat"].token_limit is None  # quotas stay opt-in


@pytest.mark.parametrize("value", ["off", "none", '"off"', "false", "Off"])
def test_rate_limit_off_turns_a_models_limit_off(write_config: WriteConfig, value: str) -> None:
    path = write_config(f"models:\n  chat: {{url: http://127.0.0.1:9002, rate_limit: {value}}}\n")
    assert load_config(path).routes[0].rate_limit is None


def test_rate_limit_off_on_a_route_is_no_limit(write_config: WriteConfig) -> None:
    path = write_config(
        "upstreams:\n  up: {targets: [http://127.0.0.1:9000]}\n"
        "routes:\n  - {path: /a, upstream: up, rate_limit: off}\n"
    )
    assert load_config(path).routes[0].rate_limit is None


def test_a_models_own_rate_limit_wins(write_config: WriteConfig) -> None:
    path = write_config(
        "models:\n  chat: {url: http://127.0.0.1:9002, rate_limit: {limit: 5, per: 1m, key: ip}}\n"
    )
    assert load_config(path).routes[0].rate_limit == RateLimitConfig(Rate(5, 60.0), "ip")


def test_rate_limit_on_is_not_a_rate(write_config: WriteConfig) -> None:
    path = write_config("models:\n  chat:\n    url: http://127.0.0.1:9002\n    rate_limit: on\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [(p.line, p.message) for p in info.value.problems] == [
        (4, "models.chat.rate_limit: give a rate like 60/min, or off for no limit")
    ]


def echo_app() -> web.Application:
    async def echo(request: web.Request) -> web.StreamResponse:
        return web.json_response({"path": request.path})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def test_the_default_limit_is_60_a_minute_for_each_user_through_the_chain(
    gateway: MakeGateway, upstream: MakeUpstream, policies: Path
) -> None:
    echo = await upstream(echo_app())
    url = f"http://127.0.0.1:{echo.port}"
    client = await gateway(
        identity_config()
        + f"models:\n  chat: {{url: '{url}'}}\n  free: {{url: '{url}', rate_limit: off}}\n"
    )
    await make_user(client, "uma")
    await make_user(client, "vic")
    uma = bearer(await login(client, "uma"))
    vic = bearer(await login(client, "vic"))
    first = await client.get("/models/chat/v1/x", headers=uma)
    assert first.status == 200
    assert await first.json() == {"path": "/v1/x"}
    assert (first.headers["RateLimit-Limit"], first.headers["RateLimit-Remaining"]) == ("60", "59")
    statuses = [(await client.get("/models/chat/v1/x", headers=uma)).status for _ in range(60)]
    assert statuses == [200] * 59 + [429]
    assert (await client.get("/models/chat/v1/x", headers=vic)).status == 200  # per user
    free = [await client.get("/models/free/v1/x", headers=uma) for _ in range(61)]
    assert {r.status for r in free} == {200}
    assert "RateLimit-Limit" not in free[-1].headers


# --- models add: the round trip ------------------------------------------------------


def test_add_to_the_shipped_file_keeps_every_other_byte(shipped: Path) -> None:
    original = shipped.read_text()
    shipped.chmod(0o640)
    inode = shipped.stat().st_ino
    result = add(
        shipped.parent,
        "sentiment",
        "http://127.0.0.1:9010",
        "--roles",
        "user",
        "--rate-limit",
        "30/min",
        "--timeout",
        "2m",
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "added model sentiment" in result.stdout
    text = shipped.read_text()

    # the entry goes right after the last model's last line, before the blank line and
    # comments that lead to the next section; the text on either side is untouched
    lines = original.splitlines(keepends=True)
    start = lines.index("models:\n")
    end = next(i for i in range(start + 1, len(lines)) if lines[i][:1] not in (" ", "\n"))
    while lines[end - 1].strip() == "" or lines[end - 1].lstrip().startswith("#"):
        end -= 1
    before, after = "".join(lines[:end]), "".join(lines[end:])
    entry = (
        "  sentiment:\n"
        "    url: http://127.0.0.1:9010\n"
        "    roles: [user]\n"
        "    rate_limit: 30/min\n"
        "    timeout: 2m\n"
    )
    assert text == before + entry + after
    assert text.startswith("".join(lines[: start + 1]))  # everything before models:, byte for byte
    assert comment_lines(text) == comment_lines(original)  # every comment, in order

    config = load_config(shipped)
    upstream = config.upstreams["sentiment"]
    assert [t.url for t in upstream.targets] == ["http://127.0.0.1:9010"]
    assert upstream.timeout == 120.0
    route = next(r for r in config.routes if r.model == "sentiment")
    assert route.path == "/models/sentiment/**"
    assert route.strip_prefix == "/models/sentiment"
    assert route.roles == ("user",)
    assert route.rate_limit == RateLimitConfig(Rate(30, 60.0), "user")
    # model routes come after routes:, the new one after demo; only static routes follow
    assert config.routes[-2] == route
    assert config.routes[-1].static is not None

    # replaced by a rename (what a reloading gateway watches for), mode kept, nothing left over
    assert shipped.stat().st_ino != inode
    assert stat.S_IMODE(shipped.stat().st_mode) == 0o640
    assert leftovers(shipped.parent) == []
    check = gateway("check", "--config", str(shipped), cwd=shipped.parent)
    assert check.returncode == 0, check.stderr


def test_add_without_options_leaves_the_defaults_to_the_loader(small: Path) -> None:
    result = add(small.parent, "sentiment", "http://127.0.0.1:9010")
    assert result.returncode == 0, result.stderr
    assert "limit    60/1m by user" in result.stdout
    assert "timeout  5m (connect 5s)" in result.stdout
    text = small.read_text()
    assert text == SMALL.replace(
        "roles: [user]}\n", "roles: [user]}\n  sentiment:\n    url: http://127.0.0.1:9010\n"
    )
    route = load_config(small).routes[-1]
    assert (route.roles, route.rate_limit) == ((), MODEL_RATE_LIMIT)


def test_add_with_usage_quota_and_fallback(small: Path) -> None:
    result = add(
        small.parent,
        "sentiment",
        "http://127.0.0.1:9010",
        "--usage",
        "openai",
        "--token-limit",
        "50000/day",
        "--fallback",
        "chat",
    )
    assert result.returncode == 0, result.stderr
    assert "usage    openai, token limit 50000/1d by user" in result.stdout
    assert "fallback chat (at most 2 calls)" in result.stdout
    assert small.read_text() == SMALL.replace(
        "roles: [user]}\n",
        "roles: [user]}\n  sentiment:\n    url: http://127.0.0.1:9010\n    usage: openai\n"
        "    token_limit: 50000/day\n    fallback: [chat]\n",
    )
    model = load_config(small).models["sentiment"]
    assert (model.usage, model.fallback) == ("openai", ("chat",))


def test_add_creates_the_models_section_at_the_end(
    write_config: WriteConfig, policies: Path
) -> None:
    original = "# no models yet\nupstreams: {}\n\nroutes: []   # none\n# the end\n"
    path = write_config(original)
    result = add(path.parent, "chat", "http://127.0.0.1:9002", "--rate-limit", "off")
    assert result.returncode == 0, result.stderr
    assert path.read_text() == (
        original + "\nmodels:\n  chat:\n    url: http://127.0.0.1:9002\n    rate_limit: off\n"
    )
    config = load_config(path)
    assert config.routes[0].path == "/models/chat/**"
    assert config.routes[0].rate_limit is None


def test_add_to_a_file_without_a_final_line_break(write_config: WriteConfig) -> None:
    path = write_config("upstreams: {}")
    result = add(path.parent, "chat", "http://127.0.0.1:9002")
    assert result.returncode == 0, result.stderr
    assert path.read_text() == "upstreams: {}\n\nmodels:\n  chat:\n    url: http://127.0.0.1:9002\n"


# --- models add: refusals leave the file as it was -----------------------------------


def test_add_refuses_a_name_that_is_already_a_model(small: Path) -> None:
    result = add(small.parent, "chat", "http://127.0.0.1:9003")
    assert result.returncode == 1
    assert result.stderr == (
        f"{small}:7: models.chat: 'chat' is already a model; edit that entry, "
        "or choose another name\n"
    )
    assert small.read_text() == SMALL
    assert leftovers(small.parent) == []


def test_add_refuses_a_name_that_is_already_an_upstream(small: Path) -> None:
    result = add(small.parent, "analytics", "http://127.0.0.1:9003")
    assert result.returncode == 1
    assert result.stderr == (
        f"{small}:3: upstreams.analytics: 'analytics' is already an upstream, and a model "
        "becomes an upstream of its own name; choose another name\n"
    )
    assert small.read_text() == SMALL


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (
            ("ftp://x",),
            "models.sentiment.url: 'ftp://x' must be an http:// or https:// URL",
        ),
        (
            ("http://127.0.0.1:0",),
            "models.sentiment.url: 'http://127.0.0.1:0' has an invalid port",
        ),
        (
            ("http://127.0.0.1:9010", "--roles", "user,wizard"),
            "models.sentiment.roles: unknown role 'wizard' (roles: admin, analyst, user)",
        ),
        (
            ("http://127.0.0.1:9010", "--rate-limit", "lots"),
            "models.sentiment.rate_limit: 'lots' is not a rate; "
            "use N/sec, N/min, N/hour, N/day or N/<duration> (e.g. 60/min)",
        ),
        (
            ("http://127.0.0.1:9010", "--fallback", "chat,nothing"),
            "models.sentiment.fallback[1]: 'nothing' is not a model",
        ),
        (
            ("http://127.0.0.1:9010", "--timeout", "soon"),
            "models.sentiment.timeout: `soon` is not a duration; write e.g. 30s, 5m, 1h30m",
        ),
    ],
)
def test_add_refuses_what_the_loader_refuses(
    small: Path, args: tuple[str, ...], problem: str
) -> None:
    before = small.read_bytes()
    result = add(small.parent, "sentiment", *args)
    assert result.returncode == 1
    assert result.stdout == ""
    # The problem is in the new entry, which routes.yaml does not have: no FILE:LINE
    # of routes.yaml (its line there holds something else), nor of the temp file.
    assert result.stderr.splitlines() == [
        f"gateway models add: {problem}",
        f"gateway models add: 'sentiment' not added; {small} is unchanged",
    ]
    assert small.read_bytes() == before
    assert leftovers(small.parent) == []


def test_lines_below_the_entry_are_told_in_routes_yamls_numbering(
    write_config: WriteConfig, policies: Path
) -> None:
    text = SMALL + "  - path: /models/sentiment/**\n    upstream: analytics\n"
    path = write_config(text)
    result = add(path.parent, "sentiment", "http://127.0.0.1:9010")
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == (
        "gateway models add: route path /models/sentiment/** is already used by the "
        f"route at {path}:13"  # line 13 of routes.yaml as it is (15 of the result)
    )
    assert path.read_text() == text


def test_add_refuses_to_touch_an_invalid_file(write_config: WriteConfig) -> None:
    path = write_config("models:\n  chat: {url: http://127.0.0.1:9002, colour: blue}\n")
    before = path.read_bytes()
    result = add(path.parent, "sentiment", "http://127.0.0.1:9010")
    assert result.returncode == 1
    assert (
        result.stderr.splitlines()[-1]
        == f"gateway models add: fix {path} first (see gateway check)"
    )
    assert path.read_bytes() == before


# --- the splice, on layouts the shipped file does not have ---------------------------

FIELDS = entry_fields("http://127.0.0.1:9010", "user", None, None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "models:   # none yet\nroutes: []\n",
            "models:   # none yet\n  new:\n    url: http://127.0.0.1:9010\n    roles: [user]\n"
            "routes: []\n",
        ),
        (
            "models: ~\nroutes: []\n",
            "models:\n  new:\n    url: http://127.0.0.1:9010\n    roles: [user]\nroutes: []\n",
        ),
        (
            "models: {}  # later\n",
            "models: {new: {url: http://127.0.0.1:9010, roles: [user]}}  # later\n",
        ),
        (
            "models: {a: {url: 'http://x:1'}}\n",
            "models: {a: {url: 'http://x:1'}, new: {url: http://127.0.0.1:9010, roles: [user]}}\n",
        ),
        (  # four-space indents are copied; a commented-out entry stays below
            "models:\n    a:\n        url: http://x:1\n    # b: {url: http://x:2}\n\nroutes: []\n",
            "models:\n    a:\n        url: http://x:1\n    new:\n        url: http://127.0.0.1:9010\n"
            "        roles: [user]\n    # b: {url: http://x:2}\n\nroutes: []\n",
        ),
        (
            "models:\r\n  a: {url: 'http://x:1'}\r\n\r\nroutes: []\r\n",
            "models:\r\n  a: {url: 'http://x:1'}\r\n  new:\r\n    url: http://127.0.0.1:9010\r\n"
            "    roles: [user]\r\n\r\nroutes: []\r\n",
        ),
        (
            "models:\n  a:\n    url: http://x:1\n    note: |\n      hi\n\nroutes: []\n",
            "models:\n  a:\n    url: http://x:1\n    note: |\n      hi\n  new:\n"
            "    url: http://127.0.0.1:9010\n    roles: [user]\n\nroutes: []\n",
        ),
    ],
)
def test_place_entry_layouts(text: str, expected: str) -> None:
    assert place_entry(text, "new", FIELDS).text == expected


def test_place_entry_refuses_an_anchored_models_section() -> None:
    # the entry would land in the anchor, changing `x` too
    with pytest.raises(PlacementError, match="change more than the models section"):
        place_entry("x: &m\n  a: {url: 'http://x:1'}\nmodels: *m\n", "new", FIELDS)


# --- models list ---------------------------------------------------------------------


ASKED = web.AppKey("asked", list[str])


def status_app(status: int, only: str | None = None) -> web.Application:
    """Answers `status` to every GET (or only at path `only`, 503 elsewhere); keeps the
    paths it was asked for."""
    asked: list[str] = []

    async def answer(request: web.Request) -> web.StreamResponse:
        asked.append(request.path)
        code = status if only is None or request.path == only else 503
        return web.Response(status=code, text="health")

    app = web.Application()
    app[ASKED] = asked
    app.router.add_get("/{tail:.*}", answer)
    return app


async def test_list_shows_each_model_and_probes_its_targets(
    write_config: WriteConfig, policies: Path, upstream: MakeUpstream
) -> None:
    server: TestServer = await upstream(status_app(200))
    closed = free_port()
    path = write_config(
        f"""\
        models:
          up:
            url: http://127.0.0.1:{server.port}
            roles: [user, analyst]
            usage: openai
            token_limit: 1000/day
            fallback: [down]
          down: {{url: http://127.0.0.1:{closed}, rate_limit: off, timeout: 20s,
                  connect_timeout: 1s}}
        """
    )
    result = await asyncio.to_thread(
        gateway, "models", "list", "--config", str(path), cwd=path.parent
    )
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == [
        "NAME",
        "URL",
        "ROLES",
        "RATE",
        "LIMIT",
        "TIMEOUT",
        "HEALTH",
        "EXTRAS",
    ]
    assert [row.split()[0] for row in rows] == ["up", "down"]  # config order
    up, down = rows
    column = header.index("HEALTH")
    assert up.split()[1:7] == [
        f"http://127.0.0.1:{server.port}",
        "user,analyst",
        "60/1m",
        "by",
        "user",
        "5m",
    ]
    assert up[column:].startswith("up 200 (")
    assert up.endswith("usage openai; token_limit 1000/1d by user; fallback down")
    assert down.split()[1:7] == [
        f"http://127.0.0.1:{closed}",
        "any",
        "off",
        "20s",
        "(connect",
        "1s)",
    ]
    assert down[column:].startswith("DOWN connect failed: Connection refused (")
    assert down.endswith(" -")


async def test_list_health_is_an_http_answer_below_500_at_the_health_path(
    write_config: WriteConfig, policies: Path, upstream: MakeUpstream
) -> None:
    ok, missing, failing, custom = (
        await upstream(status_app(200)),
        await upstream(status_app(404)),
        await upstream(status_app(503)),
        await upstream(status_app(204, only="/base/v1/health")),
    )
    closed = free_port()
    path = write_config(
        f"""\
        models:
          ok: {{url: http://127.0.0.1:{ok.port}}}
          missing: {{url: http://127.0.0.1:{missing.port}}}
          failing: {{url: http://127.0.0.1:{failing.port}}}
          closed: {{url: http://127.0.0.1:{closed}}}
          custom: {{url: http://127.0.0.1:{custom.port}/base, health_path: /v1/health}}
        """
    )
    result = await asyncio.to_thread(
        gateway, "models", "list", "--config", str(path), cwd=path.parent
    )
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    column = header.index("HEALTH")
    health = {row.split()[0]: row[column:].split(" (")[0] for row in rows}
    assert health == {
        "ok": "up 200",
        "missing": "up 404",  # it answered: the server is up, whatever the path
        "failing": "DOWN answered 503",
        "closed": "DOWN connect failed: Connection refused",
        "custom": "up 204",
    }
    # GET / by default; health_path after the target's base path
    assert ok.app[ASKED] == ["/"]
    assert custom.app[ASKED] == ["/base/v1/health"]


def test_health_path_must_be_a_path(write_config: WriteConfig) -> None:
    path = write_config("models:\n  chat: {url: http://127.0.0.1:9002, health_path: health}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [str(p) for p in caught.value.problems] == [
        f"{path}:2: models.chat.health_path: must be a path starting with /, got 'health'"
    ]
    chat = load_config(write_config("models:\n  chat: {url: http://127.0.0.1:9002}\n"))
    assert chat.models["chat"].health_path == "/"


def test_list_without_models(write_config: WriteConfig) -> None:
    path = write_config("upstreams: {}\n")
    result = gateway("models", "list", "--config", str(path), cwd=path.parent)
    assert (result.returncode, result.stdout) == (0, f"{path}: no models\n")


def test_list_on_an_invalid_file(write_config: WriteConfig) -> None:
    path = write_config("models:\n  chat: {url: ftp://x}\n")
    result = gateway("models", "list", "--config", str(path), cwd=path.parent)
    assert result.returncode == 1
    assert (
        result.stderr
        == f"{path}:2: models.chat.url: 'ftp://x' must be an http:// or https:// URL\n"
    )
