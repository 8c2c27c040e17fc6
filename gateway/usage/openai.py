"""OpenAI-style usage (`usage: openai`): chat and completions requests and responses.

A JSON response carries `usage: {prompt_tokens, completion_tokens, total_tokens}`.
A streamed one carries it only when the request says
`stream_options: {include_usage: true}`: then a last chunk comes with
`choices: []` and the usage (other chunks say `usage: null`; some compatible
servers put it on the last content chunk instead). So for a streamed request
without it, the plan adds it, and the tap strips that usage-only chunk from
what the client receives.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.usage.reader import (
    MAX_PARSE,
    UNKNOWN,
    RequestPlan,
    Usage,
    UsageReader,
    is_json,
)
from gateway.usage.sse import StreamTap, Verdict

_NOT_JSON = object()


def _loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return _NOT_JSON


def _usage_of(message: Any) -> Usage:
    if isinstance(message, dict):
        return Usage.from_counts(message.get("usage"))
    return UNKNOWN


def _is_usage_only(message: Any) -> bool:
    # The chunk include_usage adds: usage, and no choices (`[]`, or absent on some servers).
    return (
        isinstance(message, dict)
        and isinstance(message.get("usage"), dict)
        and message.get("choices") in (None, [])
    )


def _budget(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


class OpenAIReader(UsageReader):
    name = "openai"
    max_parse = MAX_PARSE

    def request_hook(self, body: bytes, content_type: str) -> RequestPlan:
        if not is_json(content_type) or len(body) > self.max_parse:
            return RequestPlan.untouched(body)
        request = _loads(body)
        if not isinstance(request, dict):
            return RequestPlan.untouched(body)
        stream = request.get("stream") is True
        # max_completion_tokens supersedes max_tokens in OpenAI's API
        max_tokens = _budget(request.get("max_completion_tokens"))
        if max_tokens is None:
            max_tokens = _budget(request.get("max_tokens"))
        options = request.get("stream_options")
        wants_usage = isinstance(options, dict) and options.get("include_usage") is True
        plan = RequestPlan(
            body=body,
            understood=True,
            stream=stream,
            max_tokens=max_tokens,
            client_wants_usage=wants_usage,
        )
        if not stream or wants_usage or not (options is None or isinstance(options, dict)):
            # A malformed stream_options is the upstream's to refuse, not ours to mend.
            return plan
        # dicts keep their order: stream_options is updated in place or added last
        request["stream_options"] = {**(options or {}), "include_usage": True}
        return RequestPlan(
            body=orjson.dumps(request),
            understood=True,
            stream=True,
            max_tokens=max_tokens,
            client_wants_usage=False,
            injected_usage=True,
        )

    def from_json(self, body: bytes) -> Usage:
        if len(body) > self.max_parse:
            return UNKNOWN
        return _usage_of(_loads(body))

    def stream(self, *, strip_usage: bool = False) -> OpenAIStreamTap:
        return OpenAIStreamTap(strip_usage=strip_usage)


class OpenAIStreamTap(StreamTap):
    """Reads `usage` from the chunks; strips the usage-only chunk when asked to."""

    def __init__(self, *, strip_usage: bool = False) -> None:
        super().__init__(strip_usage=strip_usage)
        self._judged: tuple[bytes, Any] = (b"", _NOT_JSON)  # judge's parse, reused by observe

    def judge(self, data: bytes) -> Verdict:
        message = _loads(data)
        self._judged = (data, message)
        if message is _NOT_JSON:
            # `{...` split over several data: lines may still become the usage chunk;
            # anything else (`[DONE]`, text) cannot.
            return Verdict.HOLD if data.lstrip().startswith(b"{") else Verdict.RELEASE
        return Verdict.STRIP if _is_usage_only(message) else Verdict.RELEASE

    def observe(self, data: bytes) -> None:
        if b'"usage"' not in data:
            return  # most chunks: no need to parse them
        judged_data, message = self._judged
        if judged_data != data:
            message = _loads(data)
        usage = _usage_of(message)
        if usage.known:
            self.usage = usage
