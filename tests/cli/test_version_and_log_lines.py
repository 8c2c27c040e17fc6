"""`gateway --version`, and what every log line carries: pid, and the request id of the
request being served (gateway/logs.py)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import aiohttp

import gateway
from gateway.logs import JsonFormatter, current_request, setup_logging


def test_version_names_the_gateway_python_and_aiohttp() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    line = done.stdout.strip()
    assert line.startswith(f"gateway {gateway.__version__} (Python 3.")
    assert f"aiohttp {aiohttp.__version__}" in line


def test_a_line_logged_while_a_request_is_served_carries_its_id() -> None:
    formatter = JsonFormatter()
    record = logging.makeLogRecord({"msg": "upstream target ejected", "levelname": "WARNING"})
    outside = json.loads(formatter.format(record))
    assert outside["pid"] == os.getpid()
    assert "request_id" not in outside
    token = current_request.set("req-42")
    try:
        inside = json.loads(formatter.format(record))
    finally:
        current_request.reset(token)
    assert inside["request_id"] == "req-42"


def test_alembic_start_up_chatter_is_not_printed_at_info() -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        setup_logging("INFO")
        assert not logging.getLogger("alembic.runtime.migration").isEnabledFor(logging.INFO)
        assert logging.getLogger("alembic.runtime.migration").isEnabledFor(logging.WARNING)
        assert logging.getLogger("gateway.server").isEnabledFor(logging.INFO)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.getLogger("alembic").setLevel(logging.NOTSET)
