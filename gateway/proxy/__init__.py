"""Upstreams: pools and balancing (pool.py, balancer.py), health (health.py), the lean
HTTP client (lean.py), the streaming forward (forward.py, headers.py) and model calls
with fallback and token quotas (models.py, metering.py)."""
