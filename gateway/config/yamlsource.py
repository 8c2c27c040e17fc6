"""YAML read as nodes that remember FILE:LINE, so every config error can name both.

`read_yaml` composes the document (never constructs arbitrary objects), and
`Section` gives typed access to a mapping while recording which keys were
read, so unknown keys become errors instead of being ignored.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import yaml

from gateway.config.units import expand_env

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    file: str
    line: int
    message: str
    column: int | None = None  # given for YAML syntax errors: FILE:LINE:COLUMN

    def __str__(self) -> str:
        where = f"{self.line}:{self.column}" if self.column is not None else str(self.line)
        return f"{self.file}:{where}: {self.message}"


class ConfigError(Exception):
    """One or more problems found in routes.yaml or policies/."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


@dataclass
class Problems:
    """Collects every problem of a load so `gateway check` can list them all."""

    items: list[ConfigProblem] = field(default_factory=list)

    def add(self, file: str, line: int, message: str, column: int | None = None) -> None:
        self.items.append(ConfigProblem(file, line, message, column))

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(sorted(self.items, key=lambda p: (p.file, p.line)))


class Invalid(Exception):
    """Raised inside a field conversion; the message names the key, FILE:LINE is added.

    `line` is where the fault is when that is not the field's own line (a list item).
    """

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


@dataclass(frozen=True, slots=True)
class Value:
    """A YAML node with where it came from."""

    node: yaml.Node
    file: str
    key: str  # dotted path of the key, e.g. upstreams.analytics.timeout
    key_line: int | None = None  # line of `key:` when the value came from a mapping

    @property
    def line(self) -> int:
        """The line of the key (a block value starts below it), else of the node."""
        return self.key_line if self.key_line is not None else self.node.start_mark.line + 1

    def scalar(self) -> str | int | float | bool | None:
        if not isinstance(self.node, yaml.ScalarNode):
            raise Invalid(f"{self.key}: expected a single value", self.line)
        tag = self.node.tag
        if tag == "tag:yaml.org,2002:null":
            return None
        if tag in _TYPED_TAGS:
            # the per-tag constructor keeps no state (construct_object caches every node)
            return _LOADER.yaml_constructors[tag](_LOADER, self.node)  # type: ignore[no-any-return]
        text = str(self.node.value)
        if "${" not in text:
            return text
        try:
            return expand_env(text)
        except ValueError as exc:
            raise Invalid(f"{self.key}: {exc}", self.line) from None

    def text(self) -> str:
        value = self.scalar()
        if not isinstance(value, str) or value == "":
            raise Invalid(f"{self.key}: expected a non-empty string", self.line)
        return value

    def boolean(self) -> bool:
        value = self.scalar()
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"  # after ${ENV} expansion booleans arrive as text
        if not isinstance(value, bool):
            raise Invalid(f"{self.key}: expected true or false", self.line)
        return value

    def integer(self, minimum: int = 0, maximum: int | None = None) -> int:
        value = self.scalar()
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)  # after ${ENV} expansion numbers arrive as text
        if not isinstance(value, int) or isinstance(value, bool):
            raise Invalid(f"{self.key}: expected a whole number", self.line)
        if value < minimum:
            raise Invalid(f"{self.key}: must be at least {minimum}", self.line)
        if maximum is not None and value > maximum:
            raise Invalid(f"{self.key}: must be at most {maximum}", self.line)
        return value

    def convert(self, parse: Callable[[str | int | float], T]) -> T:
        """`parse` the scalar as written (YAML numbers stay numbers): for the unit parsers."""
        value = self.scalar()
        if value is None or isinstance(value, bool):
            raise Invalid(f"{self.key}: expected a value", self.line)
        try:
            return parse(value)
        except ValueError as exc:
            raise Invalid(f"{self.key}: {exc}", self.line) from None

    def convert_text(self, parse: Callable[[str], T]) -> T:
        """`parse` the value, which must be a non-empty string."""
        text = self.text()
        try:
            return parse(text)
        except ValueError as exc:
            raise Invalid(f"{self.key}: {exc}", self.line) from None

    def items(self) -> list[Value]:
        if isinstance(self.node, yaml.ScalarNode) and self.node.value == "":
            return []
        if not isinstance(self.node, yaml.SequenceNode):
            raise Invalid(f"{self.key}: expected a list", self.line)
        return [Value(n, self.file, f"{self.key}[{i}]") for i, n in enumerate(self.node.value)]

    def is_mapping(self) -> bool:
        return isinstance(self.node, yaml.MappingNode)

    def is_null(self) -> bool:
        return self.node.tag == "tag:yaml.org,2002:null"

    def section(self, problems: Problems) -> Section:
        if not isinstance(self.node, yaml.MappingNode):
            if self.is_null():
                return Section({}, self.file, self.line, self.key, problems)
            hint = missing_space_hint(self.node)
            raise Invalid(f"{self.key}: expected a mapping of keys{hint}", self.line)
        entries: dict[str, Value] = {}
        for key_node, value_node in self.node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                where = f"{self.key}: " if self.key else ""
                problems.add(self.file, key_node.start_mark.line + 1, f"{where}keys must be names")
                continue
            name = str(key_node.value)
            dotted = f"{self.key}.{name}" if self.key else name
            if name in entries:
                problems.add(self.file, key_node.start_mark.line + 1, f"{dotted}: duplicate key")
                continue
            entries[name] = Value(value_node, self.file, dotted, key_node.start_mark.line + 1)
        return Section(entries, self.file, self.line, self.key, problems)


