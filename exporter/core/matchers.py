"""Alertmanager-style label matchers (`name="v"`, `!=`, `=~`, `!~`; regexes fully anchored)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_MATCHER_RE = re.compile(
    r"""^\s*(?P<name>[a-zA-Z_][a-zA-Z0-9_]*)\s*(?P<op>=~|!~|!=|=)\s*(?P<value>"(?:[^"\\]|\\.)*"|[^"\s,{}]*)\s*$"""
)


@dataclass(frozen=True)
class Matcher:
    """One label matcher; a missing label matches as the empty string, as in Alertmanager."""

    name: str
    op: str
    value: str
    pattern: re.Pattern[str] | None = None

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.name, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        assert self.pattern is not None
        found = self.pattern.fullmatch(actual) is not None
        return found if self.op == "=~" else not found

    def requires_label(self) -> bool:
        """True when only alerts carrying this label with a non-empty value can match (`a="x"`, `a=~".+"`).

        A route needs one such matcher: `a!="x"`, `a=""` or `a=~".*"` also match alerts without the label.
        """
        if self.op == "=":
            return self.value != ""
        if self.op == "=~":
            assert self.pattern is not None
            return self.pattern.fullmatch("") is None
        return False

    def __str__(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"')
        return f'{self.name}{self.op}"{escaped}"'


def parse_matcher(text: str) -> Matcher:
    """Parse one matcher; raise ValueError naming what is wrong."""
    if not isinstance(text, str):
        raise ValueError(f'expected a matcher string like alertname="X", got {text!r}')
    match = _MATCHER_RE.match(text)
    if not match:
        raise ValueError(f'not a matcher (want name="value", name!="v", name=~"re", name!~"re"): {text!r}')
    raw = match.group("value")
    value = re.sub(r"\\(.)", r"\1", raw[1:-1]) if raw.startswith('"') else raw
    op = match.group("op")
    pattern = None
    if op in ("=~", "!~"):
        try:
            pattern = re.compile(value)
        except re.error as exc:
            raise ValueError(f"bad regular expression in {text!r}: {exc}") from None
    return Matcher(match.group("name"), op, value, pattern)


def all_match(matchers: Iterable[Matcher], labels: Mapping[str, str]) -> bool:
    """True when every matcher matches (an empty list matches everything)."""
    return all(m.matches(labels) for m in matchers)
