"""The gateway's pure security layer: password hashing, signing keys, JWTs, dev certificates.

Nothing here does I/O on the request path or imports aiohttp: `passwords`
hashes and checks passwords (argon2id), `keys` loads the configured signing
and verification keys (and publishes the public ones as a JWK Set),
`tokens` issues and verifies the access tokens, and `certs` makes the local
CA and server certificate of `gateway certs dev`. Handlers, middleware and
the CLI are the thin glue around them.
"""
