"""policies/*.yaml → Policy: role inheritance, expansion order, and every problem as FILE:LINE.

YAML texts start with a backslash-newline so that the first line of the
literal is line 1 of the file: the line numbers asserted are the ones a
reader counts in the test.
"""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import sys
from pathlib import Path
from textwrap import dedent

import pytest

from gateway.config import ConfigError, load_config
from gateway.config.policies import Policy, load_policies
from gateway.config.yamlsource import Problems
from tests.conftest import WriteConfig

REPO = Path(__file__).resolve().parents[2]

CHAIN = """\
roles:
  user: {}
  analyst:
    inherits: [user]
  admin:
    inherits: [analyst]
"""

UPSTREAM = """\
upstreams:
  up: {targets: ["http://127.0.0.1:9000"]}
"""


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir()
    return folder


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(dedent(text), encoding="utf-8")
    return path


def load(folder: Path) -> Policy:
    """Load `folder`, failing the test on any problem."""
    problems = Problems()
    policy = load_policies(folder, problems)
    assert problems.items == []
    return policy


def problems_of(folder: Path) -> list[tuple[str, int, str]]:
    """(file name, line, message) of every problem, sorted as `gateway check` prints them."""
    problems = Problems()
    load_policies(folder, problems)
    with pytest.raises(ConfigError) as info:
        problems.raise_if_any()
    return [(Path(p.file).name, p.line, p.message) for p in info.value.problems]


def only_problem(folder: Path) -> tuple[str, int, str]:
    found = problems_of(folder)
    assert len(found) == 1, found
    return found[0]


def config_problems(path: Path) -> list[tuple[str, int, str]]:
    """(path relative to the config's folder, line, message) of every load_config problem."""
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [
        (str(Path(p.file).relative_to(path.parent)), p.line, p.message) for p in info.value.problems
    ]


# --- inheritance and expansion ------------------------------------------------------


def test_chain_expands_to_self_then_inherited(policies: Path) -> None:
    write(policies, "roles.yaml", CHAIN)
    policy = load(policies)
    assert policy.expand("admin") == ("admin", "analyst", "user")
    assert policy.expand("analyst") == ("analyst", "user")
    assert policy.expand("user") == ("user",)
    assert dict(policy.roles) == {
        "user": ("user",),
        "analyst": ("analyst", "user"),
        "admin": ("admin", "analyst", "user"),
    }


def test_unknown_role_expands_to_nothing(policies: Path) -> None:
    write(policies, "roles.yaml", CHAIN)
    assert load(policies).expand("ghost") == ()


def test_diamond_has_no_duplicates(policies: Path) -> None:
    write(
        policies,
        "roles.yaml",
        """\
        roles:
          base: {}
          left: {inherits: [base]}
          right: {inherits: [base]}
          top: {inherits: [left, right]}
        """,
    )
    assert load(policies).expand("top") == ("top", "left", "right", "base")


def test_expansion_is_breadth_first(policies: Path) -> None:
    # depth-first would give a, b, d, c
    write(
        policies,
        "roles.yaml",
        """\
        roles:
          a: {inherits: [b, c]}
          b: {inherits: [d]}
          c: {}
          d: {}
        """,
    )
    assert load(policies).expand("a") == ("a", "b", "c", "d")


def test_role_may_inherit_a_role_defined_later_or_in_another_file(policies: Path) -> None:
    write(policies, "10-admin.yaml", "roles:\n  admin: {inherits: [analyst]}\n")
    write(policies, "20-rest.yml", "roles:\n  analyst: {inherits: [user]}\n  user:\n")
    policy = load(policies)
    assert policy.expand("admin") == ("admin", "analyst", "user")
    assert list(policy.roles) == ["admin", "analyst", "user"]


def test_role_forms_empty_mapping_null_and_empty_inherits(policies: Path) -> None:
    write(
        policies,
        "roles.yaml",
        """\
        roles:
          a: {}
          b:
          c: {inherits: []}
          d:
            inherits:
        """,
    )
    assert dict(load(policies).roles) == {"a": ("a",), "b": ("b",), "c": ("c",), "d": ("d",)}


