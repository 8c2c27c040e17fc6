"""The middleware order is fixed and visible in one place (gateway/app.py `chain`)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

from gateway.app import build_app, chain
from gateway.config import load_config
from gateway.config.loader import KNOWN_HANDLERS
from gateway.handlers.registry import ROUTABLE
from gateway.middleware.request_id import new_request_id
from gateway.runtime import HOLDER, Runtime, RuntimeHolder
from gateway.services import STORES
from gateway.state.stores import Stores

ROOT = Path(__file__).resolve().parent.parent


async def test_the_chain_order_is_pinned() -> None:
    config = load_config(ROOT / "routes.yaml")
    holder = RuntimeHolder(Runtime.build(config))
    try:
        names = [stage.__name__ for stage in chain(holder, Stores())]
    finally:
        await holder.current.close()
    assert names == [
        "request_id_stage",
        "errors_stage",
        "audit_stage",
        "cors_stage",
        "route_stage",
        "authentication_stage",
        "policy_stage",
        "rate_limit_stage",
    ]


async def test_the_app_uses_exactly_that_chain() -> None:
    config = load_config(ROOT / "routes.yaml")
    app = build_app(config)
    try:
        expected = [s.__name__ for s in chain(app[HOLDER], app[STORES])]
        assert [m.__name__ for m in app.middlewares] == expected
    finally:
        await app[HOLDER].current.close()


def test_routable_handlers_match_what_config_accepts() -> None:
    assert set(ROUTABLE) == set(KNOWN_HANDLERS)


def test_every_builtin_route_has_a_handler() -> None:
    from gateway.handlers.registry import BUILTIN
    from gateway.runtime import builtin_routes

    assert {r.handler for r in builtin_routes().values()} == set(BUILTIN)


def test_new_request_ids_are_random_version_4_uuids() -> None:
    ids = {new_request_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    for text in list(ids)[:500]:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


FORK_SCRIPT = """
import os
from gateway.middleware.request_id import new_request_id
new_request_id()  # the parent holds a batch of randomness now
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    try:
        os.write(write, new_request_id().encode())
    finally:
        os._exit(0)
os.close(write)
child = os.read(read, 64).decode()
os.waitpid(pid, 0)
print(child, new_request_id())
"""


def test_a_forked_worker_draws_request_ids_of_its_own() -> None:
    """`gateway serve --workers` forks: the ids the parent fetched in advance stay its own.
    (Forked in a process of its own: a fork of the test runner would copy its threads.)"""
    done = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    child, parent = done.stdout.split()
    assert len(child) == 36
    assert child != parent
