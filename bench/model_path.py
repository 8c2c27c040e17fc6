"""The model rows of bench/chain.py: the fake OpenAI completion, the gateway's and LiteLLM's
configuration for it, and the check that the gateway metered every call.

The upstream nginx answers `POST /v1/chat/completions` with COMPLETION, a fixed small
chat completion with a `usage` object (`return 200`, so it costs the upstream what
`{"ok":true}` does). The gateway row reaches it through a `models:` entry with
`usage: openai` and a `token_limit` (README, "Token usage and reports" and "Token
quotas"); the LiteLLM row through LiteLLM's proxy with the same upstream as an
`openai/` model. wrk sends CHAT_REQUEST with bench/chat_completion.lua.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

MODEL = "bench-chat"  # the models: entry's name, and LiteLLM's model_name
CHAT_PATH = "/v1/chat/completions"  # what the upstream serves; the gateway's is under /models/
CHAT_SCRIPT = Path(__file__).resolve().with_name("chat_completion.lua")
# The body wrk sends (bench/chat_completion.lua holds the same text) and the check sends.
CHAT_REQUEST: dict[str, Any] = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 16,
}
USAGE = {"prompt_tokens": 8, "completion_tokens": 2, "total_tokens": 10}
# No single quote in it: nginx's `return 200 '...'` quotes it so.
COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1764921600,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hello"},
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
    },
    separators=(",", ":"),
)
# The gateway's models: entry: a quota of tokens per user that the run never spends (each
# call reserves max_tokens, 16, and is charged its total_tokens, 10), and the full chain's
# role check and request rate limit, so that the row differs from the full chain only in
# the model path's own work.
TOKEN_LIMIT = "token_limit: {limit: 1000000000, per: 1d, key: user}"
MODEL_OPTIONS = f"usage: openai, {TOKEN_LIMIT}"

LITELLM_KEY = "sk-bench-master-key-0123"  # LiteLLM's master key: the LiteLLM row's bearer token
LITELLM_CONFIG = """\
model_list:
  - model_name: {model}
    litellm_params:
      model: openai/{model}
      api_base: http://127.0.0.1:{upstream_port}/v1
      api_key: bench-upstream-key
general_settings:
  master_key: {key}
litellm_settings:
  telemetry: false
"""
# uvicorn's loggers at WARNING: no access log line per request, as for the other proxies.
LITELLM_LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(levelname)s %(name)s: %(message)s"}},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "stream": "ext://sys.stderr",
        }
    },
    "loggers": {
        name: {"handlers": ["stderr"], "level": "WARNING", "propagate": False}
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
    },
}
# No database (so no spend logs), the model cost map from the package rather than fetched
# at start-up, and LiteLLM's own logger at ERROR.
LITELLM_ENVIRONMENT = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
LITELLM_DROPPED = ("DATABASE_URL", "REDIS_URL", "REDIS_HOST", "OPENAI_API_KEY", "OPENAI_BASE_URL")


def model_entry(upstream_port: int, options: str) -> str:
    """routes.yaml's models: section with the one model, `options` being its route options."""
    options = f", {options}" if options else ""
    url = f"http://127.0.0.1:{upstream_port}"
    return f'models:\n  {MODEL}: {{url: "{url}", {MODEL_OPTIONS}{options}}}\n'


def write_litellm_config(folder: Path, upstream_port: int) -> tuple[Path, Path]:
    """LiteLLM's config and uvicorn's logging config in `folder`; their paths."""
    folder.mkdir()
    config = folder / "litellm.yaml"
    text = LITELLM_CONFIG.format(model=MODEL, upstream_port=upstream_port, key=LITELLM_KEY)
    config.write_text(text)
    logging = folder / "logging.json"
    logging.write_text(json.dumps(LITELLM_LOGGING))
    return config, logging


def script_matches() -> bool:
    """Whether bench/chat_completion.lua sends CHAT_REQUEST, byte for byte."""
    return f"wrk.body = '{json.dumps(CHAT_REQUEST)}'" in CHAT_SCRIPT.read_text()


def completion_ok(body: bytes) -> bool:
    """Whether `body` is the upstream's completion: the same usage and answer, whatever the
    proxy re-serialised (LiteLLM rebuilds the JSON; the gateway passes it on as it came)."""
    try:
        reply = json.loads(body)
        content = reply["choices"][0]["message"]["content"]
        return bool(reply["usage"]["total_tokens"] == USAGE["total_tokens"] and content == "hello")
    except (ValueError, KeyError, IndexError, TypeError):
        return False


def metered_calls(database: Path) -> dict[str, int] | None:
    """What a stopped gateway's report_logs hold for the model: its calls, those whose usage
    it read, and their tokens (None: no table)."""
    query = (
        "SELECT count(*), count(total_tokens), coalesce(sum(total_tokens), 0) "
        "FROM report_logs WHERE model = ?"
    )
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            calls, metered, tokens = db.execute(query, (MODEL,)).fetchone()
    except sqlite3.Error:
        return None
    return {"report_rows": int(calls), "metered": int(metered), "tokens": int(tokens)}
