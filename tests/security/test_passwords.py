"""PasswordService: argon2id round trips, unknown users, rehashing, and the policy's messages.

Hashers here are cheap (time_cost=1, 8 KiB) so the suite stays fast; one test
checks the service's own default is argon2id. Nothing asserts on timing: the
unknown-user path is shown to run argon2 by counting verify calls.
"""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher

from gateway.problems import GatewayError
from gateway.security.passwords import MAX_LENGTH, PasswordService

PASSWORD = "correct horse battery staple"


def cheap(time_cost: int = 1, memory_cost: int = 8) -> PasswordHasher:
    return PasswordHasher(time_cost=time_cost, memory_cost=memory_cost, parallelism=1)


class CountingHasher(PasswordHasher):
    """A PasswordHasher that records the hash every verify call was given."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.verified: list[str] = []

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:  # type: ignore[override]
        self.verified.append(hash if isinstance(hash, str) else hash.decode())
        return super().verify(hash, password)


@pytest.fixture
def service() -> PasswordService:
    return PasswordService(12, cheap())


def test_default_hasher_is_argon2id() -> None:
    stored = PasswordService(12).hash(PASSWORD)
    assert stored.startswith("$argon2id$")


def test_round_trip(service: PasswordService) -> None:
    stored = service.hash(PASSWORD)
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored
    assert service.verify(stored, PASSWORD) == (True, None)


def test_hashes_are_salted(service: PasswordService) -> None:
    assert service.hash(PASSWORD) != service.hash(PASSWORD)


def test_wrong_password(service: PasswordService) -> None:
    stored = service.hash(PASSWORD)
    assert service.verify(stored, PASSWORD + "!") == (False, None)
    assert service.verify(stored, "") == (False, None)


def test_unknown_user_runs_argon2_against_the_dummy() -> None:
    hasher = CountingHasher()
    service = PasswordService(12, hasher)

    assert service.verify(None, PASSWORD) == (False, None)

    # One real argon2 verification, against a real argon2id hash that is not
    # any user's: the work a known user's login does.
    assert len(hasher.verified) == 1
    assert hasher.verified[0].startswith("$argon2id$")
    assert service.verify(None, "") == (False, None)
    assert hasher.verified[1] == hasher.verified[0]


def test_known_user_runs_argon2_once() -> None:
    hasher = CountingHasher()
    service = PasswordService(12, hasher)
    stored = service.hash(PASSWORD)
    assert service.verify(stored, "wrong password") == (False, None)
    assert hasher.verified == [stored]


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "not a hash",
        "$argon2id$v=19$m=8,t=1,p=1$garbage",
        "$2b$12$KIXQJb3b1nIYjJ9r3ZcW6eH1Yg6Ykc8oJ0A1o8HfQ0J2i5t7u9W6a",  # bcrypt
    ],
)
def test_corrupt_hash_is_a_mismatch_not_an_error(service: PasswordService, stored: str) -> None:
    assert service.verify(stored, PASSWORD) == (False, None)


def test_non_string_password_is_a_mismatch(service: PasswordService) -> None:
    stored = service.hash(PASSWORD)
    assert service.verify(stored, None) == (False, None)  # type: ignore[arg-type]
    assert service.verify(None, 42) == (False, None)  # type: ignore[arg-type]


def test_rehash_when_parameters_change() -> None:
    old = PasswordService(12, cheap(time_cost=1, memory_cost=8))
    stored = old.hash(PASSWORD)
    current = PasswordService(12, cheap(time_cost=2, memory_cost=16))

    ok, new_hash = current.verify(stored, PASSWORD)

    assert ok is True
    assert new_hash is not None
    assert new_hash != stored
    assert "m=16,t=2,p=1" in new_hash
    # The fresh hash is current: it verifies and asks for nothing more.
    assert current.verify(new_hash, PASSWORD) == (True, None)


def test_no_rehash_for_a_wrong_password_under_old_parameters() -> None:
    stored = PasswordService(12, cheap(time_cost=1)).hash(PASSWORD)
    current = PasswordService(12, cheap(time_cost=2))
    assert current.verify(stored, "wrong password") == (False, None)


def test_min_length_is_bounded() -> None:
    with pytest.raises(ValueError, match="min_length"):
        PasswordService(0, cheap())


def weak(service: PasswordService, password: object, username: str | None = None) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        service.check_policy(password, username)
    assert caught.value.status == 400
    assert caught.value.code == "weak_password"
    return caught.value


@pytest.mark.parametrize(
    ("password", "username", "detail"),
    [
        ("short", None, "password must be at least 12 characters long"),
        ("elevenchars", None, "password must be at least 12 characters long"),
        ("ab" * 513, None, f"password must be at most {MAX_LENGTH} characters long"),
        ("Alice.Liddell", "alice.liddell", "password must not be the same as the username"),
        ("alice.liddell", "ALICE.LIDDELL", "password must not be the same as the username"),
        ("aaaaaaaaaaaaaaaa", None, "password must not be a single character repeated"),
        ("............", "bob", "password must not be a single character repeated"),
        (12345678901234, None, "password must be a string"),
        (None, None, "password must be a string"),
    ],
)
def test_policy_messages(
    service: PasswordService, password: object, username: str | None, detail: str
) -> None:
    assert weak(service, password, username).detail == detail


def test_policy_min_length_names_the_configured_number() -> None:
    service = PasswordService(20, cheap())
    assert weak(service, "nineteen-characters").detail == (
        "password must be at least 20 characters long"
    )


@pytest.mark.parametrize(
    "password",
    [
        "correct horse battery staple",
        "x" * 11 + "y",  # two distinct characters is enough for the repeat rule
        "é" * 11 + "ü",  # characters, not bytes
        "ab" * 512,  # exactly the maximum
    ],
)
def test_policy_accepts(service: PasswordService, password: str) -> None:
    assert accepted(service, password, "alice")


def test_policy_username_rule_only_for_equality(service: PasswordService) -> None:
    assert accepted(service, "alice.liddell-2024", "alice.liddell")  # holds the name: fine
    refused = weak(service, "alice.liddell", "alice.liddell")
    assert refused.detail == "password must not be the same as the username"


def accepted(service: PasswordService, password: str, username: str) -> bool:
    """Whether the policy lets `password` through."""
    try:
        service.check_policy(password, username=username)
    except GatewayError:
        return False
    return True