class Section:
    """A mapping whose every key must be read, or it is reported as unknown."""

    def __init__(
        self, entries: dict[str, Value], file: str, line: int, key: str, problems: Problems
    ) -> None:
        self._entries = entries
        self._read: set[str] = set()
        self.file = file
        self.line = line
        self.key = key
        self.problems = problems

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[tuple[str, Value]]:
        self._read.update(self._entries)
        return iter(list(self._entries.items()))

    def get(self, name: str) -> Value | None:
        self._read.add(name)
        value = self._entries.get(name)
        return None if value is None or value.is_null() else value

    def subsection(self, name: str) -> Section | None:
        """Key `name`'s mapping, or None when it is absent or not a mapping (reported)."""
        value = self.get(name)
        if value is None:
            return None
        try:
            return value.section(self.problems)
        except Invalid as exc:
            self.report(value, str(exc))
            return None

    def field(self, name: str, convert: Callable[[Value], T], default: T) -> T:
        """`convert(value)` of key `name`, or `default`; a bad value is reported."""
        value = self.get(name)
        if value is None:
            return default
        try:
            return convert(value)
        except Invalid as exc:
            self.problems.add(self.file, value.line if exc.line is None else exc.line, str(exc))
            return default

    def report(self, value: Value | None, message: str) -> None:
        line = value.line if value is not None else self.line
        self.problems.add(self.file, line, message)

    def check_unknown(self, allowed_hint: str = "") -> None:
        """Report each key not read; `allowed_hint` lists the known keys, comma-separated.

        A key close to a known one (a typo) gets that one suggested; any other
        gets the list of known keys.
        """
        known = [k.strip() for k in allowed_hint.split(",") if k.strip()]
        for name, value in self._entries.items():
            if name in self._read:
                continue
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.7)
            if close:
                message = f"unknown key `{name}`; did you mean `{close[0]}`?"
            else:
                message = f"unknown key (known keys: {allowed_hint})" if known else "unknown key"
            self.problems.add(self.file, value.line, f"{value.key}: {message}")


def read_yaml(path: Path, problems: Problems, data: bytes | None = None) -> Value | None:
    """Compose `path` (or its already-read `data`) into nodes; syntax errors become problems."""
    try:
        raw = path.read_bytes() if data is None else data
        text = raw.decode("utf-8")
    except OSError as exc:
        problems.add(str(path), 0, f"cannot read: {exc.strerror or exc}")
        return None
    except UnicodeDecodeError:
        problems.add(str(path), 0, "is not UTF-8 text")
        return None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        line, column, message = syntax_hint(text, exc)
        problems.add(str(path), line, f"YAML syntax: {message}", column)
        return None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow; no mark
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        char = f" (#x{exc.character:04x})" if isinstance(exc.character, int) else ""
        problems.add(str(path), line, f"YAML syntax: {exc.reason}{char}", column)
        return None
    if node is None:
        node = yaml.MappingNode("tag:yaml.org,2002:map", [])
        node.start_mark = yaml.Mark(str(path), 0, 0, 0, "", 0)
    return Value(node, str(path), "")