def test_allowed_roles_are_the_listed_roles_and_their_heirs(policies: Path) -> None:
    write(policies, "roles.yaml", CHAIN)
    policy = load(policies)
    assert policy.allowed_roles(("user",)) == {"user", "analyst", "admin"}
    assert policy.allowed_roles(("analyst",)) == {"analyst", "admin"}
    assert policy.allowed_roles(("admin",)) == {"admin"}
    assert policy.allowed_roles(("analyst", "ghost")) == {"analyst", "admin"}
    assert policy.allowed_roles(("ghost",)) == frozenset()
    assert policy.allowed_roles(()) == frozenset()
    assert isinstance(policy.allowed_roles(("user",)), frozenset)


def test_allowed_roles_in_a_diamond(policies: Path) -> None:
    write(
        policies,
        "roles.yaml",
        """\
        roles:
          base: {}
          left: {inherits: [base]}
          right: {inherits: [base]}
          top: {inherits: [left, right]}
          other: {}
        """,
    )
    policy = load(policies)
    assert policy.allowed_roles(("base",)) == {"base", "left", "right", "top"}
    assert policy.allowed_roles(("left", "other")) == {"left", "top", "other"}


def test_policy_is_frozen(policies: Path) -> None:
    write(policies, "roles.yaml", CHAIN)
    policy = load(policies)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.digest = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        policy.roles["root"] = ("root",)  # type: ignore[index]


# --- files and digest ---------------------------------------------------------------


def test_files_in_name_order_yaml_and_yml_only(policies: Path) -> None:
    write(policies, "b.yml", "roles:\n  b: {}\n")
    write(policies, "a.yaml", "roles:\n  a: {}\n")
    write(policies, "notes.txt", "not: [yaml\n")
    write(policies, ".hidden.yaml", "not: [yaml\n")
    (policies / "sub.yaml").mkdir()
    policy = load(policies)
    assert policy.files == (policies / "a.yaml", policies / "b.yml")
    assert list(policy.roles) == ["a", "b"]


def test_digest_follows_the_bytes_of_the_files(policies: Path) -> None:
    path = write(policies, "roles.yaml", CHAIN)
    first = load(policies).digest
    assert first == load(policies).digest
    assert len(first) == 64
    path.write_text(CHAIN + "  # a comment\n", encoding="utf-8")
    assert load(policies).digest != first


def test_digest_changes_when_text_moves_between_files(policies: Path) -> None:
    write(policies, "a.yaml", "roles:\n  a: {}\n")
    write(policies, "b.yaml", "roles:\n  b: {}\n")
    before = load(policies).digest
    write(policies, "a.yaml", "roles:\n  a: {}\nroles:\n")
    write(policies, "b.yaml", "  b: {}\n")
    problems = Problems()
    assert load_policies(policies, problems).digest != before


def test_empty_folder_gives_an_empty_policy(policies: Path) -> None:
    policy = load(policies)
    assert dict(policy.roles) == {}
    assert policy.files == ()
    assert policy.digest == hashlib.sha256().hexdigest()
    assert policy == Policy()


def test_empty_file_defines_no_roles(policies: Path) -> None:
    write(policies, "empty.yaml", "# nothing yet\n")
    write(policies, "null.yaml", "roles:\n")
    policy = load(policies)
    assert dict(policy.roles) == {}
    assert len(policy.files) == 2


# --- problems -----------------------------------------------------------------------


def test_missing_folder(tmp_path: Path) -> None:
    assert only_problem(tmp_path / "nowhere") == ("nowhere", 0, "policies folder not found")


def test_unknown_top_level_key(policies: Path) -> None:
    write(
        policies,
        "roles.yaml",
        """\
        roles:
          user: {}
        role:
          admin: {}
        """,
    )
    assert only_problem(policies) == (
        "roles.yaml",
        3,
        "role: unknown key `role`; did you mean `roles`?",
    )


def test_unknown_key_in_a_role(policies: Path) -> None:
    write(
        policies,
        "roles.yaml",
        """\
        roles:
          user: {}
          admin:
            inherits: [user]
            permissions: [all]
        """,
    )
    assert only_problem(policies) == (
        "roles.yaml",
        5,
        "roles.admin.permissions: unknown key (known keys: inherits)",
    )


