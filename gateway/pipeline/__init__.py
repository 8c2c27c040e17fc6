"""The gateway's decisions, one module each, free of aiohttp.

A request is judged in this order (README "The request path"):

  route           gateway/pipeline/route.py           400 bad_path, 404, 405
  authentication  gateway/pipeline/authentication.py  401 (RFC 6750)
  policy          gateway/pipeline/policy.py          403 role_forbidden
  rate limit      gateway/pipeline/rate_limit.py      429 rate_limited, token_quota

Each decision reads a `RequestView` (gateway/pipeline/verdict.py) and the
state handed to it, and answers `Pass` or `Deny(code, status, detail,
headers)`. The middleware stages (gateway/middleware/) are thin adapters
around them; `explain` (gateway/pipeline/explain.py, which replays the
decisions without proxying), `/metrics`' access check and the Redis gate ask
the same functions, so a message, a bucket name or a rule exists once. The
client IP they read comes from gateway/pipeline/forwarded.py.
"""
