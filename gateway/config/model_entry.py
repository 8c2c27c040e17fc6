"""Where a new `models:` entry goes in routes.yaml's text, and the text with it spliced in.

ruamel.yaml's round-trip composer says where the `models:` section ends (it
keeps every node's position) and its round-trip dumper renders the entry in
the file's own indentation; every other byte of the file stays as it was.
Re-emitting the whole document through ruamel would not do: it moves the
blank line and comments that trail the last model below the new one, and
re-indents or re-wraps what the operator wrote. Pure text in, text out: the
caller validates the result with `load_config` and writes it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

_NULL = "tag:yaml.org,2002:null"
DEFAULT_INDENT = 2  # a nested mapping's indent when the file shows none to copy


class PlacementError(Exception):
    """routes.yaml is laid out so that the entry cannot be spliced in safely."""


@dataclass(frozen=True, slots=True)
class Placement:
    """routes.yaml's text with the entry spliced in."""

    text: str
    shifted_from: int  # first line of the result that was a line of the original, moved down
    added_lines: int

    def original_line(self, line: int) -> int:
        """Line `line` of the result in the original's numbering (the new entry's stay put)."""
        return line - self.added_lines if line >= self.shifted_from else line


def entry_fields(
    url: str,
    roles: str | None,
    rate_limit: str | None,
    timeout: str | None,
    *,
    usage: str | None = None,
    token_limit: str | None = None,
    fallback: str | None = None,
) -> dict[str, Any]:
    """The keys the entry is written with; anything not given is left to the loader's defaults.

    `roles` and `fallback` are comma-separated lists; the rest are written as given
    and checked by the loader."""
    fields: dict[str, Any] = {"url": url}
    role_list = _split(roles)
    if role_list:
        fields["roles"] = role_list
    for key, value in (
        ("rate_limit", rate_limit),
        ("timeout", timeout),
        ("usage", usage),
        ("token_limit", token_limit),
    ):
        if value:
            fields[key] = value
    fallback_list = _split(fallback)
    if fallback_list:
        fields["fallback"] = fallback_list
    return fields


def _split(names: str | None) -> list[str]:
    return [name.strip() for name in (names or "").split(",") if name.strip()]


def render_entry(name: str, fields: dict[str, Any], indent: int, flow: bool = False) -> str:
    """`NAME:` and its keys as YAML (roles as a flow list), lines ending in newline."""
    entry = CommentedMap()
    for key, value in fields.items():
        if isinstance(value, list):
            value = CommentedSeq(value)
            value.fa.set_flow_style()
        entry[key] = value
    if flow:
        entry.fa.set_flow_style()
    dumper = YAML(typ="rt")
    dumper.indent(mapping=indent, sequence=indent + 2, offset=indent)
    dumper.width = 4096  # never wrap a long URL
    out = io.StringIO()
    dumper.dump(CommentedMap([(name, entry)]), out)
    return out.getvalue()


def place_entry(text: str, name: str, fields: dict[str, Any]) -> Placement:
    """Splice `name: fields` into the `models:` of `text` (made at the end when absent).

    Raises PlacementError unless the result reads as exactly the original plus the entry.
    """
    try:
        root = YAML(typ="rt").compose(text)
    except YAMLError as exc:
        raise PlacementError(f"ruamel.yaml cannot read it: {exc}") from None
    newline = "\r\n" if "\r\n" in text else "\n"
    if root is None:  # empty, or comments only
        placement = _append(text, _models_section(name, fields, 0, DEFAULT_INDENT), newline)
    elif not isinstance(root, MappingNode) or root.flow_style:
        raise PlacementError("its top level is not a block mapping of sections")
    else:
        placement = _place_in(text, root, name, fields, newline)
    _check_meaning(text, placement.text, name, fields)
    return placement


