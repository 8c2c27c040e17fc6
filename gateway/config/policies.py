"""policies/*.yaml → a validated `Policy`: each role with every role it inherits.

A policy file is `roles: {NAME: {inherits: [NAME, ...]}, ...}`; a role with no
parents is `NAME: {}`. Files are read in name order and their roles merged; a
role defined twice, an inherited role never defined, an inheritance cycle or
an unknown key is a problem at its FILE:LINE, like any routes.yaml problem.
The expansion is computed once here, so the policy stage does one set lookup
per request.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import yaml

from gateway.config.yamlsource import Invalid, Problems, Value, read_yaml

ROLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
POLICY_SUFFIXES = (".yaml", ".yml")
ADMIN_ROLE = "admin"  # the role the admin API, the dashboard and /metrics ask for


def _no_roles() -> Mapping[str, tuple[str, ...]]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Policy:
    """The roles of policies/; built once per config load, never changed."""

    # role → (role, then every role it inherits, transitively, breadth-first, no
    # duplicates): exactly the X-User-Roles header value, in order
    roles: Mapping[str, tuple[str, ...]] = field(default_factory=_no_roles)
    files: tuple[Path, ...] = ()  # the policy files read, in load order
    digest: str = hashlib.sha256().hexdigest()  # over the files' names and bytes

    def expand(self, role: str) -> tuple[str, ...]:
        """`role` and every role it inherits; () for a role the policy does not define."""
        return self.roles.get(role, ())

    def allowed_roles(self, route_roles: tuple[str, ...]) -> frozenset[str]:
        """Every defined role that is one of `route_roles` or inherits one of them."""
        wanted = frozenset(route_roles)
        return frozenset(role for role, chain in self.roles.items() if wanted.intersection(chain))


@dataclass(frozen=True, slots=True)
class _Role:
    name: str
    inherits: tuple[Value, ...]  # each item, for its own line
    file: str
    line: int


def load_policies(directory: Path, problems: Problems) -> Policy:
    """Read every *.yaml / *.yml in `directory` (name order); report problems, return the rest."""
    if not directory.is_dir():
        problems.add(str(directory), 0, "policies folder not found")
        return Policy()
    files = sorted(
        (
            p
            for p in directory.iterdir()
            if p.suffix in POLICY_SUFFIXES and not p.name.startswith(".") and p.is_file()
        ),
        key=lambda p: p.name,
    )
    digest = hashlib.sha256()
    defined: dict[str, _Role] = {}
    for path in files:
        try:
            data = path.read_bytes()  # read once: the digest matches what was parsed
        except OSError as exc:
            problems.add(str(path), 0, f"cannot read: {exc.strerror or exc}")
            continue
        # name and length framed, so moving text between files changes the digest
        digest.update(f"{path.name}\0{len(data)}\0".encode())
        digest.update(data)
        root = read_yaml(path, problems, data)
        if root is not None:
            for role in _roles_of(root, problems):
                first = defined.get(role.name)
                if first is not None:
                    problems.add(
                        role.file,
                        role.line,
                        f"roles.{role.name}: already defined at {first.file}:{first.line}",
                    )
                else:
                    defined[role.name] = role

    parents = _parents(defined, problems)
    for cycle in _cycles(parents):
        start = defined[cycle[0]]  # the earliest-defined role of the cycle
        problems.add(start.file, start.line, f"roles: cycle {' → '.join(cycle)}")
    return Policy(
        roles=MappingProxyType({name: _expand(name, parents) for name in defined}),
        files=tuple(files),
        digest=digest.hexdigest(),
    )


def _roles_of(root: Value, problems: Problems) -> Iterator[_Role]:
    """The roles one file defines, in file order; malformed entries are reported, skipped."""
    try:
        top = root.section(problems)
    except Invalid:
        problems.add(root.file, root.line, "a policy file is a mapping: roles: {NAME: {...}}")
        return
    roles = top.get("roles")
    top.check_unknown("roles")
    if roles is None:
        return
    if not isinstance(roles.node, yaml.MappingNode):
        problems.add(roles.file, roles.line, "roles: expected a mapping of role names")
        return
    # walked by hand, not as a Section: a name given twice must name both places
    for key_node, value_node in roles.node.value:
        line = key_node.start_mark.line + 1
        if not isinstance(key_node, yaml.ScalarNode):
            problems.add(roles.file, line, "roles: keys must be role names")
            continue
        name = str(key_node.value)
        value = Value(value_node, roles.file, f"roles.{name}", line)
        if not ROLE_NAME.match(name):
            problems.add(
                roles.file,
                line,
                f"roles.{name}: {name!r} is not a role name "
                "(letters, digits, _ . -; starting with a letter or digit)",
            )
            continue
        if value.is_null():
            yield _Role(name, (), roles.file, line)
            continue
        if not value.is_mapping():
            problems.add(roles.file, line, f"roles.{name}: expected {{}} or {{inherits: [ROLE]}}")
            continue
        sec = value.section(problems)
        inherits: list[Value] = sec.field("inherits", Value.items, [])
        sec.check_unknown("inherits")
        yield _Role(name, tuple(inherits), roles.file, line)


def _parents(defined: dict[str, _Role], problems: Problems) -> dict[str, tuple[str, ...]]:
    """role → the defined roles it inherits directly; unknown or repeated names reported."""
    known = ", ".join(sorted(defined)) or "none defined"
    parents: dict[str, tuple[str, ...]] = {}
    for role in defined.values():
        names: list[str] = []
        for item in role.inherits:
            try:
                name = item.text()
            except Invalid as exc:
                problems.add(item.file, item.line, str(exc))
                continue
            if name not in defined:
                problems.add(
                    item.file, item.line, f"{item.key}: unknown role {name!r} (roles: {known})"
                )
            elif name in names:
                problems.add(item.file, item.line, f"{item.key}: {name!r} is listed twice")
            else:
                names.append(name)
        parents[role.name] = tuple(names)
    return parents


def _expand(role: str, parents: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
    """`role`, then its parents, then theirs: breadth-first, each role once."""
    chain = [role]
    seen = {role}
    for current in chain:  # grows while walked: a breadth-first queue
        for parent in parents.get(current, ()):
            if parent not in seen:
                seen.add(parent)
                chain.append(parent)
    return tuple(chain)


def _cycles(parents: Mapping[str, tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Each inheritance cycle met by a depth-first walk, from its earliest-defined role.

    Iterative, so a long chain of roles cannot exhaust Python's recursion limit.
    """
    order = {name: i for i, name in enumerate(parents)}
    done: set[str] = set()
    cycles: list[tuple[str, ...]] = []
    for start in parents:
        if start in done:
            continue
        path = [start]
        on_path = {start}
        stack = [iter(parents[start])]
        while stack:
            for parent in stack[-1]:
                if parent in on_path:
                    ring = path[path.index(parent) :]
                    first = ring.index(min(ring, key=order.__getitem__))
                    ring = ring[first:] + ring[:first]
                    cycles.append((*ring, ring[0]))
                elif parent not in done:
                    path.append(parent)
                    on_path.add(parent)
                    stack.append(iter(parents[parent]))
                    break
            else:
                stack.pop()
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
    return cycles
