"""The gateway's pure security layer: password hashing, signing keys, and JWTs.

Nothing here does I/O on the request path or imports aiohttp: `passwords`
hashes and checks passwords (argon2id), `keys` loads the configured signing
and verification keys (and publishes the public ones as a JWK Set), and
`tokens` issues and verifies the access tokens. Handlers and middleware are
the thin glue around them.
"""