def test_a_misspelt_key_in_a_role_names_the_key_meant(policies: Path) -> None:
    write(policies, "roles.yaml", "roles:\n  user: {}\n  admin:\n    inherit: [user]\n")
    assert only_problem(policies) == (
        "roles.yaml",
        4,
        "roles.admin.inherit: unknown key `inherit`; did you mean `inherits`?",
    )


def test_role_defined_twice_in_one_file_names_both_places(policies: Path) -> None:
    write(
        policies,
        "roles.yaml",
        """\
        roles:
          user: {}
          admin: {}
          user: {inherits: [admin]}
        """,
    )
    first = policies / "roles.yaml"
    assert only_problem(policies) == ("roles.yaml", 4, f"roles.user: already defined at {first}:2")


def test_role_defined_in_two_files_names_both_places(policies: Path) -> None:
    write(policies, "a.yaml", "roles:\n  user: {}\n  admin: {}\n")
    write(policies, "b.yaml", "roles:\n  ops: {}\n  admin: {inherits: [user]}\n")
    first = policies / "a.yaml"
    assert only_problem(policies) == ("b.yaml", 3, f"roles.admin: already defined at {first}:3")


def test_undefined_inherited_role(policies: Path) -> None:
    write(
        policies,
        "roles.yaml",
        """\
        roles:
          user: {}
          admin:
            inherits:
              - user
              - superuser
        """,
    )
    assert only_problem(policies) == (
        "roles.yaml",
        6,
        "roles.admin.inherits[1]: unknown role 'superuser' (roles: admin, user)",
    )


def test_inherited_role_listed_twice(policies: Path) -> None:
    write(policies, "roles.yaml", "roles:\n  user: {}\n  admin: {inherits: [user, user]}\n")
    assert only_problem(policies) == (
        "roles.yaml",
        3,
        "roles.admin.inherits[1]: 'user' is listed twice",
    )


def test_two_cycle(policies: Path) -> None:
    write(
        policies,
        "roles.yaml",
        """\
        roles:
          user: {}
          admin:
            inherits: [analyst]
          analyst:
            inherits: [admin, user]
        """,
    )
    assert only_problem(policies) == ("roles.yaml", 3, "roles: cycle admin → analyst → admin")


def test_three_cycle_across_files_starts_at_the_first_defined_role(policies: Path) -> None:
    write(policies, "a.yaml", "roles:\n  entry: {inherits: [c]}\n  a: {inherits: [b]}\n")
    write(policies, "b.yaml", "roles:\n  b: {inherits: [c]}\n  c: {inherits: [a]}\n")
    # the walk meets the cycle at c (from entry); it is reported from a, defined first
    assert only_problem(policies) == ("a.yaml", 3, "roles: cycle a → b → c → a")


def test_self_cycle(policies: Path) -> None:
    write(policies, "roles.yaml", "roles:\n  user: {}\n  admin: {inherits: [user, admin]}\n")
    assert only_problem(policies) == ("roles.yaml", 3, "roles: cycle admin → admin")


def test_cycle_still_expands_without_looping(policies: Path) -> None:
    write(policies, "roles.yaml", "roles:\n  a: {inherits: [b]}\n  b: {inherits: [a]}\n")
    problems = Problems()
    policy = load_policies(policies, problems)
    assert len(problems.items) == 1
    assert policy.expand("a") == ("a", "b")


@pytest.mark.parametrize("name", ["bad role", "-admin", "_x", "a/b", "ünï"])
def test_bad_role_name(policies: Path, name: str) -> None:
    write(policies, "roles.yaml", f'roles:\n  user: {{}}\n  "{name}": {{}}\n')
    assert only_problem(policies) == (
        "roles.yaml",
        3,
        f"roles.{name}: {name!r} is not a role name "
        "(letters, digits, _ . -; starting with a letter or digit)",
    )