def _place_in(
    text: str, root: MappingNode, name: str, fields: dict[str, Any], newline: str
) -> Placement:
    column = root.value[0][0].start_mark.column if root.value else 0
    step = _indent_step(root, column)
    found = [(key, value) for key, value in root.value if key.value == "models"]
    if not found:
        return _append(text, _models_section(name, fields, column, step), newline)
    key, models = found[0]
    if isinstance(models, MappingNode) and models.flow_style:
        return _into_flow(text, models, render_entry(name, fields, step, flow=True).strip())
    if isinstance(models, MappingNode) and models.value:
        model_column = models.value[0][0].start_mark.column
        entry_step = _indent_step(models, model_column, step)
        block = _indent(render_entry(name, fields, entry_step), model_column, newline)
        return _insert(text, _line_after(text, _content_end(models)), block, newline)
    if isinstance(models, ScalarNode) and models.tag == _NULL:  # `models:` with nothing yet
        start, end = models.start_mark.index, models.end_mark.index
        if end > start:  # an explicit `~` or `null`: the entries replace it
            rest = text[end:].split("\n", 1)[0]
            head, tail = text[:start], text[end:]
            text = head.rstrip(" \t") + tail.lstrip(" \t") if not rest.strip() else head + tail
        block = _indent(render_entry(name, fields, step), column + step, newline)
        return _insert(text, _line_after(text, key.end_mark.index), block, newline)
    raise PlacementError("models: is not a mapping")


def _models_section(name: str, fields: dict[str, Any], column: int, step: int) -> str:
    return " " * column + "models:\n" + _indent(render_entry(name, fields, step), column + step)


def _indent(block: str, column: int, newline: str = "\n") -> str:
    return "".join((" " * column + line if line else line) + newline for line in block.splitlines())


def _indent_step(mapping: MappingNode, column: int, default: int = DEFAULT_INDENT) -> int:
    """How far `mapping` indents its nested block mappings (`default` when it has none)."""
    for _, value in mapping.value:
        if isinstance(value, MappingNode) and not value.flow_style and value.value:
            return max(1, int(value.value[0][0].start_mark.column) - column)
    return default


def _content_end(node: Node) -> int:
    """Offset just past `node`'s last character, not counting comments or blank lines after it."""
    while isinstance(node, MappingNode | SequenceNode) and not node.flow_style and node.value:
        if isinstance(node, MappingNode):
            key, value = node.value[-1]
            if isinstance(value, ScalarNode) and value.start_mark.index == value.end_mark.index:
                return int(key.end_mark.index)  # `key:` with an empty value: marks point past it
            node = value
        else:
            node = node.value[-1]
    return int(node.end_mark.index)


def _line_after(text: str, end: int) -> int:
    """Where the line after offset `end` starts; blank lines a block scalar took stay below."""
    if end > 0 and text[end - 1] == "\n":  # a block scalar ends with its line break(s)
        while end > 0:
            start = text.rfind("\n", 0, end - 1) + 1
            if text[start:end].strip():
                break
            end = start
        return end
    newline = text.find("\n", end)
    return len(text) if newline < 0 else newline + 1


def _insert(text: str, at: int, block: str, newline: str) -> Placement:
    if at > 0 and text[at - 1] != "\n":  # the last line had no line break
        block = newline + block
    added = block.count("\n")
    return Placement(text[:at] + block + text[at:], text.count("\n", 0, at) + 1 + added, added)


def _append(text: str, section: str, newline: str) -> Placement:
    """`section` at the end of the file, after a blank line."""
    section = section.replace("\n", newline)
    if text.strip() and text.splitlines()[-1].strip():
        section = newline + section  # _insert ends an unfinished last line first
    return _insert(text, len(text), section, newline)


def _into_flow(text: str, models: MappingNode, entry: str) -> Placement:
    close = models.end_mark.index - 1
    if text[close] != "}":
        raise PlacementError("models: ends where no closing brace is")
    body = text[models.start_mark.index + 1 : close].rstrip()
    at = models.start_mark.index + 1 + len(body)  # after the last entry, before any line break
    separator = ", " if body.strip() and not body.endswith(",") else " " if body.strip() else ""
    return Placement(text[:at] + separator + entry + text[at:], 0, 0)


def _check_meaning(original: str, result: str, name: str, fields: dict[str, Any]) -> None:
    """The gateway's own YAML reader must see the original, plus the entry, and nothing else."""
    try:
        expected = yaml.safe_load(original) or {}
        actual = yaml.safe_load(result)
        entry = yaml.safe_load(render_entry(name, fields, DEFAULT_INDENT))[name]
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise PlacementError(f"the result would not read back as YAML ({first})") from None
    if not isinstance(expected, dict):
        raise PlacementError("its top level is not a mapping")
    # a new dict, not the one read: an anchored `models:` is shared with its alias
    expected["models"] = {**(expected.get("models") or {}), name: entry}
    if actual != expected:
        raise PlacementError("splicing the entry in would change more than the models section")
