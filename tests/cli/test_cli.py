"""`gateway check` and `gateway routes`, run as the real command in a subprocess."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import WriteConfig

REPO = Path(__file__).resolve().parents[2]
PROBLEM_LINE = re.compile(r"^(?P<file>/.+):(?P<line>\d+): (?P<message>.+)$")

GOOD = """\
upstreams:
  analytics:
    targets: [http://127.0.0.1:9010]
    timeout: 45s
    connect_timeout: 2s
models:
  chat: {url: http://127.0.0.1:9002, roles: [user], rate_limit: 60/min}
routes:
  - path: /analytics/**
    methods: [get, POST]
    upstream: analytics
    strip_prefix: /analytics
    roles: [analyst]
    rate_limit: {limit: 5, per: 1m, key: ip}
  - path: /open
    upstream: analytics
    auth: none
"""

BAD = """\
server:
  listen: nowhere
upstreams:
  analytics: {targets: ["ftp://x"]}
routes:
  - path: /a/**/b
    upstream: analytics
  - path: /b
    upstream: missing
unknown_section: {}
"""


def with_shipped_policies(folder: Path) -> None:
    """Copy the shipped policies/ (user, analyst, admin) into `folder`: GOOD names roles."""
    shutil.copytree(REPO / "policies", folder / "policies")


def gateway(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_valid_file_prints_ok_and_exits_0(write_config: WriteConfig, tmp_path: Path) -> None:
    path = write_config(GOOD)
    with_shipped_policies(tmp_path)
    result = gateway("check", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout == f"{path}: ok (3 routes, 2 upstreams, 1 models)\n"


def test_check_invalid_file_lists_every_problem_and_exits_1(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    path = write_config(BAD)
    result = gateway("check", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    parsed = [PROBLEM_LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert [(m["file"], int(m["line"])) for m in parsed if m] == [
        (str(path), 2),
        (str(path), 4),
        (str(path), 6),
        (str(path), 9),
        (str(path), 10),
    ]
    assert lines == [
        f"{path}:2: server.listen: expected HOST:PORT, e.g. 127.0.0.1:8443, got 'nowhere'",
        f"{path}:4: upstreams.analytics.targets[0]: 'ftp://x' must be an http:// or https:// URL",
        f"{path}:6: routes[0].path: ** may only be the last segment of a route path",
        f"{path}:9: routes[1].upstream: undefined upstream 'missing' (upstreams: none defined)",
        f"{path}:10: unknown_section: unknown key (known keys: server, auth, policies, "
        "upstreams, models, routes, audit, database)",
    ]
    assert "Traceback" not in result.stderr


def test_check_yaml_syntax_error(write_config: WriteConfig, tmp_path: Path) -> None:
    path = write_config("server:\n  listen: [127.0.0.1\nroutes: []\n")
    result = gateway("check", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == (
        f"{path}:2:11: YAML syntax: unclosed bracket: the [ here has no closing ] "
        "(found `:` at 3:7)\n"
    )


def test_check_config_path_relative_to_cwd(write_config: WriteConfig, tmp_path: Path) -> None:
    write_config(GOOD, name="gw.yaml")
    with_shipped_policies(tmp_path)
    result = gateway("check", "--config", "gw.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{tmp_path / 'gw.yaml'}: ok")


def test_check_defaults_to_routes_yaml_in_the_cwd(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    write_config(BAD)
    result = gateway("check", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith(f"{tmp_path / 'routes.yaml'}:2: server.listen: ")


def test_check_missing_file(tmp_path: Path) -> None:
    result = gateway("check", "--config", "absent.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert (
        result.stderr == f"{tmp_path / 'absent.yaml'}:0: cannot read: No such file or directory\n"
    )


def test_check_shipped_routes_yaml(tmp_path: Path) -> None:
    result = gateway("check", "--config", str(REPO / "routes.yaml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{REPO / 'routes.yaml'}: ok (")


def test_routes_prints_the_resolved_table(write_config: WriteConfig, tmp_path: Path) -> None:
    path = write_config(GOOD)
    with_shipped_policies(tmp_path)
    result = gateway("routes", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "#",
        "METHODS",
        "PATH",
        "TARGET",
        "STRIP",
        "AUTH",
        "ROLES",
        "RATE",
        "LIMIT",
        "FROM",
    ]
    rows = [line.split() for line in lines[1:4]]
    assert rows == [
        [
            "1",
            "GET,HEAD,POST",
            "/analytics/**",
            "upstream",
            "analytics",
            "/analytics",
            "required",
            "analyst",
            "5/1m",
            "by",
            "ip",
            "routes.yaml:9",
        ],
        ["2", "*", "/open", "upstream", "analytics", "-", "none", "-", "-", "routes.yaml:15"],
        [
            "3",
            "*",
            "/models/chat/**",
            "upstream",
            "chat",
            "/models/chat",
            "required",
            "user",
            "60/1m",
            "by",
            "user",
            "routes.yaml:7",
        ],
    ]
    # columns line up: every row starts its PATH cell where the header does
    column = lines[0].index("PATH")
    assert [line[column:].split()[0] for line in lines[1:4]] == [
        "/analytics/**",
        "/open",
        "/models/chat/**",
    ]
    assert lines[4] == ""
    assert lines[5:] == [
        "upstream analytics: http://127.0.0.1:9010 (timeout 45s, connect 2s)",
        "upstream chat: http://127.0.0.1:9002 (timeout 5m, connect 5s)",
    ]


def test_routes_on_invalid_file_reports_problems(write_config: WriteConfig, tmp_path: Path) -> None:
    path = write_config(BAD)
    result = gateway("routes", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 5
    assert result.stderr.startswith(f"{path}:2: server.listen: ")


def test_routes_on_shipped_routes_yaml(tmp_path: Path) -> None:
    result = gateway("routes", "--config", str(REPO / "routes.yaml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "/models/demo/**" in result.stdout
    assert "upstream demo" in result.stdout


def test_unknown_command_is_a_usage_error(tmp_path: Path) -> None:
    result = gateway("frobnicate", cwd=tmp_path)
    assert result.returncode == 2
    assert "invalid choice: 'frobnicate'" in result.stderr
