"""One small error type for everything the gateway refuses, rendered as RFC 9457.

A `GatewayError` carries an HTTP status, a stable reason `code` and a human
`detail`; `render` is the only place that turns one into bytes. The problem
`type` is `/problems/CODE`, the gateway's own page for the code (every code
and what it means: gateway/problem_types.py, and the README's table).

A `detail` is for the client: it never carries an upstream's address, an
exception's or the TLS library's text, or anything of the gateway's state;
those go to the log, with the request id.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus

import orjson

from gateway.problem_types import type_uri

PROBLEM_CONTENT_TYPE = "application/problem+json"


class GatewayError(Exception):
    """A refusal the client should see as `application/problem+json`."""

    __slots__ = ("code", "detail", "headers", "status")

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.headers: Mapping[str, str] = headers or {}

    # Named constructors: one per status README "Errors" lists, so call sites read
    # as the reason, and the codes stay in one file.

    @classmethod
    def bad_request(cls, detail: str, code: str) -> GatewayError:
        return cls(400, code, detail)

    @classmethod
    def max_tokens_over_quota(cls, max_tokens: int, limit: int, period: str) -> GatewayError:
        """400: the request's max_tokens alone is over its token quota's whole limit, so
        no wait would ever let it pass (a 429 would have nothing true to say in Retry-After)."""
        return cls(
            400,
            "max_tokens_over_quota",
            f"max_tokens {max_tokens} is over this quota's whole limit of {limit} tokens "
            f"per {period}",
        )

    @classmethod
    def unauthorized(cls, code: str, detail: str, token_presented: bool) -> GatewayError:
        """401 with the RFC 6750 challenge; error codes only when a token was presented."""
        challenge = 'Bearer realm="gateway"'
        if token_presented:
            challenge += f', error="invalid_token", error_description="{detail}"'
        return cls(401, code, detail, {"WWW-Authenticate": challenge})

    @classmethod
    def not_found(cls, detail: str = "no route matches this path") -> GatewayError:
        return cls(404, "no_route", detail)

    @classmethod
    def no_file(cls) -> GatewayError:
        """A static route has no file to serve: missing, outside its folder or a dotfile
        look the same, so a client learns nothing of what lies beyond the folder."""
        return cls(404, "no_file", "no file here")

    @classmethod
    def method_not_allowed(cls, method: str, allow: list[str]) -> GatewayError:
        return cls(
            405,
            "method_not_allowed",
            f"method {method} is not allowed here; allowed: {', '.join(allow)}",
            {"Allow": ", ".join(allow)},
        )

    @classmethod
    def not_acceptable(cls) -> GatewayError:
        return cls(406, "not_acceptable", "this endpoint answers application/json only")

    @classmethod
    def too_large(cls, limit: int) -> GatewayError:
        return cls(413, "body_too_large", f"request body exceeds the limit of {limit} bytes")

    @classmethod
    def unsupported_media_type(cls, got: str) -> GatewayError:
        return cls(
            415,
            "unsupported_media_type",
            f"this endpoint takes application/json, not {got or 'an untyped body'}",
        )

    @classmethod
    def bad_gateway(cls, detail: str, code: str = "upstream_unreachable") -> GatewayError:
        return cls(502, code, detail)

    @classmethod
    def unavailable(cls, detail: str, code: str, retry_after: int | None = None) -> GatewayError:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        return cls(503, code, detail, headers)

    @classmethod
    def gateway_timeout(cls, detail: str) -> GatewayError:
        return cls(504, "upstream_timeout", detail)

    @classmethod
    def request_timeout(cls, code: str, detail: str) -> GatewayError:
        """408: the client was too slow; the connection closes after this answer."""
        return cls(408, code, detail, {"Connection": "close"})

    @classmethod
    def expectation_failed(cls, expect: str) -> GatewayError:
        return cls(
            417,
            "expectation_failed",
            f"Expect: {expect[:100]} is not supported; only 100-continue is",
        )

    @classmethod
    def version_not_supported(cls, version: str) -> GatewayError:
        return cls(
            505,
            "http_version_not_supported",
            f"{version[:20] or 'this HTTP version'} is not supported; use HTTP/1.1 or HTTP/1.0",
        )

    @classmethod
    def internal(cls) -> GatewayError:
        # Never carries the exception text: that may hold SQL, paths or secrets.
        return cls(500, "internal_error", "the gateway failed to handle this request")


def title_for(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def render(error: GatewayError, request_id: str) -> bytes:
    """The RFC 9457 body for `error`; the only serialisation of a problem."""
    return orjson.dumps(
        {
            "type": type_uri(error.code),
            "title": title_for(error.status),
            "status": error.status,
            "detail": error.detail,
            "code": error.code,
            "request_id": request_id,
        }
    )
