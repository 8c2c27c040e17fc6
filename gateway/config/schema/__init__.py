"""The typed, frozen form of routes.yaml, one module per section; each key documented in place."""
