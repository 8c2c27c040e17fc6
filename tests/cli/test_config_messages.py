"""What `gateway check`, `gateway serve` and a reload say about a broken routes.yaml or policy:
YAML syntax errors as FILE:LINE:COLUMN with the usual cause, typos with the key meant,
durations quoted as written; never a traceback or PyYAML's own parser wording."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.cli import main

# (routes.yaml, LINE:COLUMN, message): each hint with a file that provokes it
SYNTAX = [
    pytest.param(
        "server:\n  listen: 127.0.0.1:8080\n\tmax_body: 1MiB\n",
        "3:1",
        "YAML syntax: a tab in the indentation; indent with spaces, never tabs",
        id="tab",
    ),
    pytest.param(
        "routes:\n  - path:/x\n    upstream: a\n",
        "2:9",
        "YAML syntax: `path:` needs a space after the colon (write `path: …`)",
        id="no-space-after-colon",
    ),
    pytest.param(
        "server:\n  max_body: 1MiB\npolicies:policies\nroutes: []\n",
        "3:9",
        "YAML syntax: `policies:` needs a space after the colon (write `policies: …`)",
        id="no-space-after-colon-top-level",
    ),
    pytest.param(
        "server:\n  listen: 127.0.0.1:8080\n    max_body: 1MiB\n",
        "3:5",
        "YAML syntax: bad indentation: this line is indented deeper than the key above it "
        "(or the line above is missing a `:`)",
        id="indented-too-deep",
    ),
    pytest.param(
        "server:\n    listen: 127.0.0.1:8080\n  max_body: 1MiB\n",
        "3:3",
        "YAML syntax: bad indentation: this line does not line up with the lines above it "
        "(keys of one mapping, and the `-` of one list, start in the same column)",
        id="indented-out-of-line",
    ),
    pytest.param(
        'server:\n  listen: "127.0.0.1:8080\n  max_body: 1MiB\n',
        "2:11",
        'YAML syntax: unclosed quote: the " here has no closing "',
        id="unclosed-quote",
    ),
    pytest.param(
        "server:\n  trusted_proxies: [10.0.0.0/8\nroutes: []\n",
        "2:20",
        "YAML syntax: unclosed bracket: the [ here has no closing ] (found `:` at 3:7)",
        id="unclosed-bracket",
    ),
    pytest.param(
        "models:\n  chat: {url: http://127.0.0.1:9000\n",
        "2:9",
        "YAML syntax: unclosed bracket: the { here has no closing } (the file ends first)",
        id="unclosed-brace",
    ),
]


def gateway(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_plain(output: str) -> None:
    assert "Traceback" not in output
    assert "while scanning" not in output
    assert "while parsing" not in output


@pytest.mark.parametrize(("text", "where", "message"), SYNTAX)
def test_check_names_the_usual_cause_of_a_yaml_syntax_error(
    text: str, where: str, message: str, tmp_path: Path
) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(text, encoding="utf-8")
    result = gateway("check", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == f"{path}:{where}: {message}\n"
    assert_plain(result.stderr)


def test_serve_refuses_a_yaml_syntax_error_the_same_way(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text("server:\n\tlisten: 127.0.0.1:0\n", encoding="utf-8")
    result = gateway("serve", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 1
    expected = f"{path}:2:1: YAML syntax: a tab in the indentation; indent with spaces, never tabs"
    assert expected in result.stderr.splitlines()
    assert_plain(result.stderr)


def test_a_policy_file_gets_the_same_hints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "policies").mkdir()
    roles = tmp_path / "policies" / "roles.yaml"
    roles.write_text("roles:\n  user: {}\n  admin: {inherits: [user}\n", encoding="utf-8")
    path = tmp_path / "routes.yaml"
    path.write_text("routes:\n  - {path: /a, handler: admin, roles: [admin]}\n", encoding="utf-8")
    assert main(["check", "--config", str(path)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == (
        f"{roles}:3:21: YAML syntax: unclosed bracket: the [ here has no closing ] "
        "(found `}` at 3:26)"
    )
    assert_plain("\n".join(lines))


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        pytest.param(
            "server:\n  listen:127.0.0.1:8080\n",
            1,
            "server: expected a mapping of keys; `listen:` needs a space after the colon "
            "(write `listen: …`)",
            id="section",
        ),
        pytest.param(
            "routes:\n  - path:/x\n",
            2,
            "routes[0]: expected a mapping of keys; `path:` needs a space after the colon "
            "(write `path: …`)",
            id="list-item",
        ),
        pytest.param(
            "routes:[]\n",
            1,
            "routes.yaml must be a mapping of sections; `routes:` needs a space after the colon "
            "(write `routes: …`)",
            id="whole-file",
        ),
    ],
)
def test_a_missing_space_that_still_parses_is_named(
    text: str, line: int, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`key:value` parses as one string: where a mapping belongs, the message says why."""
    path = tmp_path / "routes.yaml"
    path.write_text(text, encoding="utf-8")
    assert main(["check", "--config", str(path)]) == 1
    assert f"{path}:{line}: {message}" in capsys.readouterr().err.splitlines()


def test_a_misspelt_key_names_the_key_meant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            upstreams:
              api: {targets: [http://127.0.0.1:9000], timeot: 5s}
            routes:
              - path: /api/**
                upstream: api
                strip_prefx: /api
            """
        ),
        encoding="utf-8",
    )
    assert main(["check", "--config", str(path)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{path}:2: upstreams.api.timeot: unknown key `timeot`; did you mean `timeout`?",
        f"{path}:6: routes[0].strip_prefx: unknown key `strip_prefx`; did you mean `strip_prefix`?",
    ]


def test_a_duration_is_quoted_as_written_and_compound_ones_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "routes.yaml"
    upstream = "upstreams:\n  api: {targets: [http://127.0.0.1:9000], timeout: %s}\n"
    path.write_text(upstream % '"5 minutes"', encoding="utf-8")
    assert main(["check", "--config", str(path)]) == 1
    assert capsys.readouterr().err == (
        f"{path}:2: upstreams.api.timeout: `5 minutes` is not a duration; "
        "write e.g. 30s, 5m, 1h30m\n"
    )
    path.write_text(upstream % "1m30s", encoding="utf-8")
    assert main(["check", "--config", str(path)]) == 0
    assert main(["routes", "--config", str(path)]) == 0
    assert "(timeout 90s, connect 2s)" in capsys.readouterr().out
