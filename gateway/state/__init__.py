"""State every gateway instance must agree on: revocations, user status, login failures.

In-process by default; shared through Redis when GATEWAY_REDIS_URL is set.
"""
