"""`static:` and `spa:` in routes.yaml: what is checked at load (FILE:LINE), and where
static routes fall in first-match order."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from tests.conftest import WriteConfig

UPSTREAM = """\
upstreams:
  up: {targets: ["http://127.0.0.1:9000"]}
"""


def problems(path: Path) -> list[tuple[int, str]]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [(p.line, p.message) for p in info.value.problems]


def test_check_names_a_missing_folder_as_file_line(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    path = write_config(
        """\
        routes:
          - path: /app/**
            static: build/web
            auth: none
        """
    )
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr == (
        f"{path}:3: routes[0].static: folder not found: {tmp_path / 'build' / 'web'}\n"
    )
    (tmp_path / "build" / "web").mkdir(parents=True)
    again = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert again.returncode == 0, again.stderr


def test_the_folder_is_relative_to_routes_yaml_not_the_working_folder(
    write_config: WriteConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "site").mkdir()
    path = write_config("routes:\n  - {path: /**, static: site, auth: none}\n")
    monkeypatch.chdir("/")
    route = load_config(path).routes[0]
    assert route.static == tmp_path / "site"
    assert route.methods == frozenset({"GET", "HEAD"})
    assert route.spa is False
    assert route.target == f"static {tmp_path / 'site'}"


def test_a_file_is_not_a_folder(write_config: WriteConfig, tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("x")
    path = write_config("routes:\n  - {path: /**, static: index.html}\n")
    assert problems(path) == [
        (2, f"routes[0].static: not a folder: {tmp_path / 'index.html'}"),
    ]


ONE_TARGET = "routes[0]: give exactly one of handler, upstream or static"
UPSTREAM_ONLY = "only applies to upstreams"
ENDS_WITH = "routes[0].path: a static route's path ends with /**"


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ("{path: /app/**, static: site, handler: admin}", ONE_TARGET),
        ("{path: /app/**, static: site, upstream: up}", ONE_TARGET),
        ("{path: /app, static: site}", ENDS_WITH),
        ('{path: "/app/{x}", static: site}', ENDS_WITH),
        (
            "{path: /app/**, static: site, methods: [GET, POST]}",
            "routes[0].methods: a static route answers GET and HEAD",
        ),
        (
            "{path: /app/**, static: site, strip_prefix: /app}",
            f"routes[0].strip_prefix: {UPSTREAM_ONLY}",
        ),
        ("{path: /app/**, static: site, websocket: true}", f"routes[0].websocket: {UPSTREAM_ONLY}"),
        ("{path: /app/**, upstream: up, spa: true}", "routes[0].spa: only applies with static"),
        ("{path: /app/**, static: site, spa: maybe}", "routes[0].spa: expected true or false"),
    ],
)
def test_static_route_rules(
    write_config: WriteConfig, tmp_path: Path, route: str, message: str
) -> None:
    (tmp_path / "site").mkdir()
    path = write_config(UPSTREAM + f"routes:\n  - {route}\n")
    assert problems(path) == [(4, message)]


def test_methods_get_alone_still_answers_head(write_config: WriteConfig, tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    path = write_config("routes:\n  - {path: /app/**, static: site, methods: [GET]}\n")
    assert load_config(path).routes[0].methods == frozenset({"GET", "HEAD"})


def test_static_routes_come_after_every_other_route_models_too(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    (tmp_path / "site").mkdir()
    path = write_config(
        UPSTREAM
        + """\
models:
  chat: {url: "http://127.0.0.1:9001"}
routes:
  - {path: /**, static: site, auth: none}
  - {path: /api/**, upstream: up}
  - {path: /docs/**, static: site, auth: none}
"""
    )
    routes = load_config(path).routes
    assert [(r.index, r.path) for r in routes] == [
        (0, "/api/**"),
        (1, "/models/chat/**"),
        (2, "/**"),
        (3, "/docs/**"),  # static routes keep their order among themselves
    ]
