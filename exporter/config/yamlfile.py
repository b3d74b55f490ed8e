"""Reading a YAML config file as strictly as Prometheus does, with bounded cost.

- A key given twice in one mapping is an error naming the key and both lines (PyYAML lets the last win,
  so a second `dry_run: false` would silently switch deletions on).
- Files over `MAX_FILE_BYTES` are refused before parsing.
- Anchors and aliases stay allowed (`<<: *defaults` is handy for actions), but the document as expanded
  may hold at most `MAX_EXPANDED_NODES` nodes, counted on the composed node graph (shared nodes counted
  once per use, with memoisation, so the count itself is linear in the file). PyYAML shares an aliased
  object instead of copying it, so loading a "billion laughs" file is cheap; it is validating or copying the
  result that blows up (a 521-byte file used >2 GB). Refusing the expansion up front keeps both bounded.
  Recursive aliases are refused too.
- Nesting is bounded at `MAX_DEPTH` levels, both as written (checked while composing, before the recursive
  composer can exhaust the Python stack) and as expanded through aliases (a chain of anchors, each holding the
  previous one, nests deeper than any single level shows). A real config nests fewer than ten levels; a
  5,000-deep `[[[...]]]` is refused with a config error naming the line instead of a RecursionError.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from yaml.error import Mark
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from exporter.config.errors import ConfigError

MAX_FILE_BYTES = 1 << 20
MAX_EXPANDED_NODES = 100_000
MAX_DEPTH = 100
_MERGE_TAG = "tag:yaml.org,2002:merge"


class YAMLProblem(Exception):
    """A problem found while reading the document; the message names the key or line."""


def _too_deep(mark: Mark) -> YAMLProblem:
    return YAMLProblem(f"line {mark.line + 1}: nesting deeper than {MAX_DEPTH} levels")


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys in a mapping (merge keys `<<` excepted) and deep nesting."""

    _depth = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        # The composer recurses once per level: stop at the limit, long before the interpreter's own.
        if self._depth >= MAX_DEPTH:
            raise _too_deep(parent.start_mark if parent is not None else self.get_mark())
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise YAMLProblem(f"line {line}: duplicate key {key!r} (first given on line {seen[key]})")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _expanded_size(root: Node) -> int:
    """Nodes in the document with every alias expanded; raise YAMLProblem past the limits or on recursion.

    The walk goes at most `MAX_DEPTH` levels down, so its own recursion stays bounded too.
    """
    sizes: dict[int, tuple[int, int]] = {}  # id -> (expanded nodes, levels below and including it)
    active: set[int] = set()

    def size(node: Node, depth: int) -> tuple[int, int]:
        known = sizes.get(id(node))
        if known is None:
            if id(node) in active:
                raise YAMLProblem(f"line {node.start_mark.line + 1}: recursive alias")
            if depth > MAX_DEPTH:
                raise _too_deep(node.start_mark)
            active.add(id(node))
            children: list[Node] = []
            if isinstance(node, SequenceNode):
                children = list(node.value)
            elif isinstance(node, MappingNode):
                children = [n for pair in node.value for n in pair]
            total, height = 1, 1
            for child in children:
                child_total, child_height = size(child, depth + 1)
                total += child_total
                height = max(height, child_height + 1)
                if total > MAX_EXPANDED_NODES:
                    break
            active.discard(id(node))
            if total > MAX_EXPANDED_NODES:
                raise YAMLProblem(
                    f"line {node.start_mark.line + 1}: aliases expand to more than {MAX_EXPANDED_NODES} nodes"
                )
            known = sizes[id(node)] = (total, height)
        if depth - 1 + known[1] > MAX_DEPTH:
            raise _too_deep(node.start_mark)
        return known

    return size(root, 1)[0]


def parse_yaml(text: str) -> Any:
    """One YAML document from `text`, strictly; raise YAMLProblem or yaml.YAMLError."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml(path: str | os.PathLike[str], flag: str) -> Any:
    """The document in `path`, or ConfigError naming the flag, the file and what is wrong."""
    try:
        with Path(path).open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"{flag}: cannot read {path}: {exc.strerror}"]) from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError([f"{flag}: {path} is larger than {MAX_FILE_BYTES} bytes"])
    try:
        return parse_yaml(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{flag}: {path} is not UTF-8: {exc}"]) from None
    except YAMLProblem as exc:
        raise ConfigError([f"{flag}: {path} {exc}"]) from None
    except RecursionError:  # the limits above keep the loader shallow; this keeps any miss a config error
        raise ConfigError([f"{flag}: {path} nests too deeply to read (the limit is {MAX_DEPTH} levels)"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{flag}: {path} is not valid YAML: {exc}"]) from None
