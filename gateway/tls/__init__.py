"""TLS, by job: files.py (pair loading, the config loader's checks), server.py (the
listener's context and its rotation), upstream.py (upstream client contexts) and
redirect.py (the plain-HTTP redirect listener, imported by gateway/server/run.py only).

The config loader imports gateway.tls.files, so nothing here but redirect.py imports
aiohttp, and this file imports nothing: `gateway check` stays quick.
"""