def test_yaml_syntax_error_in_a_policy_file(policies: Path) -> None:
    write(policies, "a.yaml", "roles:\n  user: {}\n")
    write(
        policies,
        "b.yaml",
        """\
        roles:
          admin: {inherits: [user}
        """,
    )
    assert only_problem(policies) == (
        "b.yaml",
        2,
        "YAML syntax: unclosed bracket: the [ here has no closing ] (found `}` at 2:26)",
    )


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("- user\n- admin\n", 1, "a policy file is a mapping: roles: {NAME: {...}}"),
        ("roles: [user, admin]\n", 1, "roles: expected a mapping of role names"),
        ("roles:\n  user: admin\n", 2, "roles.user: expected {} or {inherits: [ROLE]}"),
        ("roles:\n  user: [admin]\n", 2, "roles.user: expected {} or {inherits: [ROLE]}"),
        ("roles:\n  admin: {inherits: user}\n", 2, "roles.admin.inherits: expected a list"),
        ("roles:\n  [a]: {}\n", 2, "roles: keys must be role names"),
    ],
)
def test_malformed_policy_file(policies: Path, text: str, line: int, message: str) -> None:
    write(policies, "roles.yaml", text)
    assert only_problem(policies) == ("roles.yaml", line, message)


def test_every_problem_is_reported_sorted_by_file_then_line(policies: Path) -> None:
    write(
        policies,
        "a.yaml",
        """\
        roles:
          user: {}
          x: {inherits: [y]}
          y: {inherits: [x, nobody]}
        extra: 1
        """,
    )
    write(policies, "b.yaml", "roles:\n  user: {}\n  bad name: {}\n")
    first = policies / "a.yaml"
    assert problems_of(policies) == [
        ("a.yaml", 3, "roles: cycle x → y → x"),
        ("a.yaml", 4, "roles.y.inherits[1]: unknown role 'nobody' (roles: user, x, y)"),
        ("a.yaml", 5, "extra: unknown key (known keys: roles)"),
        ("b.yaml", 2, f"roles.user: already defined at {first}:2"),
        (
            "b.yaml",
            3,
            "roles.bad name: 'bad name' is not a role name "
            "(letters, digits, _ . -; starting with a letter or digit)",
        ),
    ]


# --- wired into load_config ---------------------------------------------------------


def test_config_carries_the_policy(write_config: WriteConfig, policies: Path) -> None:
    write(policies, "roles.yaml", CHAIN)
    config = load_config(
        write_config(UPSTREAM + "routes:\n  - {path: /a, upstream: up, roles: [user]}\n")
    )
    assert config.policy.expand("admin") == ("admin", "analyst", "user")
    assert config.policy.files == (policies / "roles.yaml",)
    assert config.policy.allowed_roles(config.routes[0].roles) == {"user", "analyst", "admin"}


def test_unknown_route_role_at_the_roles_line(write_config: WriteConfig, policies: Path) -> None:
    write(policies, "roles.yaml", CHAIN)
    path = write_config(
        UPSTREAM
        + dedent(
            """\
            routes:
              - path: /a
                upstream: up
                roles: [analyst, auditor]
              - path: /b
                upstream: up
                roles:
                  - admin
                  - root
                  - root
            """
        )
    )
    assert config_problems(path) == [
        (
            "routes.yaml",
            6,
            "routes[0].roles: unknown role 'auditor' (roles: admin, analyst, user)",
        ),
        ("routes.yaml", 9, "routes[1].roles: unknown role 'root' (roles: admin, analyst, user)"),
    ]


def test_unknown_model_role_and_default_role(write_config: WriteConfig, policies: Path) -> None:
    write(policies, "roles.yaml", CHAIN)
    path = write_config(
        """\
        auth:
          default_role: guest
        models:
          chat: {url: http://127.0.0.1:9002, roles: [user, bot]}
        """
    )
    assert config_problems(path) == [
        ("routes.yaml", 2, "auth.default_role: unknown role 'guest' (roles: admin, analyst, user)"),
        ("routes.yaml", 4, "models.chat.roles: unknown role 'bot' (roles: admin, analyst, user)"),
    ]


def test_defined_default_role_is_accepted(write_config: WriteConfig, policies: Path) -> None:
    write(policies, "roles.yaml", CHAIN)
    config = load_config(write_config("auth:\n  default_role: analyst\n"))
    assert config.auth.default_role == "analyst"


