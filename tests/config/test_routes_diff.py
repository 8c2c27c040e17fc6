"""`gateway routes --diff OLD NEW`: what a config change would change."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gateway.config import load_config
from gateway.config.diff import diff
from tests.conftest import WriteConfig

OLD = """\
upstreams:
  api: {targets: ["http://127.0.0.1:9001"], timeout: 30s}
  old: {targets: ["http://127.0.0.1:9002"]}
routes:
  - {path: /api/**, upstream: api, roles: [analyst], rate_limit: 60/min}
  - {path: /old/**, upstream: old}
  - {path: /a, upstream: api, auth: none}
  - {path: /b, upstream: api, auth: none}
"""

NEW = """\
upstreams:
  api: {targets: ["http://127.0.0.1:9001", "http://127.0.0.1:9003"], timeout: 1m}
routes:
  - {path: /b, upstream: api, auth: none}
  - {path: /a, upstream: api, auth: none}
  - {path: /api/**, upstream: api, roles: [analyst, admin]}
  - {path: /new/**, methods: [GET], upstream: api}
"""


def pair(write_config: WriteConfig, old: str, new: str) -> tuple[Path, Path]:
    return write_config(old, "old.yaml"), write_config(new, "new.yaml")


def test_every_kind_of_change_is_one_line(write_config: WriteConfig, policies: Path) -> None:
    old, new = pair(write_config, OLD, NEW)
    lines = diff(load_config(old), load_config(new))
    assert "- route * /old/** -> upstream old (auth required, roles any, rate limit off)" in lines
    assert (
        "+ route GET,HEAD /new/** -> upstream api (auth required, roles any, rate limit off) (#4)"
        in lines
    )
    assert (
        "~ route * /api/**: roles analyst -> analyst,admin; rate limit 60/1m by user -> off"
        in lines
    )
    [order] = [line for line in lines if line.startswith("~ first-match order")]
    assert "* /b #4 -> #1" in order
    assert "* /api/** #1 -> #3" in order
    assert "- upstream old: http://127.0.0.1:9002" in lines
    [api] = [line for line in lines if line.startswith("~ upstream api")]
    assert "timeout 30s -> 1m" in api
    assert "http://127.0.0.1:9003" in api


def test_upstream_bounds_show_in_the_diff(write_config: WriteConfig, policies: Path) -> None:
    old, new = pair(
        write_config,
        "upstreams:\n  api: {targets: [http://127.0.0.1:9001]}\n"
        "routes:\n  - {path: /a, upstream: api}\n",
        "upstreams:\n  api: {targets: [http://127.0.0.1:9001], max_pending: 5}\n"
        "routes:\n  - {path: /a, upstream: api, retry_after_send: true}\n",
    )
    lines = diff(load_config(old), load_config(new))
    assert "~ route * /a: retry_after_send no -> yes" in lines
    assert "~ upstream api: max_pending 100 -> 5" in lines


def test_the_same_config_has_no_differences(write_config: WriteConfig, policies: Path) -> None:
    old, new = pair(write_config, OLD, OLD)
    assert diff(load_config(old), load_config(new)) == []


def test_the_command_exits_like_diff(write_config: WriteConfig, policies: Path) -> None:
    old, new = pair(write_config, OLD, NEW)

    def run(*files: Path) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "gateway", "routes", "--diff", *map(str, files)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)

    changed = run(old, new)
    assert changed.returncode == 1, changed.stderr
    assert "- route * /old/**" in changed.stdout
    same = run(old, old)
    assert same.returncode == 0
    assert same.stdout.strip() == "no differences"
    broken = write_config("routes: [{path: /x}]\n", "broken.yaml")
    invalid = run(old, broken)
    assert invalid.returncode == 2
    assert "broken.yaml:1" in invalid.stderr


SETTINGS_OLD = """\
server:
  listen: 127.0.0.1:8443
  max_body: 10MiB
  cors: {origins: ["https://a.example"]}
auth:
  access_ttl: 15m
  keys: [{kid: a, secret: first-secret-of-the-diff-test-0123456789}]
models:
  chat: {url: "http://127.0.0.1:9002", usage: openai}
routes: []
"""

SETTINGS_NEW = """\
server:
  listen: 127.0.0.1:9443
  max_body: 1MiB
  cors: {origins: ["https://a.example", "https://b.example"], max_age: 1h}
  status_listen: 127.0.0.1:9000
auth:
  access_ttl: 1h
  keys: [{kid: a, secret: second-secret-of-the-diff-test-0123456789}]
database: {timeout: 2s}
models:
  chat: {url: "http://127.0.0.1:9002", usage: openai, max_attempts: 2}
routes: []
"""


def test_settings_changes_are_listed_by_key_path(write_config: WriteConfig) -> None:
    old, new = pair(write_config, SETTINGS_OLD, SETTINGS_NEW)
    assert diff(load_config(old), load_config(new)) == [
        "~ server.listen: 127.0.0.1:8443 -> 127.0.0.1:9443",
        "~ server.max_body: 10MiB -> 1MiB",
        "~ server.cors.origins: [https://a.example] -> [https://a.example, https://b.example]",
        "~ server.cors.max_age: 10m -> 1h",
        "~ server.status_listen: — -> 127.0.0.1:9000",
        "~ auth.access_ttl: 15m -> 1h",
        "~ auth.keys[a].secret: (hidden) -> (hidden, changed)",
        "~ database.timeout: 5s -> 2s",
        "~ models.chat.max_attempts: 0 -> 2",
    ]


def test_a_secret_is_never_printed(write_config: WriteConfig) -> None:
    old, new = pair(write_config, SETTINGS_OLD, SETTINGS_NEW)

    argv = [sys.executable, "-m", "gateway", "routes", "--diff", str(old), str(new)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert "~ auth.keys[a].secret: (hidden) -> (hidden, changed)" in result.stdout.splitlines()
    assert "secret-of-the-diff-test" not in result.stdout + result.stderr


def test_files_in_other_folders_compare_by_what_they_say(tmp_path: Path) -> None:
    """Paths are compared as written, relative to each routes.yaml: a copy elsewhere is
    the same config."""
    for folder in ("a", "b"):
        (tmp_path / folder / "policies").mkdir(parents=True)
        (tmp_path / folder / "policies" / "roles.yaml").write_text("roles: {user: {}}\n")
        (tmp_path / folder / "routes.yaml").write_text(
            "routes: [{path: /u, handler: users, roles: [user]}]\n"
        )
    old = load_config(tmp_path / "a" / "routes.yaml")
    assert diff(old, load_config(tmp_path / "b" / "routes.yaml")) == []


def test_policy_changes_are_listed(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "roles.yaml").write_text("roles: {user: {}, admin: {}}\n")
    (tmp_path / "routes.yaml").write_text("routes: []\n")
    old = load_config(tmp_path / "routes.yaml")
    (tmp_path / "policies" / "roles.yaml").write_text(
        "roles: {user: {}, admin: {inherits: [user]}}\n"
    )
    (tmp_path / "policies" / "ops.yaml").write_text("roles: {ops: {inherits: [user]}}\n")
    assert diff(old, load_config(tmp_path / "routes.yaml")) == [
        "+ policy file ops.yaml",
        "~ role admin: inherits - -> user",
        "+ role ops (inherits user)",
    ]
