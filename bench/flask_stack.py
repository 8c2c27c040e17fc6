"""The original notes' design: Flask checks the bearer JWT with PyJWT and forwards with requests.

bench/chain.py runs it under gunicorn with one worker, `-k sync` and `-k gthread
--threads 8`: `BENCH_UPSTREAM=http://127.0.0.1:PORT GATEWAY_JWT_SECRET=...
gunicorn --chdir bench flask_stack:app`. It accepts the gateway's access tokens:
HS256 with the same secret, issuer `gateway`, no audience (the bench's config sets none).
"""

from __future__ import annotations

import os

import jwt
import requests
from flask import Flask, Response, request

UPSTREAM = os.environ["BENCH_UPSTREAM"]
SECRET = os.environ["GATEWAY_JWT_SECRET"]
ISSUER = "gateway"
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
# Hop-by-hop headers stay on their own hop; requests sets the upstream's Host.
DROP = frozenset({"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"})
DROP_REQUEST = DROP | {"host", "content-length"}

app = Flask(__name__)
upstream = requests.Session()  # keep-alive to the upstream, shared by gthread's threads


@app.route("/", defaults={"path": ""}, methods=METHODS)
@app.route("/<path:path>", methods=METHODS)
def forward(path: str) -> Response:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    try:
        if scheme.lower() != "bearer":
            raise jwt.InvalidTokenError("no bearer token")
        jwt.decode(
            token,
            SECRET,
            algorithms=["HS256"],
            issuer=ISSUER,
            options={"require": ["exp", "iat", "sub", "iss"]},
        )
    except jwt.InvalidTokenError:
        return Response(b'{"error":"unauthorized"}', 401, content_type="application/json")
    headers = {k: v for k, v in request.headers.items() if k.lower() not in DROP_REQUEST}
    answer = upstream.request(
        request.method,
        UPSTREAM + request.full_path.rstrip("?"),
        headers=headers,
        data=request.get_data() or None,
        allow_redirects=False,
        timeout=30,
    )
    return Response(
        answer.content, answer.status_code, content_type=answer.headers.get("Content-Type")
    )