_LOADER = yaml.SafeLoader("")
_TYPED_TAGS = frozenset(
    {"tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool"}
)


# `key:value` at the start of a line (after any `- `): a key whose `:` lacks the
# space YAML needs, so the whole line is one string. `http://…` is not one.
_NO_SPACE = re.compile(r"^(\s*(?:-\s+)?)([A-Za-z_][\w.-]*):(?!//)(\S)")
_CLOSERS = {"[": "]", "{": "}"}


def missing_space_hint(node: yaml.Node) -> str:
    """For a string where a mapping belongs: the hint when it reads as `key:value`."""
    if not isinstance(node, yaml.ScalarNode) or node.style is not None:
        return ""
    match = _NO_SPACE.match(str(node.value))
    if match is None:
        return ""
    key = match.group(2)
    return f"; `{key}:` needs a space after the colon (write `{key}: …`)"


def syntax_hint(text: str, exc: yaml.MarkedYAMLError) -> tuple[int, int | None, str]:
    """LINE, COLUMN (both from 1) and a plain description of a YAML syntax error.

    PyYAML's messages describe its parser's state ("while scanning a simple
    key"); an operator needs the usual cause: a tab, a missing space after
    `:`, lines that do not line up, or a quote or bracket never closed.
    """
    lines = text.splitlines()
    problem = exc.problem or ""
    context = exc.context or ""
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else 0
    column = mark.column + 1 if mark is not None else None
    opened = exc.context_mark
    if "'\\t'" in problem or "'\t'" in problem:
        return line, column, "a tab in the indentation; indent with spaces, never tabs"
    if "quoted scalar" in context and opened is not None:
        quote = _char_at(lines, opened.line, opened.column) or '"'
        return (
            opened.line + 1,
            opened.column + 1,
            f"unclosed quote: the {quote} here has no closing {quote}",
        )
    if ("flow sequence" in context or "flow mapping" in context) and opened is not None:
        bracket = _char_at(lines, opened.line, opened.column) or "["
        closer = _CLOSERS.get(bracket, "]")
        got = re.search(r"but got '(.*)'$", problem)
        if got is None or got.group(1) == "<stream end>":
            found = "the file ends first"
        else:
            found = f"found `{got.group(1)}` at {line}:{column}"
        return (
            opened.line + 1,
            opened.column + 1,
            f"unclosed bracket: the {bracket} here has no closing {closer} ({found})",
        )
    if "mapping values are not allowed" in problem or "could not find expected ':'" in problem:
        first = opened.line if opened is not None else max(0, line - 6)
        for number in range(min(line, len(lines)) - 1, max(first, line - 6) - 1, -1):
            no_space = _NO_SPACE.match(lines[number])
            if no_space is not None:
                key = no_space.group(2)
                return (
                    number + 1,
                    len(no_space.group(1)) + len(key) + 1,
                    f"`{key}:` needs a space after the colon (write `{key}: …`)",
                )
        if "mapping values are not allowed" in problem:
            return (
                line,
                _indent(lines, line - 1) + 1,
                "bad indentation: this line is indented deeper than the key above it "
                "(or the line above is missing a `:`)",
            )
        return line, column, "a line without `key: value` where a key was expected"
    if "expected <block end>" in problem:
        return (
            line,
            column,
            "bad indentation: this line does not line up with the lines above it "
            "(keys of one mapping, and the `-` of one list, start in the same column)",
        )
    if "block" in context and "expected" in problem:
        return line, column, "bad indentation or a missing `-` or `:` here"
    return line, column, problem or str(exc)


def _char_at(lines: list[str], line: int, column: int) -> str:
    if 0 <= line < len(lines) and 0 <= column < len(lines[line]):
        return lines[line][column]
    return ""


def _indent(lines: list[str], line: int) -> int:
    """How many spaces line `line` (from 0) starts with."""
    if not 0 <= line < len(lines):
        return 0
    return len(lines[line]) - len(lines[line].lstrip(" "))
