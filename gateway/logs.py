"""Logs are one JSON object per line on stderr, with whatever `extra` a call gave.

Every line carries the process's `pid`, its `worker` number under `--workers`,
and the `request_id` of the request being served when there is one (set by
`current_request`, so a log call deep in the proxy needs not pass it).
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
import time
from typing import Any

import orjson

_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
WORKER_ENV = "GATEWAY_WORKER"  # set by the --workers supervisor in each worker's environment
# The id of the request the running task serves, for every line logged meanwhile.
current_request: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "gateway_request_id", default=None
)
current_trace: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "gateway_trace_id", default=None
)  # with traces on (gateway/tracing.py)
_WORKER = os.environ.get(WORKER_ENV)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": os.getpid(),  # read each time: a fork changes it
        }
        if _WORKER is not None:
            entry["worker"] = int(_WORKER) if _WORKER.isdigit() else _WORKER
        request_id = current_request.get()
        if request_id is not None:
            entry["request_id"] = request_id
            trace_id = current_trace.get()
            if trace_id is not None:
                entry["trace_id"] = trace_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's own access log is off: the audit log is the per-request record.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # Alembic's "Context impl …" and "Will assume …" lines at every start say nothing an
    # operator acts on; its warnings and errors still show.
    logging.getLogger("alembic").setLevel(logging.WARNING)
