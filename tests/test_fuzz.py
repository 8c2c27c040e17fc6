"""Fuzzing in CI: schemathesis against /openapi.json on a live gateway, signed in as admin.

Bounded: a fixed number of examples per operation, and the whole run within
a time limit. It fails on any 5xx, any response that does not match its
declared schema, status or media type, any error that is not
application/problem+json (every error is declared as one), and any request
the schema forbids that the gateway accepts.

Left out: POST /auth/logout and POST /users/me/password, which would end the
session the run signs in with. Not checked: that every schema-valid request
is accepted (ST202), because business rules legitimately refuse some (an
opaque cursor the API never gave out, a weak password, a taken username).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.processes import create_user, free_port, shipped_config, start_gateway, stop

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = 25  # per operation and phase
SECONDS = 240  # the whole run, at most
CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
        "negative_data_rejection",
    )
)
PASSWORD = "fuzzing admin password 0123"


def test_schemathesis_finds_nothing(tmp_path: Path) -> None:
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    if st is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[dev]')")
    port = free_port()
    config = shipped_config(tmp_path, port)
    create_user(config, "root", "admin", PASSWORD)
    process = start_gateway(config, port, tmp_path / "gateway.log")
    try:
        login = urllib.request.Request(
            f"http://127.0.0.1:{port}/auth/login",
            data=json.dumps({"username": "root", "password": PASSWORD}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(login, timeout=10) as response:  # noqa: S310 (loopback)
            token = json.load(response)["access_token"]
        run = subprocess.run(
            [
                st,
                "run",
                f"http://127.0.0.1:{port}/openapi.json",
                "--header",
                f"Authorization: Bearer {token}",
                "--checks",
                CHECKS,
                "--max-examples",
                str(EXAMPLES),
                "--exclude-path",
                "/auth/logout",
                "--exclude-path",
                "/users/me/password",
                "--seed",
                "20261127",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=SECONDS,
            check=False,
            cwd=tmp_path,
            env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false"},
        )
    finally:
        stop(process)
    report = run.stdout[-6000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    selected = re.search(r"Operations:\s+(\d+) selected", run.stdout)
    assert selected is not None, report
    assert int(selected.group(1)) >= 15, report
    log = (tmp_path / "gateway.log").read_text()
    assert '"level":"error"' not in log.replace(" ", ""), log[-3000:]
