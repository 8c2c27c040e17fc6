"""The usage-reader interface: token counts, request plans, and the reader interface.

A reader knows one upstream format. It is stateless (built once per model at
config load and shared by every request); the per-response state lives in the
StreamTap its `stream()` returns.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.usage.sse import StreamTap

# Request and JSON response bodies above this size are not parsed (left untouched,
# usage UNKNOWN): the proxy needs to keep no more than this to read usage.
MAX_PARSE = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one model call; each None when the upstream did not say."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None

    @property
    def known(self) -> bool:
        return (
            self.prompt_tokens is not None
            or self.completion_tokens is not None
            or self.total_tokens is not None
        )

    @classmethod
    def from_counts(cls, counts: object) -> Usage:
        """`{prompt_tokens, completion_tokens, total_tokens}` → Usage; anything else → UNKNOWN.

        A count that is not a non-negative integer is unknown, never zero; a missing
        total is the sum of the other two when both are known.
        """
        if not isinstance(counts, Mapping):
            return UNKNOWN
        prompt = _count(counts.get("prompt_tokens"))
        completion = _count(counts.get("completion_tokens"))
        total = _count(counts.get("total_tokens"))
        if total is None and prompt is not None and completion is not None:
            total = prompt + completion
        return cls(prompt, completion, total)


UNKNOWN = Usage()


def _count(value: object) -> int | None:
    # bool is an int subclass: `true` is not a token count
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


@dataclass(frozen=True, slots=True)
class RequestPlan:
    """What a reader made of a request body, and the body to send upstream."""

    body: bytes  # to send upstream: the original bytes, or the rewritten JSON
    understood: bool = False  # the body was parsed; False: every other field is a default
    stream: bool = False  # the client asked for a streamed (SSE) response
    max_tokens: int | None = None  # the completion budget the client stated, for reservations
    client_wants_usage: bool = False  # the client itself asked for the usage chunk
    injected_usage: bool = False  # the gateway asked for it: strip it from the client's stream

    @classmethod
    def untouched(cls, body: bytes) -> RequestPlan:
        """The plan for a body the reader cannot or need not understand."""
        return cls(body=body)


def is_json(content_type: str) -> bool:
    """`application/json`, `application/*+json`, with or without parameters."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class UsageReader(ABC):
    """One upstream format: how to plan a request and read usage from its responses."""

    name: str = ""

    @abstractmethod
    def request_hook(self, body: bytes, content_type: str) -> RequestPlan:
        """Plan a request: what it asks for, and the body to forward (rewritten if needed)."""

    @abstractmethod
    def from_json(self, body: bytes) -> Usage:
        """Usage of a complete, non-streamed response body; UNKNOWN if it has none."""

    @abstractmethod
    def stream(self, *, strip_usage: bool = False) -> StreamTap:
        """A fresh tap for one SSE response; `strip_usage` = the plan's `injected_usage`."""