def test_bad_default_role_name(write_config: WriteConfig, policies: Path) -> None:
    write(policies, "roles.yaml", CHAIN)
    path = write_config("auth:\n  default_role: 'no such'\n")
    assert config_problems(path) == [
        ("routes.yaml", 2, "auth.default_role: 'no such' is not a role name"),
    ]


def test_roles_in_an_empty_policy_folder(write_config: WriteConfig, policies: Path) -> None:
    path = write_config(UPSTREAM + "routes:\n  - {path: /a, upstream: up, roles: [user]}\n")
    assert config_problems(path) == [
        ("routes.yaml", 4, "routes[0].roles: unknown role 'user' (roles: none defined)"),
    ]


def test_missing_folder_is_fine_when_no_role_is_named(write_config: WriteConfig) -> None:
    config = load_config(
        write_config(UPSTREAM + "policies: gone/\nroutes:\n  - {path: /a, upstream: up}\n")
    )
    assert config.policy == Policy()


def test_missing_folder_with_roles_named_is_reported_at_policies(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    path = write_config(
        UPSTREAM + "policies: gone/\nroutes:\n  - {path: /a, upstream: up, roles: [user]}\n"
    )
    assert config_problems(path) == [
        ("routes.yaml", 3, f"policies: policies folder not found: {tmp_path / 'gone'}"),
    ]


def test_missing_default_folder_is_reported_at_the_first_role(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    path = write_config(
        UPSTREAM
        + "routes:\n"
        + "  - {path: /a, upstream: up}\n"
        + "  - {path: /b, upstream: up, roles: [user]}\n"
        + "  - {path: /c, upstream: up, roles: [admin]}\n"
    )
    assert config_problems(path) == [
        ("routes.yaml", 5, f"routes[1].roles: policies folder not found: {tmp_path / 'policies'}"),
    ]


def test_routes_and_policy_problems_come_out_together_sorted(
    write_config: WriteConfig, policies: Path
) -> None:
    write(policies, "b.yaml", "roles:\n  user: {}\n  admin: {inherits: [nobody]}\n")
    write(policies, "a.yaml", "roles:\n  ops: {bogus: 1}\n")
    path = write_config(
        UPSTREAM
        + dedent(
            """\
            routes:
              - path: /a
                upstream: missing
                roles: [ghost]
            """
        )
    )
    assert config_problems(path) == [
        ("policies/a.yaml", 2, "roles.ops.bogus: unknown key (known keys: inherits)"),
        (
            "policies/b.yaml",
            3,
            "roles.admin.inherits[0]: unknown role 'nobody' (roles: admin, ops, user)",
        ),
        ("routes.yaml", 5, "routes[0].upstream: undefined upstream 'missing' (upstreams: up)"),
        ("routes.yaml", 6, "routes[0].roles: unknown role 'ghost' (roles: admin, ops, user)"),
    ]


def test_shipped_routes_yaml_and_policies() -> None:
    config = load_config(REPO / "routes.yaml")
    assert config.policies_dir == REPO / "policies"
    assert config.policy.files == (REPO / "policies" / "roles.yaml",)
    assert config.policy.expand("admin") == ("admin", "analyst", "user")
    assert config.policy.expand("analyst") == ("analyst", "user")
    assert config.policy.expand("user") == ("user",)


# --- gateway check ------------------------------------------------------------------


def test_gateway_check_prints_policy_problems_and_exits_1(
    write_config: WriteConfig, policies: Path, tmp_path: Path
) -> None:
    write(
        policies,
        "roles.yaml",
        """\
        roles:
          user: {}
          admin:
            inherits: [admin]
        """,
    )
    path = write_config(UPSTREAM + "routes:\n  - {path: /a, upstream: up, roles: [boss]}\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{policies / 'roles.yaml'}:3: roles: cycle admin → admin",
        f"{path}:4: routes[0].roles: unknown role 'boss' (roles: admin, user)",
    ]


def test_gateway_check_accepts_a_valid_policy(
    write_config: WriteConfig, policies: Path, tmp_path: Path
) -> None:
    write(policies, "roles.yaml", CHAIN)
    path = write_config(UPSTREAM + "routes:\n  - {path: /a, upstream: up, roles: [analyst]}\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{path}: ok")
