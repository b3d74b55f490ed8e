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
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from exporter.config.errors import ConfigError

MAX_FILE_BYTES = 1 << 20
MAX_EXPANDED_NODES = 100_000
_MERGE_TAG = "tag:yaml.org,2002:merge"


class YAMLProblem(Exception):
    """A problem found while reading the document; the message names the key or line."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys in a mapping (merge keys `<<` excepted)."""

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
    """Nodes in the document with every alias expanded; raise YAMLProblem past the limit or on recursion."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: Node) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        if id(node) in active:
            raise YAMLProblem(f"line {node.start_mark.line + 1}: recursive alias")
        active.add(id(node))
        total = 1
        if isinstance(node, SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        active.discard(id(node))
        if total > MAX_EXPANDED_NODES:
            raise YAMLProblem(
                f"line {node.start_mark.line + 1}: aliases expand to more than {MAX_EXPANDED_NODES} nodes"
            )
        sizes[id(node)] = total
        return total

    return size(root)


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
    except yaml.YAMLError as exc:
        raise ConfigError([f"{flag}: {path} is not valid YAML: {exc}"]) from None
