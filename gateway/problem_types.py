"""Every problem code the gateway answers with: its status, what it means, what to do.

The one table of reason codes. From it come the problem `type` (RFC 9457
§3.1.1) of each answer, the pages the gateway serves at `/problems/CODE`
and `/problems/` (gateway/handlers/problems.py), and the README's table of
codes, written between its `<!-- problems:start -->` and
`<!-- problems:end -->` markers by `python -m gateway.problem_types --write
README.md` (tests/handlers/test_problems.py checks the README's copy is
this one).

`type` is the relative reference `/problems/CODE`, which a client resolves
against the URI it asked for (RFC 3986 §5): the gateway's own page, on
whatever host and scheme the client reached it by, and the same string on
every deployment, so it stays a stable identifier. An absolute URI built
from the request's Host and scheme would echo what the client sent (Host is
the client's to choose) and would be wrong behind a proxy that terminates
TLS. A code outside this table (none should be) gets `about:blank`, RFC
9457's type for "nothing more than the status".
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus

from gateway import generated

TYPE_PATH = "/problems/"  # the index; each code's page is TYPE_PATH + code
START = "<!-- problems:start -->"
END = "<!-- problems:end -->"


@dataclass(frozen=True, slots=True)
class ProblemType:
    code: str
    status: int
    means: str  # when the gateway answers with it
    todo: str  # what the client (or the operator) can do about it

    @property
    def phrase(self) -> str:
        return HTTPStatus(self.status).phrase


_RETRY = "retry after the `Retry-After` seconds"

PROBLEM_TYPES: tuple[ProblemType, ...] = (
    # --- 400 --------------------------------------------------------------------
    ProblemType(
        "bad_path",
        400,
        "the path cannot be read unambiguously: bad percent-encoding, or an encoded `/` or "
        "`\\`, a `..;` or `.;` segment left after normalisation",
        "send the path plainly encoded; nothing was forwarded",
    ),
    ProblemType(
        "malformed_json",
        400,
        "the request body is not valid JSON (the detail names the character)",
        "send a valid JSON document",
    ),
    ProblemType(
        "bad_http_request",
        400,
        "the request is not valid HTTP/1.1 (a malformed request line or header)",
        "fix the client; the connection is closed",
    ),
    ProblemType(
        "invalid_field",
        400,
        "a field of the body fails validation (the detail names it and why)",
        "correct that field and send again",
    ),
    ProblemType(
        "invalid_body",
        400,
        "the body is JSON but not the object this endpoint takes",
        "send a JSON object with the fields in /openapi.json",
    ),
    ProblemType(
        "invalid_query",
        400,
        "a query parameter fails validation (the detail names it)",
        "correct that parameter",
    ),
    ProblemType(
        "bad_cursor",
        400,
        "a `cursor` that this API did not give out",
        "pass the previous page's `next_cursor` unchanged, or none for the first page",
    ),
    ProblemType(
        "weak_password",
        400,
        "the new password breaks the password policy (the detail says how)",
        "choose a password the detail's rule admits",
    ),
    ProblemType(
        "wrong_password",
        400,
        "the current password given with a password change is wrong",
        "send the account's current password",
    ),
    ProblemType(
        "upgrade_not_allowed",
        400,
        "a WebSocket upgrade on a route without `websocket: true`, or one that is not a GET",
        "upgrade only on a route configured for WebSockets, with GET",
    ),
    ProblemType(
        "outside_token",
        400,
        "`/auth/logout` with a token of an outside identity provider",
        "sign out at that provider: its session is not the gateway's",
    ),
    ProblemType(
        "max_tokens_over_quota",
        400,
        "a request's `max_tokens` alone is over the whole token quota of the model "
        "(the detail names the limit)",
        "ask for fewer `max_tokens` than the quota's limit",
    ),
    # --- 401 --------------------------------------------------------------------
    ProblemType(
        "missing_token",
        401,
        "the route needs a bearer token and none came (`WWW-Authenticate: Bearer`)",
        "sign in (`POST /auth/login`) and send `Authorization: Bearer TOKEN`",
    ),
    ProblemType(
        "token_expired",
        401,
        "the access token's `exp` has passed",
        "get a new one with the refresh token (`POST /auth/refresh`)",
    ),
    ProblemType(
        "token_not_yet_valid",
        401,
        "the token's `iat` or `nbf` lies in the future, beyond `auth.leeway`",
        "check the clocks of the issuer and the gateway",
    ),
    ProblemType(
        "token_bad_signature",
        401,
        "the token's signature does not verify",
        "send the token as issued; sign in again",
    ),
    ProblemType(
        "token_malformed",
        401,
        "the bearer value is not a JWS compact token",
        "send the access token exactly as issued",
    ),
    ProblemType(
        "token_alg_not_allowed",
        401,
        "the token is signed with an algorithm the gateway does not accept for its issuer",
        "use a token from the gateway or a configured issuer",
    ),
    ProblemType(
        "token_unknown_kid",
        401,
        "the token names a `kid` no known key has",
        "sign in again; the key may have been retired",
    ),
    ProblemType(
        "token_wrong_issuer",
        401,
        "the token's `iss` is not the gateway's nor a configured issuer's",
        "use a token from the gateway or a configured issuer",
    ),
    ProblemType(
        "token_wrong_audience",
        401,
        "the token's `aud` is not the one the gateway expects",
        "get a token issued for this gateway",
    ),
    ProblemType(
        "token_missing_claim",
        401,
        "the token lacks a claim the gateway needs (the detail names it)",
        "get a token issued for this gateway",
    ),
    ProblemType(
        "token_wrong_type",
        401,
        "the token is not an access token (a refresh token, say)",
        "send the access token; the refresh token goes only to `/auth/refresh`",
    ),
    ProblemType(
        "token_revoked",
        401,
        "the token was revoked by a logout or an admin",
        "sign in again",
    ),
    ProblemType(
        "user_inactive",
        401,
        "the token's account is deactivated",
        "ask an admin to reactivate the account",
    ),
    ProblemType(
        "invalid_credentials",
        401,
        "the username or password is wrong",
        "check both; repeated failures are throttled (`login_throttled`)",
    ),
    ProblemType(
        "refresh_invalid",
        401,
        "the refresh token is unknown, expired or revoked",
        "sign in again",
    ),
    ProblemType(
        "refresh_reused",
        401,
        "a refresh token was used a second time: its whole session is revoked",
        "sign in again; use each refresh token once",
    ),
    # --- 403 --------------------------------------------------------------------
    ProblemType(
        "role_forbidden",
        403,
        "the token is valid but its role may not use this route (the detail names the roles "
        "that may)",
        "ask an admin for a role the route admits",
    ),
    ProblemType(
        "role_not_mapped",
        403,
        "an outside provider's token carries no role that maps to a role of the gateway, and "
        "its issuer has no `default_role`",
        "ask the provider's admin for a mapped role",
    ),
    ProblemType(
        "registration_closed",
        403,
        "self-registration is off (`auth.allow_registration: false`)",
        "ask an admin to create the account",
    ),
    ProblemType(
        "cors_origin_forbidden",
        403,
        "a CORS preflight from an origin `server.cors.origins` does not list",
        "call from a listed origin, or have the operator add it",
    ),
    ProblemType(
        "cors_method_forbidden",
        403,
        "a CORS preflight for a method `server.cors.methods` does not list",
        "use a listed method, or have the operator add it",
    ),
    ProblemType(
        "cors_header_forbidden",
        403,
        "a CORS preflight for a request header `server.cors.headers` does not list",
        "send only listed headers, or have the operator add it",
    ),
    ProblemType(
        "csrf_failed",
        403,
        "browser mode (`auth.refresh_cookie`): the refresh cookie came without a matching "
        "`X-CSRF-Token`",
        "send the `gateway_csrf` cookie's value as `X-CSRF-Token`",
    ),
    # --- 404 --------------------------------------------------------------------
    ProblemType(
        "no_route",
        404,
        "no route matches the path",
        "check the path against routes.yaml (`gateway routes`)",
    ),
    ProblemType(
        "no_file",
        404,
        "a static route has no file to serve: missing, outside its folder, or a dotfile",
        "check the file's name",
    ),
    ProblemType(
        "user_not_found",
        404,
        "no user has this id (or the account no longer exists)",
        "list the users (`GET /admin/users`) for their ids",
    ),
    ProblemType(
        "unknown_code",
        404,
        "`/problems/CODE` for a code the gateway never answers with",
        "see `/problems/` for every code",
    ),
    # --- 405-417 ----------------------------------------------------------------
    ProblemType(
        "method_not_allowed",
        405,
        "a route matches the path, not the method; `Allow` lists the methods",
        "use one of the methods in `Allow`",
    ),
    ProblemType(
        "not_acceptable",
        406,
        "`Accept` excludes JSON on an endpoint of the gateway that answers JSON only",
        "accept `application/json`",
    ),
    ProblemType(
        "header_timeout",
        408,
        "no complete request head within `server.header_timeout`; the connection closes",
        "send the whole request head promptly",
    ),
    ProblemType(
        "body_timeout",
        408,
        "an endpoint of the gateway did not get the whole body within `server.body_timeout`; "
        "the connection closes",
        "send the whole body promptly",
    ),
    ProblemType(
        "username_taken",
        409,
        "the username, in any case, is taken",
        "choose another username",
    ),
    ProblemType(
        "last_admin",
        409,
        "the change would leave no active admin",
        "promote another admin first",
    ),
    ProblemType(
        "conflict",
        409,
        "a concurrent change to the same record won",
        "read the record again and retry",
    ),
    ProblemType(
        "body_too_large",
        413,
        "the body is over `server.max_body` (declared or streamed)",
        "send a smaller body",
    ),
    ProblemType(
        "unsupported_media_type",
        415,
        "an endpoint of the gateway that takes JSON got another `Content-Type`",
        "send `Content-Type: application/json`",
    ),
    ProblemType(
        "expectation_failed",
        417,
        "an `Expect` other than `100-continue`",
        "send no `Expect`, or `100-continue`",
    ),
    # --- 429 --------------------------------------------------------------------
    ProblemType(
        "rate_limited",
        429,
        "over the route's or the model's rate limit; with `Retry-After` and `RateLimit-*`",
        _RETRY,
    ),
    ProblemType(
        "token_quota",
        429,
        "the model's token quota is spent; with `Retry-After` and `RateLimit-*`",
        _RETRY,
    ),
    ProblemType(
        "login_throttled",
        429,
        "too many failed sign-ins for this username or address; with `Retry-After`",
        _RETRY,
    ),
    # --- 5xx --------------------------------------------------------------------
    ProblemType(
        "internal_error",
        500,
        "a bug in the gateway; the body says nothing of it, the log has the traceback",
        "report it with the `request_id`",
    ),
    ProblemType(
        "upstream_unreachable",
        502,
        "the upstream refused the connection, could not be reached or failed the TLS "
        "handshake (after retries on its other targets)",
        "retry later; the operator finds the target and the cause in the log by `request_id`",
    ),
    ProblemType(
        "upstream_reset",
        502,
        "the upstream closed or reset the connection before a whole response",
        "retry if the request is safe to repeat; the log has the cause",
    ),
    ProblemType(
        "upstream_invalid",
        502,
        "the upstream answered with invalid HTTP, or with a 101 nobody asked for",
        "the operator fixes the upstream; the log has the cause",
    ),
    ProblemType(
        "upstream_status",
        502,
        "a model and each of its fallbacks answered with an error status",
        "retry later; the log names each model's answer",
    ),
    ProblemType(
        "no_healthy_upstream",
        503,
        "every target of the upstream is ejected or failing its health checks; with `Retry-After`",
        _RETRY,
    ),
    ProblemType(
        "upstream_busy",
        503,
        "every connection to the upstream is busy and `max_pending` requests already wait; "
        "with `Retry-After: 1`",
        _RETRY,
    ),
    ProblemType(
        "database_down",
        503,
        "the database refused, reset or did not answer within `database.timeout`; with "
        "`Retry-After: 1`",
        _RETRY,
    ),
    ProblemType(
        "busy",
        503,
        "the password-hashing pool and its queue are full (sign-in, registration, password "
        "change); with `Retry-After: 1`",
        _RETRY,
    ),
    ProblemType(
        "overloaded",
        503,
        "every client connection is busy at `server.max_connections`; the connection closes",
        "retry after `Retry-After`; the operator raises the cap or adds instances",
    ),
    ProblemType(
        "draining",
        503,
        "`/readyz` while the gateway shuts down",
        "send traffic to another instance",
    ),
    ProblemType(
        "rate_limit_unavailable",
        503,
        "Redis is down and `server.redis_failure` is `closed`: rate limits cannot be checked",
        _RETRY,
    ),
    ProblemType(
        "redis_down",
        503,
        "`/readyz` while Redis is down and `server.redis_failure` is `closed`",
        "send traffic to another instance; the operator restores Redis",
    ),
    ProblemType(
        "audit_failing",
        503,
        "`/readyz` while audit rows can reach neither the database nor the spool",
        "send traffic to another instance; the operator restores the database or the disk",
    ),
    ProblemType(
        "upstream_timeout",
        504,
        "the upstream was too slow, or no connection to it came free, within its `timeout`",
        "retry later, or ask for less",
    ),
    ProblemType(
        "http_version_not_supported",
        505,
        "a request line with a version other than HTTP/1.0 or 1.1; the connection closes",
        "speak HTTP/1.1",
    ),
)

BY_CODE = {problem.code: problem for problem in PROBLEM_TYPES}


def type_uri(code: str) -> str:
    """The problem `type` of `code`: its page's path, resolved against the request's URI."""
    return TYPE_PATH + code if code in BY_CODE else "about:blank"


def readme_table() -> str:
    """The README's table of codes, from PROBLEM_TYPES (one row per code)."""
    lines = [
        "Generated from gateway/problem_types.py by `python -m gateway.problem_types --write "
        "README.md`; the gateway serves each row at `/problems/CODE`.",
        "",
        "| status | code | when | what to do |",
        "|---|---|---|---|",
    ]
    for problem in sorted(PROBLEM_TYPES, key=lambda p: p.status):  # stable: file order within
        cells = (str(problem.status), f"`{problem.code}`", problem.means, problem.todo)
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def spliced(document: str, table: str) -> str:
    """`document` with the text between its markers replaced by `table`."""
    return generated.spliced(document, table, START, END)


def between_markers(document: str) -> str:
    """The text between `document`'s markers, without the line break after the start one."""
    return generated.between(document, START, END)


def main(argv: Sequence[str] | None = None) -> int:
    return generated.write_main(
        argv,
        "python -m gateway.problem_types",
        "Print the table of problem codes, or write it between a file's markers.",
        readme_table,
        (START, END),
    )


if __name__ == "__main__":
    sys.exit(main())
